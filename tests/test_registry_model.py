"""Hypothesis stateful test: the deployed registry against a plain Python model of what it should hold.

Random sequences of registrations (by several attesters, some without the role), revocations, role
changes, batches and duplicates run on a real EVM (the embedded chain, in process); after every step
every view of the contract must agree with the model.
"""

from __future__ import annotations

import hashlib
import pathlib
import tempfile
from dataclasses import dataclass, field

import pytest
from eth_account import Account
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_registry_contract import InProcessProvider
from web3 import Web3

from registry_client import errors
from registry_client.chain import EmbeddedChain, RpcDispatcher
from registry_client.client import RegistryClient
from registry_client.records import Registration, Status

pytestmark = [pytest.mark.chain, pytest.mark.slow]

FILES = [hashlib.sha256(f"file {i}".encode()).hexdigest() for i in range(5)]
SOURCES = [hashlib.sha256(f"source {i}".encode()).hexdigest() for i in range(2)]
TYPES = ["Q4_K_M", "Q8_0", "IQ4_XS"]
ACCOUNTS = [Account.from_key(bytes([0x30 + i]) * 32) for i in range(3)]


@dataclass
class ModelRecord:
    source: str
    quant_type: str
    original: int
    quantized: int
    revoked: bool = False


@dataclass
class RegistryModel:
    attesters: set[str] = field(default_factory=set)
    records: dict[tuple[str, str], ModelRecord] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # file -> attesters in registration order
    source_files: dict[str, list[str]] = field(default_factory=dict)

    def register(self, attester: str, file: str, record: ModelRecord) -> None:
        self.records[(file, attester)] = record
        self.order.setdefault(file, []).append(attester)
        listed = self.source_files.setdefault(record.source, [])
        if file not in listed:
            listed.append(file)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.node = EmbeddedChain.open(pathlib.Path(self.directory.name), [a.address for a in ACCOUNTS])
        w3 = Web3(InProcessProvider(RpcDispatcher(self.node)))
        admin = RegistryClient.deploy(w3, ACCOUNTS[0])
        self.clients = [admin] + [RegistryClient(w3, admin.address, a) for a in ACCOUNTS[1:]]
        self.model = RegistryModel(attesters={ACCOUNTS[0].address})

    def teardown(self) -> None:
        self.node.close()
        self.directory.cleanup()

    @rule(
        who=st.integers(0, 2),
        file=st.sampled_from(FILES),
        source=st.sampled_from(SOURCES),
        quant_type=st.sampled_from(TYPES),
        original=st.integers(2, 10**12),
        divisor=st.integers(1, 8),
    )
    def register(self, who: int, file: str, source: str, quant_type: str, original: int, divisor: int) -> None:
        quantized = max(1, original // divisor)
        address = ACCOUNTS[who].address
        registration = Registration(
            file, source, hashlib.sha256(file.encode()).hexdigest(), quant_type, "model-test", 15, original, quantized
        )
        if address not in self.model.attesters:
            with pytest.raises(errors.NotAttester):
                self.clients[who].register(registration)
        elif (file, address) in self.model.records:
            with pytest.raises(errors.AlreadyRegistered):
                self.clients[who].register(registration)
        else:
            self.clients[who].register(registration)
            self.model.register(address, file, ModelRecord(source, quant_type, original, quantized))

    @rule(who=st.integers(0, 2), file=st.sampled_from(FILES))
    def revoke(self, who: int, file: str) -> None:
        address = ACCOUNTS[who].address
        record = self.model.records.get((file, address))
        if record is None:
            with pytest.raises(errors.RecordNotFound):
                self.clients[who].revoke(file, "model says no")
        elif record.revoked:
            with pytest.raises(errors.AlreadyRevoked):
                self.clients[who].revoke(file, "again")
        else:
            self.clients[who].revoke(file, "model says so")
            record.revoked = True

    @rule(who=st.integers(1, 2), grant=st.booleans())
    def change_role(self, who: int, grant: bool) -> None:
        address = ACCOUNTS[who].address
        if grant:
            self.clients[0].grant_attester(address)
            self.model.attesters.add(address)
        else:
            self.clients[0].revoke_attester(address)
            self.model.attesters.discard(address)

    @invariant()
    def views_agree_with_the_model(self) -> None:
        reader = self.clients[0]
        for file in FILES:
            expected_order = self.model.order.get(file, [])
            assert reader.attesters_of(file) == (expected_order, len(expected_order))
            valid = [a for a in expected_order if not self.model.records[(file, a)].revoked]
            assert reader.attestation_count(file) == len(valid)
            assert [r.attester for r in reader.valid_records(file)] == valid
            for account in ACCOUNTS:
                record = self.model.records.get((file, account.address))
                status = reader.verify(file, account.address)
                if record is None:
                    assert status is Status.UNKNOWN
                else:
                    assert status is (Status.REVOKED if record.revoked else Status.VALID)
        for source in SOURCES:
            files = self.model.source_files.get(source, [])
            assert reader.files_by_source(source) == (files, len(files))
        for quant_type in TYPES:
            live = [r for r in self.model.records.values() if r.quant_type == quant_type and not r.revoked]
            mean = sum(r.original * 10_000 // r.quantized for r in live) // len(live) if live else 0
            assert reader.quant_type_ratio(quant_type) == (mean / 10_000, len(live))
        for account in ACCOUNTS[1:]:
            assert reader.is_attester(account.address) == (account.address in self.model.attesters)


RegistryMachine.TestCase.settings = settings(
    max_examples=8, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestRegistryMatchesModel = RegistryMachine.TestCase
