"""Section ``throughput``: the student's tokens per second, and its FLOP rate against a plain matmul's.

What is built: the size's recipe through the CLI; measured: the student's transformer (``model.student``), forward
and forward+backward over the recipe's training latent and batch with the recipe's text embeddings, in training mode
(activation checkpointing where the recipe turns it on), under the recipe's precision. The reference is a square
matmul on the same device and dtype; the three are interleaved round by round, and each rate's fraction of the
matmul's is the median of the per-round ratios.

Model FLOPs are counted analytically (:func:`forward_flops`): ``2 x weights x rows`` for every matmul weight and
``4 x T x T x width`` per self-attention, ``4 x T x L x width`` per cross-attention; backward = 2 x forward;
recomputation by activation checkpointing is not counted (the usual "model FLOPs").
"""

from __future__ import annotations

import re

import torch
from torch import nn

from streamr1.bench.measure import Row, interleaved, pair_ratios, spread
from streamr1.bench.specs import BenchContext

SECTION = "throughput"


def forward_flops(transformer: nn.Module, tokens: int, text_tokens: int, batch: int = 1) -> float:
    """Analytic FLOPs of one forward of a Wan transformer on ``batch`` sequences of ``tokens`` video tokens.

    ``2 x weights x rows`` for every ``nn.Linear``/``nn.Conv3d`` weight: video-side weights (patch embedding, self-
    attention, cross-attention queries and output, FFN, output projection) run on the video tokens, text-side
    weights (text embedder, cross-attention keys and values) on the text tokens, timestep embedders on one row per
    sample. Plus ``4 x T x T x width`` (scores and weighted sum) per self-attention and ``4 x T x L x width`` per
    cross-attention. Norms, activations, rotary embedding and softmax are left out (a few percent at most).
    """
    video = text = per_sample = 0
    for name, mod in transformer.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv3d)):
            continue
        n = mod.weight.numel()
        if "text_embedder" in name or re.search(r"attn2\.(to_k|to_v)$", name):
            text += n
        elif "time_embedder" in name or "time_proj" in name:
            per_sample += n
        else:
            video += n
    cfg = transformer.config
    width = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    attention = int(cfg.num_layers) * (4 * tokens * tokens * width + 4 * tokens * text_tokens * width)
    return float(batch * (2 * video * tokens + 2 * text * text_tokens + 2 * per_sample + attention))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a ``trainer.precision`` setting run in (``bf16-mixed`` -> bfloat16)."""
    p = str(precision)
    return torch.bfloat16 if p.startswith("bf16") else torch.float16 if p.startswith("16") else torch.float32


def section_throughput(ctx: BenchContext) -> list[Row]:
    """Student forward and forward+backward tokens/s and their FLOP rate as a fraction of a matmul's."""
    device = ctx.device
    cli = ctx.build()
    m = cli.model.to(device)
    precision = cli.trainer.precision_plugin
    dtype = compute_dtype(cli.trainer.precision)
    transformer = m.student.transformer
    was_training = transformer.training
    transformer.train()
    batch = int(getattr(cli.datamodule, "batch_size", 1) or 1)
    frames, channels, h, w = m.latent_shape
    patch = m.student.patch_size
    tokens = (frames // patch[0]) * (h // patch[1]) * (w // patch[2])
    torch.manual_seed(ctx.seed)
    x = torch.randn(batch, channels, frames, h, w, device=device)
    t = torch.full((batch,), 500.0, device=device)
    cond = m.encode_prompts(ctx.prompts(batch))
    flops_fwd = forward_flops(transformer, tokens, cond.shape[1], batch)
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 8)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def forward() -> None:
        with torch.no_grad(), precision.forward_context():
            transformer(x, t, cond, return_dict=False)

    def forward_backward() -> None:
        with precision.forward_context():
            out = transformer(x, t, cond, return_dict=False)[0]
        out.float().square().mean().backward()
        transformer.zero_grad(set_to_none=True)

    def matmul() -> None:
        for _ in range(reps):
            a @ b

    try:
        seconds = interleaved({"forward": forward, "forward+backward": forward_backward, "matmul": matmul},
                              ctx.repeats, device)
    finally:
        transformer.train(was_training)
    matmul_flops = 2.0 * n**3 * reps
    name_dtype = str(dtype).replace("torch.", "")
    rows = [Row(SECTION, f"matmul {n}x{n} ({name_dtype})", spread([matmul_flops / s / 1e9 for s in seconds["matmul"]]),
                "GFLOP/s", "plain square matmul on this device: the reference rate")]
    for name, flops in (("forward", flops_fwd), ("forward+backward", 3 * flops_fwd)):
        rows.append(Row(SECTION, f"student {name}: tokens/s", spread([batch * tokens / s for s in seconds[name]]),
                        "tokens/s", f"{batch} x {tokens} tokens, precision {cli.trainer.precision}"))
        # rate / matmul rate = (flops / s_model) / (matmul_flops / s_matmul), per round
        fraction = pair_ratios([flops * s_mm for s_mm in seconds["matmul"]],
                               [matmul_flops * s for s in seconds[name]])
        rows.append(Row(SECTION, f"student {name}: model FLOP rate / matmul's", fraction.scaled(100), "%",
                        f"{flops / 1e9:.2f} GFLOP analytic a call; median "
                        f"{flops / spread(seconds[name]).median / 1e9:.1f} GFLOP/s"
                        + (" (+1 forward recomputed by checkpointing, not counted)"
                           if name == "forward+backward" and transformer.is_gradient_checkpointing else "")))
    return rows
