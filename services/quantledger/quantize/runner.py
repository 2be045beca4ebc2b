"""Parent side of the quantization worker: start it, stream its events, kill it on cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantledger.errors import ImatrixRequired, QuantizeFailed, QuantledgerError, StageTimeout, WorkerCrashed
from quantledger.quantize.llama_log import IMATRIX_ERROR

EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class WorkerResult:
    """What one worker run produced."""

    events: list[dict[str, Any]] = field(default_factory=list)
    returncode: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


class WorkerProcess:
    """One ``llama_model_quantize`` call in its own process group."""

    def __init__(self, request: dict[str, Any], log_path: str, timeout: float | None = None) -> None:
        self._request = request
        self._log_path = log_path
        self._timeout = timeout
        self._process: asyncio.subprocess.Process | None = None
        self.killed = False

    async def run(self, on_event: EventHandler) -> WorkerResult:
        """Run to completion; raise QuantizeFailed / WorkerCrashed unless llama.cpp returned 0, and
        StageTimeout (the worker killed) when it runs longer than ``timeout`` seconds."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_root(), env.get("PYTHONPATH", "")] if p)
        with open(self._log_path, "ab") as log:
            log_start = log.tell()  # this run's own lines start here (a job's workers share its log)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "quantledger.quantize.worker",
                    "--events-fd",
                    str(write_fd),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    env=env,
                )
            finally:
                os.close(write_fd)
        result = WorkerResult()
        try:
            async with asyncio.timeout(self._timeout):
                assert self._process.stdin is not None
                self._process.stdin.write(json.dumps(self._request).encode())
                await self._process.stdin.drain()
                self._process.stdin.close()
                await self._read_events(read_fd, result, on_event)
                result.returncode = await self._process.wait()
        except TimeoutError:
            self.kill()
            await self._process.wait()  # dead, not only signalled, when the error reaches the caller
            mode = self._request.get("mode", "quantize")
            raise StageTimeout(
                f"the {mode} step ran longer than {self._timeout:.0f} s and was stopped "
                "(QUANTLEDGER_STAGE_TIMEOUT_SECONDS)",
                limit_seconds=f"{self._timeout:.0f}",
            ) from None
        except BaseException:
            self.kill()
            # reaped before the error reaches the caller (a SIGKILLed worker exits at once), so its
            # transport is closed even when the event loop ends right after a cancel
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._process.wait())
            raise
        if self.killed:
            raise asyncio.CancelledError("worker killed")
        finished = result.of("finished")
        if result.returncode == 0:
            return result
        typed = result.of("error")
        if typed:
            raise error_for_reason(typed[-1]["reason"], typed[-1]["message"])
        if finished:
            errors = "; ".join(finished[-1].get("errors") or []) or "see the job log"
            if IMATRIX_ERROR in errors:
                raise ImatrixRequired(
                    f"llama.cpp needs an importance matrix for this model and type: {errors}; pass imatrix_path"
                )
            raise QuantizeFailed(f"llama.cpp failed to quantize: {errors}", log=self._log_path)
        mode = self._request.get("mode", "quantize")
        what = "quantization" if mode == "quantize" else str(mode)
        status = f"exit status {result.returncode}"
        if result.returncode < 0:
            with contextlib.suppress(ValueError):
                status = f"killed by {signal.Signals(-result.returncode).name}"
        line = last_error_line(self._log_path, log_start)
        raise WorkerCrashed(
            f"{what} worker died ({status}){': ' + line if line else ''}; log: {self._log_path}",
            log=self._log_path,
            **({"log_line": line} if line else {}),
        )

    async def _read_events(self, read_fd: int, result: WorkerResult, on_event: EventHandler) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            async for raw in reader:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                result.events.append(event)
                on_event(event)
        finally:
            transport.close()

    def kill(self) -> None:
        """Kill the worker's whole process group now (idempotent)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


# Lines of a dying worker's log that say why, best first (llama.cpp's asserts and aborts, then errors).
_CRASH_MARKERS = ("GGML_ASSERT", "GGML_ABORT", "error", "Error", "terminate called", "Aborted")
CRASH_LOG_TAIL_BYTES = 64 << 10


def last_error_line(log_path: str, start: int) -> str:
    """The line of the log written after ``start`` that best says why a worker died ("" if none)."""
    try:
        with open(log_path, "rb") as log:
            end = log.seek(0, os.SEEK_END)
            log.seek(max(start, end - CRASH_LOG_TAIL_BYTES))
            lines = [ln.strip() for ln in log.read().decode("utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for marker in _CRASH_MARKERS:
        for line in reversed(lines):
            if marker in line:
                return line[:300]
    return ""


def error_for_reason(reason: str, message: str, **metadata: str) -> QuantledgerError:
    """The QuantledgerError subclass that carries ``reason`` (a worker reports errors by reason, a finished
    job keeps them as JobError), with ``metadata``."""
    pending: list[type[QuantledgerError]] = [QuantledgerError]
    while pending:
        cls = pending.pop()
        if cls.reason == reason:
            return cls(message, **metadata)
        pending.extend(cls.__subclasses__())
    return QuantizeFailed(message, **metadata)


def run_worker_sync(request: dict[str, Any], timeout: float = 120) -> list[dict[str, Any]]:
    """Run a worker to completion from synchronous code and return its events.

    A worker still running after ``timeout`` seconds is killed and StageTimeout raised, whether it is
    writing events or silent: the event pipe is read with the deadline, never to EOF first. A worker
    that exits with another status than 0 is WorkerCrashed."""
    import selectors
    import subprocess
    import time

    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_root(), env.get("PYTHONPATH", "")] if p)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "quantledger.quantize.worker", "--events-fd", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=env,
        )
    finally:
        os.close(write_fd)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
        with selectors.DefaultSelector() as selector:  # read until EOF or the deadline, never past it
            selector.register(read_fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _sync_timeout(request, timeout)
                if not selector.select(left):
                    continue
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise _sync_timeout(request, timeout) from None
    finally:
        os.close(read_fd)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise WorkerCrashed(f"worker exited with status {process.returncode}")
    return [json.loads(line) for line in b"".join(chunks).splitlines() if line.strip()]


def _sync_timeout(request: dict[str, Any], timeout: float) -> StageTimeout:
    mode = "probe" if "probe_ftypes" in request else request.get("mode", "quantize")
    return StageTimeout(
        f"the {mode} worker did not finish within {timeout:.0f} s and was killed", limit_seconds=f"{timeout:.0f}"
    )


def _package_root() -> str:
    """Directory that holds the ``quantledger`` package, so the child imports the same code."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
