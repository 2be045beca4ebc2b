"""llama-quantize's other flags, each shown on the file llama.cpp writes: --override-kv, --prune-layers,
--include-weights/--exclude-weights and the COPY type; and the clear refusal of each misuse."""

from __future__ import annotations

import json
import pathlib

import grpc
import numpy as np
import pytest
from conftest import Models, error_reason, wait_for_job
from test_cli import cli

from quantledger.gguf.format import BOOL, FLOAT32, STRING, UINT32
from quantledger.gguf.reader import GgufHeader, read_gguf_header
from quantledger.quantize.imatrix import write_imatrix_gguf
from quantledger.testing.synthetic_model import write_llama_gguf
from quantledger.v1 import quantize_service_pb2 as pb


def quantize(tmp: pathlib.Path, source: pathlib.Path, quant: str, name: str, *flags: str) -> GgufHeader:
    out = tmp / name
    done = cli(
        "quantize", str(source), "-q", quant, "--no-quality", "--out", str(out), "--json", *flags,
        env={"QUANTLEDGER_HOME": str(tmp / "home")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return read_gguf_header(json.loads(done.stdout)["outputs"][0]["path"])


def tensor_bytes(header: GgufHeader) -> dict[str, bytes]:
    with open(header.path, "rb") as stream:
        found = {}
        for tensor in header.tensors:
            stream.seek(tensor.offset)
            found[tensor.name] = stream.read(tensor.n_bytes)
    return found


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("flags") / "three-f16.gguf"
    write_llama_gguf(path, n_embd=256, n_ff=512, n_layer=3, seed=21)
    return path


def test_override_kv_writes_each_type_as_llama_quantize_does(three_layers: pathlib.Path, tmp_path) -> None:
    header = quantize(
        tmp_path, three_layers, "Q8_0", "kv",
        "--override-kv", "general.name=str:renamed model", "--override-kv", "quantledger.test.count=int:-7",
        "--override-kv", "quantledger.test.scale=float:0.25", "--override-kv", "quantledger.test.flag=bool:true",
    )  # fmt: skip
    meta, kinds = header.metadata, header.value_types
    assert meta["general.name"] == "renamed model" and kinds["general.name"][0] == STRING
    assert meta["quantledger.test.count"] == 7 and kinds["quantledger.test.count"][0] == UINT32  # |int| as u32
    assert meta["quantledger.test.scale"] == 0.25 and kinds["quantledger.test.scale"][0] == FLOAT32
    assert meta["quantledger.test.flag"] is True and kinds["quantledger.test.flag"][0] == BOOL
    assert {t.type_name for t in header.tensors if len(t.shape) == 2} == {"Q8_0"}


def test_prune_layers_drops_blocks_renumbers_the_rest_and_the_model_still_runs(
    three_layers: pathlib.Path, tmp_path
) -> None:
    import llama_cpp

    whole = quantize(tmp_path, three_layers, "Q8_0", "whole")
    pruned = quantize(
        tmp_path, three_layers, "Q8_0", "pruned", "--prune-layers", "1", "--override", r"blk\.1\.ffn_down=f16"
    )
    assert pruned.metadata["llama.block_count"] == 2 and whole.metadata["llama.block_count"] == 3
    blocks = {t.name.split(".")[1] for t in pruned.tensors if t.name.startswith("blk.")}
    assert blocks == {"0", "1"}
    kept, before = tensor_bytes(pruned), tensor_bytes(whole)
    assert kept["blk.0.attn_q.weight"] == before["blk.0.attn_q.weight"]
    assert kept["blk.1.attn_q.weight"] == before["blk.2.attn_q.weight"]  # the old block 2 is block 1 now
    assert kept["blk.1.attn_q.weight"] != before["blk.1.attn_q.weight"]
    kinds = {t.name: t.type_name for t in pruned.tensors}
    assert kinds["blk.1.ffn_down.weight"] == "F16" and kinds["blk.0.ffn_down.weight"] == "Q8_0"  # named after pruning
    model = llama_cpp.Llama(model_path=pruned.path, n_ctx=32, n_threads=1, verbose=False, logits_all=True)
    model.eval([1, 2, 3])
    assert np.isfinite(model.scores[:3]).all() and model.scores[:3].any()  # type: ignore[index]


def test_include_and_exclude_weights_choose_which_tensors_get_the_importance_matrix(
    three_layers: pathlib.Path, tmp_path
) -> None:
    source = read_gguf_header(three_layers)
    rng = np.random.default_rng(5)
    weights = [t for t in source.tensors if len(t.shape) == 2 and t.name.startswith("blk.")]
    imatrix = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(imatrix, {t.name: np.exp(3 * rng.standard_normal(t.shape[0])) for t in weights}, counts=4)
    flags = ("--pure",)
    plain = tensor_bytes(quantize(tmp_path, three_layers, "Q4_0", "plain", *flags))
    full = tensor_bytes(quantize(tmp_path, three_layers, "Q4_0", "full", *flags, "--imatrix", str(imatrix)))
    exclude_header = quantize(
        tmp_path, three_layers, "Q4_0", "exclude", *flags, "--imatrix", str(imatrix), "--exclude-weights", "ffn_down"
    )
    include_header = quantize(
        tmp_path, three_layers, "Q4_0", "include", *flags, "--imatrix", str(imatrix), "--include-weights", "ffn_down"
    )
    excluded, included = tensor_bytes(exclude_header), tensor_bytes(include_header)
    for name in (t.name for t in weights):
        assert full[name] != plain[name], name  # the matrix changes every tensor it reaches
        if "ffn_down" in name:
            assert excluded[name] == plain[name] and included[name] == full[name], name
        else:
            assert excluded[name] == full[name] and included[name] == plain[name], name
    assert exclude_header.metadata["quantize.imatrix.entries_count"] == len(weights) - 3
    assert include_header.metadata["quantize.imatrix.entries_count"] == 3


def test_copy_keeps_every_tensor_and_the_file_type(three_layers: pathlib.Path, tmp_path) -> None:
    copied = quantize(tmp_path, three_layers, "COPY", "copy", "--override-kv", "general.name=str:copied")
    source = read_gguf_header(three_layers)
    assert tensor_bytes(copied) == tensor_bytes(source)
    assert copied.file_type == source.file_type == 1  # F16
    assert copied.metadata["general.name"] == "copied"
    assert pathlib.Path(copied.path).name.endswith("-COPY.gguf")


def _create(stub, source: pathlib.Path, quant: str = "Q8_0", **options) -> None:
    stub.CreateQuantizeJob(
        pb.CreateQuantizeJobRequest(
            job=pb.QuantizeJob(source=str(source), quant_types=[quant], options=pb.QuantizeOptions(**options))
        ),
        timeout=60,
    )


@pytest.mark.parametrize(
    ("quant", "options", "reason", "words"),
    [
        ("Q8_0", {"kv_overrides": ["general.name"]}, "INVALID_ARGUMENT", "KEY=TYPE:VALUE"),
        ("Q8_0", {"kv_overrides": ["general.name=text:x"]}, "INVALID_ARGUMENT", "TYPE must be one of"),
        ("Q8_0", {"kv_overrides": ["x.flag=bool:yes"]}, "INVALID_ARGUMENT", "true or false"),
        ("Q8_0", {"kv_overrides": ["x.n=int:12abc"]}, "INVALID_ARGUMENT", "x.n=int:12abc"),
        ("Q8_0", {"kv_overrides": ["x.s=str:" + "a" * 128]}, "INVALID_ARGUMENT", "127 bytes"),
        ("Q8_0", {"kv_overrides": ["k" * 128 + "=int:1"]}, "INVALID_ARGUMENT", "127 bytes"),
        ("Q8_0", {"kv_overrides": ["a.b=int:1", "a.b=int:2"]}, "INVALID_ARGUMENT", "more than once"),
        ("Q8_0", {"prune_layers": [2]}, "INVALID_ARGUMENT", "blocks 0..1"),
        ("Q8_0", {"prune_layers": [0, 1]}, "INVALID_ARGUMENT", "every block"),
        ("Q8_0", {"prune_layers": [-1]}, "INVALID_ARGUMENT", "not a layer number"),
        ("Q4_0", {"imatrix_include_weights": ["ffn"]}, "INVALID_ARGUMENT", "needs imatrix_path"),
        ("Q8_0", {"split_max_bytes": 10**6, "split_max_tensors": 4}, "INVALID_ARGUMENT", "cannot be used together"),
        ("Q8_0", {"split_max_bytes": 1000}, "INVALID_ARGUMENT", "a shard would hold no tensor"),
        ("Q8_0", {"min_cosine_similarity": 0.9}, "INVALID_ARGUMENT", "gates embedding models"),
        ("Q8_0", {"min_cosine_similarity": 1.5}, "INVALID_ARGUMENT", "lies in 0..1"),
        ("Q8_0", {"min_ndcg": 0.9}, "INVALID_ARGUMENT", "gates rerankers; this is a causal model"),
        ("Q8_0", {"min_ndcg": 1.5}, "INVALID_ARGUMENT", "lies in 0..1"),
        ("Q8_0", {"min_ndcg": 0.9, "skip_quality": True}, "INVALID_ARGUMENT", "skip_quality turns off"),
        (
            "Q4_0",
            {"imatrix_include_weights": ["ffn"], "imatrix_exclude_weights": ["attn"], "imatrix_path": "auto"},
            "INVALID_ARGUMENT",
            "cannot be used together",
        ),
    ],
)
def test_misused_flags_are_refused_at_create(stub, models: Models, quant, options, reason, words) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, models.f16, quant, **options)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason and words in caught.value.details()


def test_excluding_weights_a_type_cannot_do_without_is_imatrix_required(stub, models: Models, tmp_path) -> None:
    source = read_gguf_header(models.f16)
    imatrix = models.root / "flags-imatrix.gguf"
    write_imatrix_gguf(imatrix, {t.name: np.ones(t.shape[0]) for t in source.tensors if len(t.shape) == 2}, counts=1)
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, models.f16, "IQ2_XS", imatrix_path=str(imatrix), imatrix_exclude_weights=["ffn_down"])
    assert error_reason(caught.value) == "IMATRIX_REQUIRED" and "ffn_down" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, models.f16, "Q4_0", imatrix_path=str(imatrix), imatrix_include_weights=["no-such-tensor"])
    assert "leaves no importance matrix entry" in caught.value.details()


