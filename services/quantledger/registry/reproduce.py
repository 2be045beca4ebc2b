"""Independent reproduction of a recorded output (docs/REPRODUCE.md): the checks before any work, what the
job to repeat is, where two files first differ, and the signed note of a mismatch.

Order of the checks, cheapest and most telling first: the provenance JSON's SHA-256 against the record's
on-chain digest (PROVENANCE_MISMATCH), the installed quantizer against the recorded one
(TOOL_VERSION_MISMATCH unless allowed), then the source's digest, recomputed from the reproducer's own
copy, against the record's (SOURCE_MISMATCH), and the LoRA adapter's and importance matrix's against the
provenance's: all before a single tensor is quantized (a hub source, fetched by the job, is checked by the
job before its conversion). ``plan_reproduction`` does them and returns the job to run: an ordinary
quantization with a ``Reproduction`` link, run by the engine for ``registry reproduce``, ReproduceArtifact
and ``serve reproducer`` alike; ``conclude`` decides, at the job's REGISTERING stage, what it proved.
Hugging Face format folders are not reproduced: their bytes depend on torch and transformers releases,
which their provenance does not pin (FORMAT_NOT_APPLICABLE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import urllib.parse
from dataclasses import dataclass
from typing import Any

from quantledger.errors import (
    FormatNotApplicable,
    ProvenanceMismatch,
    SourceInvalid,
    SourceMismatch,
    SourceNotFound,
    ToolVersionMismatch,
)
from quantledger.gguf.reader import read_gguf_header
from quantledger.hf.manifest import FileDigest, build_manifest, root_digest
from quantledger.hf_export.formats import is_hf_format
from quantledger.jobs.model import Artifact, JobSpec, Options, Reproduction, ReproductionResult
from quantledger.registry.provenance import canonical_bytes, tool_version
from registry_client.bounded_json import JsonRefused, parse_bounded_json
from registry_client.records import Record

MAX_PROVENANCE_BYTES = 1 << 20  # a provenance JSON is a few KB; a SHA-256-named file bigger than this is not one


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
    imatrix_features: str = ""  # the CPU features of the build that computed the matrix
    converter: str = ""  # what converted a Hugging Face source
    model_name: str = ""  # the general.name its conversion was given


def read_provenance(path: str | pathlib.Path) -> bytes:
    """The bytes of the provenance JSON at ``path``, at most one more than MAX_PROVENANCE_BYTES (so that
    ``parse_provenance`` refuses a larger file without all of it being read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_PROVENANCE_BYTES + 1)
    except OSError as exc:
        raise SourceNotFound(f"{path}: the provenance JSON cannot be read: {exc}", path=str(path)) from exc


def parse_provenance(data: bytes, label: str = "the provenance") -> tuple[str, dict[str, Any]]:
    """The SHA-256 of a provenance JSON's bytes and its statement."""
    try:  # bounded in size and depth before parsing: a deep [[[[… would overflow the C stack (bounded_json)
        statement = parse_bounded_json(data, max_bytes=MAX_PROVENANCE_BYTES)
    except JsonRefused as exc:
        raise SourceInvalid(f"{label}: not a provenance JSON: {exc}", path=label) from exc
    if not isinstance(statement, dict) or "predicate" not in statement:
        raise SourceInvalid(f"{label}: not an in-toto provenance statement", path=label)
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
            imatrix_features=str(imatrix.get("annotations", {}).get("buildFeatures", "")) if imatrix else "",
            converter=str(source.get("annotations", {}).get("converter", "")),
            model_name=str(source.get("annotations", {}).get("modelName", "")),
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


def signed(note: dict[str, Any], account: Any) -> dict[str, Any]:
    """``note`` with an EIP-191 signature of its canonical JSON by ``account`` (eth_account LocalAccount)."""
    from eth_account.messages import encode_defunct

    message = canonical_bytes(note)
    signature = account.sign_message(encode_defunct(message)).signature.hex()
    return {"note": note, "signer": account.address, "signature": signature}


@dataclass(frozen=True)
class ReproductionInputs:
    """The reproducer's own copies, each resolved and allowed by the caller; None: the recorded path."""

    source: pathlib.Path | None = None
    lora: pathlib.Path | None = None
    imatrix: pathlib.Path | None = None
    any_version: bool = False
    report: bool = False
    original_path: str = ""  # the downloaded file, to say where different bytes differ
    output_dir: str = ""


