"""The Registrar against a real chain (the embedded eth-tester node over HTTP): outputs of one job beyond
one registerBatch, each carrying the hash of the transaction that registered it."""

from __future__ import annotations

import hashlib
import math
import pathlib
from collections.abc import Iterator

import pytest
from conftest import free_port
from test_embedded_chain import ADMIN, ChainProcess

from quantledger.jobs.model import Artifact, Job, JobSpec, OutputFile, RegistryEntry, SourceInfo
from quantledger.registry.registrar import PENDING, REGISTERED, Registrar
from registry_client.address_book import AddressBook
from registry_client.client import RegistryClient

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def artifact(name: str, files: int = 1) -> Artifact:
    outputs = tuple(OutputFile(f"/out/{name}-{i}.gguf", 1_000, sha(f"{name} file {i}")) for i in range(files))
    return Artifact(
        quant_type="Q4_K_M",
        path=outputs[0].path,
        size_bytes=1_000,
        sha256=outputs[0].sha256,
        bits_per_weight=4.8,
        fallback_tensor_count=0,
        tensor_count=10,
        source_size_bytes=3_000 * files,
        quantize_seconds=0.1,
        file_type=15,
        files=outputs,
        registry=RegistryEntry(PENDING, f"/out/{name}.provenance.json", sha(f"provenance of {name}")),
    )


@pytest.fixture
def chain(tmp_path: pathlib.Path) -> Iterator[ChainProcess]:
    process = ChainProcess(tmp_path / "chain", free_port())
    yield process
    process.stop()


def test_more_outputs_than_one_batch_each_carry_the_transaction_that_registered_them(
    chain: ChainProcess, tmp_path: pathlib.Path
) -> None:
    registrar = Registrar(chain.url, ADMIN, AddressBook(tmp_path / "addresses.json"))
    client = registrar.client()
    limit = int(client.contract.functions.MAX_BATCH().call())  # the contract's own limit
    # a batch and a bit of single-file outputs, with one split output whose files straddle the batch edge
    singles = [artifact(f"out{i}") for i in range(limit + 5)]
    split = artifact("split", files=3)
    outputs = [*singles[: limit - 1], split, *singles[limit - 1 :]]
    job = Job(
        id="j1",
        spec=JobSpec(source="/models/m.gguf", quant_types=("Q4_K_M",)),
        request_id="",
        create_time=0,
        source_info=SourceInfo(
            path="/models/m.gguf",
            architecture="llama",
            size_bytes=3_000,
            parameter_count=1,
            file_type=1,
            tensor_count=10,
            model_name="m",
            tensor_bytes=3_000,
            root_digest=sha("source"),
        ),
    )

    registered = registrar.register(job, outputs)

    files = sum(len(a.files) for a in outputs)
    hashes = {a.registry.tx_hash for a in registered if a.registry is not None}
    assert len(hashes) == math.ceil(files / limit) == 2
    logged: dict[str, str] = {}  # file sha256 -> the transaction whose Registered event names it
    for tx_hash in hashes:
        receipt = client.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        assert receipt["status"] == 1
        for event in client.contract.events.Registered().process_receipt(receipt):
            logged[bytes(event["args"]["fileDigest"]).hex()] = tx_hash
    assert len(logged) == files
    for output in registered:
        entry = output.registry
        assert entry is not None and entry.state == REGISTERED and entry.error is None
        # the transaction that registered the output's last file (for the split one: the second batch)
        assert entry.tx_hash == logged[output.files[-1].sha256], output.path
        receipt = client.w3.eth.get_transaction_receipt(entry.tx_hash)  # type: ignore[arg-type]
        assert entry.block_number == receipt["blockNumber"]
    split_entry = registered[limit - 1].registry
    assert split_entry is not None and split_entry.tx_hash != registered[0].registry.tx_hash  # type: ignore[union-attr]
    assert RegistryClient(client.w3, client.address).attestation_count(split.files[0].sha256) == 1
    assert client.max_batch == limit  # what the registrar split by: read from the contract
