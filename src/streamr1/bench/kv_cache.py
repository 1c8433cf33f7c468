"""Section ``kv_cache``: generating through the KV cache against recomputing the prefix, at several lengths.

What is built: the size's recipe through the CLI with a local attention window on the student
(``--model.student.init_args.local_window_frames``, ``--window-chunks`` chunks: cache and current chunk), the way a
user generates videos longer than the training length.

* cached: ``DMDModule.sample`` (every few step of every chunk through the cache, each finished chunk written into
  it once at t = 0), per-chunk times from its ``on_chunk`` callback;
* recompute (:func:`recompute_generation`): the same generation with no cache: every denoising step of every chunk
  runs the student's full-sequence block-causal forward over the clean frames so far (t = 0) and the current chunk.

Both draw the same re-noising noise (the global generator, seeded alike), so they must produce the same video: the
table shows the largest difference. For each length the two are interleaved round by round; the speed-up is the
median of the per-round ratios, and the cached last/first chunk ratio the median over rounds (flat with a window:
target <= 1.5; the speed-up should grow with length: target >= 3x at 16 chunks).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from streamr1.bench.measure import Row, interleaved, pair_ratios, spread, sync
from streamr1.bench.specs import BenchContext
from streamr1.flow import add_noise

SECTION = "kv_cache"


@torch.no_grad()
def recompute_generation(student: Any, steps: Sequence[float], noise: Tensor,
                         cond: Tensor) -> tuple[Tensor, list[float]]:
    """Chunk-by-chunk generation without a cache; returns the video ``[B, F, C, H, W]`` and each chunk's seconds.

    Every denoising step runs ``student(frames so far, t, cond)`` (its full-sequence block-causal forward, clean
    frames at t = 0) and keeps the current chunk's ``x0``; between steps the ``x0`` is re-noised to the next level
    with noise from the global generator, in the order :func:`streamr1.rollout.generate` draws it.
    """
    device = noise.device
    b, frames = noise.shape[:2]
    c = student.chunk_frames
    done: list[Tensor] = []
    times: list[float] = []
    for start in range(0, frames, c):
        sync(device)
        t0 = time.perf_counter()
        x_t = noise[:, start:start + c]
        x0 = x_t
        for i, level in enumerate(steps):
            inputs = torch.cat([*done, x_t], dim=1)
            t = torch.cat([torch.zeros(b, start, device=device),
                           torch.full((b, x_t.shape[1]), float(level), device=device)], dim=1)
            x0 = student(inputs, t, cond)[:, start:]
            if i < len(steps) - 1:
                fresh = torch.randn(x0.shape, device=device, dtype=x0.dtype)
                x_t = add_noise(x0, fresh, torch.full((b,), float(steps[i + 1]), device=device))
        done.append(x0)
        sync(device)
        times.append(time.perf_counter() - t0)
    return torch.cat(done, dim=1), times


def cached_generation(m: Any, prompts: list[str], noise: Tensor) -> tuple[Tensor, list[float]]:
    """``m.sample`` through the KV cache; returns the video and each chunk's seconds (from ``on_chunk``)."""
    device = noise.device
    times: list[float] = []
    mark = [0.0]

    def on_chunk(index: int, x0: Tensor) -> None:
        sync(device)
        now = time.perf_counter()
        times.append(now - mark[0])
        mark[0] = now

    sync(device)
    mark[0] = time.perf_counter()
    video = m.sample(prompts, noise=noise, on_chunk=on_chunk)
    return video, times


