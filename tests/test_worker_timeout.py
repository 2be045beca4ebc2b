"""A worker that hangs without writing a word is killed at its time bound, with the typed timeout error.

The hang is real: the worker (quality evaluation) opens a FIFO as its evaluation text and waits for bytes
this test never writes. Writing to the FIFO afterwards shows that nothing reads it any more (the worker
was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import threading
import time

import pytest

from quantledger.errors import StageTimeout
from quantledger.quantize.runner import WorkerProcess, run_worker_sync
from quantledger.testing.synthetic_model import write_llama_gguf


class HangingSource:
    """A FIFO as a file the worker reads: it blocks opening it, then reading it while this holds the
    write end open and writes nothing."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.path = directory / "never-written.txt"
        os.mkfifo(self.path)
        self.write_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._thread.start()

    def _wait_for_reader(self) -> None:
        while not self._stop.is_set():
            try:  # succeeds only once a reader (the worker's llama.cpp) has the FIFO open
                self.write_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError:
                time.sleep(0.02)

    def reader_was_there(self) -> bool:
        self._stop.set()
        self._thread.join()
        return self.write_fd is not None

    def reader_is_gone(self) -> bool:
        assert self.write_fd is not None
        try:
            os.write(self.write_fd, b"GGUF")
        except BrokenPipeError:
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        if self.write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.write_fd)


@pytest.fixture()
def hanging(tmp_path: pathlib.Path):
    source = HangingSource(tmp_path)
    yield source
    source.close()


def request_for(text: HangingSource, tmp_path: pathlib.Path) -> dict[str, object]:
    model = tmp_path / "tiny-f16.gguf"
    write_llama_gguf(model, n_embd=256, n_ff=256, n_layer=1, n_head=2, n_head_kv=1, n_vocab=288)
    return {"mode": "evaluate", "reference": str(model), "quantized": str(model), "eval_text_path": str(text.path)}


@pytest.mark.timeout(120)  # generous: proves the call returns, not how fast
def test_run_worker_sync_kills_a_silent_worker_at_the_timeout(hanging: HangingSource, tmp_path) -> None:
    with pytest.raises(StageTimeout) as caught:
        run_worker_sync(request_for(hanging, tmp_path), timeout=8)
    assert caught.value.reason == "STAGE_TIMEOUT" and caught.value.metadata["limit_seconds"] == "8"
    assert hanging.reader_was_there(), "the worker never reached its source: it did not hang where intended"
    assert hanging.reader_is_gone(), "the hung worker is still alive after the timeout"


@pytest.mark.timeout(120)
def test_worker_process_kills_a_silent_worker_at_the_timeout(hanging: HangingSource, tmp_path) -> None:
    worker = WorkerProcess(request_for(hanging, tmp_path), str(tmp_path / "worker.log"), timeout=8)
    with pytest.raises(StageTimeout):
        asyncio.run(worker.run(lambda _event: None))
    assert hanging.reader_was_there(), "the worker never reached its source: it did not hang where intended"
    assert hanging.reader_is_gone(), "the hung worker is still alive after the timeout"
