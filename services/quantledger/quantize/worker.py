"""Child process that runs one ``llama_model_quantize`` call.

Run as ``python -m quantledger.quantize.worker``: it reads a JSON request on stdin, writes JSON-line
events on the file descriptor named by ``--events-fd`` and exits 0 on success. llama.cpp's own
stdout/stderr are left to the parent to collect. The parent starts it in a new process group so a
cancel can kill it (and any thread llama.cpp started) at once; the worker asks the kernel to kill it
if the parent dies, so a killed server leaves no orphan writing files.

Other modes (``"mode"``): convert, fetch, evaluate, calibrate (an importance matrix, calibrate.py),
reference (the unquantized model's read of the evaluation text, kept for every output's evaluation),
score_pairs (a reranker's scores of (query, passage) pairs, quality/rerank.py).
The request is one run, or ``{"runs": [run, ...]}`` for several (dry runs of every type of a job
share one process). Run fields: source, output, ftype, dry_run, threads, allow_requantize, quantize_output_tensor,
pure, keep_split, output_tensor_type, token_embedding_type (ggml type ids, -1 for llama.cpp's
choice), tensor_type_overrides ([[pattern, ggml type id], ...]), imatrix (path or null), imatrix_include /
imatrix_exclude (names: the entries handed over), metadata ([[key, int or str], ...]: keys written into
the output, as llama-quantize records its imatrix), kv_overrides ([[key, kind, value], ...]), prune_layers
(block numbers), only_copy (COPY).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from quantledger.errors import QuantledgerError

PR_SET_PDEATHSIG = 1
# Log callbacks handed to llama.cpp: a collected ctypes callback crashes the process when called.
_CALLBACKS: list[Any] = []


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the parent's process-group kill still applies
        pass


class _Emitter:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self._stream.write(json.dumps(event) + "\n")
        self._stream.flush()


def run(request: dict[str, Any], emit: _Emitter) -> int:
    """Quantize as ``request`` says; return llama.cpp's return code."""
    import llama_cpp

    from quantledger.quantize.llama_log import LogParser

    parser = LogParser()

    def on_log(level: int, text: bytes | None, _user_data: Any) -> None:
        if not text:
            return
        for event in parser.feed(int(level), text.decode("utf-8", errors="replace")):
            emit(event)

    callback = llama_cpp.llama_log_callback(on_log)
    _CALLBACKS.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(request["ftype"])
    params.nthread = int(request.get("threads") or os.cpu_count() or 1)
    params.allow_requantize = bool(request.get("allow_requantize", False))
    params.quantize_output_tensor = bool(request.get("quantize_output_tensor", True))
    params.pure = bool(request.get("pure", False))
    params.keep_split = bool(request.get("keep_split", False))
    params.dry_run = bool(request.get("dry_run", False))
    if int(request.get("output_tensor_type", -1)) >= 0:
        params.output_tensor_type = int(request["output_tensor_type"])
    if int(request.get("token_embedding_type", -1)) >= 0:
        params.token_embedding_type = int(request["token_embedding_type"])

    keepalive: list[Any] = []
    overrides = request.get("tensor_type_overrides") or []
    if overrides:
        array = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for slot, (pattern, type_id) in zip(array, overrides, strict=False):
            slot.pattern = str(pattern).encode()
            slot.type = int(type_id)
        array[len(overrides)].pattern = None
        params.tt_overrides = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keepalive.append(array)
    # kv_overrides: the client's [key, "int"|"float"|"bool"|"str", value] (quantize_flags.py), then the
    # keys quantledger records (metadata: [key, int or str])
    typed = [list(item) for item in request.get("kv_overrides") or []]
    typed += [[key, "str" if isinstance(value, str) else "int", value] for key, value in request.get("metadata") or []]
    if typed:
        entries = (llama_cpp.llama_model_kv_override * (len(typed) + 1))()
        for entry, (key, kind, value) in zip(entries, typed, strict=False):
            entry.key = str(key).encode()[:127]
            if kind == "str":
                entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                entry.value.val_str = str(value).encode()[:127]
            elif kind == "float":
                entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT
                entry.value.val_f64 = float(value)
            elif kind == "bool":
                entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL
                entry.value.val_bool = bool(value)
            else:
                entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT  # written as u32
                entry.value.val_i64 = int(value)
        entries[len(typed)].key = b""
        params.kv_overrides = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_kv_override))
        keepalive.append(entries)
    prune = [int(n) for n in request.get("prune_layers") or []]
    if prune:
        layers = (ctypes.c_int32 * (len(prune) + 1))(*prune, -1)
        params.prune_layers = ctypes.cast(layers, ctypes.POINTER(ctypes.c_int32))
        keepalive.append(layers)
    params.only_copy = bool(request.get("only_copy", False))
    if request.get("imatrix"):
        import dataclasses

        from quantledger.quantize.imatrix import ImatrixCArray, load_imatrix
        from quantledger.quantize.quantize_flags import chosen_entries

        loaded = load_imatrix(request["imatrix"])
        include, exclude = request.get("imatrix_include") or [], request.get("imatrix_exclude") or []
        if include or exclude:
            loaded = dataclasses.replace(loaded, entries=chosen_entries(loaded.entries, include, exclude))
        imatrix = ImatrixCArray(loaded)
        params.imatrix = imatrix.pointer
        keepalive.append(imatrix)

    emit({"event": "started", "pid": os.getpid()})
    if request.get("dry_run"):
        rc = int(
            llama_cpp.llama_model_quantize(
                os.fsencode(request["source"]), os.fsencode(request["output"]), ctypes.byref(params)
            )
        )
    else:
        # llama.cpp writes by name: it gets the partial files this worker created (quantize/partial_files.py)
        from quantledger.quantize.partial_files import claimed_partials

        try:
            with claimed_partials(request["output"], int(request.get("partial_count") or 1)) as target:
                rc = int(
                    llama_cpp.llama_model_quantize(
                        os.fsencode(request["source"]), os.fsencode(target), ctypes.byref(params)
                    )
                )
        except QuantledgerError as exc:
            emit({"event": "error", "reason": exc.reason, "message": exc.message})
            return 1
    emit({"event": "finished", "rc": rc, "errors": parser.errors[-5:]})
    del keepalive
    return rc


