"""Every type of the installed llama.cpp catalogue produces a file llama.cpp loads and evaluates."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from conftest import Models, wait_for_job

from quantledger.gguf.reader import read_gguf_header
from quantledger.quantize.imatrix import write_imatrix_dat, write_imatrix_gguf
from quantledger.v1 import quantize_service_pb2 as pb


def imatrix_for(path, out, fmt: str) -> None:
    header = read_gguf_header(path)
    rng = np.random.default_rng(0)
    entries = {
        t.name: rng.uniform(0.5, 2.0, t.shape[0]).astype(np.float32) for t in header.tensors if len(t.shape) >= 2
    }
    (write_imatrix_gguf if fmt == "gguf" else write_imatrix_dat)(out, entries)


@pytest.mark.slow
def test_every_catalogue_type_loads_and_evaluates(stub, models: Models) -> None:
    listed = stub.ListQuantTypes(pb.ListQuantTypesRequest()).quant_types
    types = [t.name for t in listed if t.family != "huggingface"]  # llama.cpp's; the HF formats need HF sources
    assert [t.name for t in listed if t.family == "huggingface"] == ["HF_F16", "HF_BF16", "HF_BNB_INT8", "HF_BNB_NF4"]
    imatrix = models.root / "catalogue.imatrix.gguf"
    imatrix_for(models.f16, imatrix, "gguf")
    job = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=types,
        # quality has its own tests; 35 evaluations would only slow this one down
        options=pb.QuantizeOptions(
            imatrix_path=str(imatrix), output_dir=str(models.root / "catalogue"), skip_quality=True
        ),
    )
    created = stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job))
    final = wait_for_job(stub, created.name, timeout=900)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    assert [o.quant_type for o in final.outputs] == types
    for output in final.outputs:
        header = read_gguf_header(output.path)
        assert header.metadata["general.file_type"] == output.file_type, output.quant_type
        llm = llama_cpp.Llama(model_path=output.path, n_ctx=32, n_threads=2, verbose=False, logits_all=True)
        tokens = llm.tokenize(b"the quick brown fox")
        llm.eval(tokens)
        logits = np.asarray(llm.scores[len(tokens) - 1])
        assert np.isfinite(logits).all(), output.quant_type
        del llm


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_imatrix_types_quantize_with_either_imatrix_format(stub, models: Models, fmt: str) -> None:
    imatrix = models.root / f"im.{fmt}"
    imatrix_for(models.f16, imatrix, fmt)
    job = pb.QuantizeJob(
        source=str(models.f16),
        quant_types=["IQ2_XXS", "IQ1_S"],
        options=pb.QuantizeOptions(imatrix_path=str(imatrix), output_dir=str(models.root / f"imatrix-{fmt}")),
    )
    estimate = stub.EstimateQuantizeJob(pb.EstimateQuantizeJobRequest(job=job))
    final = wait_for_job(stub, stub.CreateQuantizeJob(pb.CreateQuantizeJobRequest(job=job)).name)
    assert final.state == pb.QuantizeJob.STATE_SUCCEEDED, final.error
    header = read_gguf_header(final.outputs[0].path)
    assert {t.type_name for t in header.tensors} >= {"IQ2_XXS"}
    # the output records its importance matrix as llama-quantize does, and the estimate knew the bytes
    n_matrices = sum(1 for t in read_gguf_header(models.f16).tensors if len(t.shape) >= 2)
    assert header.metadata["quantize.imatrix.file"] == imatrix.name
    assert header.metadata["quantize.imatrix.entries_count"] == n_matrices
    assert header.metadata["quantize.imatrix.dataset"] == "synthetic"
    assert header.metadata["quantize.imatrix.chunks_count"] >= 1
    assert [o.size_bytes for o in final.outputs] == [o.size_bytes for o in estimate.outputs]
