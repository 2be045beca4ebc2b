"""The parser of llama.cpp's quantization log, fed the fragments llama.cpp really emits."""

from __future__ import annotations

from quantledger.quantize.llama_log import LogParser, fallback_count

INFO, WARN, ERROR = 2, 3, 4

REAL_RUN = [
    (INFO, "[   1/  21] output.weight                        - [   320,    300,      1,      1], type =    f16, "),
    (INFO, "converting to q6_K .. "),
    (INFO, "size =     0.18 MiB ->     0.08 MiB\n"),
    (INFO, "[   2/  21] output_norm.weight                   - [   320,      1,      1,      1], type =    f32, "),
    (INFO, "size =    0.001 MiB\n"),
    (INFO, "[   3/  21] token_embd.weight                    - [   320,    300,      1,      1], type =    f16, "),
    (
        WARN,
        "warning: token_embd.weight                    - ncols    320 not divisible by 256 "
        "(required for type    q4_K) ",
    ),
    (WARN, "-> falling back to    q5_0\n"),
    (INFO, "converting to q5_0 .. "),
    (INFO, "size =     0.18 MiB ->     0.06 MiB\n"),
    (INFO, "llama_model_quantize_impl: model size  =     3.34 MiB (16.01 BPW)\n"),
    (INFO, "llama_model_quantize_impl: quant size  =     1.20 MiB (5.76 BPW)\n"),
    (WARN, "llama_model_quantize_impl: WARNING: 13 of 21 tensor(s) required fallback quantization\n"),
]


def feed(fragments: list[tuple[int, str]]) -> tuple[LogParser, list[dict]]:
    parser = LogParser()
    events = []
    for level, text in fragments:
        events += parser.feed(level, text)
    return parser, events


def test_a_real_run_becomes_tensor_events_as_soon_as_known() -> None:
    parser = LogParser()
    first = parser.feed(*REAL_RUN[0])
    assert first == [
        {
            "event": "tensor_start",
            "index": 1,
            "total": 21,
            "name": "output.weight",
            "shape": [320, 300, 1, 1],
            "source_type": "F16",
        }
    ]
    _, events = feed(REAL_RUN)
    done = [(e["name"], e["target_type"]) for e in events if e["event"] == "tensor_done"]
    assert done == [("output.weight", "Q6_K"), ("output_norm.weight", "F32"), ("token_embd.weight", "Q5_0")]
    assert {"event": "fallback", "name": "token_embd.weight", "wanted": "Q4_K", "to": "Q5_0"} in events
    assert {"event": "quant_size", "mib": 1.2, "bits_per_weight": 5.76} in events
    assert fallback_count(events) == 13  # llama.cpp's own total wins over the warnings seen


def test_dry_run_lines_carry_the_target_type_and_the_imatrix_warning() -> None:
    _, events = feed(
        [
            (
                INFO,
                "[   4/  21] blk.0.attn_k.weight                  - [   256,    128,      1,      1], type =    f16, ",
            ),
            (INFO, "size =     0.06 MiB ->     0.01 MiB (iq2_xxs)\n"),
            (
                WARN,
                "llama_model_quantize_impl: WARNING: dry run completed successfully, but actually completing "
                "this quantization will require an imatrix!\n",
            ),
        ]
    )
    assert next(e for e in events if e["event"] == "tensor_done")["target_type"] == "IQ2_XXS"
    assert {"event": "requires_imatrix"} in events
    assert fallback_count(events) == 0


def test_error_lines_are_kept_for_the_job_error() -> None:
    parser, _ = feed(
        [(ERROR, "llama_model_quantize: failed to quantize: key not found in model: llama.context_length\n")]
    )
    assert parser.errors == ["llama_model_quantize: failed to quantize: key not found in model: llama.context_length"]