def probe(ftypes: list[int], emit: _Emitter) -> None:
    """Quantize a tiny 256-wide model to every ftype without an imatrix and report how each ends.

    This tells which types the installed llama.cpp can write (some constants exist in the API but
    are refused as "invalid output file type") and which need an importance matrix.
    """
    import tempfile

    from quantledger.testing.synthetic_model import write_llama_gguf

    with tempfile.TemporaryDirectory(prefix="quantledger-probe-") as work:
        model = os.path.join(work, "probe-f16.gguf")
        write_llama_gguf(model, n_embd=256, n_ff=256, n_layer=1, n_head=2, n_head_kv=1, n_vocab=288)
        for ftype in ftypes:
            emit({"event": "run", "ftype": ftype})
            request = {
                "source": model,
                "output": os.path.join(work, "out.gguf"),
                "ftype": ftype,
                "dry_run": False,
                "threads": 1,
            }
            run(request, emit)


def convert(request: dict[str, Any], emit: _Emitter) -> None:
    """Convert a Hugging Face folder to a GGUF intermediate (stage CONVERTING), merging a LoRA if given."""
    if request.get("fallback_python"):
        convert_with_llama_cpp(request, emit)
        return
    from quantledger.convert.converter import convert_hf_to_gguf

    transform = None
    if request.get("lora_dir"):
        from quantledger.convert.lora import load_lora, merging_transform

        transform = merging_transform(load_lora(request["lora_dir"]))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or total <= 0 or done - last[0] >= total / 200:
            last[0] = done
            emit({"event": "convert_progress", "bytes_done": done, "bytes_total": total})

    result = convert_hf_to_gguf(
        request["folder"],
        request["output"],
        out_type=request.get("out_type") or "F16",
        metadata=request.get("metadata") or {},
        tensor_transform=transform,
        progress=progress,
    )
    emit({"event": "converted", "bytes_written": result.bytes_written, "tensor_count": result.tensor_count})


