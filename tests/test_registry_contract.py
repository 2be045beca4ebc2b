"""QuantizedModelRegistry through web3 + eth-tester (a real EVM), driven by the package's RegistryClient."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from collections.abc import Iterator

import pytest
from eth_account import Account
from web3 import Web3
from web3.providers.base import BaseProvider

from registry_client import errors
from registry_client.artifact import ARTIFACT_PATH, registry_artifact
from registry_client.chain import EmbeddedChain, RpcDispatcher
from registry_client.client import RegistryClient
from registry_client.records import Flag, Registration, Status

pytestmark = pytest.mark.chain


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def registration(
    name: str,
    *,
    source: str = "source-a",
    quant_type: str = "Q4_K_M",
    original: int = 3_300,
    quantized: int = 1_000,
    revision: str = "ab" * 20,
    flags: int = 0,
) -> Registration:
    return Registration(
        file_sha256=digest(name),
        source_digest=digest(source),
        provenance_sha256=digest(f"provenance of {name}"),
        quant_type=quant_type,
        tool_version="llama.cpp test",
        file_type=15,
        original_size=original,
        quantized_size=quantized,
        source_revision=revision,
        flags=flags,
    )


class InProcessProvider(BaseProvider):
    """web3 provider that hands JSON-RPC requests straight to the embedded chain's dispatcher (no HTTP)."""

    def __init__(self, dispatcher: RpcDispatcher) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._id = 0

    def make_request(self, method, params):  # type: ignore[no-untyped-def]
        self._id += 1
        request = json.loads(
            json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}, default=_jsonable)
        )
        return self._dispatcher.handle(request)

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    raise TypeError(type(value))


