"""Intra-perplexity weighting: one weight an element from the reward's saliency (SPEC.md §4.3)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F_
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from streamr1.context import RolloutContext, reward_result
from streamr1.rewards.result import RewardResult
from streamr1.weighting import (
    FUSION_MODES,
    FusionMode,
    factorized_weights,
    fuse_saliency,
    fusion_weights,
    unfactorized_weights,
)

HEATMAP_TAG = "weights/saliency_heatmap"
"""TensorBoard image tag of the saliency heat map."""


def saliency_axes(result: RewardResult) -> tuple[str, ...]:
    """The reward's axes that carry a saliency map, in ``result.axes`` order (SPEC: VQ, MQ, TA)."""
    if result.saliency is None:
        return ()
    return tuple(a for a in result.axes if a in result.saliency)


def heatmap_frames(num_latent: int, num_pixel: int, max_frames: int = 8) -> tuple[list[int], list[int]]:
    """Which latent frames a heat map shows, and the pixel frame each one maps to; deterministic.

    Up to ``max_frames`` latent frames evenly spaced from the first to the last; latent frame ``f`` maps to pixel
    frame ``round(f * (T - 1) / (F - 1))`` (Wan's ``T = 4 (F - 1) + 1`` gives ``4 f``; an identity VAE ``f``).
    """
    n = max(1, min(num_latent, max_frames))
    latent = torch.linspace(0, num_latent - 1, n).round().long().tolist()
    scale = (num_pixel - 1) / (num_latent - 1) if num_latent > 1 else 0.0
    return latent, [min(num_pixel - 1, round(f * scale)) for f in latent]


