"""DMD gradient and losses as pure functions (SPEC.md §3, §4).

Distribution Matching Distillation (DMD, arXiv 2311.18828; DMD2, arXiv 2405.14867) moves the
student's distribution toward the teacher's by the difference of two score estimates: the
critic ("fake score", tracks the student) and the guided teacher ("real score").
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamr1.flow import _expand, promote, sigma


def cfg_x0(x0_cond: Tensor, x0_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance in x0 space: ``x0_c + g_s (x0_c - x0_neg)`` (SPEC §3.2), in at least float32."""
    x0_cond = promote(x0_cond)
    return x0_cond + guidance_scale * (x0_cond - promote(x0_uncond))


@torch.no_grad()
def dmd_gradient(x: Tensor, x0_fake: Tensor, x0_real: Tensor, eps: float = 1e-12) -> Tensor:
    """The DMD gradient ``g = (x0_fake - x0_real) / mean_{F,C,H,W} |x - x0_real|`` per sample (SPEC §3.3; DMD eq. 7-8).

    Args:
        x: ``[B, F, C, H, W]`` the student's rollout.
        x0_fake: ``[B, F, C, H, W]`` the critic's x0 prediction at ``x_t``.
        x0_real: ``[B, F, C, H, W]`` the guided teacher's x0 prediction at ``x_t``.

    Returns:
        ``[B, F, C, H, W]`` ``g`` in at least float32, NaN/inf replaced by 0, detached.
    """
    x, x0_fake, x0_real = promote(x.detach()), promote(x0_fake.detach()), promote(x0_real.detach())
    normalizer = (x - x0_real).abs().flatten(1).mean(dim=1).clamp_min(eps)
    g = (x0_fake - x0_real) / _expand(normalizer, x)
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(
    x: Tensor, g: Tensor, rollout_weight: Tensor | None = None, element_weight: Tensor | None = None
) -> Tensor:
    """The (Stream-R1-weighted) DMD generator loss (SPEC §3.4 and §4).

    ``L = mean_b 0.5 * W_inter[b] * mean_{F,C,H,W}( W_intra[b] * (x - sg(x - g))^2 )``, so that
    ``dL/dx = W_inter * W_intra * g / N`` with ``N = B * F * C * H * W``. Both weights are
    detached: the reward reweights the DMD gradient and no reward gradient reaches the student.

    Args:
        x: ``[B, F, C, H, W]`` the rollout, with grad.
        g: ``[B, F, C, H, W]`` the DMD gradient (see :func:`dmd_gradient`).
        rollout_weight: ``[B]`` ``W_inter`` or ``None`` (ones).
        element_weight: ``[B, F, 1 or C, H, W]`` ``W_intra`` or ``None`` (ones).

    Returns:
        A scalar. With both weights ``None`` this is exactly plain DMD: ``0.5 * mean(g^2)`` in value.
    """
    # The target x - g is formed in at least float32 whatever the rollout's dtype (a bf16 target would round g away:
    # dL/dx would be off by 0.4-2% RMS from g / N); x is promoted inside the graph, so its gradient flows back in x's
    # own dtype.
    xf = promote(x)
    target = (xf - promote(g).to(xf.dtype)).detach()
    sq = (xf - target) ** 2
    if element_weight is not None:
        sq = sq * element_weight.detach().to(sq.dtype)
    per_sample = sq.flatten(1).mean(dim=1)
    if rollout_weight is not None:
        per_sample = per_sample * rollout_weight.detach().to(per_sample.dtype)
    return 0.5 * per_sample.mean()


def critic_flow_loss(x_t: Tensor, x0_pred: Tensor, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The critic's flow-matching loss (SPEC §3.5).

    ``v_hat = (x_t - x0_pred) / s``, ``L = mean((v_hat - (eps - x))^2)``.

    Args:
        x_t: ``[B, F, C, H, W]`` noised detached rollout.
        x0_pred: ``[B, F, C, H, W]`` the critic's x0 prediction, with grad.
        x: ``[B, F, C, H, W]`` the detached rollout that was noised.
        noise: ``[B, F, C, H, W]`` the noise used.
        t: ``[B]`` timesteps (0..1000; the DMD range keeps ``s >= 0.02``).
    """
    x_t_ = promote(x_t)
    v_hat = (x_t_ - promote(x0_pred)) / _expand(sigma(promote(t)), x_t_)
    return ((v_hat - (promote(noise) - promote(x))) ** 2).mean()
