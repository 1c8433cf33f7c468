"""Per-axis z-normalisation of reward scores and the statistics behind it (SPEC.md §4.1).

``r_a = (raw_a - mean_a) / std_a``: the normalisation makes ``beta`` in ``W_inter = exp(beta * r_final)`` mean the
same thing for every reward model and axis. The statistics are estimated once, before training, on what the
reward will see (student rollouts or a folder of videos: :mod:`streamr1.rewards.calibration`, called by
``streamr1 calibrate``), stored in a JSON or YAML file
``{"VQ": {"mean": m, "std": s}, ...}`` and loaded by :class:`RewardNormalizer`.

:class:`RewardStatistics` is the running estimate (a ``torchmetrics.Metric``: sums and counts, summed over DDP
ranks on ``compute``) that calibration uses and the reward service logs as ``reward/{axis}_running_*``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from streamr1.assets import resolve
from streamr1.io import atomic_output
from streamr1.protocols import AXES

MIN_STD = 1e-6
"""Floor of every axis' ``std``: a constant axis must not divide by zero."""

AxisStats = dict[str, dict[str, float]]
"""``{axis: {"mean": m, "std": s}}`` (calibration also writes ``"count"``), the file and dict format."""


def _parse_axis(axis: str, entry: Any) -> tuple[float, float]:
    if isinstance(entry, Mapping):
        if "mean" not in entry or "std" not in entry:
            raise ValueError(f"Statistics of axis {axis!r} need keys 'mean' and 'std', got {sorted(entry)}.")
        return float(entry["mean"]), float(entry["std"])
    if isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
        return float(entry[0]), float(entry[1])
    raise ValueError(f"Statistics of axis {axis!r} must be {{'mean': m, 'std': s}} or [m, s], got {entry!r}.")