def fetch(request: dict[str, Any], emit: _Emitter) -> None:
    """Stage FETCHING: download (hub) and hash a Hugging Face source, reporting the bytes hashed."""
    import dataclasses
    import pathlib

    from quantledger.hf.hub import HubRef
    from quantledger.hf.pipeline import HfSource, materialize

    if request.get("repo_id"):
        source = HfSource(kind="hf_hub", hub=HubRef(request["repo_id"], request.get("revision") or "main"))
    else:
        source = HfSource(kind="hf_folder", folder=pathlib.Path(request["folder"]))
    last = [0]

    def progress(done: int, total: int) -> None:
        if done == total or done - last[0] >= max(total // 200, 1):
            last[0] = done
            emit({"event": "fetch_progress", "bytes_done": done, "bytes_total": total})

    materialized = materialize(source, progress)
    emit(
        {
            "event": "materialized",
            "folder": str(materialized.folder),
            "commit": materialized.commit,
            "root_digest": materialized.manifest.root_digest,
            "files": [dataclasses.asdict(f) for f in materialized.manifest.files],
        }
    )


def convert_with_llama_cpp(request: dict[str, Any], emit: _Emitter) -> None:
    """Stage CONVERTING through llama.cpp's own converter (an architecture the built-in one lacks)."""
    import pathlib
    import subprocess

    from quantledger.convert.fallback import convert_command, write_metadata_file
    from quantledger.errors import ConversionFailed

    output = pathlib.Path(request["output"])
    metadata_file = output.with_name(output.name + ".metadata.json")
    write_metadata_file(metadata_file, request.get("metadata") or {})
    command = convert_command(
        request["fallback_python"],
        pathlib.Path(request["folder"]),
        output,
        request.get("out_type") or "F16",
        metadata_file,
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent)
    finally:
        metadata_file.unlink(missing_ok=True)
    if done.returncode != 0 or not output.is_file():
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-3:])
        raise ConversionFailed(f"llama.cpp's converter failed (exit {done.returncode}): {tail}")
    emit({"event": "converted", "bytes_written": output.stat().st_size, "tensor_count": 0})


def _eval_text(request: dict[str, Any]) -> tuple[str, str]:
    """The evaluation text of a causal model and its label (name and digest prefix)."""
    from quantledger.quality.evaluate import data_label, default_eval_text

    text, name = default_eval_text(), "quantledger-eval-text"
    if request.get("eval_text_path"):
        with open(request["eval_text_path"], encoding="utf-8") as handle:
            text, name = handle.read(), os.path.basename(request["eval_text_path"])
    return text, data_label(name, text)


def _progress_in(emit: _Emitter, unit: str) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        emit({"event": "eval_progress", "done": done, "total": total, "unit": unit})

    return progress


def reference(request: dict[str, Any], emit: _Emitter) -> None:
    """The unquantized causal model reads chunks [start, stop) of the evaluation text into the folder
    ``output``, kept for every output's evaluation (quality/reference.py); the first call (start 0) cuts
    the text into chunks. ``eval_progress`` in tokens, then ``reference`` with the chunks read and in all."""
    from quantledger.quality.evaluate import begin_reference, read_reference
    from quantledger.quality.reference import SUMMARY, ReferenceLogits

    folder, start = request["output"], int(request.get("start") or 0)
    if not os.path.exists(os.path.join(folder, SUMMARY)):
        text, label = _eval_text(request)
        begin_reference(request["reference"], text, folder, eval_set=label)
    kept = ReferenceLogits.load(folder)
    n_chunks = kept.n_chunks
    emit({"event": "reference_chunks", "chunks": n_chunks, "tokens": n_chunks * kept.n_ctx, "n_ctx": kept.n_ctx})
    stop = min(int(request.get("stop") or n_chunks), n_chunks)
    read_reference(
        request["reference"], folder, start, stop, threads=int(request.get("threads") or 0),
        progress=_progress_in(emit, "tokens"),
    )  # fmt: skip
    emit({"event": "reference", "read": stop, "chunks": n_chunks, "n_ctx": kept.n_ctx})


