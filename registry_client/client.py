"""RegistryClient: the QuantizedModelRegistry over any Ethereum JSON-RPC endpoint.

Reads go through contract views only (never event scans). Writes are signed locally with the client's
key, gas-estimated first (so a call the contract would refuse fails with a typed error before anything
is sent), then sent raw and awaited. Custom errors of the contract become the exceptions in
``registry_client.errors``.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)
from web3.types import TxParams

from registry_client import errors, restore_recursion_limit
from registry_client.address_book import AddressBook, Deployment
from registry_client.artifact import ContractArtifact, registry_artifact
from registry_client.records import Record, Registration, Status, encode_label, normalize_digest

restore_recursion_limit()  # web3 / eth-account raised it (see registry_client/__init__.py)

T = TypeVar("T")

#: contract custom error -> exception class (the rest become InvalidRecord)
_ERROR_CLASSES: dict[str, type[errors.ContractRejected]] = {
    "MissingRole": errors.NotAttester,
    "AlreadyRegistered": errors.AlreadyRegistered,
    "RecordNotFound": errors.RecordNotFound,
    "AlreadyRevoked": errors.AlreadyRevoked,
    "LastAdmin": errors.ContractRejected,
}

ATTESTER_ROLE = keccak(text="ATTESTER_ROLE")
ADMIN_ROLE = keccak(text="ADMIN_ROLE")


@dataclass(frozen=True)
class TransactionResult:
    """A mined transaction of this client."""

    transaction: str
    block_number: int
    gas_used: int


@functools.cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """Selector -> (name, argument types) of every custom error of the registry."""
    table: dict[bytes, tuple[str, list[str]]] = {}
    for item in registry_artifact().abi:
        if item.get("type") == "error":
            types = [entry["type"] for entry in item["inputs"]]
            table[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return table


def _revert_data(exc: ContractLogicError) -> bytes:
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data") or ""
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return b""


def _format_arg(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


class RegistryClient:
    """One deployed registry, read by anyone, written by the holder of ``account``."""

    def __init__(self, w3: Web3, address: str, account: LocalAccount | None = None, *, timeout: float = 60.0) -> None:
        self.w3 = w3
        self.artifact: ContractArtifact = registry_artifact()
        self.address = Web3.to_checksum_address(address)
        self.account = account
        self.timeout = timeout
        self.contract: Contract = w3.eth.contract(address=self.address, abi=self.artifact.abi)
        self._send_lock = threading.Lock()

    # ------------------------------------------------------------------ connecting

    @staticmethod
    def web3_for(url: str, *, timeout: float = 10.0) -> Web3:
        """A Web3 on ``url`` that fails fast (no retries) and has checked the endpoint answers."""
        provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
        w3 = Web3(provider)
        _call_chain(lambda: w3.eth.chain_id, url)
        return w3

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        address: str | None = None,
        account: LocalAccount | None = None,
        address_book: AddressBook | None = None,
        timeout: float = 10.0,
    ) -> RegistryClient:
        """Attach to the registry at ``address``, or the one the address book records for this chain."""
        w3 = cls.web3_for(url, timeout=timeout)
        chain_id = _call_chain(lambda: w3.eth.chain_id, url)
        if address is None:
            deployment = address_book.get(chain_id) if address_book else None
            if deployment is None:
                raise errors.ContractNotDeployed(
                    f"no registry is recorded for chain {chain_id}; deploy one (quantledger up deploys it)",
                    chain_id=chain_id,
                )
            address = deployment.address
        client = cls(w3, address, account)
        client.check_deployed()
        return client

    @classmethod
    def ensure_deployed(
        cls, url: str, account: LocalAccount, address_book: AddressBook, *, timeout: float = 10.0
    ) -> RegistryClient:
        """The registry recorded for this chain if its code is there, else a fresh deployment (recorded)."""
        w3 = cls.web3_for(url, timeout=timeout)
        chain_id = _call_chain(lambda: w3.eth.chain_id, url)
        known = address_book.get(chain_id)
        if known is not None:
            client = cls(w3, known.address, account)
            if client.deployed_code_matches():
                return client
        client = cls.deploy(w3, account)
        address_book.put(client.deployment)
        return client

    @classmethod
    def deploy(cls, w3: Web3, account: LocalAccount, *, admin: str | None = None) -> RegistryClient:
        """Deploy a new registry whose admin (and first attester) is ``admin`` or the deploying account."""
        artifact = registry_artifact()
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        url = str(getattr(w3.provider, "endpoint_uri", "the chain"))
        constructor = factory.constructor(Web3.to_checksum_address(admin or account.address))
        receipt = _send(w3, account, constructor.build_transaction, url, timeout=60.0)
        client = cls(w3, receipt["contractAddress"], account)
        client.deployment = Deployment(
            chain_id=client.chain_id,
            address=client.address,
            transaction=receipt["transactionHash"].to_0x_hex(),
            block_number=int(receipt["blockNumber"]),
            code_sha256=client.code_sha256(),
        )
        return client

    deployment: Deployment

    def code_sha256(self) -> str:
        code = self._call(lambda: self.w3.eth.get_code(self.address))
        return hashlib.sha256(bytes(code)).hexdigest()

    def deployed_code_matches(self) -> bool:
        expected = bytes.fromhex(self.artifact.deployed_bytecode.removeprefix("0x"))
        return bytes(self._call(lambda: self.w3.eth.get_code(self.address))) == expected

    def check_deployed(self) -> None:
        if not self.deployed_code_matches():
            raise errors.ContractNotDeployed(
                f"no QuantizedModelRegistry (this build's bytecode) at {self.address}", address=self.address
            )

    @property
    def chain_id(self) -> int:
        return int(self._call(lambda: self.w3.eth.chain_id))

    @property
    def attester(self) -> str:
        if self.account is None:
            raise errors.KeyUnavailable("this client has no signing key; it can only read")
        return str(self.account.address)

    # ------------------------------------------------------------------ writes

    def register(self, registration: Registration) -> TransactionResult:
        """Record ``registration`` under this client's key."""
        valid = registration.validated()
        receipt = self._transact(self.contract.functions.register(valid.to_abi()).build_transaction)
        return _result(receipt)

    def register_batch(self, registrations: Sequence[Registration]) -> TransactionResult:
        """Record several registrations in one transaction, all or none (1..:attr:`max_batch`)."""
        valid = [r.validated().to_abi() for r in registrations]
        receipt = self._transact(self.contract.functions.registerBatch(valid).build_transaction)
        return _result(receipt)

    def revoke(self, file_sha256: str, reason: str) -> TransactionResult:
        """Revoke this client's own record of a file."""
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        receipt = self._transact(self.contract.functions.revoke(digest, reason).build_transaction)
        return _result(receipt)

    def grant_attester(self, account: str) -> TransactionResult:
        address = Web3.to_checksum_address(account)
        fn = self.contract.functions.grantRole(ATTESTER_ROLE, address)
        return _result(self._transact(fn.build_transaction))

    def revoke_attester(self, account: str) -> TransactionResult:
        address = Web3.to_checksum_address(account)
        fn = self.contract.functions.revokeRole(ATTESTER_ROLE, address)
        return _result(self._transact(fn.build_transaction))

    # ------------------------------------------------------------------ views

    def verify(self, file_sha256: str, attester: str) -> Status:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        address = Web3.to_checksum_address(attester)
        return Status(self._view(self.contract.functions.verify(digest, address)))

    def get(self, file_sha256: str, attester: str) -> Record:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        address = Web3.to_checksum_address(attester)
        return Record.from_abi(self._view(self.contract.functions.getRecord(digest, address)))

    def valid_records(self, file_sha256: str) -> list[Record]:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        return [Record.from_abi(raw) for raw in self._view(self.contract.functions.validRecordsOf(digest))]

    def attesters_of(self, file_sha256: str, offset: int = 0, limit: int = 100) -> tuple[list[str], int]:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        attesters, total = self._view(self.contract.functions.attestersOf(digest, offset, limit))
        return [str(a) for a in attesters], int(total)

    def records_of(self, file_sha256: str) -> list[Record]:
        """Every record of a file, revoked ones included, in registration order."""
        records: list[Record] = []
        offset = 0
        while True:
            attesters, total = self.attesters_of(file_sha256, offset, 100)
            records.extend(self.get(file_sha256, a) for a in attesters)
            offset += len(attesters)
            if not attesters or offset >= total:
                return records

    def files_by_source(self, source_digest: str, offset: int = 0, limit: int = 100) -> tuple[list[str], int]:
        digest = bytes.fromhex(normalize_digest(source_digest, "sourceDigest"))
        files, total = self._view(self.contract.functions.filesBySource(digest, offset, limit))
        return [bytes(f).hex() for f in files], int(total)

    def compression_ratio(self, file_sha256: str, attester: str) -> float:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        address = Web3.to_checksum_address(attester)
        return int(self._view(self.contract.functions.compressionRatio(digest, address))) / 10_000

    def quant_type_ratio(self, quant_type: str) -> tuple[float, int]:
        """Mean compression ratio over all valid records of a quant type, and how many records it averages."""
        label = encode_label(quant_type, "quantType")
        basis_points, count = self._view(self.contract.functions.getCompressionRatio(label))
        return int(basis_points) / 10_000, int(count)

    def attestation_count(self, file_sha256: str) -> int:
        digest = bytes.fromhex(normalize_digest(file_sha256, "fileDigest"))
        return int(self._view(self.contract.functions.attestationCount(digest)))

    def is_attester(self, account: str) -> bool:
        address = Web3.to_checksum_address(account)
        return bool(self._view(self.contract.functions.hasRole(ATTESTER_ROLE, address)))

    def is_admin(self, account: str) -> bool:
        address = Web3.to_checksum_address(account)
        return bool(self._view(self.contract.functions.hasRole(ADMIN_ROLE, address)))

    def contract_version(self) -> str:
        return str(self._view(self.contract.functions.version()))

    @functools.cached_property
    def max_batch(self) -> int:
        """The most registrations one ``registerBatch`` takes: the contract's ``MAX_BATCH``, read once."""
        return int(self._view(self.contract.functions.MAX_BATCH()))

    # ------------------------------------------------------------------ plumbing

    def _url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", "the chain"))

    def _call(self, fn: Callable[[], T]) -> T:
        return _call_chain(fn, self._url())

    def _view(self, function: Any) -> Any:
        try:
            return self._call(function.call)
        except ContractLogicError as exc:
            raise _rejection(exc) from exc
        except BadFunctionCallOutput as exc:
            raise errors.ContractNotDeployed(f"no registry answers at {self.address}: {exc}") from exc

    def _transact(self, build: Callable[[Any], Any]) -> Any:
        if self.account is None:
            raise errors.KeyUnavailable("this client has no signing key; it can only read")
        with self._send_lock:
            return _send(self.w3, self.account, build, self._url(), timeout=self.timeout)


