"""Computing an importance matrix with llama.cpp itself, as ``llama-imatrix`` does.

The model runs in llama.cpp (through llama-cpp-python's low-level API) on calibration text, and the
context's eval callback (``cb_eval``, the hook llama-imatrix uses) sees every matrix multiplication:
for each weight matrix ``blk.*`` (``output.weight`` too with ``process_output``), the squares of the
activations it multiplies are summed per input column, and the number of activation rows counted.
Why the callback rather than building llama.cpp's own tool: it is the same hook, on the very library
that quantizes, with nothing to compile (a second llama.cpp build would take minutes on every
install); the reference test compares the result with llama-imatrix's own file.

The text is cut as llama-imatrix cuts it: tokenized whole (with the vocabulary's BOS), in chunks of
``n_ctx`` tokens (at least two chunks' worth needed), each chunk evaluated from an empty KV cache with
its first token replaced by BOS when the vocabulary adds one, every position producing logits. The
rules of collection are llama-imatrix's: MUL_MAT with an F32 activation of at least 16 rows, every
MUL_MAT_ID (mixture-of-experts: sums and counts per expert), names without their backend prefix.

Runs in a worker process (``quantize/worker.py`` mode ``calibrate``): llama.cpp may crash, and a
cancel kills the process group.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.errors import InvalidArgument, SourceNotFound

MIN_ROWS = 16  # llama-imatrix skips smaller batches
GGML_TYPE_F32 = 0
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
Progress = Callable[[int, int], None]  # (chunks done, chunks in all)


def default_calibration_text() -> str:
    """The calibration text that ships with quantledger (written for it: prose in several languages,
    code, lists, tables, dialogue and numbers)."""
    return resources.files("quantledger.quantize").joinpath("data", "calibration.txt").read_text(encoding="utf-8")


def calibration_label(name: str, text: str) -> str:
    """What the matrix records as its dataset: the text's name and the start of its SHA-256."""
    return f"{name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml that llama-cpp-python ships (ggml.h); checked against the
    library's own accessors before it is trusted (``_Ggml.check``)."""


_Tensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_Tensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(_Tensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


class _Ggml:
    """The few ggml functions the collector calls, from the library llama-cpp-python loaded."""

    def __init__(self) -> None:
        import llama_cpp

        folder = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        lib = ctypes.CDLL(os.path.join(folder, "libggml-base.so"))
        lib.ggml_op_name.restype = ctypes.c_char_p
        lib.ggml_op_name.argtypes = [ctypes.c_int]
        lib.ggml_get_name.restype = ctypes.c_void_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_nrows.restype = ctypes.c_int64
        lib.ggml_nrows.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib = lib
        self.mul_mat, self.mul_mat_id = self._op("MUL_MAT"), self._op("MUL_MAT_ID")

    def _op(self, wanted: str) -> int:
        # both come early in enum ggml_op; the names array is never read past them
        for op in range(200):
            if self.lib.ggml_op_name(op) == wanted.encode():
                return op
        raise RuntimeError(f"this ggml has no {wanted} operation")

    def check(self, address: int, tensor: _Tensor) -> None:
        """Refuse to read tensors whose layout is not the one declared above (another ggml version)."""
        if self.lib.ggml_get_name(address) != address + _Tensor.name.offset or tensor.ne[0] <= 0:
            raise RuntimeError("struct ggml_tensor has another layout in this llama.cpp: update calibrate.py")

    def array(self, address: int, tensor: _Tensor, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """The tensor's values as a (ne3, ne2, ne1, ne0) array (copied to host memory)."""
        size = self.lib.ggml_nbytes(address)
        raw = np.empty(size, dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(address, raw.ctypes.data, 0, size)
        shape = tuple(int(tensor.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
        strides = tuple(int(tensor.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
        return np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides)


def weight_name(raw: bytes) -> str:
    """``CPU#blk.0.attn_k.weight#0`` → ``blk.0.attn_k.weight`` (as llama-imatrix names tensors)."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


@dataclass
class Collected:
    """Sums of squared activations per weight (``(n_mat, ne0)``) and activation rows per matrix."""

    sums: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    counts: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    chunks: int = 0
    chunk_size: int = 0
    tokens: int = 0
    dataset: str = ""


class Collector:
    """The ``cb_eval`` callback: llama-imatrix's collection rules over numpy."""

    def __init__(self, ggml: _Ggml, process_output: bool) -> None:
        self._ggml = ggml
        self._process_output = process_output
        self._checked = False
        self.result = Collected()
        self.error: BaseException | None = None

    def wanted(self, tensor: _Tensor) -> bool:
        if tensor.op == self._ggml.mul_mat_id:
            return True
        if tensor.op != self._ggml.mul_mat:
            return False
        src1 = tensor.src[1].contents
        if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
            return False
        name = weight_name(tensor.src[0].contents.name)
        return name.startswith("blk.") or (self._process_output and name == "output.weight")

    def __call__(self, address: int, ask: bool, _user_data: Any) -> bool:
        try:
            tensor = _Tensor.from_address(address)
            if not self._checked:
                self._ggml.check(address, tensor)
                self._checked = True
            if ask:
                return self.wanted(tensor)
            if tensor.op == self._ggml.mul_mat_id:
                self._collect_experts(tensor)
            else:
                self._collect_dense(tensor)
            return True
        except BaseException as exc:  # never across the C boundary: stop the graph, re-raised after decode
            self.error = exc
            return False

    def _entry(self, name: str, n_mat: int, ne0: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        sums = self.result.sums.get(name)
        if sums is None:
            sums = self.result.sums[name] = np.zeros((n_mat, ne0), dtype=np.float64)
            self.result.counts[name] = np.zeros(n_mat, dtype=np.int64)
        elif sums.shape != (n_mat, ne0):
            raise RuntimeError(f"inconsistent size for {name}: {sums.shape} then {(n_mat, ne0)}")
        return sums, self.result.counts[name]

    def _collect_dense(self, tensor: _Tensor) -> None:
        src0, src1 = tensor.src[0].contents, tensor.src[1].contents
        x = self._ggml.array(ctypes.addressof(src1), src1, np.float32).astype(np.float64)  # (ne3, ne2, ne1, ne0)
        n2, n3 = int(src0.ne[2]), int(src0.ne[3])
        sums, counts = self._entry(weight_name(src0.name), n2 * n3, int(src1.ne[0]))
        squares = (x * x).sum(axis=2)  # over the activation rows: (ne3, ne2, ne0)
        for i3 in range(squares.shape[0]):
            for i2 in range(squares.shape[1]):
                sums[(i3 % n3) * n2 + (i2 % n2)] += squares[i3, i2]
        if not np.isfinite(sums).all():
            raise RuntimeError(f"non-finite activations in {weight_name(src0.name)}")
        counts += self._ggml.lib.ggml_nrows(ctypes.addressof(src1)) // (n2 * n3)

    def _collect_experts(self, tensor: _Tensor) -> None:
        src0, src1, ids_t = tensor.src[0].contents, tensor.src[1].contents, tensor.src[2].contents
        n_as = int(src0.ne[2])
        x = self._ggml.array(ctypes.addressof(src1), src1, np.float32)[0].astype(np.float64)  # (tokens, ne1, ne0)
        ids = self._ggml.array(ctypes.addressof(ids_t), ids_t, np.int32)[0, 0]  # (tokens, n_ids)
        sums, counts = self._entry(weight_name(src0.name), n_as, int(src1.ne[0]))
        n_tokens, n_ids = ids.shape
        rows = x[:, np.arange(n_ids) % x.shape[1], :]  # (tokens, n_ids, ne0): the activation each expert saw
        experts = ids.reshape(-1).astype(np.int64)
        if experts.min(initial=0) < 0 or experts.max(initial=0) >= n_as:
            raise RuntimeError(f"expert id out of range in {weight_name(src0.name)}")
        np.add.at(sums, experts, (rows * rows).reshape(n_tokens * n_ids, -1))
        np.add.at(counts, experts, 1)
        if not np.isfinite(sums).all():
            raise RuntimeError(f"non-finite activations in {weight_name(src0.name)}")


def _tokenize(llama_cpp: Any, vocab: Any, text: str) -> list[int]:
    data = text.encode("utf-8")
    capacity = len(data) + 16
    buffer = (llama_cpp.llama_token * capacity)()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, capacity, True, False)
    if count < 0:  # the buffer was too small: -count is what it needs
        capacity = -count
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, capacity, True, False)
    return list(buffer[:count])


def compute_imatrix(
    model_path: str | os.PathLike[str],
    text: str,
    *,
    n_ctx: int = 512,
    chunks: int = 0,
    threads: int = 0,
    dataset: str = "",
    process_output: bool = False,
    progress: Progress | None = None,
) -> Collected:
    """Run the model over ``text`` and collect its importance matrix (see the module docstring).

    ``chunks`` 0 takes every whole chunk of the text. INVALID_ARGUMENT when the text is shorter than
    two chunks, as llama-imatrix refuses it."""
    import llama_cpp

    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise SourceNotFound(f"model {path} does not exist")
    if not 16 <= n_ctx <= 1 << 20 or chunks < 0:
        raise InvalidArgument(f"the context must be 16 to {1 << 20} tokens and chunks >= 0 (got {n_ctx}, {chunks})")
    ggml = _Ggml()
    collector = Collector(ggml, process_output)
    callback = llama_cpp.ggml_backend_sched_eval_callback(collector)
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(path.encode(), model_params)
    if not model:
        raise InvalidArgument(f"llama.cpp cannot load {path} as a model")
    context = batch = None
    try:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        params.cb_eval = callback
        params.cb_eval_user_data = None
        context = llama_cpp.llama_init_from_model(model, params)
        if not context:
            raise InvalidArgument(f"llama.cpp cannot make a context of {n_ctx} tokens for {path}")
        vocab = llama_cpp.llama_model_get_vocab(model)
        tokens = _tokenize(llama_cpp, vocab, text)
        if len(tokens) < 2 * n_ctx:
            raise InvalidArgument(
                f"the calibration text is {len(tokens)} tokens for this model; a context of {n_ctx} needs at "
                f"least {2 * n_ctx} (give a longer text, or a smaller --ctx)",
                tokens=str(len(tokens)),
            )
        available = len(tokens) // n_ctx
        total = min(chunks, available) if chunks else available
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        memory = llama_cpp.llama_get_memory(context)
        for chunk in range(total):
            piece = tokens[chunk * n_ctx : (chunk + 1) * n_ctx]
            if add_bos:
                piece[0] = bos
            llama_cpp.llama_memory_clear(memory, True)
            for k, token in enumerate(piece):
                batch.token[k] = token
                batch.pos[k] = k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = 1
            batch.n_tokens = len(piece)
            status = llama_cpp.llama_decode(context, batch)
            if collector.error is not None:
                raise collector.error
            if status != 0:
                raise RuntimeError(f"llama_decode failed with {status} on chunk {chunk + 1}")
            if progress is not None:
                progress(chunk + 1, total)
        result = collector.result
        result.chunks, result.chunk_size, result.tokens, result.dataset = total, n_ctx, total * n_ctx, dataset
        if not result.sums:
            raise InvalidArgument(f"{path} has no weight matrices llama-imatrix would collect (blk.*)")
        return result
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if context:
            llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)
        del callback


def save_imatrix(collected: Collected, path: str | os.PathLike[str], output_format: str = "gguf") -> None:
    """Write what was collected as llama-imatrix writes it: GGUF (raw sums and counts per matrix, the
    dataset, chunk count and size), or the legacy ``.dat`` (mean squares times each entry's chunk count)."""
    from quantledger.quantize.imatrix import write_imatrix_dat, write_imatrix_gguf

    sums = {name: values.astype(np.float32) for name, values in collected.sums.items()}
    if output_format == "gguf":
        write_imatrix_gguf(
            path,
            sums,
            dataset=collected.dataset,
            chunk_size=collected.chunk_size,
            chunk_count=collected.chunks,
            entry_counts=collected.counts,
        )
        return
    if output_format != "dat":
        raise InvalidArgument(f"imatrix output format {output_format!r}: use gguf or dat", field="output_format")
    stored, ncall = {}, {}
    for name, values in collected.sums.items():
        counts = collected.counts[name]
        calls = int(-(-int(counts.max()) // collected.chunk_size))
        safe = np.where(counts == 0, 1, counts).astype(np.float64)[:, None]
        mean = np.where(counts[:, None] == 0, 1.0, values / safe)
        stored[name], ncall[name] = (mean * calls).astype(np.float32), calls
    write_imatrix_dat(path, stored, dataset=collected.dataset, chunk_count=collected.chunks, entry_ncall=ncall)
