"""Client regular expressions never backtrack: RE2 in the server, literal names for llama.cpp's std::regex.

``(.|.|.)*ffn_down`` is a catastrophic pattern for any backtracking engine: Python's ``re`` on a module
name and libstdc++'s std::regex (llama.cpp's tt_overrides) on a tensor name take exponential time.
"""

from __future__ import annotations

import json
import pathlib
import time

import grpc
import numpy as np
import pytest
from conftest import Models, wait_for_job
from hostile import health_probe
from safetensors.numpy import save_file
from test_bad_input import create, refused

from quantledger.client_patterns import MAX_PATTERN_CHARS, MAX_PATTERNS
from quantledger.convert.lora import load_lora
from quantledger.errors import LoraInvalid
from quantledger.gguf.reader import read_gguf_header
from quantledger.v1 import quantize_service_pb2 as pb

EVIL = "(.|.|.)*ffn_down"  # exponential for a backtracking engine on any name without a match
NOT_HUNG = 120  # seconds: generous for 2 busy cores, far below what backtracking takes


def test_evil_override_pattern_is_answered_and_keeps_its_meaning(stub, server, models: Models) -> None:
    overrides = [
        pb.TensorTypeOverride(pattern=EVIL, type="Q8_0"),
        pb.TensorTypeOverride(pattern="^(a|a)*b$", type="F16"),
    ]
    with health_probe(server.address) as probe:
        started = time.monotonic()
        job = create(
            stub, models.f16, ["Q4_0"], output_dir=str(models.root / "evil-override"), tensor_type_overrides=overrides
        )
        answered = time.monotonic() - started
    probe.assert_answered()
    assert answered < NOT_HUNG
    final = wait_for_job(stub, job.name, timeout=NOT_HUNG)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error.message
    types = {t.name: t.type_name for t in read_gguf_header(final.outputs[0].path).tensors}
    assert {types[n] for n in types if "ffn_down" in n} == {"Q8_0"}  # the override applied, as RE2 reads it
    assert types["blk.0.ffn_gate.weight"] == "Q4_0"


@pytest.mark.parametrize(
    ("pattern", "named"),
    [
        (r"(a)\1", "backreferences"),  # backtracking only: RE2 refuses it
        ("(?=blk)", "lookaround"),
        ("a" * (MAX_PATTERN_CHARS + 1), str(MAX_PATTERN_CHARS)),
        ("(", "tensor_type_overrides"),
    ],
)
def test_refused_override_patterns_name_the_field(stub, server, models: Models, pattern, named) -> None:
    with health_probe(server.address) as probe:
        code, reason, message = refused(
            create,
            stub,
            models.f16,
            ["Q4_0"],
            tensor_type_overrides=[pb.TensorTypeOverride(pattern=pattern, type="Q8_0")],
        )
    probe.assert_answered()
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"), message
    assert "tensor_type_overrides" in message and named in message, message


def test_too_many_override_patterns_are_refused(stub, models: Models) -> None:
    overrides = [pb.TensorTypeOverride(pattern=f"blk\\.{i}\\.", type="Q8_0") for i in range(MAX_PATTERNS + 1)]
    code, reason, message = refused(create, stub, models.f16, ["Q4_0"], tensor_type_overrides=overrides)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert str(MAX_PATTERNS) in message


def _adapter(folder: pathlib.Path, **config: object) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    module = "model.layers.0.self_attn.q_proj"
    rng = np.random.default_rng(0)
    save_file(
        {
            f"base_model.model.{module}.lora_A.weight": rng.normal(size=(4, 64)).astype(np.float32),
            f"base_model.model.{module}.lora_B.weight": rng.normal(size=(64, 4)).astype(np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    body = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}
    (folder / "adapter_config.json").write_text(json.dumps(body))
    return folder


@pytest.mark.timeout(NOT_HUNG)
def test_evil_lora_rank_pattern_matches_in_linear_time(tmp_path: pathlib.Path) -> None:
    adapter = load_lora(_adapter(tmp_path / "evil", rank_pattern={"(.|.|.)*X": 2, "(.|.)*q_proj": 4}))
    started = time.monotonic()
    assert adapter.rank_for("model.layers.0.self_attn.q_proj.weight") == 4  # the second pattern, PEFT's rule
    assert adapter.rank_for("model.layers.0.self_attn.k_proj.weight") == 4  # no pattern: r
    assert time.monotonic() - started < NOT_HUNG


@pytest.mark.parametrize(
    ("pattern", "named"), [(r"(q)\1", "rank_pattern"), ("x" * (MAX_PATTERN_CHARS + 1), "rank_pattern")]
)
def test_refused_lora_patterns_are_lora_invalid(tmp_path: pathlib.Path, pattern: str, named: str) -> None:
    with pytest.raises(LoraInvalid, match=named):
        load_lora(_adapter(tmp_path / "bad", rank_pattern={pattern: 2}))
