"""Requests per second and latency of RecommendService.Recommend over loopback gRPC.

    python bench/recommend.py [--seconds 10] [--clients 2] [--concurrency 4] [--variants 48] [--uncached]

Starts `quantledger serve recommend` (as a user would), then runs --clients client processes, each
keeping --concurrency calls in flight, for --seconds. The requests cycle through --variants different
questions (models by description, hyper-parameters, config-style and a real GGUF; laptops, GPUs of
8 to 80 GiB, unified memory; contexts from 2k to 128k; every preference), so the server does real
searches: the first answer to each question is computed, later ones come from its answer cache.
Also reported: the latency of the first (uncached) answer to each question, measured before the run.
--uncached makes every request of the run a new question (the machine's RAM differs by a few bytes
each time), so every answer is a full search: the service's throughput without its answer cache.
Targets (issue 5): >= 1,000 requests/s and p99 <= 10 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import free_port, wait_serving  # noqa: E402

from quantledger.testing.synthetic_model import write_llama_gguf  # noqa: E402
from quantledger.v1 import recommend_service_pb2 as pb  # noqa: E402

GIB = 1 << 30


def questions(count: int, gguf: pathlib.Path, unique: bool = False) -> list[bytes]:
    """``count`` different requests, serialized."""
    models = [
        pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=8_030_000_000, family="llama")),
        pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=70_554_000_000, family="llama")),
        pb.ModelSpec(description=pb.ModelSpec.Description(parameter_count=14_770_000_000, family="qwen2")),
        pb.ModelSpec(
            hyperparameters=pb.ModelSpec.Hyperparameters(
                n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=32000, context_length=32768
            )
        ),
        pb.ModelSpec(gguf_path=str(gguf)),
    ]
    hardware = [
        pb.Hardware(tier="laptop"),
        pb.Hardware(tier="laptop", ram_bytes=8 * GIB),
        pb.Hardware(tier="workstation"),
        pb.Hardware(ram_bytes=32 * GIB, devices=[pb.Device(kind=pb.Device.KIND_CUDA, memory_bytes=8 * GIB)]),
        pb.Hardware(ram_bytes=32 * GIB, devices=[pb.Device(kind=pb.Device.KIND_CUDA, memory_bytes=16 * GIB)]),
        pb.Hardware(
            ram_bytes=64 * GIB,
            unified_memory=True,
            devices=[pb.Device(kind=pb.Device.KIND_METAL, memory_bytes=48 * GIB)],
        ),
        pb.Hardware(tier="server"),
    ]
    contexts = [2048, 8192, 32768, 131072]
    preferences = [pb.PREFERENCE_BALANCED, pb.PREFERENCE_QUALITY, pb.PREFERENCE_SPEED, pb.PREFERENCE_SIZE]
    out = []
    for i in range(count):
        request = pb.RecommendRequest(
            model=models[i % len(models)],
            hardware=hardware[(i // len(models)) % len(hardware)],
            context_length=contexts[(i // 3) % len(contexts)],
            preference=preferences[(i // 7) % len(preferences)],
        )
        if unique:  # a few bytes more RAM: a new question, the same advice
            request.hardware.ram_bytes = (request.hardware.ram_bytes or 16 * GIB) + i
        out.append(request.SerializeToString())
    return out


async def _client(address: str, requests: list[bytes], seconds: float, concurrency: int, offset: int) -> list[float]:
    import grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/quantledger.v1.RecommendService/Recommend")
        deadline = time.perf_counter() + seconds

        async def worker(start: int) -> None:
            i = start
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                await call(requests[i % len(requests)])
                latencies.append(time.perf_counter() - began)
                i += concurrency

        await asyncio.gather(*(worker(offset + k) for k in range(concurrency)))
    return latencies


def client_process(args: tuple[str, list[bytes], float, int, int]) -> list[float]:
    return asyncio.run(_client(*args))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--variants", type=int, default=48)
    parser.add_argument("--uncached", action="store_true", help="every request a new question")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        gguf = root / "model.gguf"
        write_llama_gguf(gguf, n_embd=512, n_ff=1536, n_layer=8, n_head=8, n_head_kv=4, n_vocab=1000)
        port = free_port()
        env = {**os.environ, "QUANTLEDGER_HOME": str(root / "home"), "QUANTLEDGER_ALLOWED_ROOTS": str(root)}
        argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "recommend", "--port", str(port)]
        server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"127.0.0.1:{port}"
        try:
            wait_serving(address, server)
            requests = questions(args.variants, gguf)
            run_requests = questions(200_000, gguf, unique=True) if args.uncached else requests
            import grpc

            with grpc.insecure_channel(address) as channel:
                call = channel.unary_unary("/quantledger.v1.RecommendService/Recommend")
                cold = []
                for body in requests:
                    began = time.perf_counter()
                    call(body)
                    cold.append(time.perf_counter() - began)
            offsets = [c * (len(run_requests) // args.clients if args.uncached else 7) for c in range(args.clients)]
            jobs = [(address, run_requests, args.seconds, args.concurrency, offset) for offset in offsets]
            began = time.perf_counter()
            with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
                results = pool.map(client_process, jobs)
            elapsed = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(timeout=30)
    latencies = [x for r in results for x in r]
    report = {
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "clients": args.clients,
        "in_flight": args.clients * args.concurrency,
        "distinct_questions": len(set(run_requests)) if args.uncached else len(requests),
        "answer_cache": "missed by every request" if args.uncached else "warm",
        "first_answer_p50_ms": round(1000 * statistics.median(cold), 2),
        "first_answer_max_ms": round(1000 * max(cold), 2),
        "wall_seconds": round(elapsed, 1),
        "targets": {"requests_per_second": ">= 1000", "p99_ms": "<= 10"},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
