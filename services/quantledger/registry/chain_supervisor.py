"""ChainSupervisor: keeps the embedded chain of ``quantledger up`` running.

``up`` starts the chain as a child process. When that child dies (kill -9, a crash, an OOM kill) the
supervisor starts it again on the same data dir and port, after a delay that starts at
``INITIAL_DELAY`` and doubles on every failed start up to ``MAX_DELAY``; a chain that stayed up for
``STABLE_AFTER`` seconds counts as healthy, so its next death starts again from the initial delay.
Listeners hear ``False`` when the chain is gone and ``True`` once a new one answers JSON-RPC (the gRPC
server turns RegistryService health NOT_SERVING / SERVING with it). The journal makes a restart lose
nothing that was acknowledged.

Every child is started from the supervisor's own long-lived thread: ``PR_SET_PDEATHSIG`` fires when
the *thread* that forked the child ends, and this thread ends only after ``stop`` has stopped the child.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INITIAL_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 60.0
STOP_GRACE = 30.0


class ChainStartFailed(RuntimeError):
    """A (re)started chain exited or did not answer in time."""


#: starts the chain and returns once it answers; gives up (ChainStartFailed) when the event is set
ChainLauncher = Callable[[threading.Event], "subprocess.Popen[bytes]"]


class ChainSupervisor:
    """Restarts a dead chain child with exponential backoff and tells listeners when it goes and comes back."""

    def __init__(
        self,
        launch: ChainLauncher,
        child: subprocess.Popen[bytes],
        *,
        initial_delay: float = INITIAL_DELAY,
        max_delay: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self._launch = launch
        self._child = child
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self._started_at = time.monotonic()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []
        self._running = True
        self.restarts = 0
        self._thread = threading.Thread(target=self._supervise, name="chain-supervisor", daemon=True)

    @property
    def running(self) -> bool:
        """Whether a chain is up and answering now."""
        return self._running

    @property
    def child(self) -> subprocess.Popen[bytes]:
        return self._child

    def start(self) -> None:
        self._thread.start()

    def listen(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(running)`` now and on every change (from the supervisor's thread)."""
        with self._lock:
            self._listeners.append(listener)
            running = self._running
        listener(running)

    def stop(self) -> None:
        """Stop supervising and stop the chain (SIGTERM: it snapshots its state; SIGKILL after a grace)."""
        self._stopping.set()
        with self._lock:
            self._listeners.clear()
            child = self._child
        _terminate(child)
        if self._thread.is_alive():
            self._thread.join(STOP_GRACE + 5)
        _terminate(self._child)  # one started while stop() was on its way in

    # ------------------------------------------------------------------ the supervisor's thread

    def _supervise(self) -> None:
        delay = self._initial_delay
        while not self._stopping.is_set():
            code = self._child.wait()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - self._started_at
            log.warning("the embedded chain exited (%s) after %.0f s; restarting it", _describe(code), uptime)
            self._set_running(False)
            if uptime >= self._stable_after:
                delay = self._initial_delay
            while not self._stopping.wait(delay):
                delay = min(delay * 2, self._max_delay)
                try:
                    child = self._launch(self._stopping)
                except ChainStartFailed as exc:
                    log.warning("the embedded chain did not start again (%s); next try in %.1f s", exc, delay)
                    continue
                with self._lock:
                    self._child = child
                self._started_at = time.monotonic()
                self.restarts += 1
                log.info("the embedded chain is back (restart %d)", self.restarts)
                self._set_running(True)
                break

    def _set_running(self, running: bool) -> None:
        with self._lock:
            self._running = running
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(running)
            except Exception:  # a listener's failure must not end supervision
                log.exception("chain state listener failed")


def _terminate(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _describe(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