@torch.no_grad()
def saliency_heatmap(
    saliency: Tensor, pixels: Tensor | None = None, max_frames: int = 8, cmap: str = "inferno", min_height: int = 64
) -> Tensor:
    """One image: a strip of decoded frames above the fused saliency of the same frames as a colour map.

    The saliency is upsampled (bilinear) to the pixel grid and min-max normalised over the frames shown, so
    brightness compares across frames. Small videos are enlarged (nearest) to at least ``min_height`` rows a strip.

    Args:
        saliency: ``[F, H, W]`` fused saliency of one sample on the latent grid.
        pixels: ``[T, 3, Hp, Wp]`` the decoded sample in ``[0, 1]``, or ``None`` (the image is the colour map only).
        max_frames: most frames shown (evenly spaced, :func:`heatmap_frames`).
        cmap: a matplotlib colour map name.
        min_height: smallest height of a strip, in image pixels.

    Returns:
        ``[3, rows * Hd, n * Wd]`` float in ``[0, 1]`` (CHW), ``rows`` 2 with pixels and 1 without.
    """
    import matplotlib

    saliency = saliency.detach().float().cpu()
    num_pixel = pixels.shape[0] if pixels is not None else saliency.shape[0]
    latent_idx, pixel_idx = heatmap_frames(saliency.shape[0], num_pixel, max_frames)
    size = tuple(pixels.shape[-2:]) if pixels is not None else tuple(saliency.shape[-2:])
    sal = F_.interpolate(saliency[latent_idx][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = sal.min(), sal.max()
    sal = (sal - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(sal)
    colour = torch.from_numpy(matplotlib.colormaps[cmap](sal.numpy())[..., :3]).float().permute(0, 3, 1, 2)
    rows = [colour]
    if pixels is not None:
        rows.insert(0, pixels.detach().float().cpu()[pixel_idx].clamp(0, 1))
    strips = [torch.cat(list(r), dim=-1) for r in rows]  # each [3, H, n * W]
    image = torch.cat(strips, dim=-2)
    scale = max(1, math.ceil(min_height / size[0]))
    if scale > 1:
        image = F_.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    return image


class SaliencyWeighting(Callback):
    """Weights each element of the DMD loss by ``W_intra``, from where the reward model looks (SPEC §4.3).

    The reward service gives one saliency map per axis, ``||d raw_a / d pixels||`` on the latent grid
    (SPEC §4.3.1-2); this callback fuses the axes (``softmax(-r / T)``: the weakest axis weighs most), then factors
    the fused map into a temporal and a spatial profile with floors (SPEC §4.3.4), giving ``W_intra``
    ``[B, F, 1, H, W]`` with mean 1 per sample (samples with a non-finite reward or weight get all ones). Setting
    ``needs_saliency = True`` is how the reward service knows to compute saliency at all.

    Every ``heatmap_every_n_steps`` student steps, on global rank 0, it logs to every logger (TensorBoard, wandb,
    CSV; tag ``weights/saliency_heatmap``) sample 0's decoded frames above its fused saliency.

    Args:
        fusion: ``adaptive`` (``softmax(-r / T)``, SPEC), ``mean`` or ``max`` (elementwise max over axes).
        temperature: ``T`` of the adaptive fusion (SPEC: 1).
        factorize: factor into temporal x spatial (SPEC); ``False`` is the one-min-max ablation.
        temporal_strength: ``s_t`` (SPEC: 1).
        spatial_strength: ``s_s`` (SPEC: 1); also the strength of the unfactorized weight.
        temporal_floor: floor of the temporal factor (SPEC: 0.2).
        spatial_floor: floor of the spatial factor (SPEC: 0.15); also the floor of the unfactorized weight.
        heatmap_every_n_steps: heat-map period in student steps (0: never).
        heatmap_max_frames: most frames in a heat map.

    Example::

        trainer:
          callbacks:
            - class_path: streamr1.rewards.service.RewardService
              init_args: {model: ...}
            - class_path: streamr1.callbacks.saliency.SaliencyWeighting
              init_args: {fusion: adaptive, temperature: 1.0, factorize: true, heatmap_every_n_steps: 50}

    .. code-block:: python

        from streamr1.callbacks.saliency import SaliencyWeighting

        trainer = Trainer(callbacks=[service, SaliencyWeighting(fusion="adaptive")])

    Extension point: override :meth:`compute_weight` for another per-element weight.
    """

    needs_saliency = True
    """Read by the reward service: compute per-axis saliency for every rollout."""

    def __init__(
        self,
        fusion: FusionMode = "adaptive",
        temperature: float = 1.0,
        factorize: bool = True,
        temporal_strength: float = 1.0,
        spatial_strength: float = 1.0,
        temporal_floor: float = 0.2,
        spatial_floor: float = 0.15,
        heatmap_every_n_steps: int = 50,
        heatmap_max_frames: int = 8,
    ) -> None:
        if fusion not in FUSION_MODES:
            raise ValueError(f"Unknown fusion {fusion!r}; choose one of {FUSION_MODES}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        for name, v in (("temporal_strength", temporal_strength), ("spatial_strength", spatial_strength)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}.")
        for name, v in (("temporal_floor", temporal_floor), ("spatial_floor", spatial_floor)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1] (it keeps every element's weight positive), got {v}.")
        if heatmap_every_n_steps < 0:
            raise ValueError("heatmap_every_n_steps must be >= 0 (0 disables the heat map).")
        self.fusion, self.temperature, self.factorize = fusion, float(temperature), factorize
        self.temporal_strength, self.spatial_strength = float(temporal_strength), float(spatial_strength)
        self.temporal_floor, self.spatial_floor = float(temporal_floor), float(spatial_floor)
        self.heatmap_every_n_steps, self.heatmap_max_frames = heatmap_every_n_steps, heatmap_max_frames
        # Samples that fell back to all-ones weights, and the last student step a heat map was logged at (one
        # image per student step even with gradient accumulation); both survive a resume.
        self.nonfinite_fallback = 0
        self._last_heatmap_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(fusion=self.fusion, factorize=self.factorize)

    @staticmethod
    def stacked_saliency(result: RewardResult) -> Tensor:
        """``[B, A, F, H, W]`` saliency of the axes that have it, in ``result.axes`` order."""
        if not saliency_axes(result):
            raise RuntimeError(
                "SaliencyWeighting got a RewardResult without saliency: the reward service computes it only when a "
                "callback in trainer.callbacks has `needs_saliency = True`; make sure this SaliencyWeighting is in "
                "trainer.callbacks together with the RewardService."
            )
        return torch.stack([result.saliency[a].detach().float() for a in saliency_axes(result)], dim=1)

    @staticmethod
    def stacked_rewards(result: RewardResult) -> Tensor:
        """``[B, A]`` normalised rewards of the axes that have saliency, in the same order."""
        return torch.stack([result.normalized[a].detach().float() for a in saliency_axes(result)], dim=1)

    def fused_saliency(self, result: RewardResult) -> Tensor:
        """``[B, F, H, W]`` the axes fused with this callback's mode and temperature (SPEC §4.3.3)."""
        return fuse_saliency(self.stacked_saliency(result), self.stacked_rewards(result), self.fusion,
                             self.temperature)

    def compute_weight(self, result: RewardResult, ctx: RolloutContext) -> Tensor:
        """The extension point: ``[B, F, 1, H, W]`` per-element weights from the rollout's reward.

        Default: fuse (SPEC §4.3.3), then :func:`~streamr1.weighting.factorized_weights` or, with
        ``factorize=False``, :func:`~streamr1.weighting.unfactorized_weights` (SPEC §4.3.4).
        """
        S = self.fused_saliency(result)
        if self.factorize:
            return factorized_weights(S, self.temporal_strength, self.spatial_strength, self.temporal_floor,
                                      self.spatial_floor)
        return unfactorized_weights(S, self.spatial_strength, self.spatial_floor)

    @torch.no_grad()
    def weight_rollout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: RolloutContext) -> None:
        """Multiply ``W_intra`` ``[B, F, 1, H, W]`` into ``ctx.element_weight``, log statistics and the heat map."""
        result = reward_result(trainer, ctx)
        b, f, _, h, w_ = ctx.x.shape
        w = self.compute_weight(result, ctx).detach().float()
        if w.shape != (b, f, 1, h, w_):
            raise ValueError(
                f"W_intra must be [B, F, 1, H, W] = {[b, f, 1, h, w_]} (the rollout's latent grid), got "
                f"{list(w.shape)}: the reward service must resize saliency to the latent grid (SPEC §4.3.2)."
            )
        valid = result.valid.to(w.device).bool() & torch.isfinite(w).flatten(1).all(dim=1)
        w = torch.where(valid[:, None, None, None, None], w, torch.ones_like(w))
        self.nonfinite_fallback += int((~valid).sum())
        ctx.element_weight = w if ctx.element_weight is None else ctx.element_weight * w.to(ctx.element_weight)

        ctx.logs["weights/intra_std"] = w.std()
        ctx.logs["weights/intra_max"] = w.max()
        ctx.logs["weights/intra_min"] = w.min()
        ctx.logs["weights/intra_nonfinite_fallback"] = float(self.nonfinite_fallback)
        self._log_fusion(result, ctx, valid)
        n = self.heatmap_every_n_steps
        if n > 0 and ctx.student_step % n == 0 and ctx.student_step != self._last_heatmap_step:
            self._last_heatmap_step = ctx.student_step
            if trainer.is_global_zero:
                self.log_heatmap(trainer, result, ctx)

    def _log_fusion(self, result: RewardResult, ctx: RolloutContext, valid: Tensor) -> None:
        """``weights/fusion_{axis}``: the mean fusion weight of each axis over valid samples; for ``max`` fusion,
        the fraction of elements where that axis' saliency is the largest."""
        if not bool(valid.any()):
            return
        axes = saliency_axes(result)
        r = self.stacked_rewards(result)
        keep = valid.to(r.device)
        fw = fusion_weights(r[keep], self.fusion, self.temperature)
        if fw is None:
            winner = self.stacked_saliency(result)[keep.to(result.saliency[axes[0]].device)].argmax(dim=1)
            fw = F_.one_hot(winner, num_classes=len(axes)).flatten(1, 3).float().mean(dim=1)  # [b, A]
        for i, axis in enumerate(axes):
            ctx.logs[f"weights/fusion_{axis}"] = fw[:, i].mean()

    def log_heatmap(self, trainer: pl.Trainer, result: RewardResult, ctx: RolloutContext) -> None:
        """Log sample 0's frames and fused saliency as one image to every logger of the trainer
        (:func:`streamr1.logging.log_image`: TensorBoard, wandb, CSV; others skip with a one-time warning)."""
        from streamr1.logging import log_image

        if not trainer.loggers:
            return
        S = self.fused_saliency(result)[0]
        pixels = result.pixels[0] if result.pixels is not None else None
        image = saliency_heatmap(S, pixels, max_frames=self.heatmap_max_frames)
        log_image(trainer, HEATMAP_TAG, image, ctx.student_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"nonfinite_fallback": self.nonfinite_fallback, "last_heatmap_step": self._last_heatmap_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.nonfinite_fallback = int(state_dict.get("nonfinite_fallback", 0))
        self._last_heatmap_step = int(state_dict.get("last_heatmap_step", -1))