class Chain:
    """A fresh embedded chain (eth-tester) with the registry deployed by account 0 (admin and attester)."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.accounts = [Account.from_key(bytes([i + 1]) * 32) for i in range(4)]
        self.node = EmbeddedChain.open(directory, [a.address for a in self.accounts])
        self.w3 = Web3(InProcessProvider(RpcDispatcher(self.node)))
        self.admin = RegistryClient.deploy(self.w3, self.accounts[0])
        self.address = self.admin.address

    def client(self, index: int) -> RegistryClient:
        return RegistryClient(self.w3, self.address, self.accounts[index])

    def reader(self) -> RegistryClient:
        return RegistryClient(self.w3, self.address)


@pytest.fixture
def chain(tmp_path: pathlib.Path) -> Iterator[Chain]:
    running = Chain(tmp_path / "chain")
    yield running
    running.node.close()


def test_register_then_read_back_every_field(chain: Chain) -> None:
    reg = registration("model.Q4_K_M.gguf", flags=Flag.IMATRIX | Flag.PURE)
    result = chain.admin.register(reg)
    assert result.gas_used > 0
    record = chain.reader().get(reg.file_sha256, chain.admin.attester)
    assert record.matches(reg.validated())
    assert record.attester == chain.admin.attester
    assert record.attested_at > 0 and record.revoked_at == 0
    assert Flag(record.flags) == Flag.IMATRIX | Flag.PURE
    assert chain.reader().verify(reg.file_sha256, chain.admin.attester) is Status.VALID
    assert chain.reader().compression_ratio(reg.file_sha256, chain.admin.attester) == 3.3
    assert chain.reader().attestation_count(reg.file_sha256) == 1
    assert chain.reader().contract_version() == "1.0.0"


def test_a_local_source_without_revision_reads_back_empty(chain: Chain) -> None:
    reg = registration("local.gguf", revision="")
    chain.admin.register(reg)
    assert chain.reader().get(reg.file_sha256, chain.admin.attester).source_revision == ""


def test_only_attesters_register_and_only_admins_grant(chain: Chain) -> None:
    stranger = chain.client(1)
    with pytest.raises(errors.NotAttester) as caught:
        stranger.register(registration("x"))
    assert caught.value.error_name == "MissingRole"
    with pytest.raises(errors.NotAttester):
        stranger.grant_attester(stranger.attester)
    chain.admin.grant_attester(stranger.attester)
    assert chain.reader().is_attester(stranger.attester)
    stranger.register(registration("x"))
    chain.admin.revoke_attester(stranger.attester)
    assert not chain.reader().is_attester(stranger.attester)
    with pytest.raises(errors.NotAttester):
        stranger.register(registration("y"))
    # records made while the role was held stay valid
    assert chain.reader().verify(digest("x"), stranger.attester) is Status.VALID


def test_duplicate_registration_is_refused_and_changes_nothing(chain: Chain) -> None:
    reg = registration("dup")
    chain.admin.register(reg)
    block = chain.w3.eth.block_number
    with pytest.raises(errors.AlreadyRegistered):
        chain.admin.register(registration("dup", quant_type="Q8_0"))
    assert chain.w3.eth.block_number == block  # refused at estimation: nothing was sent
    assert chain.reader().get(reg.file_sha256, chain.admin.attester).quant_type == "Q4_K_M"


def test_squatter_cannot_lock_out_the_real_attester(chain: Chain) -> None:
    squatter, honest = chain.client(1), chain.client(2)
    chain.admin.grant_attester(squatter.attester)
    chain.admin.grant_attester(honest.attester)
    squatter.register(registration("popular.gguf", source="a lie"))
    honest.register(registration("popular.gguf", source="the truth"))
    reader = chain.reader()
    assert reader.get(digest("popular.gguf"), honest.attester).source_digest == digest("the truth")
    assert reader.get(digest("popular.gguf"), squatter.attester).source_digest == digest("a lie")
    assert reader.attestation_count(digest("popular.gguf")) == 2
    assert reader.attesters_of(digest("popular.gguf")) == ([squatter.attester, honest.attester], 2)
    # the file is listed under both claimed sources, once each
    assert reader.files_by_source(digest("the truth")) == ([digest("popular.gguf")], 1)
    assert reader.files_by_source(digest("a lie")) == ([digest("popular.gguf")], 1)


def test_revoke_own_record_only_with_a_reason(chain: Chain) -> None:
    other = chain.client(1)
    chain.admin.grant_attester(other.attester)
    reg = registration("revoke-me")
    chain.admin.register(reg)
    other.register(reg)
    with pytest.raises(errors.RecordNotFound):
        chain.client(2).revoke(reg.file_sha256, "not mine")
    chain.admin.revoke(reg.file_sha256, "wrong imatrix")
    reader = chain.reader()
    assert reader.verify(reg.file_sha256, chain.admin.attester) is Status.REVOKED
    assert reader.verify(reg.file_sha256, other.attester) is Status.VALID
    assert reader.attestation_count(reg.file_sha256) == 1
    assert [r.attester for r in reader.valid_records(reg.file_sha256)] == [other.attester]
    assert reader.get(reg.file_sha256, chain.admin.attester).revoked_at > 0
    with pytest.raises(errors.AlreadyRevoked):
        chain.admin.revoke(reg.file_sha256, "again")
    logs = chain.admin.contract.events.Revoked().get_logs(from_block=0)
    assert [log["args"]["reason"] for log in logs] == ["wrong imatrix"]


def test_verify_of_a_file_never_registered_is_unknown(chain: Chain) -> None:
    reader = chain.reader()
    assert reader.verify(digest("never"), chain.admin.attester) is Status.UNKNOWN
    assert reader.valid_records(digest("never")) == []
    assert reader.attestation_count(digest("never")) == 0
    with pytest.raises(errors.RecordNotFound):
        reader.get(digest("never"), chain.admin.attester)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"original": 0}, "originalSize"),
        ({"quantized": 0}, "quantizedSize"),
        ({"original": 100, "quantized": 101}, "quantizedSize"),
        ({"original": 1 << 48}, "originalSize"),
    ],
)
def test_bad_sizes_are_refused_before_sending(chain: Chain, change: dict[str, int], field: str) -> None:
    block = chain.w3.eth.block_number
    with pytest.raises(errors.InvalidRegistration) as caught:
        chain.admin.register(registration("bad", **change))  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == field
    assert chain.w3.eth.block_number == block


@pytest.mark.parametrize(
    ("reg", "field"),
    [
        (Registration("ab" * 31, digest("s"), digest("p"), "Q4_K_M", "t", 15, 10, 5), "fileDigest"),
        (Registration(digest("f"), "xyz", digest("p"), "Q4_K_M", "t", 15, 10, 5), "sourceDigest"),
        (Registration(digest("f"), digest("s"), digest("p") + "00", "Q4_K_M", "t", 15, 10, 5), "provenanceDigest"),
        (Registration(digest("f"), digest("s"), digest("p"), "", "t", 15, 10, 5), "quantType"),
        (Registration(digest("f"), digest("s"), digest("p"), "Q" * 33, "t", 15, 10, 5), "quantType"),
        (
            Registration(digest("f"), digest("s"), digest("p"), "Q4", "t", 15, 10, 5, source_revision="abc"),
            "sourceRevision",
        ),
    ],
)
def test_malformed_fields_are_typed_errors(chain: Chain, reg: Registration, field: str) -> None:
    with pytest.raises(errors.InvalidRegistration) as caught:
        chain.admin.register(reg)
    assert caught.value.metadata["field"] == field


def test_the_contract_itself_refuses_what_a_careless_client_sends(chain: Chain) -> None:
    """The contract does not rely on the client's checks: raw calls get its custom errors."""
    good = registration("raw").validated().to_abi()
    cases = {
        "ZeroDigest": (b"\0" * 32, *good[1:]),
        "InvalidSize": (*good[:8], 0, good[9]),
        "QuantizedLargerThanOriginal": (*good[:8], 10, 11),
        "EmptyLabel": (*good[:4], b"\0" * 32, *good[5:]),
        "MalformedLabel": (*good[:4], b"\0A" + b"\0" * 30, *good[5:]),
    }
    for name, values in cases.items():
        with pytest.raises(errors.InvalidRecord) as caught:
            chain.admin._transact(chain.admin.contract.functions.register(values).build_transaction)
        assert caught.value.error_name == name


