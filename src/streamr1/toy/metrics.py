"""The toy world's oracle metrics as torchmetrics: good-mode fraction, coverage, and the module's evaluator.

Every number comes from the pixels through :mod:`streamr1.toy.oracle`, never from the reward model, so it measures
Stream-R1's claim (arXiv 2605.03849: the reward-weighted student lands in the teacher's high-quality modes more often)
without being the thing that was optimised. The ``Metric`` states sum across DDP ranks.

Plugged into :class:`~streamr1.module.DMDModule` as ``evaluator``, :class:`ToyOracleMetrics` is updated with every
validation batch (``update(video [B, T, 3, H, W] in [-1, 1], prompts)``) and its ``compute()`` is logged as ``val/...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection

from streamr1.toy.oracle import _as_attrs, _check_video, classify_mode, good_mode, oracle_scores
from streamr1.toy.world import MODES, NUM_CELLS, SHAPE_RADIUS, ToyAttributes, ToyWorld


def _good_flags(video_or_good: Tensor, attrs: Sequence[ToyAttributes | str] | None) -> Tensor:
    """``[B]`` bool from either precomputed flags (1-D) or videos ``[B, T, 3, H, W]`` plus their attributes."""
    if video_or_good.ndim == 1:
        return video_or_good.bool()
    if attrs is None:
        raise ValueError("Pass the attributes (or captions) the videos were generated for, to score TA.")
    return good_mode(oracle_scores(video_or_good, attrs))


class GoodModeFraction(Metric):
    """Fraction of videos that land in a good mode (:func:`good_mode`), over everything seen on all ranks.

    ``update(video [B, T, 3, H, W], attrs)`` scores the videos with the oracle; ``update(good [B] bool)`` takes
    flags computed elsewhere. ``compute()`` -> scalar in ``[0, 1]`` (0 when nothing was seen).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("good", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, video_or_good: Tensor, attrs: Sequence[ToyAttributes | str] | None = None) -> None:
        flags = _good_flags(video_or_good, attrs).to(self.good.device)
        self.good += flags.sum()
        self.total += flags.numel()

    def compute(self) -> Tensor:
        return self.good.float() / self.total.clamp_min(1).float()


def _cells(attrs: Sequence[ToyAttributes | str], device: torch.device) -> Tensor:
    return torch.tensor([a.cell for a in _as_attrs(attrs)], dtype=torch.long, device=device)


class CellCoverage(Metric):
    """Fraction of the requested (shape, colour, direction) cells for which at least one generated video is good.

    A cell is requested when at least one update carried a prompt for it; the denominator is the number of
    requested cells (over all ranks), not all 48, so a run on a prompt subset can reach 1. Scalar in ``[0, 1]``.
    ``update(video [B, T, 3, H, W], attrs)`` or ``update(good [B] bool, attrs)``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("requested", default=torch.zeros(NUM_CELLS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("good", default=torch.zeros(NUM_CELLS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, video_or_good: Tensor, attrs: Sequence[ToyAttributes | str]) -> None:
        flags = _good_flags(video_or_good, attrs).to(self.good.device).long()
        cells = _cells(attrs, self.good.device)
        self.requested += torch.bincount(cells, minlength=NUM_CELLS)
        self.good += torch.bincount(cells, weights=flags.double(), minlength=NUM_CELLS).long()

    def compute(self) -> Tensor:
        req = self.requested > 0
        return ((self.good > 0) & req).sum().float() / req.sum().clamp_min(1).float()


class ModeCoverage(Metric):
    """Mode recall: the fraction of the world's good modes, in the requested cells, that the generated set reaches.

    The exact teacher's modes are the world's videos (:class:`~streamr1.toy.teacher.MixtureTeacher`). Each generated
    video that the oracle judges good is assigned to its nearest (pixel L2) world video among the *good* videos
    of the cell (shape, colour, direction) its prompt asked for; that world video is then *hit*. With ``R`` the
    good world videos whose cell was requested at least once (over all ranks)::

        coverage = |{i in R : hit_i}| / |R|

    It rewards variety: a student that collapses onto one good video per prompt scores ``1 / (good videos per
    cell)`` however good its samples are, and it is bounded by ``generated good / |R|``, so compare runs with
    the same number of samples per prompt. ``update(video [B, T, 3, H, W], attrs)``; scalar in ``[0, 1]``.

    Args:
        world: the :class:`ToyWorld` the teacher was built on.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, world: ToyWorld, **kwargs) -> None:
        super().__init__(**kwargs)
        good = world.good_mask()
        self._world_good_index = torch.nonzero(good).squeeze(1)  # [G] indices into the world
        self._world_good = world.videos[good].flatten(1)  # [G, P]
        self._world_good_cells = world.cells[good]  # [G]
        self.add_state("requested", default=torch.zeros(NUM_CELLS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(world), dtype=torch.long), dist_reduce_fx="sum")
        self._num_world = len(world)
        self._world_cells = world.cells
        self._world_is_good = good

    def update(self, video: Tensor, attrs: Sequence[ToyAttributes | str]) -> None:
        v = _check_video(video)
        attrs = _as_attrs(attrs)
        dev = self.hits.device
        cells = _cells(attrs, dev)
        self.requested += torch.bincount(cells, minlength=NUM_CELLS)
        flags = good_mode(oracle_scores(v, attrs)).to(dev)
        if self._world_good.device != dev:  # move the reference set once, not every update
            self._world_good, self._world_good_cells = self._world_good.to(dev), self._world_good_cells.to(dev)
            self._world_good_index = self._world_good_index.to(dev)
        bank, world_cells = self._world_good, self._world_good_cells
        if bank.shape[1] != v[0].numel():
            raise ValueError(f"Generated videos {tuple(v.shape[1:])} do not have the world's video shape.")
        d = torch.cdist(v.flatten(1).to(dev), bank)  # [B, G]
        d = d.masked_fill(cells.unsqueeze(1) != world_cells.unsqueeze(0), float("inf"))
        nearest = d.argmin(dim=1)
        valid = flags & torch.isfinite(d.gather(1, nearest[:, None]).squeeze(1))
        idx = self._world_good_index[nearest[valid]]
        self.hits += torch.bincount(idx, minlength=self._num_world)

    def compute(self) -> Tensor:
        dev = self.hits.device
        req = (self.requested > 0)[self._world_cells.to(dev)] & self._world_is_good.to(dev)  # [N]
        return ((self.hits > 0) & req).sum().float() / req.sum().clamp_min(1).float()


