"""Independent reproduction (issue 17): home B redoes home A's output from A's provenance JSON alone, gets the
same bytes and co-attests them from its own key; a tampered provenance and a changed source are refused
before any quantization.

Home A is a real `quantledger up` (embedded chain, registry, a job with a LoRA merged and an importance matrix
computed by the job); home B is another data dir with its own attester key, reproducing on A's chain.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from eth_account import Account
from hf_models import write_causal_folder
from safetensors.numpy import load_file
from test_hf_outputs import write_adapter
from test_registry_service import Up, cli

from registry_client.client import RegistryClient
from registry_client.keys import read_key_file

pytestmark = [pytest.mark.chain, pytest.mark.slow]


@pytest.fixture(scope="module")
def home_a(tmp_path_factory: pytest.TempPathFactory) -> Up:  # type: ignore[misc]
    root = tmp_path_factory.mktemp("reproduce")
    (root / "a").mkdir()
    (root / "hub-a").mkdir()
    hub = {"HF_HUB_CACHE": str(root / "hub-a"), "HF_HUB_OFFLINE": "1"}  # A's hub: its own offline cache
    saved = {name: os.environ.get(name) for name in hub}
    os.environ.update(hub)  # for the server `up` starts, which takes this process's environment
    try:
        running = Up(root / "a", [root])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield running
    running.stop()


def second_attester(up: Up) -> str:
    """A new key that A's admin makes an attester and funds; returns its private key (hex)."""
    w3 = RegistryClient.web3_for(up.chain_url)
    admin = RegistryClient(w3, up.announcement["registry"], read_key_file(up.home / "keys" / "admin.key"))
    account = Account.create()
    admin.grant_attester(account.address)
    funding = {"to": account.address, "value": 10**18, "gas": 21000, "maxFeePerGas": 10**10,
               "maxPriorityFeePerGas": 1, "chainId": w3.eth.chain_id,
               "nonce": w3.eth.get_transaction_count(admin.attester)}  # fmt: skip
    signed = admin.account.sign_transaction(funding)  # type: ignore[union-attr]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=60)
    return str(account.key.hex())


@contextlib.contextmanager
def served(folder: pathlib.Path) -> Iterator[str]:
    """``folder`` over HTTP on a free loopback port; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


def made_by_a(home_a: Up, source: pathlib.Path | str, out: pathlib.Path, *types: str) -> list[dict[str, Any]]:
    """The outputs of A's job of ``types`` (no quality measured) of ``source``, written to ``out``."""
    out.mkdir(exist_ok=True)
    args = [a for t in types for a in ("-q", t)]
    done = cli("submit", str(source), *args, "--out", str(out), "--wait", "--json", "--no-quality",
               "--server", home_a.address, env=home_a.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["outputs"])


