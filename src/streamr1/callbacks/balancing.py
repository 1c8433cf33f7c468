"""Adaptive balancing across reward axes: the penalty ``P`` of ``BalancedOverall`` (SPEC.md §4.4)."""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from streamr1.context import BalanceResult, RolloutContext, global_sum, reward_result
from streamr1.protocols import AXES
from streamr1.rewards.result import RewardResult
from streamr1.weighting import axis_drifts, balance_penalty


class AdaptiveAxisBalancing(Callback):
    """Tracks each axis' normalised reward over a sliding window and computes ``P = std_unbiased(D_a)`` (SPEC §4.4).

    On every student micro-batch (one "update") it appends, per axis, the mean normalised reward of the GLOBAL
    batch (summed over all ranks, samples with a non-finite reward left out), so every rank holds the same
    history and computes the same ``P`` (the reference code keeps a per-rank window; SPEC §4.4 says why we do
    not). After ``warmup`` updates, with at least ``min_entries`` entries an axis,
    ``D_a = mean(second half) - mean(first half)`` and ``P = std_unbiased(D_VQ, D_MQ, D_TA)``; before that
    ``P = 0``. It leaves ``ctx.balance = BalanceResult(penalty=P, lam=lam)`` for
    :class:`~streamr1.callbacks.reliability.ReliabilityWeighting` in ``BalancedOverall`` mode, which computes
    ``r_final = Overall - lam * P``.

    It must come BEFORE ``ReliabilityWeighting`` in ``trainer.callbacks`` (the weighting callbacks run in list
    order); ``ReliabilityWeighting`` checks this at setup.

    Args:
        window: entries kept per axis (SPEC: 50).
        warmup: updates before the penalty turns on (SPEC: 50).
        min_entries: entries every axis needs before the penalty turns on (SPEC: 4).
        lam: ``lambda``, the penalty's weight in ``r_final`` (SPEC: 0.5).

    Example::

        trainer:
          callbacks:
            - class_path: streamr1.rewards.service.RewardService
              init_args: {model: ...}
            - class_path: streamr1.callbacks.balancing.AdaptiveAxisBalancing   # before ReliabilityWeighting
              init_args: {window: 50, warmup: 50, min_entries: 4, lam: 0.5}
            - class_path: streamr1.callbacks.reliability.ReliabilityWeighting
              init_args: {reward_mode: BalancedOverall, beta: 2.0}

    .. code-block:: python

        callbacks = [service, AdaptiveAxisBalancing(), ReliabilityWeighting(reward_mode="BalancedOverall")]

    Extension point: override :meth:`compute_penalty` for another balancing penalty.
    """

    def __init__(self, window: int = 50, warmup: int = 50, min_entries: int = 4, lam: float = 0.5) -> None:
        if window < 2 or min_entries < 2:
            raise ValueError(f"window and min_entries must be >= 2 (two halves), got {window} and {min_entries}.")
        if min_entries > window:
            raise ValueError(f"min_entries={min_entries} can never be reached with window={window}.")
        self.window, self.warmup, self.min_entries, self.lam = window, warmup, min_entries, float(lam)
        # axis -> the last `window` global-batch means of its normalised reward, oldest first. Plain floats so the
        # checkpoint round-trips them exactly and loads with weights_only=True.
        self.history: dict[str, deque[float]] = {}
        self.updates_seen = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(window=self.window, warmup=self.warmup, lam=self.lam)

    def compute_penalty(self) -> float:
        """The extension point: the penalty ``P`` from ``self.history`` (default :func:`balance_penalty`, SPEC §4.4)."""
        return balance_penalty(self.history, self.warmup, self.updates_seen, self.min_entries)

    def record(self, means: dict[str, float]) -> None:
        """Append one update's per-axis global-batch means to the window."""
        if self.history and set(means) != set(self.history):
            raise ValueError(f"The reward's axes changed from {list(self.history)} to {list(means)} mid-run.")
        for axis, value in means.items():
            self.history.setdefault(axis, deque(maxlen=self.window)).append(float(value))
        self.updates_seen += 1

    @torch.no_grad()
    def weight_rollout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: RolloutContext) -> None:
        """Record this update's global-batch means, compute ``P``, leave it in ``ctx.balance``."""
        result: RewardResult = reward_result(trainer, ctx)
        # The Stream-R1 axes (VQ, MQ, TA); any other score the reward model returns is not balanced.
        axes = tuple(a for a in result.axes if a in AXES) or result.axes
        r = torch.stack([result.normalized[a].detach().double() for a in axes], dim=1)  # [B, A]
        valid = result.valid.to(r.device).bool()
        # One collective: per-axis sums over valid samples, and their count, summed over ranks.
        local = torch.cat([(r * valid[:, None]).sum(dim=0), valid.sum().double().reshape(1)])
        total = global_sum(trainer, pl_module, local).cpu()
        count = float(total[-1])
        if count > 0:  # an update in which every sample of the global batch is invalid records nothing
            self.record({a: float(total[i]) / count for i, a in enumerate(axes)})
        penalty = float(self.compute_penalty())
        ctx.balance = BalanceResult(penalty=penalty, lam=self.lam)
        ctx.logs["weights/balance_penalty"] = penalty
        if self.history and self.updates_seen >= self.warmup and all(len(h) >= 2 for h in self.history.values()):
            for axis, d in zip(self.history, axis_drifts(self.history).tolist(), strict=True):
                ctx.logs[f"weights/balance_D_{axis}"] = d

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": {a: list(h) for a, h in self.history.items()}, "updates_seen": self.updates_seen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {a: deque((float(v) for v in h), maxlen=self.window) for a, h in state_dict["history"].items()}
        self.updates_seen = int(state_dict["updates_seen"])
