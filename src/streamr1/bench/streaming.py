"""Section ``streaming``: one video streamed by the recipe's student: frames per second, first-chunk latency.

What is built: the size's recipe through the CLI (``--size wan1.3b``: the Wan recipe's student at Wan2.1-1.3B size
with random weights, its VAE a random Wan2.1 VAE); measured: ``DMDModule.sample`` of one video (batch 1, the
recipe's latent shape: every few step of every chunk through the KV cache) and ``DMDModule.decode``, under the
recipe's precision (``trainer.precision``: bf16-mixed for Wan).

Each round (one untimed warm-up round first):

* first chunk ready: from the call until the student's first chunk of latents is out (``on_chunk``), text encoding
  included;
* first chunk on screen: that plus decoding the first chunk alone (a causal VAE's first chunk does not depend on
  later ones);
* generation: the whole video's latents;
* decode: the whole video through the VAE, once, after generation (streamr1 does not overlap decoding with
  generation);
* frames per second: pixel frames / (generation + decode); also the student's alone: pixel frames / generation.

The GPU command (the published students claim 17-23.1 FPS on one H100)::

    python -m streamr1.bench --size wan1.3b --device cuda --sections streaming

On a CPU, at the Wan widths but 1 layer and a 6x16x8x8 latent (the random Wan VAE's decode dominates there)::

    python -m streamr1.bench --size wan-reduced --sections streaming
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from streamr1.bench.measure import Row, peak_memory, spread, sync
from streamr1.bench.specs import BenchContext

SECTION = "streaming"


def stream_once(m: Any, precision: Any, prompts: list[str], noise: Tensor) -> dict[str, float]:
    """One streamed video: seconds to the first chunk's latents, to its pixels, to all latents, and to decode all."""
    device = noise.device
    marks: list[float] = []

    def on_chunk(index: int, x0: Tensor) -> None:
        if index == 0:
            sync(device)
            marks.append(time.perf_counter())

    with precision.forward_context():
        sync(device)
        start = time.perf_counter()
        latents = m.sample(prompts, noise=noise, on_chunk=on_chunk)
        sync(device)
        generated = time.perf_counter()
        chunk = m.student.chunk_frames
        with torch.no_grad():
            m.decode(latents[:, :chunk])
        sync(device)
        first_decoded = time.perf_counter() - generated
        with torch.no_grad():
            m.decode(latents)
        sync(device)
        decoded = time.perf_counter()
    return {"first_chunk": marks[0] - start, "first_on_screen": marks[0] - start + first_decoded,
            "generate": generated - start, "decode": decoded - generated - first_decoded}


def section_streaming(ctx: BenchContext) -> list[Row]:
    """Stream one video ``ctx.repeats`` times after a warm-up; FPS and first-chunk latency."""
    device = ctx.device
    cli = ctx.build()
    m = cli.model.to(device).eval()
    precision = cli.trainer.precision_plugin
    prompts = ctx.prompts(1)
    torch.manual_seed(ctx.seed)
    noise = m.sample_noise(1)
    frames = m.latent_shape[0]
    vae = m.vae
    pixel_frames = int(vae.num_pixel_frames(frames)) if hasattr(vae, "num_pixel_frames") else frames
    chunks = -(-frames // m.student.chunk_frames)
    stream_once(m, precision, prompts, noise)  # warm-up
    runs = [stream_once(m, precision, prompts, noise) for _ in range(ctx.repeats)]
    what = (f"1 video, latent {list(m.latent_shape)} = {pixel_frames} pixel frames, {chunks} chunks of "
            f"{m.student.chunk_frames}, {len(m.steps)} steps a chunk, {cli.trainer.precision}")

    def col(key: str) -> list[float]:
        return [r[key] for r in runs]

    rows = [
        Row(SECTION, "first chunk ready", spread(col("first_chunk")).scaled(1e3), "ms",
            f"latents of chunk 1 (text encoding included); {what}"),
        Row(SECTION, "first chunk on screen", spread(col("first_on_screen")).scaled(1e3), "ms",
            "first chunk ready + decoding that chunk alone"),
        Row(SECTION, "generation", spread(col("generate")).scaled(1e3), "ms",
            "the whole video's latents (student only)"),
        Row(SECTION, "decode", spread(col("decode")).scaled(1e3), "ms", f"the whole video, {type(vae).__name__}"),
        Row(SECTION, "frames per second", spread([pixel_frames / (r["generate"] + r["decode"]) for r in runs]),
            "frames/s", "pixel frames / (generation + decode)"),
        Row(SECTION, "frames per second, student only", spread([pixel_frames / r["generate"] for r in runs]),
            "frames/s", "pixel frames / generation (decode overlapped or elsewhere)"),
    ]
    if device.type == "cuda":  # on a CPU the profiler's memory events would cost one more, slower, video
        peak = peak_memory(lambda: stream_once(m, precision, prompts, noise), device)
        rows.append(Row(SECTION, "peak memory", peak / 2**20, "MiB",
                        "one streamed video above its start (cuda max_memory_allocated)"))
    return rows
