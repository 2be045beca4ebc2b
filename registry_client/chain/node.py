"""EmbeddedChain: an eth-tester (py-evm) chain that survives kill -9.

Blocks are deterministic: a fixed genesis (timestamp and funded accounts kept in the journal header) and
a mix hash derived from the parent instead of eth-tester's random one, so replaying the journal's raw
transactions at their recorded timestamps rebuilds the very same blocks, hashes and state root. Every
accepted transaction is mined at once (one block each) and journaled with fsync before it is
acknowledged. Snapshots of the key-value database bound the replay on restart.

eth-tester internals relied on (checked against eth-tester 0.14.0b1 / py-evm 0.12.1b1):
``PyEVMBackend.chain`` (a py-evm MiningChain), ``chain.header`` (the pending header, whose timestamp
we set), ``chain.mine_block(coinbase=, mix_hash=)``, and ``chain.chaindb.db.wrapped_db.kv_store``
(the MemoryDB dict a snapshot saves).
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from typing import Any

from eth.db.atomic import AtomicDB
from eth.db.backends.memory import MemoryDB
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_account_state
from eth_utils.crypto import keccak

from registry_client.chain.journal import Journal, JournalEntry, JournalHeader
from registry_client.chain.snapshot import read_snapshot, write_snapshot

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 200
FUNDED_BALANCE = 10**6 * 10**18


class _DeterministicBackend(PyEVMBackend):  # type: ignore[misc]
    """PyEVMBackend whose blocks depend only on their parent and transactions (no random mix hash)."""

    def mine_blocks(self, num_blocks: int = 1, coinbase: bytes = b"\0" * 20) -> tuple[bytes, ...]:
        hashes = []
        for _ in range(num_blocks):
            parent = self.chain.get_canonical_head()
            block = self.chain.mine_block(coinbase=coinbase, mix_hash=keccak(parent.hash), blob_gas_used=0)
            hashes.append(block.hash)
        return tuple(hashes)


def _new_tester(header: JournalHeader) -> EthereumTester:
    state = {bytes.fromhex(address.removeprefix("0x")): get_default_account_state({"balance": FUNDED_BALANCE})
             for address in header.funded}  # fmt: skip
    params = PyEVMBackend.generate_genesis_params({"timestamp": header.genesis_timestamp})
    return EthereumTester(_DeterministicBackend(genesis_parameters=params, genesis_state=state))


class EmbeddedChain:
    """The chain behind ``quantledger serve chain``; every method is safe to call from several threads."""

    def __init__(self, directory: pathlib.Path, tester: EthereumTester, journal: Journal, replayed: int) -> None:
        self.directory = directory
        self.tester = tester
        self.journal = journal
        self.replayed = replayed
        self.lock = threading.RLock()
        self._snapshot_entries = len(journal.entries)

    @property
    def snapshot_path(self) -> pathlib.Path:
        return self.directory / "state.snapshot"

    @classmethod
    def open(cls, directory: pathlib.Path, funded: list[str]) -> EmbeddedChain:
        """Reopen the chain in ``directory`` (snapshot + journal tail), or create it with ``funded`` accounts."""
        directory.mkdir(parents=True, exist_ok=True)
        header = JournalHeader(genesis_timestamp=int(time.time()), funded=tuple(a.lower() for a in funded))
        journal = Journal.open(directory / "journal.jsonl", header)
        tester = _new_tester(journal.header)
        start = 0
        snapshot = read_snapshot(directory / "state.snapshot")
        if snapshot is not None and snapshot[0] <= len(journal.entries):
            start, store = snapshot
            chain_class = type(tester.backend.chain)
            tester.backend.chain = chain_class(AtomicDB(MemoryDB(store)))
        elif snapshot is not None:
            log.warning("snapshot is ahead of the journal; replaying the whole journal")
        begun = time.monotonic()
        for entry in journal.entries[start:]:
            cls._apply(tester, entry)
        chain = cls(directory, tester, journal, len(journal.entries) - start)
        chain._snapshot_entries = start
        log.info("chain ready: %d blocks, %d replayed in %.1f s", len(journal.entries), chain.replayed,
                 time.monotonic() - begun)  # fmt: skip
        return chain

    @staticmethod
    def _apply(tester: EthereumTester, entry: JournalEntry) -> str:
        backend = tester.backend
        backend.chain.header = backend.chain.header.copy(timestamp=entry.timestamp)
        return str(tester.send_raw_transaction(entry.raw))

    def send_raw_transaction(self, raw: str) -> str:
        """Validate, mine (one block), journal durably, then return the hash."""
        with self.lock:
            self._check_chain_id(raw)
            parent = self.tester.get_block_by_number("latest")
            timestamp = max(int(time.time()), int(parent["timestamp"]) + 1)
            tx_hash = self._apply(self.tester, JournalEntry(raw, timestamp))
            self.journal.append(JournalEntry(raw, timestamp))
            if len(self.journal.entries) - self._snapshot_entries >= SNAPSHOT_EVERY:
                self.snapshot()
            return tx_hash

    def _check_chain_id(self, raw: str) -> None:
        """Refuse a transaction signed for another chain, or for none (replay protection, as geth does).
        py-evm itself executes either; the journal's entries passed this check when they were sent."""
        chain = self.tester.backend.chain
        try:
            transaction = chain.get_vm().get_transaction_builder().decode(bytes.fromhex(raw.removeprefix("0x")))
        except Exception:
            return  # undecodable: eth-tester refuses it with its own error
        chain_id = getattr(transaction, "chain_id", None)
        if chain_id is None:
            raise ValueError("only replay-protected (EIP-155) transactions are accepted")
        if chain_id != chain.chain_id:
            raise ValueError(f"invalid chain id {chain_id}: this chain is {chain.chain_id}")

    def snapshot(self) -> None:
        with self.lock:
            store: dict[bytes, bytes] = self.tester.backend.chain.chaindb.db.wrapped_db.kv_store
            write_snapshot(self.snapshot_path, len(self.journal.entries), dict(store))
            self._snapshot_entries = len(self.journal.entries)

    def close(self) -> None:
        with self.lock:
            if len(self.journal.entries) != self._snapshot_entries:
                self.snapshot()
            self.journal.close()

    def call(self, method: str, *args: Any) -> Any:
        with self.lock:
            return getattr(self.tester, method)(*args)
