"""A split GGUF source (…-00001-of-0000N.gguf) quantizes to one merged file; broken splits are refused."""

from __future__ import annotations

import hashlib
import json
import pathlib

import gguf
import grpc
import llama_cpp
import numpy as np
import pytest
from conftest import Models, error_reason, wait_for_job

from quantledger.v1 import quantize_service_pb2 as pb


def write_split_llama(
    path: pathlib.Path, max_tensors: int, n_embd: int = 256, n_ff: int = 512, n_vocab: int = 300
) -> None:
    """A 2-layer llama with a byte-level SentencePiece vocabulary, split by gguf-py's writer."""
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=max_tensors)
    writer.add_context_length(128)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(2)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)
    writer.add_tokenizer_model("llama")
    tokens = [b"<unk>", b"<s>", b"</s>", *(f"<0x{i:02X}>".encode() for i in range(256))]
    tokens += [f"w{i}".encode() for i in range(n_vocab - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...], dtype: type = np.float16) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(dtype))

    tensor("token_embd.weight", (n_vocab, n_embd))
    tensor("output_norm.weight", (n_embd,), np.float32)
    tensor("output.weight", (n_vocab, n_embd))
    for layer in range(2):
        p = f"blk.{layer}."
        tensor(p + "attn_norm.weight", (n_embd,), np.float32)
        tensor(p + "ffn_norm.weight", (n_embd,), np.float32)
        tensor(p + "attn_q.weight", (n_embd, n_embd))
        tensor(p + "attn_k.weight", (128, n_embd))
        tensor(p + "attn_v.weight", (128, n_embd))
        tensor(p + "attn_output.weight", (n_embd, n_embd))
        tensor(p + "ffn_gate.weight", (n_ff, n_embd))
        tensor(p + "ffn_up.weight", (n_ff, n_embd))
        tensor(p + "ffn_down.weight", (n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def split_model(models: Models) -> list[pathlib.Path]:
    root = models.root / "split"
    root.mkdir(exist_ok=True)
    write_split_llama(root / "splitmodel.gguf", max_tensors=8)
    shards = sorted(root.glob("splitmodel-*-of-*.gguf"))
    assert len(shards) == 3
    return shards


def create(stub, source, **options):
    job = pb.QuantizeJob(source=str(source), quant_types=["Q4_K_M", "Q8_0"], options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


def test_split_source_quantizes_to_one_merged_file(stub, split_model: list[pathlib.Path], models: Models) -> None:
    request = pb.QuantizeJob(source=str(split_model[0]), quant_types=["Q4_K_M", "Q8_0"])
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
    final = wait_for_job(stub, create(stub, split_model[0], output_dir=str(models.root / "split-out")).name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    assert final.source_info.tensor_count == 21
    assert final.source_info.size_bytes == sum(p.stat().st_size for p in split_model)
    assert final.progress.bytes_done == 2 * final.source_info.tensor_bytes
    for output, predicted in zip(final.outputs, estimate.outputs, strict=True):
        path = pathlib.Path(output.path)
        assert path.name == f"splitmodel-{output.quant_type}.gguf"
        assert path.stat().st_size == output.size_bytes == predicted.size_bytes
        llm = llama_cpp.Llama(model_path=output.path, n_ctx=32, verbose=False)
        llm.eval(llm.tokenize(b"split"))
        del llm


def test_keep_split_writes_one_file_per_shard(stub, split_model: list[pathlib.Path], models: Models) -> None:
    out = models.root / "split-keep"
    request = pb.QuantizeJob(
        source=str(split_model[0]),
        quant_types=["Q4_K_M"],
        options=pb.QuantizeOptions(keep_split=True, output_dir=str(out)),
    )
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
    final = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=request)).name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    (output,) = final.outputs
    names = [pathlib.Path(f.path).name for f in output.files]
    assert names == [f"splitmodel-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    # nothing else (no partial files) but the output's provenance JSON, whose subjects are all the shards
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, f"{names[0]}.provenance.json"])
    statement = json.loads((out / f"{names[0]}.provenance.json").read_text())
    assert [s["name"] for s in statement["subject"]] == names
    for file in output.files:
        data = pathlib.Path(file.path).read_bytes()
        assert file.size_bytes == len(data) and file.sha256 == hashlib.sha256(data).hexdigest()
    assert (output.path, output.size_bytes, output.sha256) == (
        output.files[0].path,
        output.files[0].size_bytes,
        output.files[0].sha256,
    )
    assert output.total_size_bytes == sum(f.size_bytes for f in output.files) == estimate.outputs[0].size_bytes
    assert output.tensor_count == 21
    llm = llama_cpp.Llama(model_path=output.path, n_ctx=32, verbose=False)  # finds shards 2 and 3 itself
    llm.eval(llm.tokenize(b"split"))
    del llm


def test_broken_splits_are_refused(stub, split_model: list[pathlib.Path], models: Models) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, split_model[1])  # not the first shard
    assert error_reason(caught.value) == "SOURCE_INVALID"
    lonely = models.root / "split-lonely"
    lonely.mkdir(exist_ok=True)
    first = lonely / split_model[0].name
    first.write_bytes(split_model[0].read_bytes())  # the other shards are missing
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, first)
    assert error_reason(caught.value) == "SOURCE_INVALID"
    assert "missing" in caught.value.details()
