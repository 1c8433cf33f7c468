"""The toy world's "pretrained video model": flow-matching training of tiny Wan denoisers on the world's videos.

Stream-R1 (like Self-Forcing and CausVid before it) never trains from random weights: the student and the DMD critic
start from Wan2.1-T2V-1.3B, a bidirectional flow-matching text-to-video model. This module makes the toy analogue:

- :func:`pretrain_denoiser`: a bidirectional :class:`~streamr1.models.WanDenoiser` trained by flow matching
  (Lipman et al. 2023, in Wan's convention: ``x_t = (1 - s) x0 + s eps``, the network regresses the flow
  ``v = eps - x0``; SPEC.md §1) on the world's videos with their captions, dropping the caption (the zero embedding,
  the unconditional branch of classifier-free guidance, Ho & Salimans 2022) with probability ``caption_dropout``.
  Half of the samples (``per_chunk_fraction``) get diffusion-forcing noise levels instead of one level for the
  whole clip (Chen et al. 2024): the chunks before a random chunk ``k`` clean (``t = 0``), chunk ``k`` at the drawn
  level, the chunks after it pure noise (``t = 1000``). That is how the causal student and the teacher see a
  video while it is generated (clean context, the current chunk noisy, nothing after it), so the same weights
  serve as the critic's start (one level for the clip) and the causal student's start;
- :func:`train_causal_flow`: the causal student's teacher-forcing stage (Causal Forcing's autoregressive
  diffusion training, arXiv 2602.02214; CausVid's teacher forcing): block-causal attention, clean earlier chunks at
  ``t = 0``, flow matching on one chunk at a drawn level. It adapts the bidirectional weights to causal attention
  before (or instead of) ODE regression.

Noise levels: with probability ``level_fraction`` one of the student's warped few-step levels (the only levels the
student is ever asked to denoise at), otherwise ``t = shift(u)`` with ``u ~ U(0, 1)`` and ``shift = 3`` (SPEC.md §1's
timestep shift, milder than the sampler's ``5``), clamped to ``[1, 1000]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from streamr1.flow import shift_timesteps

ProgressFn = Callable[[int, dict[str, float]], None]


def draw_levels(batch: int, levels: Sequence[float], generator: torch.Generator, level_fraction: float = 0.5,
                shift: float = 3.0) -> Tensor:
    """``[batch]`` float32 training timesteps (module docstring): a few-step level with probability
    ``level_fraction``, else a shifted uniform level; in ``[1, 1000]``."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    spread = shift_timesteps(u * 1000.0, shift)
    lev = torch.tensor([float(v) for v in levels], dtype=torch.float64)
    pick = lev[torch.randint(0, len(lev), (batch,), generator=generator)]
    at_level = torch.rand(batch, generator=generator) < level_fraction
    return torch.where(at_level, pick, spread).clamp(1.0, 1000.0).float()