def read_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``{axis: {"mean", "std"}}`` from a JSON or YAML file (by suffix; ``.yaml``/``.yml`` is YAML)."""
    path = resolve(path)  # pkg://<package>/<file>: a file shipped in a package
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Reward statistics file not found: {path!r}. Write one with `streamr1 calibrate --output {path}` "
            "(or streamr1.rewards.calibration), or set the RewardService's "
            "`normalization` to a dict {axis: {mean, std}} or null (no normalisation)."
        )
    with open(path, encoding="utf-8") as fh:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(fh)
        else:
            data = json.load(fh)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path!r} must hold a mapping {{axis: {{mean, std}}}}, got {type(data).__name__}.")
    return dict(data)


def write_stats(path: str | os.PathLike[str], stats: Mapping[str, Any]) -> None:
    """Write statistics to JSON or YAML (by suffix), atomically (a temporary file, then a rename)."""
    path = os.fspath(path)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        if path.endswith((".yaml", ".yml")):
            import yaml

            yaml.safe_dump(dict(stats), fh, sort_keys=False)
        else:
            json.dump(dict(stats), fh, indent=2)


class RewardNormalizer(nn.Module):
    """``r_a = (raw_a - mean_a) / std_a`` per axis (SPEC §4.1), with ``std_a >= 1e-6``.

    The statistics are buffers ``mean`` and ``std`` ``[A]`` in ``axes`` order, so they move with ``.to(device)``.

    Args:
        stats: ``{axis: {"mean": m, "std": s}}`` (or ``{axis: [m, s]}``); extra axes are ignored, a missing one is
            an error. ``None``: mean 0, std 1 (raw scores pass through; ``calibrated`` is False).
        axes: the axes normalised, in order.
        min_std: floor of ``std``.

    Example::

        norm = RewardNormalizer.load("stats/reward.json")
        r = norm({"VQ": raw_vq, "MQ": raw_mq, "TA": raw_ta})  # each [B]
    """

    mean: Tensor
    std: Tensor

    def __init__(self, stats: Mapping[str, Any] | None = None, axes: Sequence[str] = AXES,
                 min_std: float = MIN_STD) -> None:
        super().__init__()
        self.axes: tuple[str, ...] = tuple(axes)
        if not self.axes:
            raise ValueError("RewardNormalizer needs at least one axis.")
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(len(self.axes)))
        self.register_buffer("std", torch.ones(len(self.axes)))
        self.calibrated = False
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: Mapping[str, Any]) -> None:
        """Replace the statistics (``{axis: {"mean", "std"}}``); every axis of ``self.axes`` must be present."""
        missing = [a for a in self.axes if a not in stats]
        if missing:
            raise ValueError(
                f"Reward statistics lack axes {missing} (have {sorted(stats)}). Re-run `streamr1 calibrate` with "
                f"the same reward model, or drop those axes from the RewardService's `axes`."
            )
        parsed = [_parse_axis(a, stats[a]) for a in self.axes]
        for a, (m, s) in zip(self.axes, parsed, strict=True):
            if not (math.isfinite(m) and math.isfinite(s)) or s < 0:
                raise ValueError(f"Statistics of axis {a!r} must be finite with std >= 0, got mean={m}, std={s}.")
        with torch.no_grad():
            self.mean.copy_(torch.tensor([m for m, _ in parsed], dtype=self.mean.dtype))
            self.std.copy_(torch.tensor([max(s, self.min_std) for _, s in parsed], dtype=self.std.dtype))
        self.calibrated = True

    def to_dict(self) -> AxisStats:
        """``{axis: {"mean": m, "std": s}}`` as Python floats (JSON-ready; ``std`` after the floor)."""
        return {a: {"mean": float(m), "std": float(s)}
                for a, m, s in zip(self.axes, self.mean.tolist(), self.std.tolist(), strict=True)}

    def forward(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Normalise each axis: ``raw[a]`` any shape -> the same shape, float32 (non-finite stays non-finite)."""
        out = {}
        for i, a in enumerate(self.axes):
            x = raw[a].float()
            out[a] = (x - self.mean[i].to(x.device)) / self.std[i].to(x.device)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` (JSON, or YAML for ``.yaml``/``.yml``)."""
        write_stats(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], axes: Sequence[str] | None = None,
             min_std: float = MIN_STD) -> RewardNormalizer:
        """A normaliser from a JSON/YAML file; ``axes`` default: every axis in the file, in file order."""
        stats = read_stats(path)
        return cls(stats, axes=tuple(stats) if axes is None else axes, min_std=min_std)

    @classmethod
    def from_config(cls, normalization: Mapping[str, Any] | str | os.PathLike[str] | None,
                    axes: Sequence[str] = AXES, min_std: float = MIN_STD) -> RewardNormalizer:
        """From what a config holds: a stats dict, a file path, or ``None`` (identity)."""
        if normalization is None or isinstance(normalization, Mapping):
            return cls(normalization, axes=axes, min_std=min_std)
        return cls(read_stats(normalization), axes=axes, min_std=min_std)

    def extra_repr(self) -> str:
        return f"axes={self.axes}, calibrated={self.calibrated}"


class RewardStatistics(Metric):
    """Running per-axis mean and std of reward scores, summed over DDP ranks on ``compute`` (SPEC §4.1).

    States (float64, ``[A]`` each, reduced by sum): ``sum``, ``sumsq``, ``count``. Non-finite scores are left out
    (per axis). ``std`` is the unbiased one (``torch.std``'s default, correction 1); with one sample it is 0 and
    with none both are NaN.

    Example::

        stats = RewardStatistics(axes=("VQ", "MQ", "TA"))
        stats.update({"VQ": vq, "MQ": mq, "TA": ta})  # each [B]
        stats.compute()  # {"VQ": (mean, std), ...}, 0-dim float64 tensors
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    sum: Tensor
    sumsq: Tensor
    count: Tensor

    def __init__(self, axes: Sequence[str] = AXES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axes: tuple[str, ...] = tuple(axes)
        n = len(self.axes)
        self.add_state("sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sumsq", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Mapping[str, Tensor]) -> None:
        """Add a batch: ``scores[axis]`` any shape (usually ``[B]``); axes not in ``self.axes`` are ignored."""
        device = self.sum.device
        sums, sqs, counts = [], [], []
        for a in self.axes:
            v = scores[a].detach().reshape(-1).to(device=device, dtype=torch.float64)
            v = v[torch.isfinite(v)]
            sums.append(v.sum())
            sqs.append((v * v).sum())
            counts.append(torch.tensor(float(v.numel()), dtype=torch.float64, device=device))
        self.sum += torch.stack(sums)
        self.sumsq += torch.stack(sqs)
        self.count += torch.stack(counts)

    def _moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, std, count)`` ``[A]`` from the current (local or synced) states."""
        n = self.count
        mean = self.sum / n
        var = ((self.sumsq - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
        std = torch.where(n > 1, var.sqrt(), torch.where(n > 0, torch.zeros_like(var), torch.full_like(var, math.nan)))
        return mean, std, n

    def compute(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{axis: (mean, std)}``, 0-dim float64 tensors (``std`` unbiased), over all ranks."""
        mean, std, _ = self._moments()
        return {a: (mean[i], std[i]) for i, a in enumerate(self.axes)}

    def stats_dict(self) -> AxisStats:
        """``{axis: {"mean", "std", "count"}}`` as Python numbers, over all ranks (the calibration file format).

        Like :meth:`compute`, it must be called on every rank when running distributed.
        """
        with self.sync_context():
            mean, std, n = self._moments()
            return {a: {"mean": float(mean[i]), "std": float(std[i]), "count": int(n[i])}
                    for i, a in enumerate(self.axes)}


# ---------------------------------------------------------------------------------------------- calibration
def _reward_axes(reward: Callable[..., Mapping[str, Tensor]], first: Mapping[str, Tensor],
                 axes: Sequence[str] | None) -> tuple[str, ...]:
    if axes is not None:
        chosen = tuple(axes)
    else:
        declared = getattr(reward, "axes", None)
        chosen = tuple(declared) if declared else tuple([a for a in AXES if a in first] +
                                                        [a for a in first if a not in AXES])
    missing = [a for a in chosen if a not in first]
    if missing:
        raise ValueError(f"The reward model returned axes {sorted(first)}, missing {missing}.")
    return chosen


def to_unit(video: Tensor) -> Tensor:
    """Pixels in ``[-1, 1]`` (or uint8 ``0..255``) -> float ``[0, 1]``, clamped: what a reward sees (SPEC §4.1)."""
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    return ((video.float() + 1.0) * 0.5).clamp(0.0, 1.0)