def _send(w3: Web3, account: LocalAccount, build: Callable[[Any], Any], url: str, *, timeout: float) -> Any:
    """Build (which estimates gas, so refusals surface here), sign, send and await one transaction."""
    try:
        nonce = _call_chain(lambda: w3.eth.get_transaction_count(account.address, "pending"), url)
        chain_id = _call_chain(lambda: w3.eth.chain_id, url)
        params = TxParams({"from": account.address, "nonce": nonce, "chainId": chain_id})
        transaction = _call_chain(lambda: build(params), url)
    except ContractLogicError as exc:
        raise _rejection(exc) from exc
    signed = account.sign_transaction(transaction)
    tx_hash = _call_chain(lambda: w3.eth.send_raw_transaction(signed.raw_transaction), url)
    try:
        receipt = _call_chain(lambda: w3.eth.wait_for_transaction_receipt(tx_hash, timeout), url)
    except TimeExhausted as exc:
        raise errors.TransactionFailed(
            f"transaction {tx_hash.to_0x_hex()} was not mined within {timeout:.0f} s", transaction=tx_hash.to_0x_hex()
        ) from exc
    if receipt["status"] != 1:
        raise errors.TransactionFailed(f"transaction {tx_hash.to_0x_hex()} reverted", transaction=tx_hash.to_0x_hex())
    return receipt


