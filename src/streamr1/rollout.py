"""Self-forcing rollouts of the causal student (SPEC.md §2; Self-Forcing, arXiv 2506.08009 Alg. 1).

The video is produced chunk by chunk. Within a chunk the student walks the warped few-step
list; steps before the exit index run without grad and re-noise their ``x0`` prediction to
the next level with fresh noise; the exit step runs with grad and its ``x0`` is the chunk's
output. The finished chunk is then fed once more at ``t = 0``, without grad, to write its keys
and values into the cache: no gradient flows through the cache into earlier chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from streamr1.flow import add_noise


def self_forcing_rollout(
    student,
    noise: Tensor,
    cond: Tensor,
    steps: Sequence[float],
    exit_index: int,
    grad: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    on_chunk: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Roll the student out over a whole video.

    Args:
        student: a :class:`~streamr1.models.student.CausalWanDenoiser` (``new_cache``, ``chunk_x0``, ``chunk_frames``).
        noise: ``[B, F, C, H, W]`` the initial noise; ``F`` a multiple of the chunk size except possibly the last chunk.
        cond: ``[B, L, D]`` text embeddings.
        steps: warped few-step list, noisiest first (e.g. ``[1000, 937.5, 833.3, 625]``).
        exit_index: the step whose ``x0`` is the chunk's output (``len(steps) - 1`` = full sampling). Must be the
            same on every rank (draw it on rank 0 and broadcast).
        grad: run the exit step with grad (a student turn) or not (a critic turn, sampling).
        generator: for the re-noising noise (per-rank randomness that does not change control flow); or a list of
            ``B`` generators, one a sample, so that each sample's noise does not depend on the batch it is in
            (evaluation: a video is a function of its own seeds).
        on_chunk: called with ``(chunk_index, x0_chunk)`` as each chunk finishes (streaming consumers, timing).

    Returns:
        ``[B, F, C, H, W]`` the rollout; differentiable w.r.t. the student only through each chunk's exit step.
    """
    if not 0 <= exit_index < len(steps):
        raise ValueError(f"exit_index {exit_index} is outside the {len(steps)}-step list {list(steps)}")
    b, f = noise.shape[:2]
    cache = student.new_cache()
    chunk = student.chunk_frames
    outputs: list[Tensor] = []
    for ci, start in enumerate(range(0, f, chunk)):
        x_t = noise[:, start:start + chunk]
        x0 = x_t
        for i in range(exit_index + 1):
            t = torch.full((b,), float(steps[i]), device=noise.device)
            last = i == exit_index
            with torch.enable_grad() if (last and grad) else torch.no_grad():
                x0 = student.chunk_x0(x_t, t, cond, cache)
            if not last:
                if isinstance(generator, (list, tuple)):
                    fresh = torch.stack([torch.randn(x0.shape[1:], generator=g, device=g.device, dtype=x0.dtype)
                                         for g in generator])
                else:
                    gen_device = generator.device if generator is not None else x0.device
                    fresh = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype)
                x_t = add_noise(x0, fresh.to(x0.device), torch.full((b,), float(steps[i + 1]), device=noise.device))
        with torch.no_grad():
            student.chunk_x0(x0.detach(), torch.zeros(b, device=noise.device), cond, cache, write=True)
        outputs.append(x0)
        if on_chunk is not None:
            on_chunk(ci, x0.detach())
    return torch.cat(outputs, dim=1)


@torch.no_grad()
def generate(student, noise: Tensor, cond: Tensor, steps: Sequence[float], **kwargs) -> Tensor:
    """Inference: every few-step level for every chunk, no grad. ``[B, F, C, H, W]``."""
    return self_forcing_rollout(student, noise, cond, steps, exit_index=len(steps) - 1, grad=False, **kwargs)
