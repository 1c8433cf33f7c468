"""The Stream-R1 weight formulas as pure functions (SPEC.md §4.2-4.4).

Every function here is side-effect-free, runs under ``torch.no_grad`` and returns detached
tensors: the reward reweights the DMD gradient and no reward gradient reaches the student
(SPEC §4). The callbacks in :mod:`streamr1.callbacks` wire these into a training run; the
functions are importable on their own for notebooks and tests.

Shapes: ``B`` batch, ``A`` reward axes, ``F`` latent frames, ``H, W`` latent height and width.

==========================  ===================================================  ==========
function                    formula                                              SPEC
==========================  ===================================================  ==========
:func:`final_reward`        ``r_final`` per mode (MQ, VQ, TA, Overall, Balanced)  §4.2, §4.4
:func:`reliability_weight`  ``W_inter = exp(beta * r_final)``                     §4.2
:func:`fusion_weights`      ``w = softmax(-r / T)`` or ``1 / A``                  §4.3.3
:func:`fuse_saliency`       ``S = sum_a w_a S_a`` (or elementwise max)            §4.3.3
:func:`factorized_weights`  ``W = tau[f] * sigma[f, h, w]``, mean 1               §4.3.4
:func:`balance_penalty`     ``P = std_unbiased(D_a)``                             §4.4
==========================  ===================================================  ==========
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from streamr1.flow import promote
from streamr1.protocols import AXES

RewardMode = Literal["MQ", "VQ", "TA", "Overall", "BalancedOverall"]
"""How ``r_final`` is formed (SPEC §4.2): one axis (``MQ`` is Reward Forcing), their mean, or the mean minus
``lambda * P`` (``BalancedOverall``, Stream-R1)."""

FusionMode = Literal["adaptive", "mean", "max"]
"""How the per-axis saliency maps are fused (SPEC §4.3.3)."""

REWARD_MODES: tuple[str, ...] = get_args(RewardMode)
FUSION_MODES: tuple[str, ...] = get_args(FusionMode)


# ---------------------------------------------------------------------------------------------- §4.2 reliability
@torch.no_grad()
def final_reward(
    normalized: Mapping[str, Tensor],
    mode: RewardMode,
    penalty: float | Tensor = 0.0,
    lam: float = 0.5,
    axes: Sequence[str] = AXES,
) -> Tensor:
    """``r_final`` of each rollout (SPEC §4.2; ``BalancedOverall`` is §4.4).

    * ``"MQ"`` / ``"VQ"`` / ``"TA"``: that axis alone, ``r_final = r_a`` (``"MQ"`` is Reward Forcing).
    * ``"Overall"``: ``r_final = mean_a r_a`` over ``axes``.
    * ``"BalancedOverall"``: ``r_final = Overall - lam * penalty`` (Stream-R1), with ``penalty`` the
      balancing penalty ``P`` of :func:`balance_penalty`.

    Args:
        normalized: per axis ``[B]``, the z-normalised rewards ``r_a = (raw_a - mean_a) / std_a`` (SPEC §4.1).
        mode: one of :data:`REWARD_MODES`.
        penalty: ``P``, a float or a 0-d tensor (used by ``BalancedOverall`` only).
        lam: ``lambda`` of SPEC §4.4 (0.5).
        axes: the axes ``Overall`` averages (SPEC: VQ, MQ, TA).

    Returns:
        ``[B]`` ``r_final``, at least float32 (float64 stays float64), detached.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"Unknown reward mode {mode!r}; choose one of {REWARD_MODES}.")
    need = (mode,) if mode in AXES else tuple(axes)
    missing = [a for a in need if a not in normalized]
    if missing:
        raise KeyError(f"Reward mode {mode!r} needs axes {list(need)} but the reward gives only {list(normalized)}.")
    if mode in AXES:
        return promote(normalized[mode].detach())
    overall = torch.stack([promote(normalized[a].detach()) for a in axes], dim=0).mean(dim=0)
    if mode == "Overall":
        return overall
    pen = promote(penalty.detach()).to(overall.device) if isinstance(penalty, Tensor) else float(penalty)
    return overall - lam * pen


