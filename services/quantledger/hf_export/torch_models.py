"""Hugging Face output folders as the quality layer reads models: runs in a worker process.

``TransformersCausal`` answers what quality/reference.py asks of a llama_cpp.Llama (``reset``, ``eval``,
``scores``), so an HF output is scored on the very chunks (token ids) the unquantized GGUF reference read,
by the same ``compare``; ``TransformersEmbedder`` answers ``embed`` with the pooling the reference GGUF
records. Both run on the CPU in the folder's own dtypes (bitsandbytes layers with their compute dtype).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from quantledger.hf_export.export import model_class

# llama.cpp's LLAMA_POOLING_TYPE values (the GGUF key {arch}.pooling_type)
POOLING_MEAN, POOLING_CLS, POOLING_LAST = 1, 2, 3


def load_model(folder: str | os.PathLike[str], threads: int = 0) -> Any:
    """The model in ``folder`` (an HF output: its config's quantization_config is honoured), in eval mode."""
    import json

    import torch

    if threads:
        torch.set_num_threads(threads)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": True}
    if "quantization_config" in config:
        kwargs["device_map"] = "cpu"
    model = model_class(config).from_pretrained(folder, **kwargs)
    model.eval()
    return model


class TransformersCausal:
    """A causal LM folder behind llama_cpp.Llama's evaluation interface: every position's logits."""

    def __init__(self, folder: str | os.PathLike[str], threads: int = 0) -> None:
        self._model = load_model(folder, threads)
        self.scores: npt.NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)

    def reset(self) -> None:
        self.scores = np.zeros((0, 0), dtype=np.float32)

    def eval(self, tokens: list[int]) -> None:
        import torch

        with torch.no_grad():
            logits = self._model(input_ids=torch.tensor([tokens], dtype=torch.long)).logits[0]
        self.scores = logits.float().numpy()


class TransformersEmbedder:
    """An encoder folder behind llama_cpp.Llama's ``embed``: the last hidden state pooled as the reference
    GGUF pools it (mean, CLS or last token), with the folder's own tokenizer."""

    def __init__(self, folder: str | os.PathLike[str], pooling: int, threads: int = 0) -> None:
        import transformers

        self._model = load_model(folder, threads)
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self._pooling = pooling

    def embed(self, text: str) -> list[float]:
        import torch

        encoded = self._tokenizer(text, return_tensors="pt", truncation=True, max_length=512, padding=False)
        with torch.no_grad():
            hidden = self._model(**encoded).last_hidden_state[0].float()
        if self._pooling == POOLING_CLS:
            pooled = hidden[0]
        elif self._pooling == POOLING_LAST:
            pooled = hidden[-1]
        else:
            pooled = hidden.mean(dim=0)
        return [float(x) for x in pooled.numpy()]
