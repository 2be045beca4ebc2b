"""What command-line arguments mean in the API, and the way back: API field names in server
messages ("pass imatrix_path") said as the flags that set them ("pass --imatrix").

The server's messages speak the API's field names, for API clients; a CLI user sets flags, so the
CLI rewrites the names of the fields it sets before it prints a message.
"""

from __future__ import annotations

import os
import re

from quantledger.hf.hub import parse_hub_id

# API field -> the flag that sets it, per command family (every field the CLI sets)
_JOB_FLAGS = {
    "source": "SOURCE", "quant_types": "--quant", "threads": "--threads", "allow_requantize": "--allow-requantize",
    "leave_output_tensor": "--leave-output-tensor", "pure": "--pure", "output_tensor_type": "--output-tensor-type",
    "token_embedding_type": "--token-embedding-type", "tensor_type_overrides": "--override",
    "keep_split": "--keep-split", "imatrix_path": "--imatrix", "output_dir": "--out", "overwrite": "--overwrite",
    "lora_dir": "--lora", "max_kl_divergence": "--max-kld", "skip_quality": "--no-quality",
    "intermediate_type": "--intermediate-type", "eval_text_path": "--eval-text", "request_id": "--request-id",
    "calibration_path": "--calibration", "calibration_chunks": "--calibration-chunks",
    "calibration_ctx": "--calibration-ctx", "imatrix_include_weights": "--include-weights",
    "imatrix_exclude_weights": "--exclude-weights", "kv_overrides": "--override-kv", "prune_layers": "--prune-layers",
    "split_max_bytes": "--split-max-size", "split_max_tensors": "--split-max-tensors",
    "min_cosine_similarity": "--min-cosine", "min_ndcg": "--min-ndcg",
}  # fmt: skip
_PAGE_FLAGS = {"page_size": "--page-size", "page_token": "--page-token"}
_RECOMMEND_FLAGS = {
    "gguf_path": "MODEL", "hf_folder": "MODEL", "hf_repo": "MODEL", "registry_file": "MODEL",
    "parameter_count": "--params", "family": "--family", "tier": "--tier", "ram_bytes": "--ram", "cores": "--cores",
    "devices": "--gpu", "memory_bytes": "--gpu", "bandwidth_bytes_per_second": "--gpu",
    "unified_memory": "--unified", "cpu_only": "--cpu-only", "context_length": "--ctx", "batch_size": "--batch",
    "kv_cache_type": "--kv", "preference": "--prefer", "max_size_bytes": "--max-size",
    "max_kl_divergence": "--max-kld", "imatrix": "--imatrix", "max_options": "--options",
    "full_swa_cache": "--swa-full",
}  # fmt: skip
_REGISTRY_FLAGS = {"attester": "--attester", "file_sha256": "SHA-256", **_PAGE_FLAGS}
FLAGS: dict[str, dict[str, str]] = {
    "submit": _JOB_FLAGS, "estimate": _JOB_FLAGS, "quantize": _JOB_FLAGS, "jobs": _PAGE_FLAGS,
    "quant-types": _PAGE_FLAGS, "recommend": _RECOMMEND_FLAGS, "registry": _REGISTRY_FLAGS,
}  # fmt: skip


def in_flag_terms(message: str, command: str) -> str:
    """``message`` with the API fields ``command`` sets named by their flags.

    Names with an underscore are replaced wherever they stand as a word; one-word names (overwrite,
    pure, imatrix, …) are ordinary English too, so only where a message says "set NAME" or "pass NAME".
    """
    flags = FLAGS.get(command, {})
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])(?:(?P<verb>set|pass) )?(?P<name>{names})(?![\w-])")

    def rewrite(match: re.Match[str]) -> str:
        name, verb = match["name"], match["verb"]
        if verb:
            return f"pass {flags[name]}"
        return flags[name] if "_" in name else match[0]

    return pattern.sub(rewrite, message)


def names_hub_model(raw: str) -> bool:
    """Whether a SOURCE or MODEL argument names a Hugging Face hub model rather than a local path.

    ``hf://…`` always does; an existing path, one that starts with ``/``, ``.`` or ``~`` or ends in
    ``.gguf`` never does; anything else does when it has the form of a hub id (``owner/name[@revision]``).
    """
    if raw.startswith("hf://"):
        return True
    if raw.startswith(("/", ".", "~")) or raw.endswith(".gguf") or os.path.exists(raw):
        return False
    return parse_hub_id(raw) is not None


def local_path(raw: str) -> str:
    """A local path made absolute: the server resolves paths from its own directory."""
    return os.path.abspath(os.path.expanduser(raw))