def _length(ctx: BenchContext, m: Any, precision: Any, prompts: list[str], n: int, note: str) -> list[Row]:
    """The rows of one video length, ``n`` chunks: cached and recomputed generation, interleaved."""
    device = ctx.device
    chunk = m.student.chunk_frames
    _, channels, h, w = m.latent_shape
    patch = m.student.patch_size
    torch.manual_seed(ctx.seed)
    noise = torch.randn(len(prompts), n * chunk, channels, h, w, device=device)
    chunk_times: list[list[float]] = []
    out: dict[str, Tensor] = {}

    def cached() -> None:
        torch.manual_seed(ctx.seed + 1)
        with precision.forward_context():
            out["cached"], times = cached_generation(m, prompts, noise)
        chunk_times.append(times)

    def recompute() -> None:
        torch.manual_seed(ctx.seed + 1)
        with precision.forward_context():
            out["recompute"], _ = recompute_generation(m.student, m.steps, noise, m.encode_prompts(prompts))

    tokens = n * chunk * (h // patch[1]) * (w // patch[2])
    mask_gib = tokens * tokens * 3 / 2**30  # a bool mask and a 2-byte additive bias in SDPA, at least
    fns = {"cached": cached}
    if mask_gib <= ctx.max_recompute_mask_gib:
        fns["recompute"] = recompute
    seconds = interleaved(fns, ctx.repeats, device)
    timed_chunks = chunk_times[-ctx.repeats:]
    first = spread([t[0] for t in timed_chunks]).scaled(1e3)
    last_first = spread([t[-1] / t[0] for t in timed_chunks])
    mean_chunk = spread([s / n for s in seconds["cached"]]).scaled(1e3)
    fps = len(prompts) * chunk / (mean_chunk.median / 1e3)
    prefix = f"{n} chunks"
    rows = [
        Row(SECTION, f"{prefix}: cached, first chunk", first, "ms", note),
        Row(SECTION, f"{prefix}: cached, last chunk / first", last_first, "x",
            f"last chunk {statistics.median(t[-1] for t in timed_chunks) * 1e3:.1f} ms; target <= 1.5: "
            f"{'met' if last_first.median <= 1.5 else 'NOT met'} (median)"),
        Row(SECTION, f"{prefix}: cached, mean chunk", mean_chunk, "ms", f"{fps:.2f} latent frames/s"),
    ]
    if "recompute" not in fns:
        return rows + [Row(SECTION, f"{prefix}: recompute", "skipped", "",
                           f"{tokens} tokens: a dense block-causal mask of ~{mask_gib:.0f} GiB > "
                           f"--max-recompute-mask-gib {ctx.max_recompute_mask_gib:g}")]
    speedup = pair_ratios(seconds["recompute"], seconds["cached"])
    diff = float((out["recompute"].float() - out["cached"].float()).abs().max())
    return rows + [
        Row(SECTION, f"{prefix}: recompute, mean chunk", spread([s / n for s in seconds["recompute"]]).scaled(1e3),
            "ms", "no cache: the full block-causal forward over every frame so far, each step"),
        Row(SECTION, f"{prefix}: speed-up of the cache", speedup, "x",
            f"per-round recompute / cached; max |cached - recomputed| = {diff:.1e}"
            + (f"; target >= 3x at 16 chunks: {'met' if speedup.median >= 3 else 'NOT met'}" if n == 16 else "")),
    ]


def section_kv_cache(ctx: BenchContext) -> list[Row]:
    """Cached against recomputed generation at ``ctx.chunks`` lengths, interleaved."""
    chunk = ctx.build().model.student.chunk_frames
    window = ctx.window_chunks * chunk
    cli = ctx.build(overrides=("--model.student.init_args.local_window_frames", str(window)))
    m = cli.model.to(ctx.device).eval()
    batch = int(getattr(cli.datamodule, "batch_size", 1) or 1)
    note = f"window {window} frames ({ctx.window_chunks} chunks), batch {batch}"
    rows: list[Row] = []
    for n in ctx.chunks:
        rows += _length(ctx, m, cli.trainer.precision_plugin, ctx.prompts(batch), n, note)
    speedups = [r.value.median for r in rows if r.metric.endswith("speed-up of the cache")]
    if len(speedups) > 1:
        grows = all(b > a for a, b in zip(speedups, speedups[1:], strict=False))
        trend = " -> ".join(f"{s:.2f}x" for s in speedups)
        rows.append(Row(SECTION, "speed-up grows with length", "yes" if grows else "no", "",
                        f"medians {trend} (target: grows: {'met' if grows else 'NOT met'})"))
    return rows
