"""Flow-matching helpers in the Wan convention (SPEC.md §1).

``x_t = (1 - s) x0 + s eps`` with ``s = t / 1000``; networks predict the flow
``v = eps - x0``, so ``x0 = x_t - s v``. All functions are pure and broadcast a per-sample
timestep ``[B]`` (or per-frame ``[B, F]``) over ``[B, F, C, H, W]`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def shift_timesteps(t: Tensor | float, shift: float) -> Tensor:
    """Warp timesteps toward the noisy end: ``t' = 1000 k u / (1 + (k - 1) u)``, ``u = t / 1000`` (SPEC §1).

    ``shift = 1`` is the identity; Wan uses ``k = 5``.
    """
    u = torch.as_tensor(t, dtype=torch.float64 if not torch.is_tensor(t) else None) / NUM_TRAIN_TIMESTEPS
    return NUM_TRAIN_TIMESTEPS * shift * u / (1 + (shift - 1) * u)


def warped_steps(steps: Sequence[float], shift: float) -> list[float]:
    """The few-step list after the shift.

    ``[1000, 750, 500, 250]`` becomes about ``[1000, 937.5, 833.3, 625]`` for ``k = 5`` (SPEC §2).
    """
    return [float(v) for v in shift_timesteps(torch.tensor(list(steps), dtype=torch.float64), shift)]


def promote(x: Tensor) -> Tensor:
    """``x`` in at least float32: bf16/fp16 (and integer) tensors become float32, float64 stays float64.

    Every formula of SPEC.md computes through this, so a float64 check of the spec is exact to float64 precision
    and a bf16 run never forms a loss, a weight or a DMD target in bf16 (promote, never demote).
    """
    return x if x.dtype == torch.float64 else x.float()


def _expand(s: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``[B]`` or ``[B, F]`` sigmas over ``[B, F, C, H, W]``."""
    s = s.to(device=like.device, dtype=like.dtype)
    while s.ndim < like.ndim:
        s = s.unsqueeze(-1)
    return s


def sigma(t: Tensor) -> Tensor:
    """``s = t / 1000``."""
    return t / NUM_TRAIN_TIMESTEPS


def add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - s) x0 + s eps`` (SPEC §1), in at least float32 (exact ``s``), returned in ``x0``'s dtype."""
    x0_, noise_ = promote(x0), promote(noise)
    s = _expand(sigma(promote(t)), x0_)
    return ((1 - s) * x0_ + s * noise_).to(x0.dtype)


def flow_to_x0(x_t: Tensor, flow: Tensor, t: Tensor) -> Tensor:
    """``x0 = x_t - s v`` (SPEC §1), computed in at least float32 (exact ``s``), returned in ``x_t``'s dtype."""
    x_t_ = promote(x_t)
    return (x_t_ - _expand(sigma(promote(t)), x_t_) * promote(flow)).to(x_t.dtype)


def x0_to_flow(x_t: Tensor, x0: Tensor, t: Tensor, min_sigma: float = 1e-4) -> Tensor:
    """``v = (x_t - x0) / s``, the inverse of :func:`flow_to_x0` (``s`` clamped away from 0), in ``x_t``'s dtype."""
    x_t_ = promote(x_t)
    return ((x_t_ - promote(x0)) / _expand(sigma(promote(t)), x_t_).clamp_min(min_sigma)).to(x_t.dtype)


def sample_dmd_timestep(
    batch: int, shift: float, min_t: float = 20.0, max_t: float = 980.0, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """DMD timestep per rollout: ``t ~ U{0..999}``, shifted, clamped to ``[min_t, max_t]`` (SPEC §3.1).

    Returns ``[B]`` float32 timesteps on ``device``.
    """
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, device="cpu").to(torch.float64)
    return shift_timesteps(t, shift).clamp(min_t, max_t).to(device=device, dtype=torch.float32)
