"""EmbeddedChain: an eth-tester (py-evm) chain that survives kill -9.

Blocks are deterministic: a fixed genesis (timestamp and funded accounts kept in the journal header) and
a mix hash derived from the parent instead of eth-tester's random one, so replaying the journal's raw
transactions at their recorded timestamps rebuilds the very same blocks, hashes and state root. Every
accepted transaction is mined at once (one block each) and journaled with fsync before it is
acknowledged. Snapshots of the key-value database bound the replay on restart.

A transaction is acknowledged only once journaled: when the append fails (a full disk, an I/O error)
the in-memory chain is rebuilt from the snapshot and journal on disk, so memory (and every later
snapshot) never runs ahead of the journal, and the send fails with :class:`TransactionNotPersisted`.

``eth_call`` / ``eth_estimateGas`` run through :meth:`EmbeddedChain.bounded`: without the chain lock
(they read immutable, content-addressed trie nodes and never persist), with a gas cap and a wall-time
deadline. The deadline is checked by the VM's jump and call opcodes (every unbounded execution loops
through one of them) and aborts the call with :class:`CallTimeout`; it is per thread and unset while
mining, so transactions execute exactly as before.

eth-tester internals relied on (checked against eth-tester 0.14.0b1 / py-evm 0.12.1b1):
``PyEVMBackend.chain`` (a py-evm MiningChain), ``chain.header`` (the pending header, whose timestamp
we set), ``chain.mine_block(coinbase=, mix_hash=)``, ``chain.chaindb.db.wrapped_db.kv_store``
(the MemoryDB dict a snapshot saves), and py-evm's class configuration (``vm_configuration``,
``VM._state_class``, ``State.computation_class``, ``Computation.opcodes``, ``Chain.gas_estimator``).
"""

from __future__ import annotations

import logging
import pathlib
import re
import threading
import time
from typing import Any

from eth import EVM_RECURSION_LIMIT
from eth.db.atomic import AtomicDB
from eth.db.backends.memory import MemoryDB
from eth.estimators import get_gas_estimator
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import get_default_account_state
from eth_utils.crypto import keccak

from registry_client import restore_recursion_limit
from registry_client.chain.journal import Journal, JournalEntry, JournalHeader, JournalWriteFailed
from registry_client.chain.snapshot import read_snapshot, write_snapshot

# py-evm needs about 12k frames for a 1,024-deep call stack; py_ecc raised the limit to 100,000
restore_recursion_limit(at_least=EVM_RECURSION_LIMIT)

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 200
_HEX_BYTES = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
FUNDED_BALANCE = 10**6 * 10**18
#: JUMP, JUMPI, CALL, CALLCODE, DELEGATECALL, STATICCALL, CREATE, CREATE2: any execution longer than
#: one pass over a contract's code goes through one of these
_DEADLINE_OPCODES = (0x56, 0x57, 0xF1, 0xF2, 0xF4, 0xFA, 0xF0, 0xF5)


class CallTimeout(Exception):
    """An eth_call / eth_estimateGas ran past its wall-time deadline and was aborted (nothing persisted)."""


class UndecodableTransaction(Exception):
    """The bytes sent as a signed transaction do not decode as one (bad hex, bad RLP, an unknown type)."""


class TransactionNotPersisted(Exception):
    """The transaction could not be journaled (``error.errno``: ENOSPC for a full disk); it was not
    acknowledged and the chain is back at the state before it, so the same transaction can be sent again."""

    def __init__(self, error: JournalWriteFailed) -> None:
        super().__init__(error.strerror)
        self.error = error


class _Limits(threading.local):
    """Per-thread bounds of the call being executed; unset (None) outside :meth:`EmbeddedChain.bounded`."""

    deadline: float | None = None
    gas_cap: int | None = None
    no_base_fee: bool = False


_limits = _Limits()


