"""What the loaded llama.cpp library says of itself: its version and commit, and the CPU features its build
uses. Read in the process that asks (the services load llama-cpp-python's library for these only; the work
itself runs in worker processes)."""

from __future__ import annotations

import functools


def _library_text(name: str) -> str:
    """A ``const char * f(void)`` of the loaded llama.cpp library (libllama links ggml), or ""."""
    import ctypes

    from llama_cpp import llama_cpp as bindings

    try:
        function = getattr(bindings._lib, name)
    except AttributeError:  # an older build without it
        return ""
    function.argtypes, function.restype = [], ctypes.c_char_p
    value = function()
    return value.decode(errors="replace") if value else ""


def llama_cpp_build() -> str:
    """llama.cpp's own version and the git commit it was built from, as the loaded library reports them."""
    version, commit, ggml = _library_text("llama_version"), _library_text("ggml_commit"), _library_text("ggml_version")
    details = ", ".join(part for part in (f"commit {commit}" if commit else "", f"ggml {ggml}" if ggml else "") if part)
    return f"llama.cpp {version or 'unknown version'}" + (f" ({details})" if details else "")


@functools.cache
def llama_cpp_features() -> str:
    """The CPU features the loaded llama.cpp build uses ("SSE3 AVX AVX2 … LLAMAFILE OPENMP REPACK"): they do
    not change what quantization writes, but they do change the importance matrix a model's forward pass
    computes (bench/build_flags.py), so a computed matrix records them."""
    import llama_cpp

    text = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = []
    for part in text.split("|"):
        name, _, value = part.rpartition(":")[2].partition("=")
        if value.strip() == "1":
            features.append(name.strip())
    return " ".join(features)