def test_home_b_reproduces_home_as_output_and_co_attests_it(home_a: Up) -> None:
    root = home_a.home.parent
    source = write_causal_folder(root / "a-source", "LlamaForCausalLM", hidden=256, ffn=512, layers=2)
    write_adapter(root / "a-adapter", load_file(str(source / "model.safetensors")))
    out = home_a.outputs / "job"
    out.mkdir()
    args = ["submit", str(source), "-q", "Q4_K_M", "--lora", str(root / "a-adapter"), "--imatrix", "auto"]
    done = cli(*args, "--out", str(out), "--wait", "--json", "--no-quality", "--server", home_a.address, env=home_a.env)
    assert done.returncode == 0, done.stderr + done.stdout
    output = json.loads(done.stdout)["outputs"][0]
    assert output["registry"]["state"] == "STATE_REGISTERED"

    # home B: its own data dir and key, its own copies of the source and adapter, the file and its
    # provenance as a downloader gets them
    home_b = root / "b"
    shutil.copytree(source, root / "b-source")
    shutil.copytree(root / "a-adapter", root / "b-adapter")
    (root / "b-download").mkdir()
    downloaded = root / "b-download" / pathlib.Path(output["path"]).name
    shutil.copyfile(output["path"], downloaded)
    shutil.copyfile(output["path"] + ".provenance.json", str(downloaded) + ".provenance.json")
    env_b = {"QUANTLEDGER_HOME": str(home_b), "QUANTLEDGER_CHAIN_KEY": second_attester(home_a)}
    common = ["--source", str(root / "b-source"), "--lora", str(root / "b-adapter"), "--server", home_a.address]

    reproduced = cli(
        "registry", "reproduce", str(downloaded), *common, "--out", str(root / "b-out"), "--json", env=env_b
    )
    assert reproduced.returncode == 0, reproduced.stderr + reproduced.stdout
    answer = json.loads(reproduced.stdout)
    assert answer["verdict"] == "REPRODUCED" and answer["reproduced_sha256"] == output["sha256"]
    assert answer["attestation_count"] == 2 and answer["attester"] != output["registry"]["attester"]
    own = json.loads(pathlib.Path(answer["provenance_path"]).read_text())
    assert own["predicate"]["reproducedFrom"]["attester"] == output["registry"]["attester"]
    quorum = cli("registry", "verify", str(downloaded), "--min-attesters", "2", "--json", "--server", home_a.address,
                 env=home_a.env)  # fmt: skip
    assert quorum.returncode == 0, quorum.stderr
    vouches = json.loads(quorum.stdout)["response"]["vouches"]
    assert [v.get("reproduced", False) for v in vouches] == [False, True]

    # a provenance JSON changed to name another quant type is not the one on chain
    tampered = root / "b-download" / "tampered.provenance.json"
    statement = json.loads((pathlib.Path(str(downloaded) + ".provenance.json")).read_text())
    statement["predicate"]["buildDefinition"]["externalParameters"]["quantType"] = "Q8_0"
    tampered.write_text(json.dumps(statement))
    refused = cli("registry", "reproduce", str(downloaded), "--provenance", str(tampered), *common, env=env_b)
    assert refused.returncode != 0 and "PROVENANCE_MISMATCH" in refused.stderr, refused.stderr

    # one byte of the source changed: refused before any quantization
    weights = root / "b-source" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = cli("registry", "reproduce", str(downloaded), *common, "--out", str(root / "b-out2"), env=env_b)
    assert changed.returncode != 0 and "SOURCE_MISMATCH" in changed.stderr, changed.stderr
    assert not (root / "b-out2").exists()  # refused before the job (and its output folder) existed