def _rejection(exc: ContractLogicError) -> errors.RegistryError:
    """The typed error for a revert: the contract's custom error by selector, decoded."""
    data = _revert_data(exc)
    known = _error_table().get(data[:4]) if len(data) >= 4 else None
    if known is None:
        return errors.TransactionFailed(f"the registry reverted: {exc.message or exc}")
    name, types = known
    try:
        args = tuple(abi_decode(types, data[4:]))
    except Exception:  # malformed revert data: name the error, drop its arguments
        args = ()
    text = f"{name}({', '.join(_format_arg(a) for a in args)})"
    error_class = _ERROR_CLASSES.get(name, errors.InvalidRecord)
    return error_class(f"the registry refused: {text}", error_name=name, error_args=args)


def _call_chain(fn: Callable[[], T], url: str) -> T:
    """Run one JSON-RPC interaction; an endpoint that does not answer becomes RegistryUnavailable."""
    try:
        return fn()
    except (requests.exceptions.RequestException, ProviderConnectionError, ConnectionError, TimeoutError) as exc:
        raise errors.RegistryUnavailable(f"the chain at {url} does not answer: {type(exc).__name__}", url=url) from exc
    except Web3RPCError as exc:
        if isinstance(exc, ContractLogicError):
            raise
        raise errors.TransactionFailed(f"the chain at {url} refused: {exc.message or exc}", url=url) from exc


def _result(receipt: Any) -> TransactionResult:
    return TransactionResult(
        transaction=receipt["transactionHash"].to_0x_hex(),
        block_number=int(receipt["blockNumber"]),
        gas_used=int(receipt["gasUsed"]),
    )