def _schedule(opt: torch.optim.Optimizer, iterations: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 5% of the learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, iterations - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _drop_captions(cond: Tensor, p: float, generator: torch.Generator) -> Tensor:
    keep = (torch.rand(cond.shape[0], generator=generator) >= p).to(cond.device, cond.dtype)
    return cond * keep.view(-1, *([1] * (cond.ndim - 1)))


def bidirectional_flow_loss(model: nn.Module, x0: Tensor, cond: Tensor, levels: Sequence[float],
                            generator: torch.Generator, chunk_frames: int = 2, per_chunk_fraction: float = 0.5,
                            level_fraction: float = 0.5) -> Tensor:
    """Flow-matching loss of a bidirectional denoiser (``model.flow(x_t, t, cond)``) on clean videos ``x0``.

    Samples without per-chunk levels: every frame at one level ``t``, loss on every frame. With per-chunk levels
    (probability ``per_chunk_fraction``): chunk ``k`` (uniform) at ``t``, earlier chunks clean at ``t = 0``, later ones
    pure noise at ``t = 1000``; the loss is on chunk ``k`` only (the others are given, or carry no information).
    Every draw comes from ``generator`` on the CPU, so a run on a GPU (``x0`` on the model's device) sees the same
    noise, levels and chunks as on the CPU.
    """
    b, f = x0.shape[:2]
    dev = x0.device
    t = draw_levels(b, levels, generator, level_fraction)
    eps = torch.randn(x0.shape, generator=generator).to(dev)
    num_chunks = math.ceil(f / chunk_frames)
    per_chunk = torch.rand(b, generator=generator) < per_chunk_fraction
    k = torch.randint(0, num_chunks, (b,), generator=generator)
    chunk_of_frame = torch.arange(f) // chunk_frames  # [F]
    before = chunk_of_frame.unsqueeze(0) < k.unsqueeze(1)  # [B, F]
    current = chunk_of_frame.unsqueeze(0) == k.unsqueeze(1)
    t_frames = t.unsqueeze(1).expand(b, f).clone()
    t_frames = torch.where(per_chunk.unsqueeze(1) & before, torch.zeros_like(t_frames), t_frames)
    t_frames = torch.where(per_chunk.unsqueeze(1) & ~before & ~current, torch.full_like(t_frames, 1000.0), t_frames)
    t_frames = t_frames.to(dev)
    s = (t_frames / 1000.0).view(b, f, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    flow = model.flow(x_t, t_frames, cond)
    weight = torch.where(per_chunk.unsqueeze(1), current, torch.ones_like(current)).to(dev, x0.dtype)  # [B, F]
    err = (flow - (eps - x0)).pow(2).mean(dim=(2, 3, 4))  # [B, F]
    return (err * weight).sum() / weight.sum()


def causal_flow_loss(student: nn.Module, x0: Tensor, cond: Tensor, levels: Sequence[float],
                     generator: torch.Generator, level_fraction: float = 0.5) -> Tensor:
    """Teacher-forcing flow-matching loss of a causal student (``student.causal(x_t, t [B, F], cond)``).

    Sample ``i`` trains chunk ``i mod K``: input ``[x0[chunks < k] at t = 0, noised chunk k at t]`` (later frames are
    not fed: block-causal attention makes them irrelevant), loss ``mean((v_hat - (eps - x0))^2)`` on chunk ``k``;
    groups are weighted by their size (the mean over samples). Draws come from ``generator`` on the CPU (as in
    :func:`bidirectional_flow_loss`).
    """
    b, f = x0.shape[:2]
    dev = x0.device
    c = int(student.chunk_frames)
    num_chunks = math.ceil(f / c)
    t = draw_levels(b, levels, generator, level_fraction)
    chunk = torch.arange(b) % num_chunks
    total = x0.new_zeros(())
    for k in range(num_chunks):
        sel = torch.nonzero(chunk == k).squeeze(1)
        if sel.numel() == 0:
            continue
        lo, hi = k * c, min(f, (k + 1) * c)
        eps = torch.randn(sel.numel(), hi - lo, *x0.shape[2:], generator=generator).to(dev)
        s = (t[sel] / 1000.0).to(dev).view(-1, 1, 1, 1, 1)
        x_t = (1 - s) * x0[sel, lo:hi] + s * eps
        inp = torch.cat([x0[sel, :lo], x_t], dim=1)
        tt = torch.zeros(sel.numel(), hi)
        tt[:, lo:hi] = t[sel].unsqueeze(1)
        flow = student.causal(inp, tt.to(dev), cond[sel])[:, lo:hi]
        total = total + (flow - (eps - x0[sel, lo:hi])).pow(2).mean() * sel.numel()
    return total / b


def _fit(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], videos: Tensor, cond: Tensor,
         iterations: int, batch_size: int, lr: float, caption_dropout: float, generator: torch.Generator,
         warmup: int, progress: ProgressFn | None) -> list[float]:
    if videos.shape[0] != cond.shape[0]:
        raise ValueError(f"{videos.shape[0]} videos but {cond.shape[0]} caption embeddings.")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99),
                            weight_decay=0.0)
    sched = _schedule(opt, iterations, warmup)
    model.train()
    dev = next(model.parameters()).device  # the data stay on the CPU; each batch moves to the model's device
    losses: list[float] = []
    for _ in range(iterations):
        idx = torch.randint(0, videos.shape[0], (batch_size,), generator=generator)
        loss = loss_fn(videos[idx].to(dev), _drop_captions(cond[idx].to(dev), caption_dropout, generator))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1, {"loss": losses[-1]})
    model.eval()
    return losses


def pretrain_denoiser(model: nn.Module, videos: Tensor, cond: Tensor, levels: Sequence[float], iterations: int,
                      batch_size: int = 16, lr: float = 1.5e-3, caption_dropout: float = 0.1, chunk_frames: int = 2,
                      per_chunk_fraction: float = 0.5, seed: int = 0, warmup: int = 50,
                      progress: ProgressFn | None = None) -> list[float]:
    """Train a bidirectional denoiser (``model.flow``) with :func:`bidirectional_flow_loss` (AdamW, warm-up + cosine).

    Args:
        model: a :class:`~streamr1.models.WanDenoiser` (trained in place, left in eval mode).
        videos: ``[N, F, C, H, W]`` the world's clean videos; ``cond``: ``[N, L, D]`` their caption embeddings.
        levels: the student's warped few-step levels (drawn half of the time).
        iterations, batch_size, lr: optimisation; ``caption_dropout``: probability of the zero (unconditional)
            embedding.
        chunk_frames, per_chunk_fraction: see :func:`bidirectional_flow_loss`.
        seed: seed of batches, levels and noise.

    Returns:
        The loss of every step.
    """
    g = torch.Generator().manual_seed(seed)
    return _fit(model, lambda x, c: bidirectional_flow_loss(model, x, c, levels, g, chunk_frames, per_chunk_fraction),
                videos, cond, iterations, batch_size, lr, caption_dropout, g, warmup, progress)


def train_causal_flow(student: nn.Module, videos: Tensor, cond: Tensor, levels: Sequence[float], iterations: int,
                      batch_size: int = 16, lr: float = 1e-3, caption_dropout: float = 0.1, seed: int = 0,
                      warmup: int = 20, progress: ProgressFn | None = None) -> list[float]:
    """Train a causal student (:class:`~streamr1.models.CausalWanDenoiser`) with :func:`causal_flow_loss`; arguments
    as :func:`pretrain_denoiser`. Returns the loss of every step."""
    g = torch.Generator().manual_seed(seed)
    return _fit(student, lambda x, c: causal_flow_loss(student, x, c, levels, g), videos, cond, iterations,
                batch_size, lr, caption_dropout, g, warmup, progress)
