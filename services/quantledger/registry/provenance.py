"""The provenance JSON written next to every output: an in-toto Statement with an SLSA v1 style predicate.

Its SHA-256 is what the on-chain record calls the provenance digest, so anyone holding the file and this
JSON can check both against the chain. The JSON is canonical (sorted keys, no spaces) so the digest is
reproducible from the parsed document.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import time
from typing import Any

from quantledger.jobs.model import Artifact, Job, SourceInfo
from quantledger.llama_build import llama_cpp_features
from registry_client.atomic_files import write_atomic

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://quantledger.dev/quantize/v1"
BUILDER_ID = "https://quantledger.dev/quantize-service"
SUFFIX = ".provenance.json"


def tool_version() -> str:
    """The quantizer: llama-cpp-python's version names the llama.cpp build it bundles."""
    from importlib.metadata import version

    return f"llama-cpp-python {version('llama-cpp-python')}"


def builder_versions() -> dict[str, str]:
    """The releases that made an output: the quantizer (its release pins llama.cpp's source; which build
    flags do and do not change the bytes is in docs/REPRODUCE.md), llama.cpp as the library reports itself,
    and quantledger (its converter's version is the source's ``converter`` annotation)."""
    from importlib.metadata import version

    from quantledger.llama_build import llama_cpp_build

    return {"quantizer": tool_version(), "llamaCpp": llama_cpp_build(), "quantledger": version("quantledger")}


def _time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def _source_uri(info: SourceInfo) -> str:
    if info.repo_id:
        return f"https://huggingface.co/{info.repo_id}"
    return pathlib.Path(info.path).resolve().as_uri()


def _dependencies(job: Job, info: SourceInfo, imatrix_sha256: str, lora_sha256: str) -> list[dict[str, Any]]:
    source: dict[str, Any] = {"uri": _source_uri(info), "digest": {"sha256": info.root_digest}}
    annotations: dict[str, Any] = {"kind": info.kind, "architecture": info.architecture}
    if info.converter:  # a Hugging Face source: what converted it, and the general.name it was given
        annotations["converter"] = info.converter
        annotations["modelName"] = info.model_name
    if info.commit_sha:
        source["digest"]["gitCommit"] = info.commit_sha
        annotations["revision"] = info.revision or info.commit_sha
    source["annotations"] = annotations
    dependencies = [source]
    dependencies.extend(
        {"name": f.path, "digest": {"sha256": f.sha256}, "annotations": {"sizeBytes": f.size_bytes}}
        for f in info.manifest
    )
    if imatrix_sha256:
        imatrix: dict[str, Any] = {
            "name": f"imatrix:{pathlib.Path(job.imatrix_file).name}",
            "digest": {"sha256": imatrix_sha256},
        }
        computed = job.imatrix
        if computed is not None:  # computed by the job (imatrix_path "auto"): from which text, how
            # the build's CPU features change a computed matrix (not a quantization): bench/build_flags.py
            imatrix["annotations"] = {"computed": True, "dataset": computed.dataset, "chunks": computed.chunks,
                                      "chunkSize": computed.chunk_size,
                                      "buildFeatures": llama_cpp_features()}  # fmt: skip
            calibration = pathlib.Path(job.spec.options.calibration_path).name or "quantledger-calibration"
            dependencies.append(
                {"name": f"calibration:{calibration}", "digest": {"sha256": computed.calibration_sha256}}
            )
        dependencies.append(imatrix)
    if lora_sha256:
        lora = job.spec.options.lora_dir
        dependencies.append({"name": f"lora:{pathlib.Path(lora).name}", "digest": {"sha256": lora_sha256}})
    dependencies.append({"uri": "pkg:pypi/" + tool_version().replace(" ", "@")})
    return dependencies


def build_statement(
    job: Job, artifact: Artifact, info: SourceInfo, *, imatrix_sha256: str = "", lora_sha256: str = ""
) -> dict[str, Any]:
    """The in-toto Statement for one output of a finished job."""
    files = artifact.files or ()
    subjects = [{"name": pathlib.Path(f.path).name, "digest": {"sha256": f.sha256}} for f in files] or [
        {"name": pathlib.Path(artifact.path).name, "digest": {"sha256": artifact.sha256}}
    ]
    if artifact.folder:  # the folder by its root digest (the on-chain one), then each file by its path in it
        folder = pathlib.Path(artifact.path)
        inside = [(pathlib.Path(f.path).relative_to(folder).as_posix(), f.sha256) for f in files]
        subjects = [{"name": folder.name, "digest": {"sha256": artifact.sha256}}] + [
            {"name": f"{folder.name}/{name}", "digest": {"sha256": digest}} for name, digest in inside
        ]
    options = {k: v for k, v in dataclasses.asdict(job.spec.options).items() if v not in ("", 0, 0.0, False, ())}
    options.pop("output_dir", None)
    byproducts: list[dict[str, Any]] = []
    if artifact.quality is not None:
        quality = {k: v for k, v in dataclasses.asdict(artifact.quality).items() if v is not None}
        byproducts.append({"name": "quality-report", "annotations": quality})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": job.spec.source,
                    "quantType": artifact.quant_type,
                    "options": options,
                },
                "internalParameters": {
                    "fileType": artifact.file_type,
                    "bitsPerWeight": round(artifact.bits_per_weight, 6),
                    "originalSizeBytes": artifact.source_size_bytes,
                    "quantizedSizeBytes": artifact.total_size_bytes,
                    "fallbackTensorCount": artifact.fallback_tensor_count,
                },
                "resolvedDependencies": _dependencies(job, info, imatrix_sha256, lora_sha256),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": builder_versions()},
                "metadata": {
                    "invocationId": job.name,
                    "startedOn": _time(job.start_time),
                    "finishedOn": _time(job.end_time or time.time()),
                },
                "byproducts": byproducts,
            },
        },
    }


def canonical_bytes(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_provenance(output_path: str, statement: dict[str, Any]) -> tuple[str, str]:
    """Write ``<output>.provenance.json`` atomically; returns (path, SHA-256 of its bytes)."""
    data = canonical_bytes(statement)
    target = pathlib.Path(output_path + SUFFIX)
    write_atomic(target, data)
    return str(target), hashlib.sha256(data).hexdigest()