def recorded_source(recorded: RecordedJob) -> str:
    """The source a job names for the recorded one: a hub repository at the recorded commit, or the path."""
    uri = urllib.parse.urlparse(recorded.source_uri)
    if recorded.source_kind == "hf_hub":
        commit = recorded.statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"].get(
            "gitCommit", ""
        )
        repo = uri.path.strip("/")
        return f"{repo}@{commit}" if commit else repo
    return urllib.parse.unquote(uri.path)


def plan_reproduction(
    provenance: bytes, records: list[Record], inputs: ReproductionInputs, allow: Any = None
) -> JobSpec:
    """The job that redoes the output a provenance JSON describes, after every check that needs no work.

    ``records`` are the chain's records of the file; ``allow(path, what)`` resolves a path the provenance
    names (the recorded source, LoRA, matrix) when no copy was given, refusing one outside the caller's
    roots (default: taken as is)."""
    provenance_sha, statement = parse_provenance(provenance)
    record = original_record(records, provenance_sha)
    recorded = recorded_job(statement)
    if is_hf_format(recorded.quant_type):
        raise FormatNotApplicable(
            f"{recorded.quant_type} folders are not reproduced: their bytes depend on the torch and transformers "
            "releases, which their provenance does not pin",
            quant_type=recorded.quant_type,
        )
    tool = check_tool_version(record, inputs.any_version)
    resolve = allow or (lambda path, _what: pathlib.Path(path))
    if inputs.source is None and recorded.source_kind == "hf_hub":
        source = recorded_source(recorded)  # fetched by the job, whose manifest is checked before conversion
    else:
        path = inputs.source or resolve(recorded_source(recorded), "source")
        if not path.exists():
            raise SourceNotFound(f"the source {path} is not here: give your copy of it", path=str(path))
        if not (path.is_dir() or path.is_file()):  # a provenance naming a device or a FIFO hashes forever
            raise SourceInvalid(f"the source {path} is neither a folder nor a regular file", path=str(path))
        check_digest("the source", path, source_digest(path), record.source_digest)  # before any work
        source = str(path)
    options = recorded_options(recorded.options)
    if recorded.lora_sha256:
        from quantledger.convert.lora import load_lora

        lora = inputs.lora or resolve(options.get("lora_dir", ""), "lora_dir")
        check_digest("the LoRA adapter", lora, load_lora(lora).sha256, recorded.lora_sha256)
        options["lora_dir"] = str(lora)
    check_build(recorded, inputs)
    if recorded.imatrix_sha256 and (inputs.imatrix is not None or not recorded.imatrix_computed):
        from quantledger.client_files import open_resolved

        # the client's matrix, or a copy of the one the job computed (then used instead of computing again)
        imatrix = inputs.imatrix or resolve(options.get("imatrix_path", ""), "imatrix")
        with open_resolved(imatrix, what="imatrix") as handle:  # a regular file: never a FIFO read forever
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        check_digest("the importance matrix", imatrix, digest, recorded.imatrix_sha256)
        options["imatrix_path"] = str(imatrix)
        for calibration in ("calibration_path", "calibration_chunks", "calibration_ctx"):
            options.pop(calibration, None)
    if recorded.source_kind == "hf_folder" and not options.get("model_name"):
        # general.name is part of the bytes, and a local folder's is its name: the recorded one (older
        # provenances say it only by the folder's path)
        options["model_name"] = recorded.model_name or pathlib.PurePosixPath(recorded_source(recorded)).name
    options.update(overwrite=True, skip_quality=True, output_dir=inputs.output_dir)
    return JobSpec(
        source=source,
        quant_types=(recorded.quant_type,),
        options=Options(**options),
        reproduction=Reproduction(
            file_sha256=record.file_sha256,
            provenance_sha256=provenance_sha,
            original_attester=record.attester,
            source_digest=record.source_digest,
            recorded_tool=record.tool_version,
            any_version=inputs.any_version and tool != record.tool_version,
            report=inputs.report,
            original_path=inputs.original_path,
        ),
    )