@torch.no_grad()
def reliability_weight(
    r_final: Tensor,
    beta: float = 2.0,
    clip: tuple[float, float] | Sequence[float] | None = None,
    self_normalize: bool = False,
    global_mean: Tensor | float | None = None,
) -> Tensor:
    """The inter-reliability weight ``W_inter = exp(beta * r_final)`` of each rollout (SPEC §4.2).

    The paper's setting is ``beta = 2`` with neither clipping nor normalisation. Both options act in this
    order: clip ``exp(beta r)`` to ``[lo, hi]``, then divide by the mean weight.

    Args:
        r_final: ``[B]`` final rewards (:func:`final_reward`).
        beta: inverse temperature.
        clip: ``(lo, hi)`` bounds of the weight, or ``None``.
        self_normalize: divide by the mean weight so it averages 1 over the batch.
        global_mean: with ``self_normalize``, the mean of the (clipped) weights over the GLOBAL batch (all
            ranks; the caller all-gathers it). ``None`` uses this batch's own mean (right on one process only).

    Returns:
        ``[B]`` ``W_inter``, at least float32 (float64 stays float64), detached.
    """
    w = torch.exp(beta * promote(r_final.detach()))
    if clip is not None:
        lo, hi = (float(v) for v in clip)
        w = w.clamp(lo, hi)
    if self_normalize:
        w = mean_normalize(w, global_mean)
    return w


def mean_normalize(w: Tensor, mean: Tensor | float | None = None) -> Tensor:
    """``w / mean`` so the weights average 1 (the self-normalisation option of SPEC §4.2).

    Args:
        w: ``[B]`` weights.
        mean: the mean to divide by, e.g. over the GLOBAL batch (all ranks); ``None``: ``w.mean()``.
    """
    mean = w.mean() if mean is None else torch.as_tensor(mean, dtype=w.dtype, device=w.device)
    return w / mean.clamp_min(torch.finfo(w.dtype).tiny)


# ---------------------------------------------------------------------------------------------- §4.3.3 fusion
@torch.no_grad()
def effective_sample_size(sum_w: float, sum_w2: float, n: float) -> float:
    """Kish's effective sample size as a fraction of the ``n`` weights: ``(sum w)^2 / (n sum w^2)``.

    1 when all weights are equal, ``1 / n`` when one weight carries everything; scale-free, so self-normalisation
    leaves it unchanged. Takes the sums (not the weights) so a caller can all-reduce them first.
    """
    if n <= 0 or sum_w2 <= 0:
        raise ValueError(f"effective_sample_size needs n > 0 and sum w^2 > 0, got n={n}, sum w^2={sum_w2}.")
    return float(sum_w) ** 2 / (float(n) * float(sum_w2))


