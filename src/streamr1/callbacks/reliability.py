"""Inter-reliability weighting: one weight a rollout from its reward (SPEC.md §4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from streamr1.context import RolloutContext, global_sum, reward_result
from streamr1.rewards.result import RewardResult
from streamr1.weighting import (
    REWARD_MODES,
    RewardMode,
    effective_sample_size,
    final_reward,
    mean_normalize,
    reliability_weight,
)


class ReliabilityWeighting(Callback):
    """Weights each rollout's DMD loss by ``W_inter = exp(beta * r_final)`` (SPEC §4.2).

    The reward mode picks ``r_final``: ``MQ`` alone is Reward Forcing; ``BalancedOverall`` (the mean of the three
    axes minus ``lambda * P``) is Stream-R1 and needs :class:`~streamr1.callbacks.balancing.AdaptiveAxisBalancing`
    *before* this callback in ``trainer.callbacks`` (checked at setup). Samples whose reward is not finite
    (``RewardResult.valid`` False) or whose weight is not finite get weight 1 and are counted.

    Args:
        reward_mode: ``MQ``, ``VQ``, ``TA``, ``Overall`` (mean of the axes) or ``BalancedOverall`` (Stream-R1).
        beta: inverse temperature of the exponential (SPEC: 2).
        clip: ``[lo, hi]`` bounds of ``exp(beta * r_final)``, or ``None`` (the paper does not clip).
        self_normalize: divide the weights by their mean over the global batch (all ranks; non-finite samples,
            which keep weight 1, are left out of the mean), so the weight averages 1 and does not rescale the
            learning rate. Off in the paper.
        log_histogram_every_n_steps: put the histogram ``weights/inter`` in the logs every this many student
            steps (0: never).

    Logs ``weights/inter_{mean,min,max}`` (this rank's batch), ``weights/inter_ess`` (Kish's effective sample size
    of the global batch as a fraction, ``(sum w)^2 / (n sum w^2)``: 0.5 means the weighted gradient averages about
    half as many rollouts as plain DMD's) and ``weights/nonfinite_fallback``.

    Example::

        trainer:
          callbacks:
            - class_path: streamr1.rewards.service.RewardService
              init_args: {model: ...}
            - class_path: streamr1.callbacks.reliability.ReliabilityWeighting
              init_args: {reward_mode: MQ, beta: 2.0}      # Reward Forcing

    .. code-block:: python

        from streamr1.callbacks.reliability import ReliabilityWeighting

        trainer = Trainer(callbacks=[service, ReliabilityWeighting(reward_mode="MQ", beta=2.0)])

    Extension point: override :meth:`compute_weight` for another per-rollout weight.
    """

    def __init__(
        self,
        reward_mode: RewardMode = "Overall",
        beta: float = 2.0,
        clip: list[float] | None = None,
        self_normalize: bool = False,
        log_histogram_every_n_steps: int = 10,
    ) -> None:
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"Unknown reward_mode {reward_mode!r}; choose one of {REWARD_MODES}.")
        if clip is not None:
            if len(clip) != 2 or not 0.0 <= float(clip[0]) <= float(clip[1]):
                raise ValueError(f"clip must be [lo, hi] with 0 <= lo <= hi, got {clip}.")
            clip = [float(clip[0]), float(clip[1])]
        if log_histogram_every_n_steps < 0:
            raise ValueError("log_histogram_every_n_steps must be >= 0 (0 disables the histogram).")
        self.reward_mode = reward_mode
        self.beta = float(beta)
        self.clip: list[float] | None = clip
        self.self_normalize = self_normalize
        self.log_histogram_every_n_steps = log_histogram_every_n_steps
        # Samples that fell back to weight 1 (non-finite reward or weight), summed over all ranks; kept in the
        # checkpoint so the counter in the logs keeps counting after a resume.
        self.nonfinite_fallback = 0
        self.rollouts_weighted = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(reward_mode=self.reward_mode, beta=self.beta)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.reward_mode != "BalancedOverall":
            return
        from streamr1.callbacks.balancing import AdaptiveAxisBalancing

        callbacks: Sequence[Callback] = list(trainer.callbacks)
        me = next((i for i, cb in enumerate(callbacks) if cb is self), len(callbacks))
        before = [i for i, cb in enumerate(callbacks) if isinstance(cb, AdaptiveAxisBalancing) and i < me]
        if not before:
            where = "after it" if any(isinstance(cb, AdaptiveAxisBalancing) for cb in callbacks) else "none"
            raise ValueError(
                "ReliabilityWeighting(reward_mode='BalancedOverall') needs the balancing penalty P from "
                f"AdaptiveAxisBalancing (SPEC §4.4), but trainer.callbacks has no AdaptiveAxisBalancing before it "
                f"({where}). Fix: add `streamr1.callbacks.balancing.AdaptiveAxisBalancing` to trainer.callbacks "
                "BEFORE ReliabilityWeighting (as callbacks/stream_r1.yaml does), or use reward_mode: Overall."
            )

    def compute_weight(self, result: RewardResult, ctx: RolloutContext) -> Tensor:
        """The extension point: ``[B]`` per-rollout weights, before the non-finite fallback and self-normalisation.

        Default: ``reliability_weight(final_reward(r, mode, P, lambda), beta, clip)`` (SPEC §4.2, §4.4), with
        ``P`` and ``lambda`` read from ``ctx.balance`` in ``BalancedOverall`` mode.

        Args:
            result: the rollout's scores (``result.normalized``: per axis ``[B]``).
            ctx: the rollout context (read-only here).
        """
        penalty, lam = 0.0, 0.0
        if self.reward_mode == "BalancedOverall":
            if ctx.balance is None:
                raise RuntimeError(
                    "reward_mode='BalancedOverall' but no AdaptiveAxisBalancing ran before ReliabilityWeighting "
                    "for this rollout: put it before ReliabilityWeighting in trainer.callbacks."
                )
            penalty, lam = ctx.balance.penalty, ctx.balance.lam
        r_final = final_reward(result.normalized, self.reward_mode, penalty=penalty, lam=lam)
        return reliability_weight(r_final, self.beta, clip=self.clip)

    @torch.no_grad()
    def weight_rollout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: RolloutContext) -> None:
        """Multiply ``W_inter`` ``[B]`` into ``ctx.rollout_weight`` and log its statistics (SPEC §4.2)."""
        result = reward_result(trainer, ctx)
        w = self.compute_weight(result, ctx).detach().float()
        if w.shape != (ctx.batch_size,):
            raise ValueError(f"compute_weight must return [B] = [{ctx.batch_size}], got {tuple(w.shape)}.")
        valid = result.valid.to(w.device).bool() & torch.isfinite(w)
        w = torch.where(valid, w, torch.ones_like(w))
        # One collective a call on every rank: [sum of valid weights, valid count, fallback count, sum of squares].
        stats = torch.stack([(w * valid).sum(), valid.sum().float(), (~valid).sum().float(),
                             (w * w * valid).sum()]).double()
        stats = global_sum(trainer, pl_module, stats)
        if self.self_normalize and stats[1] > 0:
            # reliability_weight's self-normalisation, with the mean taken over the global batch's valid samples
            # (fallback samples keep exactly 1).
            w = torch.where(valid, mean_normalize(w, stats[0] / stats[1]), w)
        self.nonfinite_fallback += int(stats[2])
        self.rollouts_weighted += int(stats[1] + stats[2])

        ctx.rollout_weight = w if ctx.rollout_weight is None else ctx.rollout_weight * w.to(ctx.rollout_weight)
        ctx.logs["weights/inter_mean"] = w.mean()
        ctx.logs["weights/inter_min"] = w.min()
        ctx.logs["weights/inter_max"] = w.max()
        ctx.logs["weights/nonfinite_fallback"] = float(self.nonfinite_fallback)
        if stats[1] > 0 and stats[3] > 0:
            # of the global batch's valid weights (fallback samples carry no reward)
            ctx.logs["weights/inter_ess"] = effective_sample_size(float(stats[0]), float(stats[3]), float(stats[1]))
        n = self.log_histogram_every_n_steps
        if n > 0 and ctx.student_step % n == 0:
            ctx.logs["weights/inter"] = w.clone()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"nonfinite_fallback": self.nonfinite_fallback, "rollouts_weighted": self.rollouts_weighted}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.nonfinite_fallback = int(state_dict.get("nonfinite_fallback", 0))
        self.rollouts_weighted = int(state_dict.get("rollouts_weighted", 0))
