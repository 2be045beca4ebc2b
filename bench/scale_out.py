"""What the distributed backend costs and gives, on real servers (Temporal dev server, SeaweedFS):

    python bench/scale_out.py [--part overhead|throughput|s3|all] [--size-gb 1.0] [--runs 3]

- overhead: the same job (Q8_0, no quality report) through embedded mode (`serve quantize`) and through a
  distributed frontend with one worker, on a tiny model and on a ~``--size-gb`` F16 model; wall time from
  Create to SUCCEEDED. The source is uploaded by the first distributed run (content-addressed): later runs
  show the steady state. Targets: <= 1.10 on the large model, <= 1.5 s extra on the tiny one.
- throughput: 12 small jobs with one worker, then with two: jobs per minute, and what limits it.
- cancel: CancelQuantizeJob mid-quantize until the job is CANCELLED (target <= 2 s).
- s3: upload+hash and download+verify of a 512 MiB file through the artifact store (rounds interleaved,
  CPU seconds of client and server printed) against
  `cp` + `openssl dgst -sha256` of the same file (target >= 0.7).

Ratios are printed; nothing is asserted (speed targets live here, not in tests).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cluster import running_cluster  # noqa: E402
from conftest import Models, RunningServer, start_server  # noqa: E402
from servers import S3Server, TemporalServer, seaweedfs, temporal_dev  # noqa: E402

from quantledger.testing.synthetic_model import llama_shape_for_bytes, write_llama_gguf  # noqa: E402
from quantledger.v1 import quantize_service_pb2 as pb  # noqa: E402
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc  # noqa: E402

ENDED = {pb.QuantizeJob.STATE_SUCCEEDED, pb.QuantizeJob.STATE_FAILED, pb.QuantizeJob.STATE_CANCELLED}


def run_job(server: RunningServer, source: pathlib.Path) -> float:
    """Seconds from Create to the end of a Q8_0 job without a quality report (it must succeed)."""
    with server.channel() as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        started = time.perf_counter()
        job = stub.CreateQuantizeJob(
            pb.CreateQuantizeJobRequest(
                job=pb.QuantizeJob(
                    source=str(source), quant_types=["Q8_0"], options=pb.QuantizeOptions(skip_quality=True)
                )
            ),
            timeout=600,
        )
        while job.state not in ENDED:
            time.sleep(0.05)
            job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name), timeout=60)
        elapsed = time.perf_counter() - started
    assert job.state == pb.QuantizeJob.STATE_SUCCEEDED, job.error
    return elapsed


def _models(root: pathlib.Path, size_gb: float) -> tuple[Models, pathlib.Path, pathlib.Path]:
    root.mkdir(parents=True, exist_ok=True)
    tiny, large = root / "tiny-f16.gguf", root / "large-f16.gguf"
    write_llama_gguf(tiny, n_embd=256, n_ff=512, n_layer=2, seed=1)
    write_llama_gguf(large, **llama_shape_for_bytes(int(size_gb * (1 << 30))), seed=2)
    models = Models(root=root, f16=tiny, f16_320=tiny, f32=tiny, q8_0=tiny, large=large)
    return models, tiny, large


@contextlib.contextmanager
def _stack(tmp: pathlib.Path) -> Iterator[tuple[TemporalServer, S3Server]]:
    with temporal_dev(tmp / "temporal") as temporal, seaweedfs(tmp / "s3") as s3:
        yield temporal, s3


def _times(fn: Callable[[], float], runs: int) -> list[float]:
    return [fn() for _ in range(runs)]


def overhead(tmp: pathlib.Path, size_gb: float, runs: int) -> None:
    models, tiny, large = _models(tmp / "models", size_gb)
    embedded = start_server(tmp / "embedded", [models.root])
    try:
        base = {
            name: _times(lambda s=source: run_job(embedded, s), runs)
            for name, source in (("tiny", tiny), ("large", large))
        }
    finally:
        embedded.stop()
    with _stack(tmp) as (temporal, s3), running_cluster(tmp / "cluster", models, temporal, s3) as cluster:
        frontend = cluster.start_frontend("frontend")
        cluster.start_worker("worker")
        dist = {
            name: _times(lambda s=source: run_job(frontend, s), runs)
            for name, source in (("tiny", tiny), ("large", large))
        }
    print(f"per-job overhead, Q8_0 without quality report, {runs} runs each (first distributed run uploads the source)")
    for name, source in (("tiny", tiny), ("large", large)):
        size = source.stat().st_size / 1e6
        e, d = base[name], dist[name]
        steady = statistics.median(d[1:]) if len(d) > 1 else d[0]
        print(
            f"  {name:5} {size:8.1f} MB  embedded median {statistics.median(e):6.2f} s  "
            f"distributed first {d[0]:6.2f} s, steady median {steady:6.2f} s  "
            f"ratio {steady / statistics.median(e):.2f}  extra {steady - statistics.median(e):+.2f} s"
        )


def cancel_latency(tmp: pathlib.Path, runs: int) -> None:
    """Seconds from CancelQuantizeJob to the job CANCELLED (its worker's llama.cpp killed, the upload
    aborted), mid-quantize of a ~200 MB model (target <= 2 s)."""
    models, _tiny, large = _models(tmp / "models", 0.2)
    with _stack(tmp) as (temporal, s3), running_cluster(tmp / "cluster", models, temporal, s3) as cluster:
        frontend = cluster.start_frontend("frontend")
        cluster.start_worker("worker")
        seconds = []
        with frontend.channel() as channel:
            stub = pb_grpc.QuantizeServiceStub(channel)
            for _ in range(runs):
                job = stub.CreateQuantizeJob(
                    pb.CreateQuantizeJobRequest(
                        job=pb.QuantizeJob(
                            source=str(large), quant_types=["Q4_K_M"], options=pb.QuantizeOptions(skip_quality=True)
                        )
                    ),
                    timeout=300,
                )
                while stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name)).progress.tensors_done < 2:
                    time.sleep(0.05)
                started = time.perf_counter()
                done = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name), timeout=60)
                seconds.append(time.perf_counter() - started)
                assert done.state == pb.QuantizeJob.STATE_CANCELLED, done
    print(f"cancel mid-quantize -> CANCELLED: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")


def throughput(tmp: pathlib.Path, jobs: int = 12) -> None:
    models, _tiny, _large = _models(tmp / "models", 0.01)
    sources = []
    for i in range(jobs):  # distinct sources: nothing is shared between the jobs but the code
        path = models.root / f"small-{i}.gguf"
        write_llama_gguf(path, n_embd=256, n_ff=512, n_layer=2, seed=100 + i)
        sources.append(path)
    with _stack(tmp) as (temporal, s3), running_cluster(tmp / "cluster", models, temporal, s3) as cluster:
        frontend = cluster.start_frontend("frontend")
        rates = []
        for count in (1, 2):
            while len(cluster.workers) < count:
                cluster.start_worker(f"worker-{len(cluster.workers) + 1}")
            batch = sources[: jobs // 2] if count == 1 else sources[jobs // 2 :]
            started = time.perf_counter()
            _submit_all(frontend, batch)
            elapsed = time.perf_counter() - started
            rates.append(len(batch) / elapsed * 60)
            print(f"  {count} worker(s): {len(batch)} jobs in {elapsed:.1f} s = {rates[-1]:.1f} jobs/min")
    print(f"two workers / one worker: {rates[1] / rates[0]:.2f}x (2 cores: both workers share them)")


def _submit_all(server: RunningServer, sources: list[pathlib.Path]) -> None:
    with server.channel() as channel:
        stub = pb_grpc.QuantizeServiceStub(channel)
        names = [
            stub.CreateQuantizeJob(
                pb.CreateQuantizeJobRequest(
                    job=pb.QuantizeJob(
                        source=str(s), quant_types=["Q8_0"], options=pb.QuantizeOptions(skip_quality=True, threads=1)
                    )
                ),
                timeout=120,
            ).name
            for s in sources
        ]
        for name in names:
            job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name), timeout=60)
            while job.state not in ENDED:
                time.sleep(0.05)
                job = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=name), timeout=60)
            assert job.state == pb.QuantizeJob.STATE_SUCCEEDED, job.error


def s3_throughput(tmp: pathlib.Path, runs: int) -> None:
    """Rounds interleave the three ways (so page-cache and write-back state is shared), every write goes to
    a new file, and the CPU seconds of the client and of SeaweedFS are printed beside the wall time."""
    from quantledger.artifacts.store import ArtifactStore

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "blob.bin"
    with open(data, "wb") as out:
        for _ in range(512):
            out.write(os.urandom(1 << 20))
    mb = data.stat().st_size / 1e6
    results: dict[str, list[tuple[float, float, float]]] = {"cp": [], "upload": [], "download": []}
    with seaweedfs(tmp / "s3") as s3:
        for name, value in s3.env.items():
            os.environ[name] = value
        store = ArtifactStore.from_uri(f"s3://{s3.bucket}/bench")
        server = s3.process.pid
        digest = store.put_file("blob.bin", data).sha256
        for round_ in range(runs):
            back, copy = tmp / f"back-{round_}.bin", tmp / f"copy-{round_}.bin"
            results["cp"].append(_measured(lambda c=copy: _cp_and_hash(data, c), server))
            results["upload"].append(_measured(lambda r=round_: store.put_file(f"blob-{r}.bin", data), server))
            results["download"].append(
                _measured(lambda b=back: store.get_file("blob.bin", b, expected_sha256=digest), server)
            )
            back.unlink()
            copy.unlink()
    base = statistics.median(wall for wall, _, _ in results["cp"])
    print(f"512 MiB through the artifact store (SeaweedFS on loopback), {runs} interleaved rounds, medians:")
    for label, key in (
        ("cp + openssl dgst -sha256", "cp"),
        ("upload + hash", "upload"),
        ("download + verify", "download"),
    ):
        wall = statistics.median(w for w, _, _ in results[key])
        client = statistics.median(c for _, c, _ in results[key])
        weed = statistics.median(s for _, _, s in results[key])
        print(
            f"  {label:<26} {mb / wall:7.1f} MB/s  ratio {base / wall:.2f}   "
            f"CPU s: client/tools {client:.2f}, SeaweedFS {weed:.2f}"
        )


def _measured(fn: Callable[[], object], server: int) -> tuple[float, float, float]:
    """(wall s, CPU s of this process and its children, CPU s of the server's process group)."""
    before, server_before = os.times(), _group_cpu(server)
    wall = _timed(fn)
    after = os.times()
    ours = sum(after[i] - before[i] for i in range(4))
    return wall, ours, _group_cpu(server) - server_before


def _group_cpu(group: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # field 5 of stat, the process group
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _cp_and_hash(source: pathlib.Path, target: pathlib.Path) -> None:
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["openssl", "dgst", "-sha256", str(target)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["overhead", "throughput", "cancel", "s3", "all"], default="all")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantledger-scale-") as folder:
        tmp = pathlib.Path(folder)
        if args.part in ("s3", "all"):
            s3_throughput(tmp / "s3-part", args.runs)
        if args.part in ("overhead", "all"):
            overhead(tmp / "overhead-part", args.size_gb, args.runs)
        if args.part in ("throughput", "all"):
            throughput(tmp / "throughput-part")
        if args.part in ("cancel", "all"):
            cancel_latency(tmp / "cancel-part", args.runs)


if __name__ == "__main__":
    main()
