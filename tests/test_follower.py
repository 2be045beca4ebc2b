"""The Registered-event follower on a real EVM (the embedded eth-tester chain, in process): events in chain
order, a journal that a restart resumes from without repeating or skipping, a torn last line handled again,
a failing handler that leaves its event pending, and a chain that does not answer at first."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from conftest import free_port
from test_registry_contract import Chain, digest, registration

from quantledger.registry.follower import EventFollower, FollowerJournalCorrupt, Journal
from registry_client.client import RegistryClient
from registry_client.events import RegisteredEvent, registered_events

pytestmark = pytest.mark.chain


@pytest.fixture
def chain(tmp_path: pathlib.Path) -> Iterator[Chain]:
    running = Chain(tmp_path / "chain")
    running.admin.grant_attester(running.accounts[1].address)
    yield running
    running.node.close()


def register(chain: Chain, *names: str, attester: int = 0) -> list[str]:
    """Register ``names`` one transaction each; their file digests, in order."""
    for name in names:
        chain.client(attester).register(registration(name, source=f"source of {name}"))
    return [digest(name) for name in names]


class Handler:
    """An idempotent handler like the reproducer's: it reads the record back and reports it registered."""

    def __init__(self, chain: Chain, fail_on: str | None = None) -> None:
        self.reader = chain.reader()
        self.fail_on = fail_on
        self.handled: list[str] = []

    async def __call__(self, event: RegisteredEvent) -> dict[str, Any]:
        if event.file_sha256 == self.fail_on:
            raise RuntimeError(f"handler failed on {event.file_sha256}")
        record = self.reader.get(event.file_sha256, event.attester)
        self.handled.append(event.file_sha256)
        return {"registered": True, "quantType": record.quant_type}


def follower(chain: Chain, path: pathlib.Path, **options: Any) -> EventFollower:
    """A new follower on a journal opened afresh from ``path``: what a restarted process has."""
    return EventFollower(chain.reader, Journal(path), poll_seconds=0.01, **options)


def run(follow: Callable[..., Awaitable[None]], handler: Handler) -> None:
    asyncio.run(follow(handler, until_idle=True))


def journaled(path: pathlib.Path) -> list[str]:
    return [entry["fileSha256"] for entry in Journal(path).entries()]


def test_registered_events_come_in_chain_order_with_their_digests(chain: Chain) -> None:
    first = chain.admin.register(registration("a", source="src a"))
    chain.client(1).register(registration("b", source="src b"))
    chain.admin.register_batch([registration(f"batch{i}", source="src batch") for i in range(3)])  # one block
    latest = chain.w3.eth.block_number

    events = registered_events(chain.reader(), 0, latest)

    assert [e.file_sha256 for e in events] == [digest(n) for n in ("a", "b", "batch0", "batch1", "batch2")]
    assert [e.attester for e in events] == [chain.admin.attester, chain.client(1).attester] + [chain.admin.attester] * 3
    assert [e.source_digest for e in events] == [digest("src a"), digest("src b")] + [digest("src batch")] * 3
    assert events[0].transaction == first.transaction and events[0].block_number == first.block_number
    assert len({e.block_number for e in events[2:]}) == 1 and [e.log_index for e in events[2:]] == sorted(
        e.log_index for e in events[2:]
    )
    assert [e.position for e in events] == sorted({e.position for e in events})
    # windows of one and two blocks see exactly the same events: none lost or doubled at a window's edge
    assert registered_events(chain.reader(), 0, latest, window=1) == events
    assert registered_events(chain.reader(), 0, latest, window=2) == events
    assert registered_events(chain.reader(), first.block_number + 1, latest) == events[1:]