def check_build(recorded: RecordedJob, inputs: ReproductionInputs) -> None:
    """Refuse (TOOL_VERSION_MISMATCH unless ``any_version``) what would make other bytes by construction:
    another built-in converter release, or an importance matrix to compute again on a build with other CPU
    features than the one that computed it (bench/build_flags.py: such builds compute other matrices, while
    their quantizations of the same inputs are identical); giving a copy of the recorded matrix avoids it."""
    from quantledger.convert.converter import CONVERTER_VERSION
    from quantledger.llama_build import llama_cpp_features

    if inputs.any_version:
        return
    if recorded.converter.startswith("quantledger-convert") and recorded.converter != CONVERTER_VERSION:
        raise ToolVersionMismatch(
            f"the source was converted by {recorded.converter}, this installation has {CONVERTER_VERSION}: install "
            "that quantledger release, or pass --any-version",
            recorded=recorded.converter,
            installed=CONVERTER_VERSION,
        )
    features = llama_cpp_features()
    if recorded.imatrix_computed and inputs.imatrix is None and recorded.imatrix_features not in ("", features):
        raise ToolVersionMismatch(
            f"the importance matrix was computed by a llama.cpp build with CPU features {recorded.imatrix_features}; "
            f"this build has {features}, and computes other matrices: give a copy of the matrix (SHA-256 "
            f"{recorded.imatrix_sha256}) with --imatrix, use a build with those features, or pass --any-version",
            recorded=recorded.imatrix_features,
            installed=features,
        )


def _tupled(value: Any) -> Any:
    """JSON lists back to the tuples the job's options hold."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(name: str, value: Any, default: Any) -> bool:
    """Whether a recorded option has the kind of value its field holds (JSON lists read as tuples)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return _is_int(value) or isinstance(value, float)
    if isinstance(default, str):
        return isinstance(value, str)
    if not isinstance(value, tuple):
        return False
    if name == "tensor_type_overrides":
        return all(isinstance(v, tuple) and len(v) == 2 and all(isinstance(p, str) for p in v) for v in value)
    if name == "prune_layers":
        return all(_is_int(v) for v in value)
    return all(isinstance(v, str) for v in value)


def recorded_options(recorded: dict[str, Any]) -> dict[str, Any]:
    """The job options a provenance records, each of its field's kind (SOURCE_INVALID otherwise: a record
    is a stranger's, and an option of another kind would fail the job, or the reproducer, untyped); keys
    this release does not know are left out, as a job never had them."""
    fields = {f.name: f.default for f in dataclasses.fields(Options)}
    options = {}
    for name, raw in recorded.items():
        if name not in fields:
            continue
        value = _tupled(raw)
        if not _fits(name, value, fields[name]):
            raise SourceInvalid(f"the provenance's option {name} is not what the option holds", field=name)
        options[name] = float(value) if isinstance(fields[name], float) else value
    return options


def matches(reproduction: Reproduction, artifact: Artifact) -> bool:
    """Whether the job made the recorded bytes (a split output: one of its shards)."""
    return reproduction.file_sha256 in {artifact.sha256, *(f.sha256 for f in artifact.files)}


def reproduced_from(reproduction: Reproduction) -> dict[str, Any]:
    """What a reproduction's provenance adds: the record it redid, and with which quantizer."""
    return {
        "fileSha256": reproduction.file_sha256,
        "attester": reproduction.original_attester,
        "provenanceSha256": reproduction.provenance_sha256,
        "recordedTool": reproduction.recorded_tool,
        "tool": tool_version(),
        "anyVersion": reproduction.any_version,
    }


def conclude(reproduction: Reproduction, artifact: Artifact, account: Any) -> ReproductionResult:
    """The verdict of a finished reproduction: REPRODUCED, or DIFFERENT with where the bytes first differ
    (when the original file is at hand) and, asked for, a mismatch note signed by ``account`` beside it."""
    if matches(reproduction, artifact):
        return ReproductionResult("REPRODUCED", reproduction.file_sha256)
    original = pathlib.Path(reproduction.original_path) if reproduction.original_path else None
    difference = (
        first_difference(pathlib.Path(artifact.path), original) if original is not None and original.is_file() else {}
    )
    report = ""
    if reproduction.report and account is not None:
        from registry_client.atomic_files import write_atomic

        note = {
            "type": "quantledger.dev/reproduction-mismatch/v1",
            "fileSha256": reproduction.file_sha256,
            "reproducedSha256": artifact.sha256,
            "originalAttester": reproduction.original_attester,
            "provenanceSha256": reproduction.provenance_sha256,
            "quantType": artifact.quant_type,
            "recordedTool": reproduction.recorded_tool,
            "reproducerTool": tool_version(),
            "firstDifference": difference,
        }
        report = artifact.path + ".mismatch.json"  # beside the reproduced file
        write_atomic(pathlib.Path(report), canonical_bytes(signed(note, account)))
    return ReproductionResult("DIFFERENT", artifact.sha256, difference, report)