def test_a_record_whose_bytes_the_provenance_does_not_make_is_caught_with_a_signed_note(home_a: Up) -> None:
    """A dishonest attester records a file with one tensor byte changed under an honest provenance: the
    reproduction makes other bytes, names the first differing tensor, registers nothing, and --report
    writes a note signed by the reproducer's key."""
    from eth_account.messages import encode_defunct

    from quantledger.gguf.reader import read_gguf_header
    from quantledger.registry.provenance import canonical_bytes
    from registry_client.records import Registration

    root = home_a.home.parent
    source = write_causal_folder(root / "honest", "LlamaForCausalLM", hidden=256, ffn=512, layers=1)
    (output,) = made_by_a(home_a, source, home_a.outputs / "honest", "Q8_0")
    header = read_gguf_header(output["path"])
    victim = header.tensors[len(header.tensors) // 2]
    forged = root / "forged" / pathlib.Path(output["path"]).name
    forged.parent.mkdir()
    data = bytearray(pathlib.Path(output["path"]).read_bytes())
    data[victim.offset] ^= 0x40
    forged.write_bytes(bytes(data))
    shutil.copyfile(output["path"] + ".provenance.json", str(forged) + ".provenance.json")
    w3 = RegistryClient.web3_for(home_a.chain_url)
    admin = RegistryClient(w3, home_a.announcement["registry"], read_key_file(home_a.home / "keys" / "admin.key"))
    honest = admin.get(output["sha256"], admin.attester)
    forged_sha = hashlib.sha256(bytes(data)).hexdigest()
    admin.register(
        Registration(
            file_sha256=forged_sha, source_digest=honest.source_digest, provenance_sha256=honest.provenance_sha256,
            quant_type=honest.quant_type, tool_version=honest.tool_version, file_type=honest.file_type,
            original_size=honest.original_size, quantized_size=honest.quantized_size, flags=honest.flags,
        )
    )  # fmt: skip
    env_b = {"QUANTLEDGER_HOME": str(root / "b2"), "QUANTLEDGER_CHAIN_KEY": second_attester(home_a)}
    args = ["registry", "reproduce", str(forged), "--source", str(source), "--out", str(root / "b2-out"), "--report"]
    with served(forged.parent) as base:  # the provenance as a downloader may get it: from a URL
        args += ["--provenance", f"{base}/{forged.name}.provenance.json"]
        caught = cli(*args, "--json", "--server", home_a.address, env=env_b)
    assert caught.returncode != 0, caught.stderr
    answer = json.loads(caught.stdout)
    assert answer["verdict"] == "DIFFERENT" and answer["reproduced_sha256"] == output["sha256"]
    assert answer["first_difference"] == {"where": "tensor", "tensor": victim.name, "type": victim.type_name}
    assert admin.attestation_count(forged_sha) == 1  # nothing registered
    note = json.loads(pathlib.Path(answer["report"]).read_text())
    message = encode_defunct(canonical_bytes(note["note"]))
    assert (
        Account.recover_message(message, signature=bytes.fromhex(note["signature"].removeprefix("0x")))
        == note["signer"]
    )
    assert note["note"]["fileSha256"] == forged_sha and note["note"]["firstDifference"]["tensor"] == victim.name


def test_reproduce_artifact_is_a_job_on_a_second_server_that_co_attests(home_a: Up) -> None:
    """ReproduceArtifact on home B's own server (its key, A's chain): a tampered provenance is refused as
    PROVENANCE_MISMATCH before any job, and the server keeps serving; the honest one becomes a job (watched
    as any other) whose verdict is REPRODUCED, registered from B's key with the REPRODUCED flag."""
    import base64
    import urllib.error
    import urllib.request

    from conftest import error_reason, free_port, start_server, wait_for_job

    from quantledger.v1 import quantize_service_pb2 as pb
    from registry_client.records import Flag

    root = home_a.home.parent
    source = write_causal_folder(root / "rpc-source", "LlamaForCausalLM", hidden=256, ffn=512, layers=1)
    (output,) = made_by_a(home_a, source, home_a.outputs / "rpc", "Q8_0")
    copy = root / "rpc-b-copies" / "another-name"  # B's copy, under a folder name of its own
    shutil.copytree(source, copy)
    key = second_attester(home_a)
    env = {"QUANTLEDGER_CHAIN_URL": home_a.chain_url, "QUANTLEDGER_CHAIN_KEY": key,
           "QUANTLEDGER_REGISTRY_ADDRESS": home_a.announcement["registry"]}  # fmt: skip
    http_port = free_port()
    env["QUANTLEDGER_HTTP_PORT"] = str(http_port)
    home_b = start_server(root / "rpc-b", [root / "rpc-b-copies", root / "rpc-b"], extra_env=env)
    try:
        stub = home_b.stub()
        provenance = pathlib.Path(output["path"] + ".provenance.json").read_bytes()
        request = pb.ReproduceArtifactRequest(
            file_sha256=output["sha256"], provenance_json=provenance, source=str(copy)
        )
        tampered = pb.ReproduceArtifactRequest()
        tampered.CopyFrom(request)
        tampered.provenance_json = provenance + b"\n"  # still JSON, another digest
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReproduceArtifact(tampered, timeout=60)
        assert error_reason(refused.value) == "PROVENANCE_MISMATCH"
        over_http = urllib.request.Request(  # the same refusal on the HTTP route the proto's annotation names
            f"http://127.0.0.1:{http_port}/api/v1/quantize/jobs:reproduce",
            data=json.dumps({"file_sha256": output["sha256"],
                             "provenance_json": base64.b64encode(tampered.provenance_json).decode()}).encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as http_refused:
            urllib.request.urlopen(over_http, timeout=60)
        details = json.loads(http_refused.value.read())["details"]
        assert http_refused.value.code == 400 and [d["reason"] for d in details if "reason" in d] == [
            "PROVENANCE_MISMATCH"
        ]
        outside = pb.ReproduceArtifactRequest()
        outside.CopyFrom(request)
        outside.source = str(source)  # A's folder is not under B's roots
        with pytest.raises(grpc.RpcError) as denied:
            stub.ReproduceArtifact(outside, timeout=60)
        assert error_reason(denied.value) == "PATH_NOT_ALLOWED"

        job = stub.ReproduceArtifact(request, timeout=120)
        assert job.reproduction.original_attester == output["registry"]["attester"]
        assert job.reproduction.verdict == pb.Reproduction.VERDICT_UNSPECIFIED  # decided at REGISTERING
        finished = wait_for_job(stub, job.name)
        assert finished.state == pb.QuantizeJob.STATE_SUCCEEDED, finished.error
        assert finished.reproduction.verdict == pb.Reproduction.VERDICT_REPRODUCED
        assert finished.outputs[0].sha256 == output["sha256"]
        assert finished.outputs[0].registry.state == pb.RegistryRecord.STATE_REGISTERED
        record = home_a.client.get(output["sha256"], finished.outputs[0].registry.attester)
        assert record.flags & Flag.REPRODUCED and home_a.client.attestation_count(output["sha256"]) == 2
        again = stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name), timeout=30)
        assert again.reproduction.verdict == pb.Reproduction.VERDICT_REPRODUCED  # kept in the store
    finally:
        home_b.stop()