def test_pagination_bounds(chain: Chain) -> None:
    chain.admin.register_batch([registration(f"f{i}", source="big") for i in range(7)])
    reader = chain.reader()
    assert reader.files_by_source(digest("big"), 0, 3) == ([digest(f"f{i}") for i in range(3)], 7)
    assert reader.files_by_source(digest("big"), 6, 3) == ([digest("f6")], 7)
    assert reader.files_by_source(digest("big"), 7, 3) == ([], 7)
    assert reader.files_by_source(digest("big"), 10**30, 3) == ([], 7)
    for limit in (0, 101):
        with pytest.raises(errors.InvalidRecord) as caught:
            reader.files_by_source(digest("big"), 0, limit)
        assert caught.value.error_name == "InvalidPageSize"
    assert reader.attesters_of(digest("f0"), 1, 100) == ([], 1)


def test_batch_is_all_or_nothing_and_capped(chain: Chain) -> None:
    max_batch = chain.admin.contract.functions.MAX_BATCH().call()
    with pytest.raises(errors.InvalidRecord) as caught:
        chain.admin.register_batch([registration(f"cap{i}") for i in range(max_batch + 1)])
    assert caught.value.error_name == "InvalidBatchSize"
    with pytest.raises(errors.InvalidRecord):
        chain.admin.register_batch([])
    chain.admin.register(registration("b3"))
    with pytest.raises(errors.AlreadyRegistered):
        chain.admin.register_batch([registration(f"b{i}") for i in range(5)])
    assert chain.reader().verify(digest("b0"), chain.admin.attester) is Status.UNKNOWN
    result = chain.admin.register_batch([registration(f"c{i}") for i in range(max_batch)])
    assert result.gas_used > 0
    assert chain.reader().attestation_count(digest(f"c{max_batch - 1}")) == 1


def test_compression_aggregates_follow_valid_records(chain: Chain) -> None:
    reader = chain.reader()
    assert reader.quant_type_ratio("Q4_K_M") == (0.0, 0)
    chain.admin.register(registration("a", original=3_000, quantized=1_000))
    chain.admin.register(registration("b", original=4_000, quantized=1_000))
    chain.admin.register(registration("c", quant_type="Q8_0", original=2_000, quantized=1_000))
    assert reader.quant_type_ratio("Q4_K_M") == (3.5, 2)
    assert reader.quant_type_ratio("Q8_0") == (2.0, 1)
    chain.admin.revoke(digest("b"), "superseded")
    assert reader.quant_type_ratio("Q4_K_M") == (3.0, 1)
    chain.admin.revoke(digest("a"), "superseded")
    assert reader.quant_type_ratio("Q4_K_M") == (0.0, 0)


