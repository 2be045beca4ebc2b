"""What the quality report costs against the quantization it measures.

    python bench/quality_cost.py [--size-gb 1.0] [--types Q4_K_M,Q8_0,Q2_K] [--eval-text FILE] [--keep]

1. writes a llama-shaped F16 GGUF of about --size-gb (random weights, 32k vocabulary);
2. starts ``quantledger serve quantize`` and runs one job with the three types and the quality report,
   following it with WatchQuantizeJob;
3. prints the quantization time (the outputs' quantize_duration), the evaluation time (from the first
   EVALUATING snapshot to the end of the stage), their ratio (target <= 0.5), and each output's mean
   KL divergence with its standard error (target for Q4_K_M: the error below 10% of the mean).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import start_server  # noqa: E402

from quantledger.testing.synthetic_model import llama_shape_for_bytes, write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc  # noqa: E402


def run(model: pathlib.Path, types: list[str], home: pathlib.Path, eval_text: str) -> None:
    server = start_server(home, [model.parent, home] + ([pathlib.Path(eval_text).parent] if eval_text else []))
    try:
        with server.channel() as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            options = pb.QuantizeOptions(eval_text_path=eval_text)
            job = pb.QuantizeJob(source=str(model), quant_types=types, options=options)
            created = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job), timeout=600)
            evaluating_since = evaluating_until = None
            last = created
            for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=created.name), timeout=7200):
                now = time.perf_counter()
                if snapshot.stage == pb.QuantizeJob.STAGE_EVALUATING and evaluating_since is None:
                    evaluating_since = now
                if evaluating_since is not None and snapshot.stage != pb.QuantizeJob.STAGE_EVALUATING:
                    evaluating_until = evaluating_until or now
                last = snapshot
            evaluating_until = evaluating_until or time.perf_counter()
    finally:
        server.stop()
    assert last.state == pb.QuantizeJob.STATE_SUCCEEDED, last.error
    assert evaluating_since is not None
    quantize = sum(o.quantize_duration.ToTimedelta().total_seconds() for o in last.outputs)
    evaluate = evaluating_until - evaluating_since
    print(
        f"model {model.stat().st_size / 1e9:.2f} GB F16, {len(types)} types; "
        f"evaluation text {last.outputs[0].quality.eval_set}"
    )
    print(f"  quantization {quantize:6.1f} s (sum of the outputs' quantize_duration)")
    print(f"  evaluation   {evaluate:6.1f} s (stage EVALUATING)   ratio {evaluate / quantize:.2f}  (target <= 0.5)")
    for output in last.outputs:
        q = output.quality
        share = q.kl_divergence_stderr / q.mean_kl_divergence if q.mean_kl_divergence else float("nan")
        print(
            f"  {output.quant_type:<8} KLD {q.mean_kl_divergence:.5f} ± {q.kl_divergence_stderr:.5f} "
            f"({share * 100:4.1f}% of the mean), top-1 {q.top1_agreement * 100:5.1f}%, "
            f"{q.items_evaluated} positions"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--types", default="Q4_K_M,Q8_0,Q2_K")
    parser.add_argument("--eval-text", default="", help="evaluation text (default: the shipped one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="quantledger-quality-cost-"))
    model = work / "models" / "bench-f16.gguf"
    model.parent.mkdir(parents=True)
    write_llama_gguf(model, **llama_shape_for_bytes(int(args.size_gb * (1 << 30))), seed=7)
    try:
        run(
            model,
            args.types.split(","),
            work / "home",
            str(pathlib.Path(args.eval_text).resolve()) if args.eval_text else "",
        )
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
