"""The embedded chain: JSON-RPC behaviour, kill -9 durability, torn journals and snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import free_port
from eth_account import Account

from registry_client.chain import EmbeddedChain, node
from registry_client.chain.journal import Journal, JournalHeader
from registry_client.client import RegistryClient
from registry_client.records import Registration

pytestmark = pytest.mark.chain
ADMIN = Account.from_key(b"\x07" * 32)


def registration(i: int) -> Registration:
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    return Registration(h(f"file {i}"), h("source"), h(f"provenance {i}"), "Q4_K_M", "test", 15, 3000, 1000)


class ChainProcess:
    def __init__(self, directory: pathlib.Path, port: int, *extra: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "registry_client.chain",
            "--data-dir",
            str(directory),
            "--port",
            str(port),
            "--fund",
            ADMIN.address,
            *extra,
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        self.url = json.loads(self.process.stdout.readline())["url"]

    def rpc(self, body: object) -> object:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode() if not isinstance(body, bytes) else body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def chain_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "chain"


@pytest.fixture
def running(chain_dir: pathlib.Path) -> Iterator[ChainProcess]:
    process = ChainProcess(chain_dir, free_port())
    yield process
    if process.process.poll() is None:
        process.stop()


@pytest.mark.slow
def test_acknowledged_transactions_survive_kill_9(running: ChainProcess, chain_dir: pathlib.Path) -> None:
    client = RegistryClient.deploy(RegistryClient.web3_for(running.url), ADMIN)
    receipts = [client.register(registration(i)) for i in range(6)]
    head = client.w3.eth.get_block("latest")
    nonce = client.w3.eth.get_transaction_count(ADMIN.address)
    port = int(running.url.rsplit(":", 1)[1])
    running.stop(signal.SIGKILL)
    again = ChainProcess(chain_dir, port)
    try:
        w3 = RegistryClient.web3_for(again.url)
        assert w3.eth.get_block("latest").hash == head.hash  # the same blocks, bit for bit
        assert w3.eth.get_transaction_count(ADMIN.address) == nonce
        for receipt in receipts:
            assert w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
        reader = RegistryClient(w3, client.address)
        assert [reader.get(registration(i).file_sha256, ADMIN.address).quant_type for i in range(6)] == ["Q4_K_M"] * 6
    finally:
        again.stop()


def test_json_rpc_errors_are_geth_shaped(running: ChainProcess) -> None:
    client = RegistryClient.deploy(RegistryClient.web3_for(running.url), ADMIN)
    data = client.contract.functions.getRecord(b"\1" * 32, ADMIN.address)._encode_transaction_data()
    reverted = running.rpc(
        {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": client.address, "data": data}, "latest"]}
    )
    assert reverted["error"]["code"] == 3 and reverted["error"]["message"] == "execution reverted"
    selector = "0x" + client.w3.keccak(text="RecordNotFound(bytes32,address)")[:4].hex()
    assert reverted["error"]["data"].startswith(selector)
    assert running.rpc({"jsonrpc": "2.0", "id": 2, "method": "eth_mine"})["error"]["code"] == -32601
    assert running.rpc(b"{not json")["error"]["code"] == -32700
    batch = running.rpc(
        [{"jsonrpc": "2.0", "id": 3, "method": "eth_chainId"}, {"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber"}]
    )
    assert [r["id"] for r in batch] == [3, 4] and all(r["result"].startswith("0x") for r in batch)
    health = json.loads(urllib.request.urlopen(running.url + "/health", timeout=10).read())
    assert health["status"] == "ok" and health["blockNumber"] == 1


def test_bad_transactions_are_rejected_and_not_journaled(running: ChainProcess, chain_dir: pathlib.Path) -> None:
    w3 = RegistryClient.web3_for(running.url)
    before = (chain_dir / "journal.jsonl").read_text()
    tx = {"to": ADMIN.address, "value": 1, "gas": 21000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1,
          "chainId": w3.eth.chain_id}  # fmt: skip
    wrong_nonce = ADMIN.sign_transaction({**tx, "nonce": 5}).raw_transaction.to_0x_hex()
    unfunded = Account.from_key(b"\x08" * 32).sign_transaction({**tx, "nonce": 0}).raw_transaction.to_0x_hex()
    # valid in every other way, but signed for another chain (a replay from it) or for none
    other_chain = ADMIN.sign_transaction({**tx, "nonce": 0, "chainId": 1}).raw_transaction.to_0x_hex()
    legacy = {"to": ADMIN.address, "value": 1, "gas": 21000, "gasPrice": 10**10, "nonce": 0}
    unprotected = ADMIN.sign_transaction(legacy).raw_transaction.to_0x_hex()
    for raw in (wrong_nonce, unfunded, "0xdeadbeef", other_chain, unprotected):
        answer = running.rpc({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [raw]})
        assert answer["error"]["code"] in (-32000, -32602), answer
        if raw in (other_chain, unprotected):
            assert "chain id" in answer["error"]["message"] or "replay" in answer["error"]["message"]
    assert (chain_dir / "journal.jsonl").read_text() == before
    assert w3.eth.block_number == 0


def test_torn_journal_tail_is_cut_and_the_rest_replays(tmp_path: pathlib.Path) -> None:
    chain = EmbeddedChain.open(tmp_path, [ADMIN.address])
    w3_client = _in_process_client(chain)
    w3_client.register(registration(1))
    head = chain.call("get_block_by_number", "latest")["hash"]
    chain.journal.close()
    with open(tmp_path / "journal.jsonl", "ab") as handle:
        handle.write(b'{"raw": "0xf8')  # a kill -9 in the middle of an append
    reopened = EmbeddedChain.open(tmp_path, [ADMIN.address])
    assert reopened.call("get_block_by_number", "latest")["hash"] == head
    assert (tmp_path / "journal.jsonl").read_bytes().endswith(b"}\n")
    reopened.close()


def test_snapshots_bound_the_replay_and_a_damaged_one_falls_back(tmp_path: pathlib.Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(node, "SNAPSHOT_EVERY", 3)
    chain = EmbeddedChain.open(tmp_path, [ADMIN.address])
    client = _in_process_client(chain)
    for i in range(7):
        client.register(registration(i))
    head = chain.call("get_block_by_number", "latest")["hash"]
    chain.journal.close()  # like a kill -9: no final snapshot
    reopened = EmbeddedChain.open(tmp_path, [ADMIN.address])
    assert reopened.replayed < 3 and reopened.call("get_block_by_number", "latest")["hash"] == head
    reopened.journal.close()
    snapshot = tmp_path / "state.snapshot"
    snapshot.write_bytes(snapshot.read_bytes()[:-5] + b"xxxxx")
    full = EmbeddedChain.open(tmp_path, [ADMIN.address])
    assert full.replayed == 8 and full.call("get_block_by_number", "latest")["hash"] == head
    full.close()


def test_journal_header_keeps_genesis(tmp_path: pathlib.Path) -> None:
    journal = Journal.open(tmp_path / "j.jsonl", JournalHeader(123, ("0xabc",)))
    journal.close()
    again = Journal.open(tmp_path / "j.jsonl", JournalHeader(999, ()))
    assert again.header == JournalHeader(123, ("0xabc",))
    again.close()
    os.chmod(tmp_path, 0o755)


def _in_process_client(chain: EmbeddedChain) -> RegistryClient:
    from test_registry_contract import InProcessProvider
    from web3 import Web3

    from registry_client.chain import RpcDispatcher

    return RegistryClient.deploy(Web3(InProcessProvider(RpcDispatcher(chain))), ADMIN)


def test_admin_key_is_private_and_an_exposed_key_is_refused(tmp_path: pathlib.Path) -> None:
    from registry_client.errors import KeyUnavailable
    from registry_client.keys import load_or_create_key, read_key_file

    path = tmp_path / "keys" / "admin.key"
    account = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path).address == account.address  # the same key on every start
    path.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        read_key_file(path)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(KeyUnavailable):
        read_key_file(path)


def test_only_undecodable_bytes_are_not_a_signed_transaction(running: ChainProcess, chain_dir: pathlib.Path) -> None:
    """Over HTTP: bytes that are no transaction say so (-32602); a decodable one signed for another chain
    or for none (pre-EIP-155) is refused for its chain id (-32000); nothing of either is journaled."""
    w3 = RegistryClient.web3_for(running.url)
    before = (chain_dir / "journal.jsonl").read_text()
    tx = {"to": ADMIN.address, "value": 1, "gas": 21000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1,
          "nonce": 0}  # fmt: skip
    good = ADMIN.sign_transaction({**tx, "chainId": w3.eth.chain_id}).raw_transaction.to_0x_hex()
    legacy = {"to": ADMIN.address, "value": 1, "gas": 21000, "gasPrice": 10**10, "nonce": 0}

    def send(raw: str) -> dict[str, object]:
        answer = running.rpc({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [raw]})
        assert isinstance(answer, dict) and "error" in answer, answer
        return answer["error"]  # type: ignore[no-any-return]

    for raw in ("0xdeadbeef", "0x", "0xzz", "0xc0", good[:-10], "0x05" + good[4:], good[:4] + " " + good[4:]):
        error = send(raw)
        assert error["code"] == -32602 and str(error["message"]).startswith("not a signed transaction"), (raw, error)
    other_chain = ADMIN.sign_transaction({**tx, "chainId": 1}).raw_transaction.to_0x_hex()
    error = send(other_chain)
    assert error["code"] == -32000 and "invalid chain id 1" in str(error["message"]), error
    error = send(ADMIN.sign_transaction(legacy).raw_transaction.to_0x_hex())
    assert error["code"] == -32000 and "replay-protected" in str(error["message"]), error
    assert (chain_dir / "journal.jsonl").read_text() == before
    assert w3.eth.block_number == 0
    assert w3.eth.send_raw_transaction(good).to_0x_hex()  # the same transaction, signed for this chain, goes in
    assert w3.eth.block_number == 1


def test_a_failure_of_the_node_itself_is_an_internal_error_that_leaks_nothing(tmp_path: pathlib.Path) -> None:
    from registry_client.chain import RpcDispatcher

    chain = EmbeddedChain.open(tmp_path, [ADMIN.address])
    try:
        dispatcher = RpcDispatcher(chain)
        signed = ADMIN.sign_transaction(
            {
                "to": ADMIN.address,
                "value": 1,
                "gas": 21000,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 1,
                "nonce": 0,
                "chainId": dispatcher._chain_id(),
            }
        )

        def broken(raw: str) -> str:
            raise RuntimeError("/var/lib/secret/journal.jsonl: internal state")

        chain.send_raw_transaction = broken  # type: ignore[method-assign]
        request = {"jsonrpc": "2.0", "id": 7, "method": "eth_sendRawTransaction",
                   "params": [signed.raw_transaction.to_0x_hex()]}  # fmt: skip
        # a well-formed transaction the node failed on: no "not a signed transaction", no internals
        assert dispatcher.handle(request) == {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {"code": -32603, "message": "internal error"},
        }
    finally:
        chain.close()
