"""The toy world's evaluator: oracle metrics of generated videos, as one torchmetrics collection.

Plugged into :class:`~streamr1.module.DMDModule` as ``evaluator`` it is updated with every validation batch
(``update(video [B, T, 3, H, W] in [-1, 1], prompts)``) and its ``compute()`` is logged as ``val/...``. Every number
comes from the pixels through :mod:`streamr1.data.oracle`, never from the reward model, so it measures Stream-R1's
claim (arXiv 2605.03849: the reward-weighted student lands in the teacher's high-quality modes more often) without
being the thing that was optimised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection

from streamr1.data.oracle import CellCoverage, GoodModeFraction, ModeCoverage, classify_mode, good_mode, oracle_scores
from streamr1.data.toy import MODES, ToyAttributes, ToyWorld

METRIC_NAMES: tuple[str, ...] = (
    "good_fraction", "mode_coverage", "cell_coverage", "VQ", "MQ", "TA",
    *(f"mode_{m}" for m in MODES),
)
"""Keys of :meth:`ToyOracleMetrics.compute` (logged as ``val/<key>``)."""


class ToyOracleMetrics(MetricCollection):
    """Good-mode fraction, coverage and mean oracle scores of generated toy videos (syncs across DDP ranks).

    ``compute()`` returns (each a scalar tensor):

    - ``good_fraction``: share of videos in a good mode (:func:`~streamr1.data.oracle.good_mode`: every oracle axis
      above its threshold) - the headline number of the quality table;
    - ``mode_coverage``: share of the world's good videos, in the requested cells, that some good sample is nearest
      to (:class:`~streamr1.data.oracle.ModeCoverage`): falls when the student collapses onto few modes;
    - ``cell_coverage``: share of requested (shape, colour, direction) cells with at least one good sample;
    - ``VQ``, ``MQ``, ``TA``: mean oracle scores (:func:`~streamr1.data.oracle.oracle_scores`);
    - ``mode_good``, ``mode_visual``, ``mode_motion``, ``mode_text``: share of samples the oracle assigns to each
      quality mode (:func:`~streamr1.data.oracle.classify_mode`; the first failing axis wins).

    The oracle scores each batch once; every member metric is fed from that one pass.

    Args:
        num_videos, seed, mode_probs, frames, size: the :class:`~streamr1.data.toy.ToyWorld` the teacher was built
            on (same arguments as :class:`~streamr1.data.toy.MixtureTeacher`); mode coverage is measured against it.
        world: the world itself (overrides the arguments above).

    Example::

        model:
          evaluator:
            class_path: streamr1.toy.evaluator.ToyOracleMetrics
            init_args: {num_videos: 512, seed: 0}

    .. code-block:: python

        metrics = ToyOracleMetrics(world=world)
        metrics.update(video, prompts)  # video [B, T, 3, H, W] in [-1, 1]
        metrics.compute()["good_fraction"]
    """

    def __init__(self, num_videos: int = 512, seed: int = 0, mode_probs: dict[str, float] | None = None,
                 frames: int = 8, size: int = 32, world: ToyWorld | None = None) -> None:
        world = world if world is not None else ToyWorld(num_videos, seed, mode_probs, frames, size)
        metrics: dict[str, Metric] = {
            "good_fraction": GoodModeFraction(),
            "mode_coverage": ModeCoverage(world),
            "cell_coverage": CellCoverage(),
            "VQ": MeanMetric(),
            "MQ": MeanMetric(),
            "TA": MeanMetric(),
        }
        metrics.update({f"mode_{m}": MeanMetric() for m in MODES})
        super().__init__(metrics, compute_groups=False)
        self.world_shape = tuple(world.videos.shape[1:])

    def update(self, video: Tensor, prompts: Sequence[str | ToyAttributes], *args: Any, **kwargs: Any) -> None:
        """Score ``video`` ``[B, T, 3, H, W]`` in ``[-1, 1]`` generated for ``prompts`` (toy captions)."""
        video = video.detach().float().clamp(-1.0, 1.0)
        if tuple(video.shape[1:]) != self.world_shape:
            raise ValueError(f"ToyOracleMetrics got videos {tuple(video.shape)}; the world's videos are "
                             f"[B, *{self.world_shape}]: generate with model.latent_shape = {list(self.world_shape)}.")
        prompts = list(prompts)
        scores = oracle_scores(video, prompts)
        flags = good_mode(scores)
        self["good_fraction"].update(flags)
        self["cell_coverage"].update(flags, prompts)
        self["mode_coverage"].update(video, prompts)
        for axis in ("VQ", "MQ", "TA"):
            self[axis].update(scores[axis])
        modes = classify_mode(scores)
        for m in MODES:
            self[f"mode_{m}"].update(torch.tensor([float(x == m) for x in modes]))