class _DeadlineOpcode:
    """An opcode that first checks the calling thread's deadline."""

    def __init__(self, opcode: Any) -> None:
        self._opcode = opcode

    def __call__(self, computation: Any) -> Any:
        deadline = _limits.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise CallTimeout("execution aborted: the call ran past its time limit")
        return self._opcode(computation=computation)

    def __getattr__(self, name: str) -> Any:  # mnemonic, gas_cost: as the wrapped opcode
        return getattr(self._opcode, name)


def _deadline_vm(vm_class: Any) -> Any:
    state_class = vm_class.get_state_class()
    computation_class = state_class.computation_class
    opcodes = dict(computation_class.opcodes)
    for number in _DEADLINE_OPCODES:
        if number in opcodes:
            opcodes[number] = _DeadlineOpcode(opcodes[number])
    computation = computation_class.configure(opcodes=opcodes)
    return vm_class.configure(_state_class=state_class.configure(computation_class=computation))


class _GasLimitedState:
    """A VM state whose ``gas_limit`` (the upper end of py-evm's gas search) is lowered to the RPC gas cap."""

    def __init__(self, state: Any, gas_limit: int) -> None:
        self._state = state
        self.gas_limit = gas_limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _capped_gas_estimate(state: Any, transaction: Any) -> int:
    cap = _limits.gas_cap
    if cap is not None and cap < state.gas_limit:
        state = _GasLimitedState(state, cap)
    return int(get_gas_estimator()(state, transaction))


def _bounded_chain_class(chain_class: Any) -> Any:
    """``chain_class`` with deadline-checking VMs, a gas estimate capped at the RPC gas cap, and (for a
    call that names no fee, as geth does) a zero base fee, so that a call costs its sender nothing."""
    if getattr(chain_class, "_quantledger_bounded", False):
        return chain_class

    def get_vm(self: Any, at_header: Any = None) -> Any:
        if at_header is not None and _limits.no_base_fee and getattr(at_header, "base_fee_per_gas", None):
            at_header = at_header.copy(base_fee_per_gas=0)
        return chain_class.get_vm(self, at_header)

    vms = tuple((number, _deadline_vm(vm)) for number, vm in chain_class.vm_configuration)
    return type(
        chain_class.__name__,
        (chain_class,),
        {
            "vm_configuration": vms,
            "gas_estimator": staticmethod(_capped_gas_estimate),
            "get_vm": get_vm,
            "_quantledger_bounded": True,
        },
    )


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
    state = {
        bytes.fromhex(address.removeprefix("0x")): get_default_account_state({"balance": FUNDED_BALANCE})
        for address in header.funded
    }
    params = PyEVMBackend.generate_genesis_params({"timestamp": header.genesis_timestamp})
    backend = _DeterministicBackend(genesis_parameters=params, genesis_state=state)
    backend.chain = _bounded_chain_class(type(backend.chain))(backend.chain.chaindb.db)
    return EthereumTester(backend)


