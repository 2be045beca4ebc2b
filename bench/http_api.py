"""The HTTP/JSON API against gRPC on the same server, and Server-Sent Events fan-out.

    python bench/http_api.py [--seconds 5] [--rounds 3] [--concurrency 16] [--watchers 100]

Starts `quantledger serve quantize recommend registry` with `--http-port` (as the tests do) in a fresh
data dir with a tiny synthetic model and one finished job, then:

1. **Request rate.** `GetQuantizeJob` and `Recommend` over gRPC (grpc.aio, one channel) and over HTTP
   (aiohttp, one keep-alive connection pool), each for --seconds with --concurrency calls in flight,
   the two transports interleaved for --rounds rounds (A B A B …: a drift of the machine's speed hits
   both). Prints requests/s, p50 and p99 latency, the server's CPU time per request (psutil, the
   figure the load generator's own cost does not enter) and the HTTP/gRPC rate ratio per round with its
   median. Target: HTTP >= 0.5x gRPC's rate.
2. **SSE fan-out.** A job on a larger model is watched by --watchers concurrent SSE clients (raised
   QUANTLEDGER_MAX_WATCH_STREAMS: the default 16 per principal would refuse most of them, as it should
   for one user); prints the server's RSS before and with all streams open, how many saw the job's
   final SUCCEEDED event, and the spread between the first and the last of them seeing it.

Both sides run on the same 2-core machine as the server, so the rates are of the whole loop; the CPU
per request is the server's alone.
"""

from __future__ import annotations

import pathlib
import sys

# this file's folder comes first on sys.path when it runs as a script, and its name would shadow the
# standard library's http package (which aiohttp imports): take the folder off before anything else
if sys.path and pathlib.Path(sys.path[0] or ".").resolve() == pathlib.Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import psutil  # noqa: E402
from conftest import RunningServer, free_port, start_server, wait_for_job  # noqa: E402

from quantledger.testing.synthetic_model import write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc  # noqa: E402
from quantledger.v1 import recommend_service_pb2 as rpb  # noqa: E402
from quantledger.v1 import recommend_service_pb2_grpc as rpb_grpc  # noqa: E402


@dataclass
class Run:
    transport: str
    call: str
    requests: int
    seconds: float
    latencies: list[float]
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1e3
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        per = self.server_cpu / self.requests * 1e6
        return (
            f"  {self.call:<8} {self.transport:<5} {self.rate:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   "
            f"server CPU {per:6.0f} us/req"
        )


async def drive(call: Callable[[], Awaitable[None]], seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


async def measure(
    server: psutil.Process, transport: str, name: str, call: Callable[[], Awaitable[None]], seconds: float, width: int
) -> Run:
    for _ in range(50):  # warm the connections and the server's caches
        await call()
    before = server.cpu_times()
    start = time.monotonic()
    count, latencies = await drive(call, seconds, width)
    elapsed = time.monotonic() - start
    after = server.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return Run(transport, name, count, elapsed, latencies, cpu)


async def rates(server: RunningServer, http: str, job: str, model: str, args: argparse.Namespace) -> None:
    process = psutil.Process(server.process.pid)
    channel = grpc.aio.insecure_channel(server.address)
    quantize, recommend = pb_grpc.QuantizeServiceStub(channel), rpb_grpc.RecommendServiceStub(channel)
    request = rpb.RecommendRequest(model=rpb.ModelSpec(gguf_path=model), hardware=rpb.Hardware(ram_bytes=16 << 30))
    body = {"model": {"gguf_path": model}, "hardware": {"ram_bytes": str(16 << 30)}}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(http, connector=connector) as session:

        async def grpc_get() -> None:
            await quantize.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job))

        async def http_get() -> None:
            async with session.get(f"/api/v1/quantize/{job}") as answer:
                assert answer.status == 200
                await answer.read()

        async def grpc_recommend() -> None:
            await recommend.Recommend(request)

        async def http_recommend() -> None:
            async with session.post("/api/v1/recommend", json=body) as answer:
                assert answer.status == 200
                await answer.read()

        calls = {"get": (grpc_get, http_get), "recommend": (grpc_recommend, http_recommend)}
        for name, (over_grpc, over_http) in calls.items():
            ratios = []
            print(f"{name}: {args.rounds} rounds of {args.seconds:.0f} s each way, {args.concurrency} in flight")
            for _ in range(args.rounds):
                a = await measure(process, "grpc", name, over_grpc, args.seconds, args.concurrency)
                b = await measure(process, "http", name, over_http, args.seconds, args.concurrency)
                print(a.line())
                print(b.line())
                ratios.append(b.rate / a.rate)
            print(f"  HTTP/gRPC rate: {' '.join(f'{r:.2f}' for r in ratios)}  median {statistics.median(ratios):.2f}x")
    await channel.close()


