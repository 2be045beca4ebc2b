"""The registry's ``Registered`` events, read in block windows, in chain order.

The client's reads otherwise go through contract views only (client.py); events are for whoever has to
react to registrations as they happen (a reproducer following what others attest) and needs every one
exactly in the order the chain made them, which the views cannot give.

Nodes cap how many blocks one ``eth_getLogs`` may span (public endpoints commonly at 2,000 or 10,000;
the embedded node of ``registry_client.chain`` at 1,000), so a range is read in windows of at most
:data:`LOG_WINDOW` blocks: the smallest cap seen, so the same code works on every chain without probing.
Each window is one JSON-RPC interaction through the client's own error mapping, so an endpoint that does
not answer raises :class:`~registry_client.errors.RegistryUnavailable` like every other read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3

from registry_client.client import RegistryClient

#: blocks per ``eth_getLogs`` call; at most 2,000 (the common cap) and within the embedded node's 1,000
LOG_WINDOW = 1_000


@dataclass(frozen=True)
class RegisteredEvent:
    """One ``Registered(fileDigest, attester, sourceDigest)`` log, with where the chain put it."""

    block_number: int
    log_index: int
    transaction: str  # 0x-prefixed hash of the transaction that emitted it
    file_sha256: str  # 64 lower-case hex, no 0x (the form Registration and Record use)
    attester: str  # checksummed
    source_digest: str  # 64 lower-case hex, no 0x

    @property
    def position(self) -> tuple[int, int]:
        """(block, log index): a total order of the chain's logs, and what a follower's cursor stores."""
        return (self.block_number, self.log_index)


def registered_events(
    client: RegistryClient, from_block: int, to_block: int, *, window: int = LOG_WINDOW
) -> list[RegisteredEvent]:
    """Every ``Registered`` event of ``client``'s registry in blocks ``from_block..to_block`` (both
    included), sorted by (block, log index). ``window`` bounds the blocks of one ``eth_getLogs`` call.
    ``to_block`` should not be past the chain's head: nodes differ on such a range (the embedded node
    refuses it), so the caller, who knows the head, bounds it (the follower passes head - confirmations).

    Raises RegistryUnavailable when the endpoint does not answer and TransactionFailed when it refuses
    a query (a window above its cap): in both cases nothing is returned, never a partial list, so a
    caller cannot mistake a gap for the absence of events."""
    if window < 1:
        raise ValueError(f"window must be at least 1 block, got {window}")
    event = client.contract.events.Registered()
    found: list[RegisteredEvent] = []
    start = max(0, from_block)
    while start <= to_block:
        end = min(to_block, start + window - 1)

        def fetch(first: int = start, last: int = end) -> list[Any]:
            # list() inside the call: web3 may decode lazily, and any failure must go through the error mapping
            return list(event.get_logs(from_block=first, to_block=last))

        found.extend(_event(log) for log in client._call(fetch))
        start = end + 1
    found.sort(key=lambda e: e.position)
    return found


def _event(log: Any) -> RegisteredEvent:
    args = log["args"]
    return RegisteredEvent(
        block_number=int(log["blockNumber"]),
        log_index=int(log["logIndex"]),
        transaction=log["transactionHash"].to_0x_hex(),
        file_sha256=bytes(args["fileDigest"]).hex(),
        attester=Web3.to_checksum_address(args["attester"]),
        source_digest=bytes(args["sourceDigest"]).hex(),
    )