def test_a_restarted_follower_neither_repeats_nor_skips(chain: Chain, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "follower.jsonl"
    first = register(chain, "m1", "m2", "m3")
    handler = Handler(chain)
    run(follower(chain, path).follow, handler)
    assert handler.handled == first == journaled(path)
    entry = Journal(path).entries()[0]
    assert entry["attester"] == chain.admin.attester and entry["outcome"] == {"registered": True, "quantType": "Q4_K_M"}

    later = register(chain, "m4", "m5", attester=1)
    restarted = follower(chain, path)
    assert [e.file_sha256 for e in restarted.pending()] == later
    handler = Handler(chain)
    run(restarted.follow, handler)
    assert handler.handled == later
    assert journaled(path) == first + later
    assert follower(chain, path).pending() == []


@pytest.mark.parametrize("torn", ["half a line", "an unreadable complete line"])
def test_a_torn_last_line_is_dropped_and_its_event_handled_again(
    chain: Chain, tmp_path: pathlib.Path, torn: str
) -> None:
    path = tmp_path / "follower.jsonl"
    files = register(chain, "t1", "t2", "t3")
    run(follower(chain, path).follow, Handler(chain))
    # the file as a crash in the middle of appending t3's line leaves it
    lines = path.read_bytes().splitlines(keepends=True)
    last = lines[-1][: len(lines[-1]) // 2] + (b"\n" if torn == "an unreadable complete line" else b"")
    path.write_bytes(b"".join(lines[:-1]) + last)

    reopened = Journal(path)
    assert [e["fileSha256"] for e in reopened.entries()] == files[:2]
    assert path.read_bytes() == b"".join(lines[:-1])  # cut away on open
    handler = Handler(chain)
    run(EventFollower(chain.reader, reopened, poll_seconds=0.01).follow, handler)
    assert handler.handled == files[2:]
    assert journaled(path) == files
    assert path.read_bytes() == b"".join(lines)  # the same line, written once


def test_damage_before_the_last_line_is_refused(chain: Chain, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "follower.jsonl"
    register(chain, "d1", "d2")
    run(follower(chain, path).follow, Handler(chain))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"{not json\n" + lines[1])
    with pytest.raises(FollowerJournalCorrupt):
        Journal(path)


def test_a_failing_handler_leaves_its_event_pending_for_the_restart(chain: Chain, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "follower.jsonl"
    files = register(chain, "f1", "f2", "f3")
    with pytest.raises(RuntimeError, match="handler failed"):
        run(follower(chain, path).follow, Handler(chain, fail_on=files[1]))
    assert journaled(path) == files[:1]

    handler = Handler(chain)
    run(follower(chain, path).follow, handler)
    assert handler.handled == files[1:]
    assert journaled(path) == files


def test_from_block_and_confirmations_bound_an_empty_journal(chain: Chain, tmp_path: pathlib.Path) -> None:
    register(chain, "old1", "old2")
    start = chain.w3.eth.block_number + 1
    new = register(chain, "new1", "new2")
    path = tmp_path / "follower.jsonl"
    assert [e.file_sha256 for e in follower(chain, path, from_block=start, confirmations=1).pending()] == new[:1]
    handler = Handler(chain)
    run(follower(chain, path, from_block=start).follow, handler)
    assert handler.handled == new == journaled(path)


def test_a_chain_that_does_not_answer_is_retried_without_moving_the_cursor(
    chain: Chain, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = register(chain, "u1", "u2")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    calls: list[str] = []

    def factory() -> RegistryClient:
        calls.append("connect")
        if len(calls) <= 2:
            return RegistryClient.connect(dead, address=chain.address, timeout=1.0)
        return chain.reader()

    path = tmp_path / "follower.jsonl"
    handler = Handler(chain)
    with caplog.at_level(logging.WARNING, logger="quantledger.registry.follower"):
        asyncio.run(EventFollower(factory, Journal(path), poll_seconds=0.01).follow(handler, until_idle=True))
    assert len(calls) == 3  # two failed polls, each with a fresh client, then one that stays
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1  # one warning per outage
    assert "does not answer" in caplog.records[0].message
    assert handler.handled == files == journaled(path)


def test_stop_ends_a_waiting_follower(chain: Chain, tmp_path: pathlib.Path) -> None:
    files = register(chain, "s1")
    handler = Handler(chain)
    follower_ = EventFollower(chain.reader, Journal(tmp_path / "follower.jsonl"), poll_seconds=30.0)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(follower_.follow(handler, stop))
        while not handler.handled:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=5)  # woken from its 30 s sleep

    asyncio.run(main())
    assert handler.handled == files
    assert json.loads((tmp_path / "follower.jsonl").read_text())["fileSha256"] == files[0]
