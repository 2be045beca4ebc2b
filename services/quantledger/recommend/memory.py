"""What llama.cpp allocates to run a model: weights per device, KV cache, compute buffer, reserves.

The KV cache follows llama.cpp's allocation exactly: the context is padded to 256 cells, each layer
with KV holds cells x n_head_kv x (key_length x bytes(K type) + value_length x bytes(V type)), and a
sliding-window layer holds only min(cells, window + ubatch) cells (padded the same way) unless the
full cache is asked for (``swa_full``: llama-cpp-python's default, llama-server's --swa-full).

The compute buffer is a model of ggml's graph allocator, fitted to what llama.cpp 0.3.36 reports
(``sched_reserve: … compute buffer size``) for llama and Gemma 2 models at 256 to 8192 cells, ubatch
128 and 512, with and without flash attention (docs/RECOMMEND.md has the table). The buffer is the
largest of three moments of the graph, because the allocator reuses memory between them:

- attention: the KQ mask (f32, f16 with flash attention), Q/K/V and the residual stream, and
  without flash attention the f32 KQ scores of every head;
- feed-forward: the mask (still live for the later layers), gate, up and their product, and the stream;
- output: the logits of the whole ubatch (the mask is freed after the last layer's attention).

Offloading follows ``-ngl``: n GPU layers put the output layer on the GPU first, then blocks from
the last one backwards; the token embeddings always stay in system RAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quantledger.recommend.shape import ModelShape

CELL_PADDING = 256
# bytes per element of the KV cache types llama.cpp offers (block bytes / block size)
KV_TYPE_BYTES = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                 "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}  # fmt: skip


def is_quantized_kv(kv_type: str) -> bool:
    """A quantized cache (q8_0, q4_0, ...): llama.cpp needs flash attention for its V half."""
    return kv_type not in ("f16", "bf16", "f32")


def pad(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class ContextSettings:
    n_ctx: int
    n_ubatch: int = 512
    kv_type: str = "f16"  # for both K and V
    flash_attention: bool = False
    swa_full: bool = False  # sliding-window layers keep the whole context too (llama-cpp-python's default)

    @property
    def cells(self) -> int:
        return pad(self.n_ctx, CELL_PADDING)

    @property
    def ubatch(self) -> int:
        """llama.cpp clamps the batch (and so the ubatch) to the context asked for."""
        return min(self.n_ubatch, self.n_ctx)


def _swa_cells(shape: ModelShape, ctx: ContextSettings) -> int:
    if not shape.sliding_window or ctx.swa_full:
        return ctx.cells
    return min(ctx.cells, pad(shape.sliding_window + ctx.ubatch, CELL_PADDING))


def kv_bytes_per_layer(shape: ModelShape, ctx: ContextSettings) -> list[int]:
    """The KV cache of every layer, in bytes (0 for a layer without KV, or for an encoder)."""
    if not shape.has_kv_cache:
        return [0] * shape.n_layer
    per_element = KV_TYPE_BYTES[ctx.kv_type]
    cells = ctx.cells
    swa_cells = _swa_cells(shape, ctx)
    out = []
    for layer in range(shape.n_layer):
        heads = shape.n_head_kv[layer]
        layer_cells = swa_cells if shape.swa_layers and shape.swa_layers[layer] else cells
        out.append(math.ceil(layer_cells * heads * (shape.key_length + shape.value_length) * per_element))
    return out


def compute_buffer_bytes(shape: ModelShape, ctx: ContextSettings) -> int:
    """The compute buffer llama.cpp reserves for the worst-case ubatch (see the module docstring)."""
    ub = ctx.ubatch
    embd = shape.n_embd
    heads = max(shape.n_head)
    q_width = heads * shape.key_length
    kv_width = max(shape.n_head_kv) * shape.key_length
    n_kv = ctx.cells if shape.has_kv_cache else pad(ub, CELL_PADDING)
    mask = ub * n_kv * (2 if ctx.flash_attention else 4)
    if shape.sliding_window and shape.has_kv_cache and any(shape.swa_layers):  # a second mask for those layers
        mask += ub * _swa_cells(shape, ctx) * (2 if ctx.flash_attention else 4)
    attention = ub * (4 * embd + q_width + 2 * kv_width) * 4
    if not ctx.flash_attention:
        attention += ub * n_kv * heads * 4
    n_ff = max(shape.n_ff) * max(1, shape.n_expert_used)
    # with a quantized cache one stream-wide tensor fewer is live there (measured, flash attention)
    feed_forward = ub * (3 * n_ff + (3 if is_quantized_kv(ctx.kv_type) else 4) * embd) * 4
    logits = shape.n_vocab if shape.has_kv_cache else 0  # an encoder returns embeddings, not logits
    output = ub * (logits + (2 if ctx.flash_attention else 3) * embd) * 4
    return max(mask + attention, mask + feed_forward, output)


@dataclass(frozen=True)
class WeightLayout:
    """Weight bytes grouped as llama.cpp places them."""

    input_bytes: int  # token embeddings and everything outside the blocks but the output layer
    output_bytes: int  # output.weight and output_norm
    block_bytes: tuple[int, ...]  # per block
    # A model whose output layer is its token embeddings: llama.cpp copies them to the output layer's
    # device (TENSOR_DUPLICATED) while the embeddings themselves stay in RAM.
    tied_output_bytes: int = 0

    @property
    def output_layer_bytes(self) -> int:
        """What the output layer takes on its device, and what a token reads of it."""
        return self.output_bytes + self.tied_output_bytes

    @property
    def total(self) -> int:
        return self.input_bytes + self.output_bytes + sum(self.block_bytes)


def weight_layout(shape: ModelShape, tensor_bytes: dict[str, int]) -> WeightLayout:
    blocks = [0] * shape.n_layer
    input_bytes = output_bytes = 0
    for tensor in shape.tensors:
        size = tensor_bytes[tensor.name]
        layer = tensor.layer
        if 0 <= layer < shape.n_layer:
            blocks[layer] += size
        elif tensor.name.startswith("output"):
            output_bytes += size
        else:
            input_bytes += size
    names = {t.name for t in shape.tensors}
    tied = tensor_bytes.get("token_embd.weight", 0) if "output.weight" not in names else 0
    return WeightLayout(input_bytes, output_bytes, tuple(blocks), tied)