def _load(directory: pathlib.Path, journal: Journal) -> tuple[EthereumTester, int]:
    """The chain state of ``journal`` (snapshot + replay of the rest), and the entries the snapshot held."""
    tester = _new_tester(journal.header)
    start = 0
    snapshot = read_snapshot(directory / "state.snapshot")
    if snapshot is not None and snapshot[0] <= len(journal.entries):
        start, store = snapshot
        chain_class = type(tester.backend.chain)
        tester.backend.chain = chain_class(AtomicDB(MemoryDB(store)))
    elif snapshot is not None:
        log.warning("snapshot is ahead of the journal; replaying the whole journal")
    for entry in journal.entries[start:]:
        EmbeddedChain._apply(tester, entry)
    return tester, start


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
        begun = time.monotonic()
        tester, start = _load(directory, journal)
        chain = cls(directory, tester, journal, len(journal.entries) - start)
        chain._snapshot_entries = start
        log.info(
            "chain ready: %d blocks, %d replayed in %.1f s",
            len(journal.entries),
            chain.replayed,
            time.monotonic() - begun,
        )
        return chain

    @staticmethod
    def _apply(tester: EthereumTester, entry: JournalEntry) -> str:
        backend = tester.backend
        backend.chain.header = backend.chain.header.copy(timestamp=entry.timestamp)
        return str(tester.send_raw_transaction(entry.raw))

    def send_raw_transaction(self, raw: str) -> str:
        """Validate, mine (one block), journal durably, then return the hash.

        Raises :class:`TransactionNotPersisted` when the journal append fails; the mined block is then
        undone (the state is rebuilt from disk), so the chain is exactly its journal again."""
        with self.lock:
            self._check_chain_id(raw)
            parent = self.tester.get_block_by_number("latest")
            timestamp = max(int(time.time()), int(parent["timestamp"]) + 1)
            tx_hash = self._apply(self.tester, JournalEntry(raw, timestamp))
            try:
                self.journal.append(JournalEntry(raw, timestamp))
            except JournalWriteFailed as exc:
                log.error("could not journal transaction %s (%s); undoing it", tx_hash, exc.strerror)
                self._rebuild()
                raise TransactionNotPersisted(exc) from exc
            if len(self.journal.entries) - self._snapshot_entries >= SNAPSHOT_EVERY:
                self._try_snapshot()
            return tx_hash

    def _rebuild(self) -> None:
        """Throw the in-memory state away and load it again from the snapshot and journal on disk."""
        begun = time.monotonic()
        self.tester, self._snapshot_entries = _load(self.directory, self.journal)
        log.info("chain rebuilt from disk at %d blocks in %.1f s", len(self.journal.entries), time.monotonic() - begun)

    def _try_snapshot(self) -> None:
        """A snapshot only shortens the next replay: one that cannot be written (disk full) is skipped."""
        try:
            self.snapshot()
        except OSError as exc:
            log.warning("could not write the chain snapshot (%s); the journal alone still holds every block", exc)

    def _check_chain_id(self, raw: str) -> None:
        """Refuse bytes that are no signed transaction (:class:`UndecodableTransaction`), and a transaction
        signed for another chain or for none (``ValueError``; replay protection, as geth does). py-evm
        itself executes either; the journal's entries passed this check when they were sent."""
        chain = self.tester.backend.chain
        builder = chain.get_vm().get_transaction_builder()
        if not _HEX_BYTES.fullmatch(raw):  # bytes.fromhex would skip spaces eth-tester then refuses
            raise UndecodableTransaction("not a signed transaction: not 0x-prefixed hex bytes")
        try:
            transaction = builder.decode(bytes.fromhex(raw[2:]))
        except Exception as exc:  # rlp / eth-utils / py-evm decoding errors share no base class
            raise UndecodableTransaction(f"not a signed transaction: {type(exc).__name__}") from exc
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
                self._try_snapshot()
            self.journal.close()

    def call(self, method: str, *args: Any) -> Any:
        with self.lock:
            return getattr(self.tester, method)(*args)

    def bounded(self, method: str, *args: Any, timeout: float, gas_cap: int, no_base_fee: bool = False) -> Any:
        """A read-only execution (``call`` / ``estimate_gas``) without the chain lock, aborted with
        :class:`CallTimeout` after ``timeout`` seconds; an estimate searches no higher than ``gas_cap``.
        ``no_base_fee`` executes with a zero base fee (for a transaction whose fees are zero: the sender's
        balance then needs to cover nothing but the value).

        Safe without the lock: the execution builds its own VM state over the key-value store, whose trie
        nodes are content-addressed and never deleted, reads only blocks already mined, and never persists;
        mining swaps whole (immutable) headers."""
        tester = self.tester
        _limits.deadline, _limits.gas_cap, _limits.no_base_fee = time.monotonic() + timeout, gas_cap, no_base_fee
        try:
            result = getattr(tester, method)(*args)
        finally:
            expired = _limits.deadline is not None and time.monotonic() > _limits.deadline
            _limits.deadline = _limits.gas_cap = None
            _limits.no_base_fee = False
        if expired:  # an estimate's search can swallow the abort as a failed try: never trust its answer
            raise CallTimeout("execution aborted: the call ran past its time limit")
        return result
