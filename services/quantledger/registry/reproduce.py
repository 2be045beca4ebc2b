"""Independent reproduction of a recorded output (docs/REPRODUCE.md): the checks before any work, what the
job to repeat is, where two files first differ, and the signed note of a mismatch.

Order of the checks, cheapest and most telling first: the provenance JSON's SHA-256 against the record's
on-chain digest (PROVENANCE_MISMATCH), the installed quantizer against the recorded one
(TOOL_VERSION_MISMATCH unless allowed), then the source's digest, recomputed from the reproducer's own
copy, against the record's (SOURCE_MISMATCH), and the LoRA adapter's and importance matrix's against the
provenance's: all before a single tensor is quantized. The caller (cli/reproduce_command.py) runs the job.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from quantledger.errors import ProvenanceMismatch, SourceInvalid, SourceMismatch, ToolVersionMismatch
from quantledger.gguf.reader import read_gguf_header
from quantledger.hf.manifest import FileDigest, build_manifest, root_digest
from quantledger.registry.provenance import canonical_bytes, tool_version
from registry_client.records import Record


@dataclass(frozen=True)
class RecordedJob:
    """What the provenance says was done, as a reproducer repeats it."""

    source_uri: str
    source_digest: str
    source_kind: str  # "gguf", "hf_folder" or "hf_hub"
    quant_type: str
    options: dict[str, Any]
    imatrix_sha256: str
    imatrix_computed: bool
    lora_sha256: str
    statement: dict[str, Any]


def read_provenance(path: pathlib.Path) -> tuple[str, dict[str, Any]]:
    """The provenance JSON at ``path``: the SHA-256 of its bytes and the statement."""
    try:
        data = path.read_bytes()
        statement = json.loads(data)
    except (OSError, ValueError) as exc:
        raise SourceInvalid(f"{path}: not a readable provenance JSON: {exc}", path=str(path)) from exc
    if not isinstance(statement, dict) or "predicate" not in statement:
        raise SourceInvalid(f"{path}: not an in-toto provenance statement", path=str(path))
    return hashlib.sha256(data).hexdigest(), statement


def original_record(records: list[Record], provenance_sha256: str) -> Record:
    """The non-revoked record of the file whose provenance digest is ``provenance_sha256``."""
    for record in records:
        if not record.revoked_at and record.provenance_sha256 == provenance_sha256:
            return record
    named = sorted({r.provenance_sha256 for r in records if not r.revoked_at})
    raise ProvenanceMismatch(
        f"no valid record of this file names a provenance with SHA-256 {provenance_sha256}; the records name "
        f"{', '.join(named) or 'none'}: this provenance JSON was changed, or belongs to another file",
        provenance_sha256=provenance_sha256,
    )


def recorded_job(statement: dict[str, Any]) -> RecordedJob:
    """The job a provenance statement describes (registry/provenance.py ``build_statement``)."""
    try:
        build = statement["predicate"]["buildDefinition"]
        external = build["externalParameters"]
        dependencies = build["resolvedDependencies"]
        source = dependencies[0]
        imatrix = next((d for d in dependencies if str(d.get("name", "")).startswith("imatrix:")), None)
        lora = next((d for d in dependencies if str(d.get("name", "")).startswith("lora:")), None)
        return RecordedJob(
            source_uri=str(source.get("uri", "")),
            source_digest=str(source["digest"]["sha256"]),
            source_kind=str(source.get("annotations", {}).get("kind", "")),
            quant_type=str(external["quantType"]),
            options=dict(external.get("options") or {}),
            imatrix_sha256=str(imatrix["digest"]["sha256"]) if imatrix else "",
            imatrix_computed=bool(imatrix and imatrix.get("annotations", {}).get("computed")),
            lora_sha256=str(lora["digest"]["sha256"]) if lora else "",
            statement=statement,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SourceInvalid(f"the provenance statement lacks what reproduction needs: {exc!r}") from exc


def check_tool_version(record: Record, any_version: bool) -> str:
    """The installed quantizer, refused when it is not the record's unless ``any_version``."""
    installed = tool_version()
    if installed != record.tool_version and not any_version:
        raise ToolVersionMismatch(
            f"the record was made with {record.tool_version}, this installation has {installed}: install that "
            "release, or pass --any-version (then recorded in the reproduction's provenance)",
            recorded=record.tool_version,
            installed=installed,
        )
    return installed


def source_digest(path: pathlib.Path) -> str:
    """The digest a job records for a source at ``path``: a Hugging Face folder's manifest root digest over
    the files a conversion reads, or a GGUF file's one-file manifest."""
    from quantledger.hf.pipeline import needed_files

    if path.is_dir() and (path / "config.json").is_file():
        return build_manifest(path, needed_files(path)).root_digest
    manifest = build_manifest(path.parent, [path.name])
    return root_digest([FileDigest(path.name, manifest.files[0].size_bytes, manifest.files[0].sha256)])


def check_digest(what: str, path: pathlib.Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise SourceMismatch(
            f"{what} {path} has digest {actual}; the record was made from {expected}: nothing was quantized",
            expected=expected,
            actual=actual,
        )


def first_difference(ours: pathlib.Path, theirs: pathlib.Path) -> dict[str, Any]:
    """Where two GGUF files first differ: the header (key-value section or tensor table), or the first
    tensor whose bytes differ, with its name and ggml type."""
    a, b = read_gguf_header(ours), read_gguf_header(theirs)
    if a.metadata != b.metadata:
        keys = sorted(k for k in set(a.metadata) | set(b.metadata) if a.metadata.get(k) != b.metadata.get(k))
        return {"where": "metadata", "keys": keys[:10]}
    table_a = [(t.name, t.ggml_type, t.shape) for t in a.tensors]
    table_b = [(t.name, t.ggml_type, t.shape) for t in b.tensors]
    if table_a != table_b:
        index = next((i for i, (x, y) in enumerate(zip(table_a, table_b, strict=False)) if x != y), len(table_a))
        return {"where": "tensor table", "index": index}
    with open(ours, "rb") as fa, open(theirs, "rb") as fb:
        for ta, tb in zip(a.tensors, b.tensors, strict=True):
            fa.seek(ta.offset)  # absolute offsets
            fb.seek(tb.offset)
            if fa.read(ta.n_bytes) != fb.read(tb.n_bytes):
                return {"where": "tensor", "tensor": ta.name, "type": ta.type_name}
    return {"where": "padding"}


def mismatch_note(record: Record, reproduced_sha256: str, difference: dict[str, Any], tool: str) -> dict[str, Any]:
    """The body of a signed mismatch note: what was reproduced, from which record, and where it differs."""
    return {
        "type": "quantledger.dev/reproduction-mismatch/v1",
        "fileSha256": record.file_sha256,
        "reproducedSha256": reproduced_sha256,
        "originalAttester": record.attester,
        "provenanceSha256": record.provenance_sha256,
        "quantType": record.quant_type,
        "recordedTool": record.tool_version,
        "reproducerTool": tool,
        "firstDifference": difference,
    }


def signed(note: dict[str, Any], account: Any) -> dict[str, Any]:
    """``note`` with an EIP-191 signature of its canonical JSON by ``account`` (eth_account LocalAccount)."""
    from eth_account.messages import encode_defunct

    message = canonical_bytes(note)
    signature = account.sign_message(encode_defunct(message)).signature.hex()
    return {"note": note, "signer": account.address, "signature": signature}
