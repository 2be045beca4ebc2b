"""The checks a reproduction makes before any work (registry/reproduce.py ``plan_reproduction``), on
provenance statements shaped as the service writes them and records as the chain returns them."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
from conftest import Models

from quantledger.errors import FormatNotApplicable, ToolVersionMismatch
from quantledger.hashing import sha256_file
from quantledger.llama_build import llama_cpp_features
from quantledger.registry.provenance import canonical_bytes, tool_version
from quantledger.registry.reproduce import ReproductionInputs, plan_reproduction, source_digest
from registry_client.records import Record


def statement(source: pathlib.Path, quant_type: str, imatrix: dict[str, object] | None) -> dict[str, object]:
    dependencies: list[dict[str, object]] = [
        {"uri": source.resolve().as_uri(), "digest": {"sha256": source_digest(source)}, "annotations": {"kind": "gguf"}}
    ]
    if imatrix is not None:
        dependencies.append(imatrix)
    options = {"imatrix_path": "auto", "calibration_chunks": 2} if imatrix else {}
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "out.gguf", "digest": {"sha256": "ab" * 32}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "externalParameters": {"source": str(source), "quantType": quant_type, "options": options},
                "resolvedDependencies": dependencies,
            }
        },
    }


def record_of(provenance: bytes, source: pathlib.Path, quant_type: str) -> Record:
    return Record(
        file_sha256="ab" * 32, attester="0x" + "11" * 20, source_digest=source_digest(source), source_revision="",
        provenance_sha256=hashlib.sha256(provenance).hexdigest(), quant_type=quant_type, tool_version=tool_version(),
        file_type=2, flags=1, original_size=10, quantized_size=5, attested_at=1, revoked_at=0,
    )  # fmt: skip


def computed_matrix(digest: str, features: str) -> dict[str, object]:
    annotations = {"computed": True, "dataset": "quantledger-calibration", "chunks": 2, "buildFeatures": features}
    return {"name": "imatrix:computed.gguf", "digest": {"sha256": digest}, "annotations": annotations}


def test_a_matrix_computed_by_a_build_with_other_cpu_features_is_refused_unless_a_copy_is_given(
    models: Models, tmp_path: pathlib.Path
) -> None:
    matrix = tmp_path / "computed.gguf"
    matrix.write_bytes(b"GGUF matrix bytes of the original")
    other = "SSE3 LLAMAFILE OPENMP REPACK"  # a build without AVX: computes other matrices
    assert other != llama_cpp_features()
    provenance = canonical_bytes(statement(models.f16, "Q4_K_M", computed_matrix(sha256_file(matrix), other)))
    records = [record_of(provenance, models.f16, "Q4_K_M")]
    with pytest.raises(ToolVersionMismatch) as refused:
        plan_reproduction(provenance, records, ReproductionInputs())
    assert refused.value.metadata["recorded"] == other and "--imatrix" in refused.value.message

    spec = plan_reproduction(provenance, records, ReproductionInputs(imatrix=matrix))
    assert spec.options.imatrix_path == str(matrix) and spec.options.calibration_chunks == 0
    assert spec.reproduction is not None and spec.reproduction.file_sha256 == "ab" * 32
    accepted = plan_reproduction(provenance, records, ReproductionInputs(any_version=True))
    assert accepted.options.imatrix_path == "auto"  # computed again, on the user's word


def test_the_same_build_computes_the_matrix_again(models: Models) -> None:
    provenance = canonical_bytes(statement(models.f16, "Q4_K_M", computed_matrix("cd" * 32, llama_cpp_features())))
    spec = plan_reproduction(provenance, [record_of(provenance, models.f16, "Q4_K_M")], ReproductionInputs())
    assert spec.options.imatrix_path == "auto" and spec.options.calibration_chunks == 2
    assert spec.quant_types == ("Q4_K_M",) and spec.options.skip_quality


def test_hugging_face_format_folders_are_not_reproduced(models: Models) -> None:
    provenance = canonical_bytes(statement(models.f16, "HF_BNB_NF4", None))
    with pytest.raises(FormatNotApplicable):
        plan_reproduction(provenance, [record_of(provenance, models.f16, "HF_BNB_NF4")], ReproductionInputs())


def test_the_provenance_must_be_the_records_byte_for_byte(models: Models) -> None:
    from quantledger.errors import ProvenanceMismatch

    provenance = canonical_bytes(statement(models.f16, "Q8_0", None))
    records = [record_of(provenance, models.f16, "Q8_0")]
    reformatted = json.dumps(json.loads(provenance), indent=1).encode()  # the same statement, other bytes
    with pytest.raises(ProvenanceMismatch):
        plan_reproduction(reformatted, records, ReproductionInputs())


def test_paths_a_provenance_names_are_read_only_under_the_reproducers_roots(
    models: Models, tmp_path: pathlib.Path
) -> None:
    """The reproducer service reads what a stranger's provenance names: a source outside its roots is
    PATH_NOT_ALLOWED, and one that is a FIFO (it would be hashed forever) SOURCE_INVALID, before reading."""
    import os

    from quantledger.client_files import allowed_path
    from quantledger.errors import PathNotAllowed, SourceInvalid

    provenance = canonical_bytes(statement(models.f16, "Q8_0", None))
    records = [record_of(provenance, models.f16, "Q8_0")]
    with pytest.raises(PathNotAllowed):
        plan_reproduction(
            provenance, records, ReproductionInputs(), lambda raw, what: allowed_path(str(raw), [tmp_path], what)
        )
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(SourceInvalid):
        plan_reproduction(provenance, records, ReproductionInputs(source=fifo))


def test_another_quantizer_release_is_refused_unless_accepted_and_then_recorded(models: Models) -> None:
    import dataclasses

    from quantledger.registry.reproduce import reproduced_from

    provenance = canonical_bytes(statement(models.f16, "Q8_0", None))
    older = dataclasses.replace(record_of(provenance, models.f16, "Q8_0"), tool_version="llama-cpp-python 0.2.90")
    with pytest.raises(ToolVersionMismatch) as refused:
        plan_reproduction(provenance, [older], ReproductionInputs())
    assert refused.value.metadata == {"recorded": "llama-cpp-python 0.2.90", "installed": tool_version()}
    spec = plan_reproduction(provenance, [older], ReproductionInputs(any_version=True))
    assert spec.reproduction is not None and spec.reproduction.any_version
    link = reproduced_from(spec.reproduction)  # what the reproduction's provenance says of it
    assert link["anyVersion"] is True and link["recordedTool"] == "llama-cpp-python 0.2.90"
    same = plan_reproduction(
        provenance, [record_of(provenance, models.f16, "Q8_0")], ReproductionInputs(any_version=True)
    )
    assert same.reproduction is not None and not same.reproduction.any_version  # nothing was accepted


def test_the_reproducers_provenance_index_finds_by_digest_and_never_opens_a_fifo(tmp_path: pathlib.Path) -> None:
    """A provenance folder is shared: a FIFO named like a provenance JSON would block a read forever."""
    import os

    from quantledger.jobs.reproducer import ProvenanceIndex

    folder = tmp_path / "published"
    (folder / "deep").mkdir(parents=True)
    os.mkfifo(folder / "a-trap.provenance.json")
    wanted = folder / "deep" / "model-Q8_0.gguf.provenance.json"
    wanted.write_bytes(b'{"predicate": {}}')
    (folder / "other.provenance.json").write_bytes(b'{"predicate": {"x": 1}}')
    index = ProvenanceIndex((folder,))
    assert index.find(hashlib.sha256(wanted.read_bytes()).hexdigest()) == wanted
    assert index.find("00" * 32) is None


def test_a_hostile_provenance_json_is_source_invalid_before_it_is_parsed(models: Models) -> None:
    """A client sends the provenance (ReproduceArtifact.provenance_json): too deep (the scanner's recursion
    could overflow the C stack), too large, or not an in-toto statement, each is a typed refusal."""
    from quantledger.errors import SourceInvalid

    records = [record_of(b"{}", models.f16, "Q8_0")]
    for hostile in (b"[" * 400_000 + b"]" * 400_000, b" " * (1 << 20) + b"{}", b"[1, 2]", b"{not json"):
        with pytest.raises(SourceInvalid):
            plan_reproduction(hostile, records, ReproductionInputs())


def test_recorded_options_of_another_kind_and_a_fifo_matrix_are_source_invalid(
    models: Models, tmp_path: pathlib.Path
) -> None:
    """What a stranger's provenance says is checked before it becomes a job: an option of the wrong kind
    (it would fail the job, or the reproducer, with an untyped error) and a matrix that is a FIFO (its
    hash would never end) are refused as SOURCE_INVALID."""
    import os

    from quantledger.errors import SourceInvalid

    for name, value in (
        ("threads", "two"),
        ("pure", 1),
        ("tensor_type_overrides", [["ffn"]]),
        ("prune_layers", [True]),
    ):
        document = statement(models.f16, "Q8_0", None)
        document["predicate"]["buildDefinition"]["externalParameters"]["options"] = {name: value}  # type: ignore[index]
        provenance = canonical_bytes(document)
        with pytest.raises(SourceInvalid) as refused:
            plan_reproduction(provenance, [record_of(provenance, models.f16, "Q8_0")], ReproductionInputs())
        assert refused.value.metadata["field"] == name
    good = statement(models.f16, "Q8_0", None)
    options = {"threads": 2, "max_kl_divergence": 1, "tensor_type_overrides": [["ffn", "Q8_0"]], "future": "x"}
    good["predicate"]["buildDefinition"]["externalParameters"]["options"] = options  # type: ignore[index]
    provenance = canonical_bytes(good)
    spec = plan_reproduction(provenance, [record_of(provenance, models.f16, "Q8_0")], ReproductionInputs())
    assert spec.options.threads == 2 and spec.options.max_kl_divergence == 1.0
    assert spec.options.tensor_type_overrides == (("ffn", "Q8_0"),)

    fifo = tmp_path / "matrix.gguf"
    os.mkfifo(fifo)
    matrix = {"name": "imatrix:matrix.gguf", "digest": {"sha256": "cd" * 32}}
    document = statement(models.f16, "Q4_K_M", matrix)
    document["predicate"]["buildDefinition"]["externalParameters"]["options"] = {"imatrix_path": str(fifo)}  # type: ignore[index]
    provenance = canonical_bytes(document)
    with pytest.raises(SourceInvalid):
        plan_reproduction(provenance, [record_of(provenance, models.f16, "Q4_K_M")], ReproductionInputs())