def evaluate(request: dict[str, Any], emit: _Emitter) -> None:
    """Measure an output against its unquantized reference (stage EVALUATING), or, given
    ``reference_logits`` (the folder of the reference's read), on chunks [start, stop) of it merged with
    what ``state`` kept of the chunks before; ``eval_progress`` events (done, total, unit: "tokens",
    "texts" or "pairs") follow the work. A reranker's reference scores are read from ``reference_scores``
    when an earlier output's worker kept them there, and kept there otherwise."""
    import dataclasses

    from quantledger.quality.evaluate import (
        data_label,
        default_embedding_set,
        evaluate_causal,
        evaluate_embedding,
        evaluate_more,
        is_embedding_model,
    )
    from quantledger.quality.rerank import default_rank_set, evaluate_reranker, is_reranker_model, rank_set_text

    reference, quantized = request["reference"], request["quantized"]
    threads = int(request.get("threads") or 0)

    if is_reranker_model(reference):  # before embedders: a reranker is a BERT too
        report = evaluate_reranker(
            reference, quantized, default_rank_set(), threads=threads,
            eval_set=data_label("quantledger-rank-set", rank_set_text()), progress=_progress_in(emit, "pairs"),
            reference_scores=request.get("reference_scores") or None,
        )  # fmt: skip
    elif is_embedding_model(reference):
        sentences, queries = default_embedding_set()
        report = evaluate_embedding(
            reference, quantized, sentences, queries, threads=threads,
            eval_set=data_label("quantledger-embedding-set", json.dumps([sentences, queries])),
            progress=_progress_in(emit, "texts"),
        )  # fmt: skip
    elif request.get("reference_logits"):  # chunks [start, stop) against the kept reference, merged
        report, measured = evaluate_more(
            quantized, request["reference_logits"], int(request["start"]), int(request["stop"]), request["state"],
            threads=threads, progress=_progress_in(emit, "tokens"),
        )  # fmt: skip
        emit({"event": "measured", "measured": measured})
    else:
        text, label = _eval_text(request)
        report = evaluate_causal(
            reference, quantized, text, threads=threads, eval_set=label, progress=_progress_in(emit, "tokens")
        )
    emit({"event": "quality", **dataclasses.asdict(report)})


def hf_merge(request: dict[str, Any], emit: _Emitter) -> None:
    """A Hugging Face folder with a LoRA merged, for the job's Hugging Face formats (hf_export/export.py)."""
    import pathlib

    from quantledger.hf_export.export import merge_lora

    merge_lora(pathlib.Path(request["folder"]), request["lora_dir"], pathlib.Path(request["output"]), emit)
    emit({"event": "merged"})


def hf_export(request: dict[str, Any], emit: _Emitter) -> None:
    """One Hugging Face format of a folder, written to the new folder ``output`` (hf_export/export.py)."""
    import pathlib

    from quantledger.hf_export.export import export_folder
    from quantledger.hf_export.formats import lookup_format

    written = export_folder(
        pathlib.Path(request["folder"]),
        lookup_format(request["format"]),
        pathlib.Path(request["output"]),
        threads=int(request.get("threads") or 0),
    )
    emit({"event": "exported", **written})


def score_pairs(request: dict[str, Any], emit: _Emitter) -> None:
    """A reranker's llama.cpp score of every (query, passage) pair of ``pairs`` (quality/rerank.py):
    ``eval_progress`` in pairs, then one ``scores`` event with them in order."""
    from quantledger.quality.rerank import score_pairs as score

    pairs = [(str(query), str(passage)) for query, passage in request["pairs"]]
    done = 0

    def scored(count: int) -> None:
        nonlocal done
        done += count
        emit({"event": "eval_progress", "done": done, "total": len(pairs), "unit": "pairs"})

    scores = score(request["model"], pairs, threads=int(request.get("threads") or 0), scored=scored)
    emit({"event": "scores", "scores": scores.tolist()})


