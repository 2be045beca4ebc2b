"""How fast the service gives up when asked to: cancel, and a chain that does not answer.

    python bench/fail_fast.py [--runs 3]

1. cancel of a running quantization (an i-quant of a ~200 MB llama-shaped F16 model, cancelled once
   llama.cpp has written a partial file): seconds from CancelQuantizeJob sent to CANCELLED returned, and
   to the worker's process group gone (target < 2 s);
2. RegistryClient.web3_for on a port where nothing listens, and on a server that drops every connection:
   seconds to RegistryUnavailable and connections made (target < 5 s, one connection).

The tests check the order of events (CANCELLED with the partial file gone and the worker reaped; one
connection, no retries); the seconds are measured here. Prints the median of --runs and its ratio to the
target.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import tempfile
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import free_port, start_server, wait_for_job  # noqa: E402
from hostile import dropping_listener  # noqa: E402

from quantledger.testing.synthetic_model import write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from registry_client import errors  # noqa: E402
from registry_client.client import RegistryClient  # noqa: E402

Job = pb.QuantizeJob


def worker_of(home: pathlib.Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if "quantledger.quantize.worker" in " ".join(proc.info["cmdline"] or []) and (
                (proc.info["environ"] or {}).get("QUANTLEDGER_HOME") == str(home)
            ):
                return proc
        except (psutil.Error, TypeError):
            continue
    return None


def cancel_once(stub, model: pathlib.Path, out: pathlib.Path, home: pathlib.Path) -> tuple[float, float]:
    job = pb.QuantizeJob(source=str(model), quant_types=["IQ4_XS"], options=pb.QuantizeOptions(output_dir=str(out)))
    name = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name
    worker = None
    while worker is None or not any(".partial" in p.name for p in out.glob("*")):
        state = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name)).state
        assert state in (Job.STATE_QUEUED, Job.STATE_RUNNING), state
        worker = worker or worker_of(home)
        time.sleep(0.02)
    started = time.perf_counter()
    cancelled = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name))
    answered = time.perf_counter() - started
    assert wait_for_job(stub, cancelled.name).state == Job.STATE_CANCELLED
    psutil.wait_procs([worker], timeout=60)
    return answered, time.perf_counter() - started


def unreachable(drop: bool) -> tuple[float, int]:
    with contextlib.ExitStack() as stack:
        if drop:
            port, accepted = stack.enter_context(dropping_listener())
        else:
            port, accepted = free_port(), []
        started = time.perf_counter()
        with contextlib.suppress(errors.RegistryUnavailable):
            RegistryClient.web3_for(f"http://127.0.0.1:{port}", timeout=2)
        return time.perf_counter() - started, len(accepted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fail-fast-") as tmp:
        root = pathlib.Path(tmp)
        model = root / "large-f16.gguf"
        write_llama_gguf(model, n_embd=1024, n_ff=2816, n_layer=10, n_head=16, n_head_kv=8, n_vocab=4096, seed=5)
        print(f"model: {model.stat().st_size / 1e6:.0f} MB F16, IQ4_XS, median of {args.runs} runs")
        home = root / "home"
        server = start_server(home, [root, home])
        try:
            stub = server.stub()
            runs = [cancel_once(stub, model, root / f"out-{i}", home) for i in range(args.runs)]
        finally:
            server.stop()
    answered = statistics.median(r[0] for r in runs)
    reaped = statistics.median(r[1] for r in runs)
    print(f"cancel -> CANCELLED returned: {answered:.3f} s  (ratio to the 2 s target {answered / 2:.3f})")
    print(f"cancel -> worker group gone:  {reaped:.3f} s  (ratio to the 2 s target {reaped / 2:.3f})")
    for drop in (False, True):
        figures = [unreachable(drop) for _ in range(args.runs)]
        seconds = statistics.median(f[0] for f in figures)
        what = "drops every connection" if drop else "nothing listens"
        connections = max(f[1] for f in figures) if drop else 0
        print(
            f"chain that {what}: RegistryUnavailable after {seconds:.3f} s (ratio to the 5 s target "
            f"{seconds / 5:.3f}), connections per attempt {connections}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
