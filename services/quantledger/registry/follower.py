"""A resumable follower of the registry's ``Registered`` events: each event handed to a handler, in chain
order, with a journal on disk as the cursor, so that a restart carries on where the last run stopped.

Delivery is at least once. The journal line of an event is written (and fsynced) only after the handler
has returned its outcome, so a crash between the two, or a handler that raises, leaves the event out
of the journal and the next run hands it over again. **The handler must therefore be idempotent**: handling
an event a second time must be harmless and give the same outcome. The reproducer's handler is: a file
this attester has already recorded counts as registered, it is not registered again. What a restart does
*not* do is repeat or skip an event whose journal line is complete: the cursor is the (block, log index)
of the last complete line, and the follower continues with the first event after it.

A torn last line (a crash in the middle of an append: no trailing newline, or not a readable entry) is
cut away when the journal is opened, which makes its event pending again rather than silently done. Damage
anywhere before the last line is not a torn append; it raises :class:`FollowerJournalCorrupt` instead of
guessing where to resume.

A chain that does not answer (:class:`~registry_client.errors.RegistryUnavailable`, from the client
factory, the event query or the handler) is logged and retried at the next poll with a fresh client: the
loop keeps running and the cursor does not move. Any other exception of the handler ends :meth:`follow`
(it propagates, with the event unjournaled). ``confirmations`` keeps the follower that many blocks behind
the head, so that an event is handled only once a reorganisation is unlikely to remove it; events removed by
a deeper reorganisation after they were handled are not taken back.

One journal belongs to one follower at a time: two running on the same file would both handle each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

from registry_client.client import RegistryClient
from registry_client.errors import QuantledgerError, RegistryUnavailable
from registry_client.events import RegisteredEvent, registered_events

log = logging.getLogger(__name__)

_KEYS = ("block", "logIndex", "fileSha256", "attester", "outcome")


class FollowerJournalCorrupt(QuantledgerError):
    """A line before the last one of a follower journal is unreadable: real damage, not a torn append,
    so there is no safe place to resume from (resuming anywhere could skip or repeat events)."""


def _parse(line: bytes) -> dict[str, Any] | None:
    """The entry of one journal line, or None when the line is not a complete, well-formed entry."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or any(key not in entry for key in _KEYS):
        return None
    position = (entry["block"], entry["logIndex"])
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in position):
        return None
    if not isinstance(entry["outcome"], dict):
        return None
    return entry