def test_the_estimate_is_the_size_written_with_these_flags(stub, models: Models) -> None:
    """EstimateQuantizeJob predicts the exact bytes (disk checks and quotas rest on it): pruned blocks, keys
    of every type and COPY included."""
    options = pb.QuantizeOptions(
        prune_layers=[0],
        kv_overrides=["general.name=str:a longer name than before", "x.f=float:1.5", "x.b=bool:false", "x.i=int:3"],
        skip_quality=True,
        output_dir=str(models.root / "flags-estimate"),
    )
    job = pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_0", "COPY"], options=options)
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=job), timeout=60)
    created = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), timeout=60)
    done = wait_for_job(stub, created.name)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    predicted = {o.quant_type: o.size_bytes for o in estimate.outputs}
    written = {o.quant_type: pathlib.Path(o.path).stat().st_size for o in done.outputs}
    assert predicted == written
    assert {o.quant_type: o.file_type for o in done.outputs} == {"Q4_0": 2, "COPY": 1}


def test_the_estimate_of_a_split_output_is_the_size_of_its_shards(stub, models: Models) -> None:
    options = pb.QuantizeOptions(
        split_max_bytes=150_000, skip_quality=True, output_dir=str(models.root / "flags-split-estimate")
    )
    job = pb.QuantizeJob(source=str(models.f16), quant_types=["Q4_K_M"], options=options)
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=job), timeout=60)
    done = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), timeout=60).name)
    assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
    files = done.outputs[0].files
    assert len(files) > 2 and estimate.outputs[0].size_bytes == sum(pathlib.Path(f.path).stat().st_size for f in files)
    for f in files:  # no shard holds more tensor data than the limit, unless it is one tensor alone
        header = read_gguf_header(f.path)
        assert len(header.tensors) == 1 or sum(-(-t.n_bytes // 32) * 32 for t in header.tensors) <= 150_000
