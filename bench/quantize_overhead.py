"""What the service costs on top of a bare llama.cpp quantization.

    python bench/quantize_overhead.py [--size-gb 1.0] [--quant Q4_K_M] [--keep]

1. writes a llama-shaped F16 GGUF of about --size-gb (random weights);
2. times a bare ``llama_model_quantize`` to --quant in its own process (peak RSS sampled);
3. starts ``quantledger serve quantize`` and times ``quantledger submit MODEL --quant T --wait``
   against it, sampling the peak of server + worker RSS together;
and prints the ratio of wall times (target <= 1.10) and the extra peak memory (target <= 200 MB).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

BARE = r"""
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


class PeakRss:
    """Samples the summed RSS of a process tree every 20 ms."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--quant", default="Q4_K_M")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    from quantledger.testing.synthetic_model import llama_shape_for_bytes, write_llama_gguf

    work = pathlib.Path(tempfile.mkdtemp(prefix="ql-bench-"))
    try:
        model = work / "bench-f16.gguf"
        shape = llama_shape_for_bytes(int(args.size_gb * 1e9))
        started = time.monotonic()
        size = write_llama_gguf(model, **shape, seed=11)
        print(f"model: {size / 1e9:.2f} GB F16 {shape} written in {time.monotonic() - started:.1f}s")
        subprocess.run(["cat", str(model)], stdout=subprocess.DEVNULL, check=True)  # same page cache for both runs

        bare_out = work / "bare.gguf"
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", BARE, str(model), str(bare_out), args.quant, str(args.threads)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sampler = PeakRss(proc.pid)
        rc = proc.wait()
        bare_seconds = time.monotonic() - started
        bare_peak = sampler.stop()
        if rc != 0:
            raise SystemExit(f"bare quantization failed ({rc})")
        print(f"bare llama_model_quantize:  {bare_seconds:7.2f} s   peak RSS {bare_peak / 1e6:7.1f} MB")

        home = work / "home"
        port = free_port()
        env = dict(os.environ, QUANTLEDGER_HOME=str(home), QUANTLEDGER_ALLOWED_ROOTS=str(work))
        server = subprocess.Popen(
            ["quantledger", "serve", "quantize", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while (
                subprocess.run(
                    ["quantledger", "quant-types", "--json", "--server", f"127.0.0.1:{port}"],
                    capture_output=True,
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            sampler = PeakRss(server.pid)
            started = time.monotonic()
            done = subprocess.run(
                [
                    "quantledger",
                    "submit",
                    str(model),
                    "--quant",
                    args.quant,
                    "--threads",
                    str(args.threads),
                    "--no-quality",  # the bare call measures no quality either
                    "--wait",
                    "--json",
                    "--out",
                    str(work / "service"),
                    "--server",
                    f"127.0.0.1:{port}",
                ],
                capture_output=True,
                text=True,
            )
            service_seconds = time.monotonic() - started
            service_peak = sampler.stop()
            if done.returncode != 0:
                raise SystemExit(f"service run failed: {done.stderr}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        peak_mb = service_peak / 1e6
        print(f"quantledger submit --wait:  {service_seconds:7.2f} s   peak RSS {peak_mb:7.1f} MB (server + worker)")
        same = (
            (work / "service" / "bench-Q4_K_M.gguf").stat().st_size == bare_out.stat().st_size
            if args.quant == "Q4_K_M"
            else None
        )
        ratio = service_seconds / bare_seconds
        extra = (service_peak - bare_peak) / 1e6
        print(f"wall-time ratio service/bare: {ratio:.3f}  (target <= 1.10)  {'OK' if ratio <= 1.10 else 'OVER'}")
        print(f"extra peak memory: {extra:+.1f} MB  (target <= 200 MB)  {'OK' if extra <= 200 else 'OVER'}")
        if same is not None:
            print(f"output sizes identical: {same}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