METRIC_NAMES: tuple[str, ...] = (
    "good_fraction", "mode_coverage", "cell_coverage", "VQ", "MQ", "TA",
    *(f"mode_{m}" for m in MODES),
)
"""Keys of :meth:`ToyOracleMetrics.compute` (logged as ``val/<key>``)."""


class ToyOracleMetrics(MetricCollection):
    """Good-mode fraction, coverage and mean oracle scores of generated toy videos (syncs across DDP ranks).

    ``compute()`` returns (each a scalar tensor):

    - ``good_fraction``: share of videos in a good mode (:func:`~streamr1.toy.oracle.good_mode`: every oracle axis
      above its threshold) - the headline number of the quality table;
    - ``mode_coverage``: share of the world's good videos, in the requested cells, that some good sample is nearest
      to (:class:`~streamr1.toy.metrics.ModeCoverage`): falls when the student collapses onto few modes;
    - ``cell_coverage``: share of requested (shape, colour, direction) cells with at least one good sample;
    - ``VQ``, ``MQ``, ``TA``: mean oracle scores (:func:`~streamr1.toy.oracle.oracle_scores`);
    - ``mode_good``, ``mode_visual``, ``mode_motion``, ``mode_text``: share of samples the oracle assigns to each
      quality mode (:func:`~streamr1.toy.oracle.classify_mode`; the first failing axis wins).

    The oracle scores each batch once; every member metric is fed from that one pass.

    Args:
        num_videos, seed, mode_probs, frames, size, num_captions, videos_per_caption, good_per_caption: the
            :class:`~streamr1.toy.world.ToyWorld` the teacher was built on (same arguments as
            :class:`~streamr1.toy.teacher.MixtureTeacher`); mode coverage is measured against it.
        world: the world itself (overrides the arguments above).

    Example::

        model:
          evaluator:
            class_path: streamr1.toy.metrics.ToyOracleMetrics
            init_args: {num_videos: 512, seed: 0}

    .. code-block:: python

        metrics = ToyOracleMetrics(world=world)
        metrics.update(video, prompts)  # video [B, T, 3, H, W] in [-1, 1]
        metrics.compute()["good_fraction"]
    """

    def __init__(self, num_videos: int | None = None, seed: int = 0, mode_probs: dict[str, float] | None = None,
                 frames: int = 8, size: int = 32, world: ToyWorld | None = None, num_captions: int | None = None,
                 videos_per_caption: int = 8, good_per_caption: int = 4, starts_per_caption: int | None = None,
                 shape_radius: float = SHAPE_RADIUS, travel_scale: float = 1.0) -> None:
        world = world if world is not None else ToyWorld(
            num_videos, seed, mode_probs, frames, size, num_captions=num_captions,
            videos_per_caption=videos_per_caption, good_per_caption=good_per_caption,
            starts_per_caption=starts_per_caption, shape_radius=shape_radius, travel_scale=travel_scale)
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
