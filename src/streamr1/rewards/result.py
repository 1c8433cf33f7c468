"""What the reward service hands to every weighting callback for one rollout (SPEC.md §4.1-4.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RewardResult:
    """Scores and saliency of one batch of rollouts, computed once and shared.

    Attributes:
        raw: per axis ``[B]``, the reward model's un-normalised scores (detached).
        normalized: per axis ``[B]``, ``r_a = (raw_a - mean_a) / std_a`` (SPEC §4.1), detached. Non-finite
            entries are replaced by 0 and flagged in ``valid``.
        valid: ``[B]`` bool, False where any axis' raw score was NaN or infinite; weighting callbacks fall
            back to weight 1 for those samples.
        saliency: per axis ``[B, F, H, W]`` saliency ``||d raw_a / d pixels||`` already resized to the
            latent grid (SPEC §4.3.1-2), detached, non-negative; ``None`` when no consumer asked for it.
        pixel_saliency: per axis ``[B, T, H, W]`` the same on the pixel grid (for plots), or ``None``.
        pixels: ``[B, T, 3, H, W]`` in ``[0, 1]``, the decoded rollout that was scored (detached), for logging.
    """

    raw: dict[str, Tensor]
    normalized: dict[str, Tensor]
    valid: Tensor
    saliency: dict[str, Tensor] | None = None
    pixel_saliency: dict[str, Tensor] | None = None
    pixels: Tensor | None = None

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.raw)

    def stacked(self, normalized: bool = True) -> Tensor:
        """``[B, A]`` scores in axis order."""
        src = self.normalized if normalized else self.raw
        return torch.stack([src[a] for a in self.axes], dim=1)