class Journal:
    """Append-only JSON-lines file of the handled events, one fsynced line each; the follower's cursor.

    Opening it reads every entry and cuts a torn last line away (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self._entries: list[dict[str, Any]] = []
        self._open()

    def _open(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        keep = len(data) - len(tail)  # bytes up to and including the last newline
        entries = [_parse(line) for line in complete]
        if entries and entries[-1] is None:  # a complete-looking but unreadable last line is torn too
            keep -= len(complete[-1]) + 1
            entries.pop()
        damaged = [number for number, entry in enumerate(entries, 1) if entry is None]
        if damaged:
            raise FollowerJournalCorrupt(
                f"{self.path}: line {damaged[0]} is not a journal entry; the journal is damaged before its last line",
                path=str(self.path),
                line=damaged[0],
            )
        previous: tuple[int, int] | None = None
        for number, entry in enumerate(entries, 1):
            assert entry is not None
            position = (entry["block"], entry["logIndex"])
            if previous is not None and position <= previous:
                raise FollowerJournalCorrupt(
                    f"{self.path}: line {number} is not after the line before it; the journal is damaged",
                    path=str(self.path),
                    line=number,
                )
            previous = position
            self._entries.append(entry)
        if keep < len(data):
            log.warning(
                "%s: cutting away a torn last line (%d bytes); its event is handled again", self.path, len(data) - keep
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())

    def position(self) -> tuple[int, int] | None:
        """(block, log index) of the last handled event, or None when nothing has been handled yet."""
        if not self._entries:
            return None
        last = self._entries[-1]
        return (int(last["block"]), int(last["logIndex"]))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in the order handled (copies: changing them does not change the journal)."""
        return [json.loads(json.dumps(entry)) for entry in self._entries]

    def record(self, event: RegisteredEvent, outcome: dict[str, Any]) -> None:
        """Durably append ``event`` with its outcome (returns after fsync).

        The event must come after the current position: the journal is the cursor, and an entry out of
        order would make a restart resume in the wrong place. An outcome that is not JSON is refused before
        anything is written. A failed write is cut back off, so the event is not in the journal."""
        position = self.position()
        if position is not None and event.position <= position:
            raise ValueError(f"event at {event.position} is not after the journal's position {position}")
        entry = {
            "block": event.block_number,
            "logIndex": event.log_index,
            "fileSha256": event.file_sha256,
            "attester": event.attester,
            "outcome": outcome,
        }
        data = (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # leave no partial line for a later append to glue onto
                raise
        finally:
            os.close(fd)
        if created:  # the file's name must survive a crash too, not only its bytes
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._entries.append(json.loads(data))


class EventFollower:
    """Hands each ``Registered`` event after the journal's position to a handler, in chain order."""

    def __init__(
        self,
        client_factory: Callable[[], RegistryClient],
        journal: Journal,
        from_block: int = 0,
        confirmations: int = 0,
        poll_seconds: float = 2.0,
    ) -> None:
        if confirmations < 0 or from_block < 0 or poll_seconds < 0:
            raise ValueError("from_block, confirmations and poll_seconds must not be negative")
        self.client_factory = client_factory
        self.journal = journal
        self.from_block = from_block
        self.confirmations = confirmations
        self.poll_seconds = poll_seconds
        self._client: RegistryClient | None = None

    def _connected(self) -> RegistryClient:
        # made on first use and after an outage, so a chain that restarted gets a fresh connection
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def pending(self) -> list[RegisteredEvent]:
        """The events after the journal's position (from ``from_block`` when it is empty), up to the block
        ``confirmations`` below the head, in order. Raises RegistryUnavailable when the chain does not answer.

        The journal's block is read again (not the block after it) because the events of one block may
        have been handled only in part; those at or before the position are dropped."""
        try:
            client = self._connected()
            latest = int(client._call(lambda: client.w3.eth.block_number))
            position = self.journal.position()
            start = self.from_block if position is None else position[0]
            events = registered_events(client, start, latest - self.confirmations)
        except RegistryUnavailable:
            self._client = None
            raise
        return [event for event in events if position is None or event.position > position]

    async def follow(
        self,
        handle: Callable[[RegisteredEvent], Awaitable[dict[str, Any]]],
        stop: asyncio.Event | None = None,
        until_idle: bool = False,
    ) -> None:
        """Handle pending events one at a time, journaling each outcome after ``handle`` returns; when none
        are pending, return if ``until_idle``, else sleep ``poll_seconds`` (cut short by ``stop``). Returns
        when ``stop`` is set (after the event in hand, if any). A handler's exception other than
        RegistryUnavailable propagates, with that event left out of the journal."""
        unavailable = False
        while stop is None or not stop.is_set():
            try:
                # the chain's JSON-RPC calls block: keep them off the event loop
                events = await asyncio.to_thread(self.pending)
                for event in events:
                    if stop is not None and stop.is_set():
                        return
                    outcome = await handle(event)
                    self.journal.record(event, outcome)
            except RegistryUnavailable as exc:
                self._client = None
                if not unavailable:
                    log.warning("registry follower: %s; retrying every %.1f s", exc.message, self.poll_seconds)
                unavailable = True
            else:
                if unavailable:
                    log.info("registry follower: the chain answers again")
                unavailable = False
                if not events and until_idle:
                    return
                if events:
                    continue  # more may have arrived while these were handled: look again at once
            await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(self.poll_seconds)
            return
        with contextlib.suppress(TimeoutError):  # the poll interval passed without a stop
            await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)