async def fan_out(server: RunningServer, http: str, job: str, watchers: int) -> None:
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    seen_end: list[float] = []
    opened = asyncio.Event()
    open_count = 0
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=watchers + 4)
    async with aiohttp.ClientSession(http, timeout=timeout, connector=connector) as session:

        async def watch() -> None:
            nonlocal open_count
            async with session.get(f"/api/v1/quantize/{job}:watch", headers={"accept": "text/event-stream"}) as answer:
                assert answer.status == 200, await answer.text()
                open_count += 1
                if open_count == watchers:
                    opened.set()
                async for line in answer.content:
                    text = line.decode().strip()
                    if text.startswith("data: ") and json.loads(text[6:])["state"] == "STATE_SUCCEEDED":
                        seen_end.append(time.monotonic())

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await asyncio.wait_for(opened.wait(), 120)
        rss_open = process.memory_info().rss
        await asyncio.gather(*tasks)
    print(f"SSE fan-out: {watchers} watchers of one job")
    print(f"  server RSS {rss_before / 2**20:.0f} MiB before, {rss_open / 2**20:.0f} MiB with every stream open")
    print(f"  {len(seen_end)} of {watchers} saw SUCCEEDED", end="")
    if seen_end:
        print(f", the last {1e3 * (max(seen_end) - min(seen_end)):.0f} ms after the first")
    else:
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--watchers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        root = pathlib.Path(tmp)
        tiny, large = root / "tiny-f16.gguf", root / "large-f16.gguf"
        write_llama_gguf(tiny, seed=1)
        write_llama_gguf(large, n_embd=1024, n_ff=2816, n_layer=10, n_head=16, n_head_kv=8, n_vocab=4096, seed=5)
        port, http_port = free_port(), free_port()
        command = [sys.executable, "-m", "quantledger.cli.main", "serve", "quantize", "recommend", "registry"]
        command += ["--port", str(port), "--http-port", str(http_port)]
        env = {"QUANTLEDGER_MAX_WATCH_STREAMS": str(args.watchers + 10), "QUANTLEDGER_LOG_LEVEL": "WARNING"}
        server = start_server(root / "home", [root], port=port, command=command, extra_env=env)
        http = f"http://127.0.0.1:{http_port}"
        try:
            with server.channel() as channel:
                stub = pb_grpc.QuantizeServiceStub(channel)
                made = stub.CreateQuantizeJob(
                    pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(tiny), quant_types=["Q8_0"]))
                )
                done = wait_for_job(stub, made.name)
                assert done.state == pb.QuantizeJob.STATE_SUCCEEDED, done.error
                asyncio.run(rates(server, http, made.name, str(tiny), args))
                long = stub.CreateQuantizeJob(
                    pb.CreateQuantizeJobRequest(job=pb.QuantizeJob(source=str(large), quant_types=["Q4_K_M"]))
                )
            asyncio.run(fan_out(server, http, long.name, args.watchers))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
