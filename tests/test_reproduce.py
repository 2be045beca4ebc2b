"""Independent reproduction (issue 17): home B redoes home A's output from A's provenance JSON alone, gets the
same bytes and co-attests them from its own key; a tampered provenance and a changed source are refused
before any quantization.

Home A is a real `quantledger up` (embedded chain, registry, a job with a LoRA merged and an importance matrix
computed by the job); home B is another data dir with its own attester key, reproducing on A's chain.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

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
    running = Up(root / "a", [root])
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
    out = home_a.outputs / "honest"
    out.mkdir()
    done = cli("submit", str(source), "-q", "Q8_0", "--out", str(out), "--wait", "--json", "--no-quality",
               "--server", home_a.address, env=home_a.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["outputs"][0]
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