def other_source(root: pathlib.Path) -> pathlib.Path:
    return write_causal_folder(root / "svc-source-2", "LlamaForCausalLM", hidden=256, ffn=512, layers=2)


def _journal(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_the_reproducer_service_co_attests_new_records_and_a_crash_neither_repeats_nor_skips(home_a: Up) -> None:
    """`serve reproducer` follows A's new records: the first is reproduced and co-attested; killed (SIGKILL)
    and started again, it handles exactly the events registered meanwhile (two in one transaction), one
    reproduced and one of a type it was not told to take journaled as skipped."""
    import os
    import subprocess
    import sys
    import time

    root = home_a.home.parent
    source = write_causal_folder(root / "svc-source", "LlamaForCausalLM", hidden=256, ffn=512, layers=1)
    key = root / "svc.key"
    key.write_text(second_attester(home_a))
    key.chmod(0o600)
    published = home_a.outputs / "svc"
    published.mkdir()
    first_block = home_a.client.w3.eth.block_number + 1
    home = root / "svc-home"
    journal = home / "reproducer" / "journal.jsonl"
    argv = [sys.executable, "-m", "quantledger.cli.main", "serve", "reproducer", "--attester-key", str(key),
            "--chain-url", home_a.chain_url, "--registry", home_a.announcement["registry"],
            "--provenance-dir", str(published), "--types", "Q8_0,Q4_0", "--from-block", str(first_block)]  # fmt: skip
    env = {**os.environ, "QUANTLEDGER_HOME": str(home), "QUANTLEDGER_ALLOWED_ROOTS": str(root),
           "QUANTLEDGER_LOG_LEVEL": "INFO"}  # fmt: skip
    home.mkdir()

    def submit(*types: str) -> list[dict[str, Any]]:
        return made_by_a(home_a, source, published, *types)

    with open(home / "reproducer.log", "ab") as log:
        running = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            (q8,) = submit("Q8_0")
            deadline = time.monotonic() + 240
            while not _journal(journal) and time.monotonic() < deadline and running.poll() is None:
                time.sleep(0.5)
            assert _journal(journal), (home / "reproducer.log").read_text()
        finally:
            running.kill()  # a crash, not a clean stop
            running.wait(timeout=30)
        later = submit("Q4_0", "Q5_0")  # one job: both records in one transaction
        again = subprocess.run([*argv, "--until-idle"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert again.returncode == 0, (home / "reproducer.log").read_text()

    entries = _journal(journal)
    positions = [(e["block"], e["logIndex"]) for e in entries]
    assert positions == sorted(set(positions))  # in chain order, none twice
    originals = [e for e in entries if e["attester"] == q8["registry"]["attester"]]
    own = [e for e in entries if e not in originals]  # its own co-attestations, journaled as skipped
    by_file = {e["fileSha256"]: e["outcome"] for e in originals}
    assert len(originals) == 3 and set(by_file) == {q8["sha256"], *(o["sha256"] for o in later)}  # none skipped
    assert [e["outcome"] for e in own] == [{"skipped": "this key's own record"}] * 2
    q4 = next(o for o in later if o["quant_type"] == "Q4_0")
    q5 = next(o for o in later if o["quant_type"] == "Q5_0")
    for reproduced in (q8, q4):
        outcome = by_file[reproduced["sha256"]]
        assert outcome["verdict"] == "REPRODUCED", outcome
        assert home_a.client.attestation_count(str(reproduced["sha256"])) == 2
        assert pathlib.Path(outcome["provenance"]).is_file()
    assert by_file[q5["sha256"]] == {"skipped": "quant type Q5_0 not chosen"}
    assert home_a.client.attestation_count(str(q5["sha256"])) == 1
    assert not list((home / "artifacts").rglob("*.gguf"))  # reproduced files deleted once journaled

    # the budgets: a record whose source and output exceed the disk budget is skipped, and a reproduction
    # that runs past the time budget is cancelled; neither registers anything
    big, small = made_by_a(home_a, other_source(root), published, "Q8_0", "Q4_0")
    budget = int(small["source_size_bytes"]) + int(small["size_bytes"]) + 1  # below Q8_0's, above Q4_0's
    budgets = ["--until-idle", "--disk-budget", str(budget), "--time-budget", "0.001s"]
    with open(home / "reproducer.log", "ab") as log:
        limited = subprocess.run([*argv, *budgets], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert limited.returncode == 0, (home / "reproducer.log").read_text()
    outcomes = {e["fileSha256"]: e["outcome"] for e in _journal(journal)[len(entries) :]}
    assert outcomes[big["sha256"]]["skipped"].endswith(f"exceed the disk budget {budget}")
    assert outcomes[small["sha256"]]["verdict"] == "TIMED_OUT"
    assert [home_a.client.attestation_count(str(o["sha256"])) for o in (big, small)] == [1, 1]


def test_the_provenance_can_come_from_the_job_that_made_the_file(home_a: Up) -> None:
    """`registry reproduce SHA256 --provenance jobs/ID`: a third home, holding only the digest and its own
    copy of the source, takes the provenance from the job on A's server and co-attests."""
    root = home_a.home.parent
    source = write_causal_folder(root / "job-source", "LlamaForCausalLM", hidden=256, ffn=512, layers=1)
    out = home_a.outputs / "job-provenance"
    out.mkdir()
    done = cli("submit", str(source), "-q", "Q4_0", "--out", str(out), "--wait", "--json", "--no-quality",
               "--server", home_a.address, env=home_a.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    sha = job["outputs"][0]["sha256"]
    shutil.copytree(source, root / "c-copy")
    env_c = {"QUANTLEDGER_HOME": str(root / "c"), "QUANTLEDGER_CHAIN_KEY": second_attester(home_a)}
    args = ["registry", "reproduce", sha, "--provenance", job["name"], "--source", str(root / "c-copy")]
    reproduced = cli(*args, "--out", str(root / "c-out"), "--json", "--server", home_a.address, env=env_c)
    assert reproduced.returncode == 0, reproduced.stderr + reproduced.stdout
    answer = json.loads(reproduced.stdout)
    assert answer["verdict"] == "REPRODUCED" and answer["attestation_count"] == 2
    unknown = cli("registry", "reproduce", "ab" * 32, "--provenance", job["name"], "--server", home_a.address,
                  env=env_c)  # fmt: skip
    assert unknown.returncode != 0 and "SOURCE_NOT_FOUND" in unknown.stderr, unknown.stderr


def test_a_hub_source_is_fetched_at_the_recorded_commit_and_checked_before_conversion(home_a: Up) -> None:
    """A quantizes a hub repository (its offline cache); B, with its own cache of the same commit,
    reproduces from the file and its provenance alone (no --source): the same bytes, co-attested. A cache
    whose config.json differs by one byte at that commit is SOURCE_MISMATCH after the download, before any
    conversion or quantization."""
    from hub_cache import add_repo

    root = home_a.home.parent
    folder = write_causal_folder(root / "hub-source" / "tiny", "LlamaForCausalLM", hidden=256, ffn=512, layers=1)
    commit = add_repo(root / "hub-a", "acme/tiny", folder)
    (output,) = made_by_a(home_a, "acme/tiny@main", home_a.outputs / "hub", "Q8_0")
    provenance = json.loads(pathlib.Path(output["path"] + ".provenance.json").read_text())
    recorded = provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert recorded["digest"]["gitCommit"] == commit and recorded["annotations"]["kind"] == "hf_hub"

    add_repo(root / "hub-b", "acme/tiny", folder, commit=commit)
    key = second_attester(home_a)
    env_b = {"QUANTLEDGER_HOME": str(root / "hub-home-b"), "QUANTLEDGER_CHAIN_KEY": key,
             "HF_HUB_CACHE": str(root / "hub-b"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    reproduced = cli("registry", "reproduce", output["path"], "--out", str(root / "hub-b-out"), "--json",
                     "--server", home_a.address, env=env_b)  # fmt: skip
    assert reproduced.returncode == 0, reproduced.stderr + reproduced.stdout
    answer = json.loads(reproduced.stdout)
    assert answer["verdict"] == "REPRODUCED" and answer["attestation_count"] == 2

    changed = root / "hub-changed" / "tiny"
    shutil.copytree(folder, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    add_repo(root / "hub-c", "acme/tiny", changed, commit=commit)
    env_c = {**env_b, "QUANTLEDGER_HOME": str(root / "hub-home-c"), "HF_HUB_CACHE": str(root / "hub-c")}
    refused = cli("registry", "reproduce", output["path"], "--out", str(root / "hub-c-out"), "--server",
                  home_a.address, env=env_c)  # fmt: skip
    assert refused.returncode != 0 and "SOURCE_MISMATCH" in refused.stderr, refused.stderr
    assert not list((root / "hub-c-out").rglob("*.gguf")) and not list((root / "hub-home-c").rglob("*.gguf"))
