"""Outputs registered on chain end to end: `quantledger up` (embedded chain + gRPC), the CLI, the
RegistryService, a chain that goes away and comes back, and the kill -9 durability of the chain."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest
from conftest import REPO, RunningServer, free_port, up_argv, wait_serving
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quantledger.hf.manifest import FileDigest, root_digest
from quantledger.v1 import quantize_service_pb2 as qpb
from quantledger.v1 import recommend_service_pb2 as rpb
from quantledger.v1 import recommend_service_pb2_grpc as rpb_grpc
from quantledger.v1 import registry_service_pb2 as pb
from quantledger.v1 import registry_service_pb2_grpc as pb_grpc
from registry_client.address_book import AddressBook
from registry_client.client import RegistryClient
from registry_client.records import Status

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "quantledger.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


class Up:
    """`quantledger up` on free ports, with its data dir and the chain it started."""

    def __init__(self, home: pathlib.Path, roots: list[pathlib.Path]) -> None:
        self.home = home
        self.outputs = home.parent / f"{home.name}-outputs"  # a client's own directory, beside the data dir
        self.outputs.mkdir(exist_ok=True)
        roots = [*roots, self.outputs]
        self.port, self.chain_port = free_port(), free_port()
        self.env = {
            "QUANTLEDGER_HOME": str(home),
            "QUANTLEDGER_ALLOWED_ROOTS": os.pathsep.join(str(r) for r in roots),
            "QUANTLEDGER_REGISTRY_RETRY_SECONDS": "1",
        }
        argv = up_argv(self.port, self.chain_port)
        with open(home / "up.log", "a") as log:
            self.process = subprocess.Popen(
                argv, env={**os.environ, **self.env}, stdout=subprocess.PIPE, text=True, stderr=log, cwd=home
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, (home / "up.log").read_text()
        self.announcement = json.loads(line)
        self.address = self.announcement["address"]
        wait_serving(self.address)
        self.chain_url = self.announcement["chain_url"]
        self.client = RegistryClient(RegistryClient.web3_for(self.chain_url), self.announcement["registry"])

    @property
    def server(self) -> RunningServer:
        return RunningServer(self.process, self.address, self.home, self.home / "up.log")  # type: ignore[arg-type]

    def chain_process(self) -> psutil.Process:
        children = psutil.Process(self.process.pid).children()
        return next(c for c in children if "chain" in c.cmdline())

    def registry_stub(self) -> pb_grpc.RegistryServiceStub:
        return pb_grpc.RegistryServiceStub(grpc.insecure_channel(self.address))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, models) -> Iterator[Up]:  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("up-home")
    running = Up(home, [models.root, home])
    yield running
    running.stop()


def reason_of(exc: grpc.RpcError) -> str:
    status = rpc_status.from_call(exc)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


def submit(up: Up, source: pathlib.Path, *types: str, out: pathlib.Path) -> dict:
    # outputs must lie under the server's allowed roots, and never in its data dir
    out = up.outputs / out.parent.name
    out.mkdir(parents=True, exist_ok=True)
    args = ["submit", str(source), *[x for t in types for x in ("-q", t)], "--out", str(out), "--wait", "--json"]
    done = cli(*args, "--server", up.address, env=up.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_outputs_are_registered_with_provenance(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = submit(up, models.f16, "Q8_0", "Q4_0", out=tmp_path / "out")
    assert job["state"] == "STATE_SUCCEEDED"
    source_digest = root_digest(
        [FileDigest(models.f16.name, models.f16.stat().st_size, hashlib.sha256(models.f16.read_bytes()).hexdigest())]
    )
    for output in job["outputs"]:
        entry = output["registry"]
        assert entry["state"] == "STATE_REGISTERED", entry
        assert entry["tx_hash"].startswith("0x") and int(entry["block_number"]) > 0
        assert entry["contract"] == up.client.address and int(entry["chain_id"]) == up.client.chain_id
        provenance = pathlib.Path(entry["provenance_path"]).read_bytes()
        assert hashlib.sha256(provenance).hexdigest() == entry["provenance_sha256"]
        statement = json.loads(provenance)
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        assert statement["subject"][0]["digest"]["sha256"] == output["sha256"]
        assert statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["sha256"] == source_digest
        record = up.client.get(output["sha256"], entry["attester"])
        assert record.quant_type == output["quant_type"]
        assert record.quantized_size == int(output["size_bytes"])
        assert record.original_size == int(output["source_size_bytes"])
        assert record.file_type == output["file_type"]
        assert record.provenance_sha256 == entry["provenance_sha256"]
        assert record.source_digest == source_digest
        assert record.tool_version.startswith("llama-cpp-python ")
    assert (up.home / "keys" / "admin.key").stat().st_mode & 0o777 == 0o600  # the attester's key


def test_cli_verify_show_list_and_revoke(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = submit(up, models.f16, "Q5_0", out=tmp_path / "out")
    output = job["outputs"][0]
    path = output["path"]
    verified = cli("registry", "verify", path, "--server", up.address, "--json", env=up.env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verdict"] == "VERDICT_VALID"
    human = cli("registry", "verify", path, "--server", up.address, env=up.env)
    assert "VALID" in human.stdout and output["registry"]["attester"] in human.stdout

    tampered = tmp_path / "tampered.gguf"
    shutil.copyfile(path, tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    unknown = cli("registry", "verify", str(tampered), "--server", up.address, "--json", env=up.env)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["verdict"] == "VERDICT_UNKNOWN"
    not_gguf = cli("registry", "verify", str(REPO / "README.md"), "--server", up.address, env=up.env)
    assert not_gguf.returncode == 1 and "SOURCE_INVALID" in not_gguf.stderr

    name = f"files/{output['sha256']}/records/{output['registry']['attester']}"
    shown = cli("registry", "show", name, "--server", up.address, "--json", env=up.env)
    assert json.loads(shown.stdout)["quant_type"] == "Q5_0"
    listed = cli("registry", "list", "--file", output["sha256"], "--server", up.address, "--json", env=up.env)
    assert [r["name"] for r in json.loads(listed.stdout)["records"]] == [name]

    revoked = cli(
        "registry",
        "revoke",
        output["sha256"],
        "--reason",
        "test build",
        "--json",
        env={**up.env, "QUANTLEDGER_CHAIN_URL": up.chain_url},
    )
    assert revoked.returncode == 0, revoked.stderr
    after = cli("registry", "verify", path, "--server", up.address, "--json", env=up.env)
    assert after.returncode == 1 and json.loads(after.stdout)["verdict"] == "VERDICT_REVOKED"
    again = cli(
        "registry",
        "revoke",
        output["sha256"],
        "--reason",
        "twice",
        env={**up.env, "QUANTLEDGER_CHAIN_URL": up.chain_url},
    )
    assert again.returncode == 1 and "ALREADY_REVOKED" in again.stderr


def test_registry_service_errors_are_typed(up: Up) -> None:
    stub = up.registry_stub()
    cases = [
        (lambda: stub.GetRecord(pb.GetRecordRequest(name="nonsense")), "INVALID_ARGUMENT"),
        (
            lambda: stub.GetRecord(pb.GetRecordRequest(name=f"files/{'ab' * 32}/records/0x{'11' * 20}")),
            "RECORD_NOT_FOUND",
        ),
        (lambda: stub.VerifyDigest(pb.VerifyDigestRequest(file_sha256="abc")), "INVALID_ARGUMENT"),
        (
            lambda: stub.ListRecords(pb.ListRecordsRequest(parent="files/" + "ab" * 32, page_size=-1)),
            "INVALID_ARGUMENT",
        ),
        (lambda: stub.ListRecords(pb.ListRecordsRequest(parent="models/x")), "INVALID_ARGUMENT"),
        (
            lambda: stub.ListRecords(pb.ListRecordsRequest(parent="files/" + "ab" * 32, page_token="garbage")),
            "INVALID_ARGUMENT",
        ),
    ]
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert reason_of(caught.value) == reason
    answer = stub.VerifyDigest(pb.VerifyDigestRequest(file_sha256="cd" * 32))
    assert answer.verdict == pb.VerifyDigestResponse.VERDICT_UNKNOWN and answer.contract == up.client.address


def test_record_not_found_is_one_error_from_the_registry_and_from_recommend(up: Up) -> None:
    """The registry client's RecordNotFound (GetRecord) and the RecommendService's unknown file are one class:
    the same code, reason and domain on the wire."""
    digest = "ef" * 32
    calls = [
        lambda: up.registry_stub().GetRecord(pb.GetRecordRequest(name=f"files/{digest}/records/0x{'11' * 20}")),
        lambda: rpb_grpc.RecommendServiceStub(grpc.insecure_channel(up.address)).Recommend(
            rpb.RecommendRequest(model=rpb.ModelSpec(registry_file=digest), hardware=rpb.Hardware(tier="laptop"))
        ),
    ]
    seen = []
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        seen.append((caught.value.code(), info.domain, info.reason))
    assert seen == [(grpc.StatusCode.NOT_FOUND, "quantledger.v1", "RECORD_NOT_FOUND")] * 2


def test_size_mismatch_and_pagination_over_grpc(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = submit(up, models.f16, "Q4_1", "Q5_1", "Q6_K", out=tmp_path / "out")
    sha = job["outputs"][0]["sha256"]
    stub = up.registry_stub()
    wrong = stub.VerifyDigest(pb.VerifyDigestRequest(file_sha256=sha, size_bytes=12345))
    assert wrong.verdict == pb.VerifyDigestResponse.VERDICT_MISMATCH
    record = up.client.get(sha, job["outputs"][0]["registry"]["attester"])
    pages, token = [], ""
    while True:
        page = stub.ListRecords(
            pb.ListRecordsRequest(parent=f"sources/{record.source_digest}", page_size=2, page_token=token)
        )
        pages.append([r.quant_type for r in page.records])
        token = page.next_page_token
        if not token:
            break
    listed = [t for page in pages for t in page]
    assert {"Q4_1", "Q5_1", "Q6_K"} <= set(listed) and all(len(p) <= 2 for p in pages)


def test_chain_killed_under_the_service_comes_back_and_registers_once(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the embedded chain: `up` restarts it on the same data dir (tests/test_chain_supervision.py
    holds it away to see outputs wait as PENDING); a job submitted meanwhile is registered exactly once."""
    chain = up.chain_process()
    chain.kill()  # kill -9 the embedded chain under the running service
    deadline = time.monotonic() + 10
    while chain.is_running() and chain.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    job = submit(up, models.f16, "Q3_K_S", out=tmp_path / "out")
    output = job["outputs"][0]
    assert job["state"] == "STATE_SUCCEEDED"
    assert pathlib.Path(output["path"]).is_file()
    deadline = time.monotonic() + 60
    while True:
        shown = cli("jobs", "show", job["name"], "--server", up.address, "--json", env=up.env)
        entry = json.loads(shown.stdout)["outputs"][0]["registry"]
        if entry["state"] == "STATE_REGISTERED" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert entry["state"] == "STATE_REGISTERED", entry
    assert up.chain_process().pid != chain.pid, "the chain was not restarted"
    client = RegistryClient(RegistryClient.web3_for(up.chain_url), up.client.address)
    assert client.verify(output["sha256"], entry["attester"]) is Status.VALID
    assert client.attestation_count(output["sha256"]) == 1
    # everything acknowledged before the kill -9 is still there
    assert AddressBook.in_home(up.home).get(client.chain_id) is not None
    assert client.deployed_code_matches()