def fusion_weights(r: Tensor, mode: FusionMode = "adaptive", temperature: float = 1.0) -> Tensor | None:
    """Per-sample weights of the reward axes in the saliency fusion (SPEC §4.3.3).

    * ``"adaptive"``: ``w = softmax(-r / T)`` over axes: the weakest axis (lowest normalised reward) gets the most
      weight. ``T -> inf`` tends to ``"mean"``, ``T -> 0`` to all weight on the weakest axis.
    * ``"mean"``: ``w_a = 1 / A``.
    * ``"max"``: no weights: :func:`fuse_saliency` takes the elementwise maximum over the axes' saliency maps.
      Returns ``None``.

    Args:
        r: ``[B, A]`` normalised rewards in axis order.
        mode: one of :data:`FUSION_MODES`.
        temperature: ``T > 0`` of the adaptive softmax.

    Returns:
        ``[B, A]`` rows summing to 1, or ``None`` for ``"max"``.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"Unknown fusion mode {mode!r}; choose one of {FUSION_MODES}.")
    r = promote(r.detach())
    if mode == "adaptive":
        if temperature <= 0:
            raise ValueError(f"Fusion temperature must be > 0, got {temperature}.")
        return torch.softmax(-r / temperature, dim=1)
    if mode == "mean":
        return torch.full_like(r, 1.0 / r.shape[1])
    return None


@torch.no_grad()
def fuse_saliency(saliency: Tensor, r: Tensor, mode: FusionMode = "adaptive", temperature: float = 1.0) -> Tensor:
    """Fuse the per-axis saliency maps into one map per sample: ``S = sum_a w_a S_a`` (SPEC §4.3.3).

    With ``mode="max"``: ``S = max_a S_a`` elementwise (see :func:`fusion_weights`).

    Args:
        saliency: ``[B, A, F, H, W]`` non-negative per-axis saliency on the latent grid (SPEC §4.3.1-2).
        r: ``[B, A]`` normalised rewards, in the same axis order.
        mode: one of :data:`FUSION_MODES`.
        temperature: ``T`` of the adaptive softmax.

    Returns:
        ``[B, F, H, W]`` fused saliency, at least float32 (float64 stays float64), detached.
    """
    saliency = promote(saliency.detach())
    if saliency.shape[:2] != r.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and rewards {tuple(r.shape)} disagree on [B, A].")
    w = fusion_weights(r, mode, temperature)
    if w is None:
        return saliency.amax(dim=1)
    return torch.einsum("ba,bafhw->bfhw", w.to(saliency.device), saliency)


# ---------------------------------------------------------------------------------------------- §4.3.4 factoring
def minmax(x: Tensor, dims: Sequence[int], eps: float = 1e-8) -> Tensor:
    """Min-max normalise ``x`` to ``[0, 1]`` over ``dims``; all ones where the range is below ``eps`` (SPEC §4.3.4)."""
    lo = x.amin(dim=tuple(dims), keepdim=True)
    rng = x.amax(dim=tuple(dims), keepdim=True) - lo
    flat = rng < eps
    return torch.where(flat, torch.ones_like(x), (x - lo) / torch.where(flat, torch.ones_like(rng), rng))


@torch.no_grad()
def temporal_weights(S: Tensor, strength: float = 1.0, floor: float = 0.2, eps: float = 1e-8) -> Tensor:
    """The temporal factor ``tau`` (SPEC §4.3.4).

    ``p_f = mean_{h,w} S[f]``; ``p~ = minmax_f(p)`` (all ones if the range < ``eps``);
    ``tau = (1 - s_t) + s_t * p~``; ``tau = max(tau, floor)``; ``tau = tau / mean_f tau``.

    Args:
        S: ``[B, F, H, W]`` fused saliency.
        strength: ``s_t`` in ``[0, 1]``; 0 gives all ones.
        floor: lower bound of ``tau`` before the mean normalisation.
        eps: range below which the profile counts as flat.

    Returns:
        ``[B, F]`` ``tau``, mean 1 per sample.
    """
    p = promote(S.detach()).mean(dim=(2, 3))
    tau = ((1.0 - strength) + strength * minmax(p, (1,), eps)).clamp_min(floor)
    return tau / tau.mean(dim=1, keepdim=True)


@torch.no_grad()
def spatial_weights(S: Tensor, strength: float = 1.0, floor: float = 0.15, eps: float = 1e-8) -> Tensor:
    """The spatial factor ``sigma``, per frame (SPEC §4.3.4).

    ``S~ = minmax_{h,w}(S[f])`` (an all-ones frame if its range < ``eps``); ``sigma = (1 - s_s) + s_s * S~``;
    ``sigma = max(sigma, floor)``; ``sigma = sigma / mean_{h,w} sigma`` per frame.

    Args:
        S: ``[B, F, H, W]`` fused saliency.
        strength: ``s_s`` in ``[0, 1]``; 0 gives all ones.
        floor: lower bound of ``sigma`` before the mean normalisation.
        eps: range below which a frame counts as flat.

    Returns:
        ``[B, F, H, W]`` ``sigma``, mean 1 per frame.
    """
    sigma = ((1.0 - strength) + strength * minmax(promote(S.detach()), (2, 3), eps)).clamp_min(floor)
    return sigma / sigma.mean(dim=(2, 3), keepdim=True)


@torch.no_grad()
def factorized_weights(
    S: Tensor,
    temporal_strength: float = 1.0,
    spatial_strength: float = 1.0,
    temporal_floor: float = 0.2,
    spatial_floor: float = 0.15,
    eps: float = 1e-8,
) -> Tensor:
    """The intra-perplexity weight ``W_intra``, factored into time and space (SPEC §4.3.4).

    ``W[f, h, w] = tau[f] * sigma[f, h, w]`` (:func:`temporal_weights`, :func:`spatial_weights`), divided by its
    mean over ``(F, H, W)`` so each sample's weight averages exactly 1, then broadcast over channels. Invariant to
    a positive rescaling of ``S``; a uniform ``S`` gives all ones.

    Args:
        S: ``[B, F, H, W]`` fused saliency (:func:`fuse_saliency`).
        temporal_strength: ``s_t`` (SPEC: 1).
        spatial_strength: ``s_s`` (SPEC: 1).
        temporal_floor: floor of ``tau`` (SPEC: 0.2).
        spatial_floor: floor of ``sigma`` (SPEC: 0.15).
        eps: flat-range threshold of the min-max steps (SPEC: 1e-8).

    Returns:
        ``[B, F, 1, H, W]`` ``W_intra``, at least float32 (float64 stays float64), detached, mean 1 per sample.
    """
    tau = temporal_weights(S, temporal_strength, temporal_floor, eps)
    sigma = spatial_weights(S, spatial_strength, spatial_floor, eps)
    w = tau[:, :, None, None] * sigma
    w = w / w.mean(dim=(1, 2, 3), keepdim=True)
    return w.unsqueeze(2)


@torch.no_grad()
def unfactorized_weights(S: Tensor, strength: float = 1.0, floor: float = 0.15, eps: float = 1e-8) -> Tensor:
    """``W_intra`` without factoring (SPEC §4.3.4, last sentence; an ablation).

    One min-max over all of ``(F, H, W)`` per sample (all ones if the range < ``eps``);
    ``W = max((1 - s) + s * S~, floor)``; divided by its mean.

    Args:
        S: ``[B, F, H, W]`` fused saliency.
        strength: ``s``.
        floor: lower bound before the mean normalisation.
        eps: flat-range threshold.

    Returns:
        ``[B, F, 1, H, W]`` ``W_intra``, at least float32 (float64 stays float64), detached, mean 1 per sample.
    """
    w = ((1.0 - strength) + strength * minmax(promote(S.detach()), (1, 2, 3), eps)).clamp_min(floor)
    w = w / w.mean(dim=(1, 2, 3), keepdim=True)
    return w.unsqueeze(2)


# ---------------------------------------------------------------------------------------------- §4.4 balancing
def _history_rows(history: Tensor | Mapping[str, Sequence[float]] | Sequence[Sequence[float]]) -> list[Tensor]:
    if isinstance(history, Tensor):
        return [row.detach().double() for row in history]
    rows = history.values() if isinstance(history, Mapping) else history
    return [row.detach().double() if isinstance(row, Tensor) else torch.as_tensor(list(row), dtype=torch.float64)
            for row in rows]


@torch.no_grad()
def axis_drifts(history: Tensor | Mapping[str, Sequence[float]] | Sequence[Sequence[float]]) -> Tensor:
    """``D_a = mean(second half) - mean(first half)`` of each axis' window (SPEC §4.4).

    A window of ``n`` entries splits at ``n // 2``: ``first = h[:n // 2]``, ``second = h[n // 2:]`` (an odd
    middle entry belongs to the second half).

    Args:
        history: ``[A, N]``, or per axis a sequence of normalised rewards, oldest first (at least 2 each).

    Returns:
        ``[A]`` float64 drifts, in the history's axis order.
    """
    out = []
    for row in _history_rows(history):
        if row.numel() < 2:
            raise ValueError(f"An axis history needs at least 2 entries to split in halves, got {row.numel()}.")
        half = row.numel() // 2
        out.append(row[half:].mean() - row[:half].mean())
    return torch.stack(out)


@torch.no_grad()
def balance_penalty(
    history: Tensor | Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    warmup_updates: int,
    updates_seen: int,
    min_entries: int = 4,
) -> float:
    """The axis-balancing penalty ``P = std_unbiased(D_VQ, D_MQ, D_TA)`` (SPEC §4.4).

    ``P`` is large when the axes drift apart (one improves while another stalls or falls); it enters
    ``r_final = Overall - lambda * P`` (:func:`final_reward`, ``"BalancedOverall"``).

    Args:
        history: ``[A, N]``, or per axis a sequence of the per-update (global-batch mean) normalised reward,
            oldest first; the sliding window (SPEC: 50).
        warmup_updates: updates before the penalty turns on (SPEC: 50).
        updates_seen: updates recorded so far (including the current one).
        min_entries: entries every axis needs before the penalty turns on (SPEC: 4).

    Returns:
        ``P`` as a float; ``0.0`` before the warm-up, while an axis has fewer than ``min_entries`` entries, or with
        fewer than two axes.
    """
    rows = _history_rows(history)
    if updates_seen < warmup_updates or len(rows) < 2 or any(r.numel() < max(min_entries, 2) for r in rows):
        return 0.0
    return float(axis_drifts(rows).std(correction=1))