def test_the_last_admin_cannot_be_removed(chain: Chain) -> None:
    admin_role = chain.admin.contract.functions.ADMIN_ROLE().call()
    with pytest.raises(errors.ContractRejected) as caught:
        chain.admin._transact(
            chain.admin.contract.functions.revokeRole(admin_role, chain.admin.attester).build_transaction
        )
    assert caught.value.error_name == "LastAdmin"
    assert chain.reader().is_admin(chain.admin.attester)


def test_register_gas_stays_within_budget(chain: Chain) -> None:
    """A further output of a known source costs at most 150k gas (EAS's attest costs about 346k)."""
    chain.admin.register(registration("warm-up", source="s"))
    second = chain.admin.register(registration("second", source="s"))
    assert second.gas_used <= 150_000
    batch = chain.admin.register_batch([registration(f"n{i}", source=f"new{i}") for i in range(10)])
    assert batch.gas_used / 10 <= 150_000


def test_committed_artifact_matches_a_fresh_compile() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is needed to compile the contract (npm install --prefix tests/node)")
    from registry_client.compile import EVM_VERSION, SOLC_VERSION, compile_registry

    fresh = compile_registry()
    committed = registry_artifact()
    assert committed.compiler.startswith(f"solc {SOLC_VERSION}")
    assert committed.settings["evmVersion"] == EVM_VERSION
    assert fresh == committed, f"{ARTIFACT_PATH} is stale: run python -m registry_client.compile"
    assert not fresh.warnings, fresh.warnings
    assert json.loads(ARTIFACT_PATH.read_text())["abi"] == fresh.abi


def test_verify_file_checks_size_file_type_and_revocation(chain: Chain, tmp_path: pathlib.Path) -> None:
    from quantledger.errors import SourceInvalid
    from quantledger.gguf.reader import read_gguf_header
    from quantledger.registry.verify import Verdict, verify_file
    from quantledger.testing.synthetic_model import write_llama_gguf

    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, n_embd=64, n_ff=128, n_layer=1, n_head=2, n_head_kv=1, n_vocab=288)
    data = path.read_bytes()
    sha, size, file_type = hashlib.sha256(data).hexdigest(), len(data), read_gguf_header(path).file_type
    assert verify_file(chain.reader(), path).verdict is Verdict.UNKNOWN

    def record(account: int, **change: int) -> Registration:
        fields = {"file_type": file_type, "original_size": size * 2, "quantized_size": size, **change}
        return Registration(sha, digest("src"), digest("prov"), "F16", "t", **fields)  # type: ignore[arg-type]

    other = chain.client(1)
    chain.admin.grant_attester(other.attester)
    other.register(record(1, file_type=7))  # claims another file type than the header says
    wrong = verify_file(chain.reader(), path)
    assert wrong.verdict is Verdict.MISMATCH and "file type 7" in wrong.problems[0]
    chain.admin.register(record(0))
    right = verify_file(chain.reader(), path)
    assert right.verdict is Verdict.VALID and [r.attester for r in right.valid] == [chain.admin.attester]
    assert verify_file(chain.reader(), path, attester=other.attester).verdict is Verdict.MISMATCH
    longer = tmp_path / "padded.gguf"
    longer.write_bytes(data + b"\0" * 32)
    early = verify_file(chain.reader(), longer, expected_sha256=sha)
    assert early.verdict is Verdict.MISMATCH and "bytes" in early.problems[0]  # refused on size, before hashing
    chain.admin.revoke(sha, "withdrawn")
    other.revoke(sha, "withdrawn")
    assert verify_file(chain.reader(), path).verdict is Verdict.REVOKED
    with pytest.raises(SourceInvalid):
        verify_file(chain.reader(), ARTIFACT_PATH)  # not a GGUF: refused before hashing
