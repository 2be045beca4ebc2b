"""The registry on anvil (a real EVM node from npm @foundry-rs/anvil), and read from Node.js with ethers.

The same client code that talks to the embedded chain talks to anvil; state written with `--state`
survives a restart; and a Node.js script that knows nothing of quantledger reads records by file hash
from anvil and from the embedded chain.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import REPO, free_port
from eth_account import Account
from hostile import dropping_listener

from registry_client import errors
from registry_client.client import RegistryClient
from registry_client.records import Registration, Status

pytestmark = pytest.mark.chain

ANVIL = REPO / "tests" / "node" / "node_modules" / ".bin" / "anvil"
READER = REPO / "tests" / "node" / "registry_reader.js"
# anvil's well-known development accounts 0 and 1 (mnemonic "test test … junk")
DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
]


def registration(name: str, quant_type: str = "Q4_K_M") -> Registration:
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    return Registration(
        h(name),
        h("anvil source"),
        h(f"provenance {name}"),
        quant_type,
        "anvil-test",
        15,
        3300,
        1000,
        source_revision="12" * 20,
    )


class Anvil:
    def __init__(self, state: pathlib.Path | None = None) -> None:
        if not ANVIL.exists():
            pytest.fail(f"{ANVIL} is missing: run npm install --prefix tests/node")
        self.port = free_port()
        argv = [str(ANVIL), "--port", str(self.port), "--chain-id", "31337"]
        if state is not None:
            argv += ["--state", str(state), "--state-interval", "1"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.w3 = RegistryClient.web3_for(self.url, timeout=2)
                return
            except errors.RegistryUnavailable:
                assert self.process.poll() is None and time.monotonic() < deadline, "anvil did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    node = Anvil()
    yield node
    node.stop()


def read_with_node(url: str, address: str, sha256: str, attester: str) -> dict:
    if shutil.which("node") is None:
        pytest.fail("node is needed for the Node.js reader")
    done = subprocess.run(
        ["node", str(READER), url, address, sha256, attester], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_register_read_revoke_and_roles_on_anvil(anvil: Anvil) -> None:
    admin_account, other_account = (Account.from_key(k) for k in DEV_KEYS)
    admin = RegistryClient.deploy(anvil.w3, admin_account)
    assert admin.chain_id == 31337
    reg = registration("anvil.gguf")
    admin.register(reg)
    # after the first record (which interns source, revision, type and tool), a further output costs <= 150k
    assert admin.register(registration("anvil-2.gguf")).gas_used <= 150_000
    record = admin.get(reg.file_sha256, admin.attester)
    assert record.matches(reg.validated()) and record.source_revision == "12" * 20
    other = RegistryClient(anvil.w3, admin.address, other_account)
    with pytest.raises(errors.NotAttester):
        other.register(reg)
    with pytest.raises(errors.AlreadyRegistered):
        admin.register(reg)
    admin.grant_attester(other.attester)
    other.register(reg)
    assert admin.attestation_count(reg.file_sha256) == 2
    admin.revoke(reg.file_sha256, "superseded")
    assert admin.verify(reg.file_sha256, admin.attester) is Status.REVOKED
    assert [r.attester for r in admin.valid_records(reg.file_sha256)] == [other.attester]


def test_a_chain_url_with_nothing_listening_is_a_typed_error() -> None:
    with pytest.raises(errors.RegistryUnavailable):
        RegistryClient.web3_for(f"http://127.0.0.1:{free_port()}", timeout=2)


def test_a_chain_that_drops_the_connection_is_tried_once_not_retried() -> None:
    """No retry storm: one connection, then the typed error (how fast: bench/fail_fast.py)."""
    with dropping_listener() as (port, accepted), pytest.raises(errors.RegistryUnavailable):
        RegistryClient.web3_for(f"http://127.0.0.1:{port}", timeout=2)
    assert len(accepted) == 1


def test_anvil_state_survives_a_restart(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "anvil-state.json"
    first = Anvil(state)
    try:
        admin = RegistryClient.deploy(first.w3, Account.from_key(DEV_KEYS[0]))
        admin.register(registration("persisted.gguf"))
    finally:
        first.stop()
    second = Anvil(state)
    try:
        reader = RegistryClient(second.w3, admin.address)
        assert reader.deployed_code_matches()
        assert reader.get(registration("persisted.gguf").file_sha256, admin.attester).quant_type == "Q4_K_M"
    finally:
        second.stop()


@pytest.mark.node
def test_node_reads_a_record_from_anvil(anvil: Anvil) -> None:
    admin = RegistryClient.deploy(anvil.w3, Account.from_key(DEV_KEYS[0]))
    reg = registration("node.gguf", "IQ4_XS")
    admin.register(reg)
    seen = read_with_node(anvil.url, admin.address, reg.file_sha256, admin.attester)
    ours = admin.get(reg.file_sha256, admin.attester)
    assert seen["status"] == "Valid" and seen["attestationCount"] == 1 and seen["chainId"] == "31337"
    [record] = seen["records"]
    assert record["quantType"] == ours.quant_type == "IQ4_XS"
    assert record["sourceDigest"] == ours.source_digest and record["provenanceSha256"] == ours.provenance_sha256
    assert record["quantizedSize"] == str(ours.quantized_size) and record["attester"] == ours.attester


@pytest.mark.node
def test_node_reads_a_record_from_the_embedded_chain(tmp_path: pathlib.Path) -> None:
    account = Account.from_key(b"\x09" * 32)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "registry_client.chain",
        "--data-dir",
        str(tmp_path),
        "--port",
        str(port),
        "--fund",
        account.address,
    ]
    chain = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert chain.stdout is not None
        url = json.loads(chain.stdout.readline())["url"]
        client = RegistryClient.deploy(RegistryClient.web3_for(url), account)
        reg = registration("embedded.gguf")
        client.register(reg)
        seen = read_with_node(url, client.address, reg.file_sha256, client.attester)
        assert seen["status"] == "Valid" and seen["version"] == "1.0.0"
        assert seen["records"][0]["fileSha256"] == reg.file_sha256
        unknown = read_with_node(url, client.address, "ab" * 32, client.attester)
        assert unknown["status"] == "Unknown" and unknown["records"] == []
    finally:
        chain.send_signal(signal.SIGTERM)
        chain.wait(30)
        assert chain.stdout is not None
        chain.stdout.close()