def calibrate(request: dict[str, Any], emit: _Emitter) -> None:
    """Compute an importance matrix (stage CALIBRATING): ``calibrate_progress`` events (chunks done,
    total) follow the work, then one ``imatrix`` event naming the file written."""
    import hashlib

    from quantledger.quantize.calibrate import (
        calibration_label,
        compute_imatrix,
        default_calibration_text,
        save_imatrix,
    )

    text, name = default_calibration_text(), "quantledger-calibration"
    if request.get("calibration_path"):
        with open(request["calibration_path"], encoding="utf-8") as handle:
            text, name = handle.read(), os.path.basename(request["calibration_path"])

    def progress(done: int, total: int) -> None:
        emit({"event": "calibrate_progress", "done": done, "total": total, "unit": "chunks"})

    collected = compute_imatrix(
        request["model"],
        text,
        n_ctx=int(request.get("n_ctx") or 512),
        chunks=int(request.get("chunks") or 0),
        threads=int(request.get("threads") or 0),
        dataset=calibration_label(name, text),
        process_output=bool(request.get("process_output")),
        progress=progress,
    )
    output = request["output"]
    save_imatrix(collected, output, request.get("output_format") or "gguf")
    with open(output, "rb") as binary:
        digest = hashlib.file_digest(binary, "sha256").hexdigest()
    emit(
        {
            "event": "imatrix",
            "path": output,
            "sha256": digest,
            "size_bytes": os.path.getsize(output),
            "entries": len(collected.sums),
            "chunks": collected.chunks,
            "chunk_size": collected.chunk_size,
            "tokens": collected.tokens,
            "dataset": collected.dataset,
            "calibration_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description="quantledger quantization worker")
    args.add_argument("--events-fd", type=int, required=True)
    parsed = args.parse_args(argv)
    _die_with_parent()
    request = json.load(sys.stdin)
    with os.fdopen(parsed.events_fd, "w", buffering=1) as stream:
        emit = _Emitter(stream)
        if "probe_ftypes" in request:
            probe([int(f) for f in request["probe_ftypes"]], emit)
            return 0
        mode = request.get("mode", "quantize")
        modes = {
            "convert": convert,
            "evaluate": evaluate,
            "fetch": fetch,
            "calibrate": calibrate,
            "reference": reference,
            "score_pairs": score_pairs,
            "hf_merge": hf_merge,
            "hf_export": hf_export,
        }
        if mode in modes:
            try:
                modes[mode](request, emit)
            except QuantledgerError as exc:  # typed: the parent re-raises it with its reason
                emit({"event": "error", "reason": exc.reason, "message": exc.message})
                return 4
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise
                emit(disk_full_event(request.get("output") or request.get("folder") or ".", str(exc)))
                return 4
            return 0
        rc = 0
        for index, one in enumerate(request.get("runs") or [request]):
            emit({"event": "run", "index": index})
            rc = run(one, emit)
            if rc != 0:
                if not one.get("dry_run") and disk_is_full(one["output"]):
                    # llama.cpp says only "basic_ios::clear: iostream error" when its write fails
                    emit(disk_full_event(one["output"], "llama.cpp could not write the output"))
                    return 4
                break
    return 0 if rc == 0 else 3


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Less free space than this on the output's file system after a failed write means the disk filled up.
DISK_FULL_BYTES = 16 << 20


def disk_is_full(path: str) -> bool:
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < DISK_FULL_BYTES


def disk_full_event(path: str, detail: str) -> dict[str, Any]:
    directory = os.path.dirname(os.path.abspath(path))
    return {
        "event": "error",
        "reason": "INSUFFICIENT_DISK",
        "message": f"the disk holding {directory} is full ({detail}); free space and resubmit",
    }


if __name__ == "__main__":
    sys.exit(main())