def reason_of_status(status: dict) -> str:
    return next(d["reason"] for d in status["details"])


def test_job_proto_carries_the_registration(up: Up) -> None:
    field = qpb.QuantizedArtifact.DESCRIPTOR.fields_by_name["registry"]
    assert field.message_type.full_name == "quantledger.v1.RegistryRecord"


def test_revoke_writes_to_the_chain_the_server_reads(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`up --chain-port N` (not 8545): `registry revoke --server` revokes there, by SHA-256 or by file."""
    assert not up.chain_url.endswith(":8545")
    info = up.registry_stub().GetRegistryInfo(pb.GetRegistryInfoRequest())
    assert (info.chain_url, info.contract, info.chain_id) == (up.chain_url, up.client.address, up.client.chain_id)
    job = submit(up, models.f16, "Q4_K_S", "Q5_K_S", out=tmp_path / "out")
    by_sha, by_file = job["outputs"]
    env = {k: v for k, v in up.env.items()}  # no QUANTLEDGER_CHAIN_URL: the server says where its chain is
    revoked = cli("registry", "revoke", by_sha["sha256"], "--reason", "test", "--server", up.address, "--json", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["chain_url"] == up.chain_url
    from_file = cli("registry", "revoke", by_file["path"], "--reason", "test", "--server", up.address, env=env)
    assert from_file.returncode == 0, from_file.stderr
    for output in (by_sha, by_file):
        assert up.client.verify(output["sha256"], output["registry"]["attester"]) is Status.REVOKED
    missing = cli("registry", "revoke", str(tmp_path / "nope.gguf"), "--reason", "x", "--server", up.address, env=env)
    assert missing.returncode == 1 and "SOURCE_NOT_FOUND" in missing.stderr


def test_split_outputs_are_shards_llama_cpp_loads_each_hashed_and_registered(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--split-max-tensors writes the output as llama-gguf-split does: the first shard with every key, each
    with split.no/count/tensors.count, the tensors in order; llama.cpp loads the set from the first shard
    with the logits of the single file; every shard is in the output's files and on chain."""
    import llama_cpp

    from quantledger.gguf.reader import read_gguf_header

    whole = submit(up, models.f16, "Q8_0", out=tmp_path / "whole")["outputs"][0]
    out = up.outputs / "split"
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--split-max-tensors", "8", "--no-quality", "--out", str(out), "--wait", "--json"]
    done = cli("submit", str(models.f16), "-q", "Q8_0", *flags, "--server", up.address, env=up.env)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["outputs"][0]
    single = read_gguf_header(whole["path"])
    shards = [read_gguf_header(f["path"]) for f in output["files"]]
    n = -(-len(single.tensors) // 8)
    assert len(shards) == n > 1
    assert [pathlib.Path(s.path).name for s in shards] == [
        f"tiny-Q8_0-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)
    ]
    assert [len(s.tensors) for s in shards[:-1]] == [8] * (n - 1)
    assert [t.name for s in shards for t in s.tensors] == [t.name for t in single.tensors]
    for number, shard in enumerate(shards):
        split_keys = {"split.no": number, "split.count": n, "split.tensors.count": len(single.tensors)}
        assert {k: shard.metadata[k] for k in split_keys} == split_keys
        others = {k: v for k, v in shard.metadata.items() if k not in split_keys}
        assert others == (single.metadata if number == 0 else {})
    for f in output["files"]:
        data = pathlib.Path(f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == int(f["size_bytes"])
        assert up.client.get(f["sha256"], output["registry"]["attester"]).quant_type == "Q8_0"
    logits = []
    for path in (whole["path"], output["files"][0]["path"]):
        model = llama_cpp.Llama(model_path=path, n_ctx=32, n_threads=1, verbose=False, logits_all=True)
        model.eval([1, 5, 9])
        logits.append(model.scores[:3].copy())  # type: ignore[index]
    assert (logits[0] == logits[1]).all()


@pytest.mark.node
def test_a_quorum_of_attesters_over_grpc_the_cli_and_ethers(up: Up, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`verify --min-attesters K` is VALID only when K distinct, non-revoked attesters vouch for the bytes,
    each listed as having originated or reproduced them; the ethers.js reader answers the same."""
    from eth_account import Account

    from registry_client.keys import read_key_file
    from registry_client.records import Flag, Registration

    # a type no other test of this module makes: the same bytes would carry its records (one test revokes)
    job = submit(up, models.f16, "IQ4_NL", out=tmp_path / "out")
    output = job["outputs"][0]
    sha, path = output["sha256"], output["path"]
    w3 = RegistryClient.web3_for(up.chain_url)
    address = up.announcement["registry"]
    admin = RegistryClient(w3, address, read_key_file(up.home / "keys" / "admin.key"))  # what `up` made
    second = Account.create()
    admin.grant_attester(second.address)
    funding = {"to": second.address, "value": 10**18, "gas": 21000, "maxFeePerGas": 10**10,
               "maxPriorityFeePerGas": 1, "chainId": w3.eth.chain_id, "nonce": w3.eth.get_transaction_count(admin.attester)}  # fmt: skip
    signed = admin.account.sign_transaction(funding)  # type: ignore[union-attr]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=60)
    original = admin.get(sha, admin.attester)
    reproducer = RegistryClient(w3, address, second)
    # the second home made the same bytes from the first one's provenance (issue 17's reproducer writes this)
    reproducer.register(
        Registration(
            file_sha256=sha, source_digest=original.source_digest, provenance_sha256=original.provenance_sha256,
            quant_type=original.quant_type, tool_version=original.tool_version, file_type=original.file_type,
            original_size=original.original_size, quantized_size=original.quantized_size,
            source_revision=original.source_revision, flags=original.flags | Flag.REPRODUCED,
        )
    )  # fmt: skip
    stub = up.registry_stub()

    def ask(k: int) -> pb.VerifyDigestResponse:
        return stub.VerifyDigest(pb.VerifyDigestRequest(file_sha256=sha, min_attesters=k))

    two = ask(2)
    assert two.verdict == pb.VerifyDigestResponse.VERDICT_VALID
    assert [(v.attester, v.reproduced) for v in two.vouches] == [(admin.attester, False), (second.address, True)]
    assert ask(3).verdict == pb.VerifyDigestResponse.VERDICT_TOO_FEW_ATTESTERS
    with pytest.raises(grpc.RpcError) as caught:
        stub.VerifyDigest(pb.VerifyDigestRequest(file_sha256=sha, min_attesters=2, attester=admin.attester))
    assert reason_of(caught.value) == "INVALID_ARGUMENT"

    verified = cli("registry", "verify", path, "--min-attesters", "2", "--server", up.address, env=up.env)
    assert verified.returncode == 0 and "(reproduced)" in verified.stdout, verified.stdout + verified.stderr
    too_many = cli("registry", "verify", path, "--min-attesters", "3", "--json", "--server", up.address, env=up.env)
    assert too_many.returncode != 0 and json.loads(too_many.stdout)["verdict"] == "VERDICT_TOO_FEW_ATTESTERS"

    reader = REPO / "tests" / "node" / "registry_reader.js"
    read = subprocess.run(
        ["node", str(reader), up.chain_url, address, sha, "--min-attesters", "2"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    quorum = json.loads(read.stdout)["quorum"]
    assert quorum["verdict"] == "VALID" and [v["reproduced"] for v in quorum["vouches"]] == [False, True]

    reproducer.revoke(sha, "withdrawn")  # a revoked record no longer counts toward the quorum
    assert ask(2).verdict == pb.VerifyDigestResponse.VERDICT_TOO_FEW_ATTESTERS
    assert ask(1).verdict == pb.VerifyDigestResponse.VERDICT_VALID
