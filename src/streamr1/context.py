"""The loss-weighting extension point: the rollout context, the weighting protocol and their shared helpers.

DESIGN.md "Contracts", SPEC.md §4. Lightning hooks can observe a loss but not change it. So on every student turn
the DMD module builds one :class:`RolloutContext`, asks ``trainer.callbacks`` for the callbacks that satisfy
:class:`LossWeighting` (in list order), and hands the context to each. They write their part of the weights into
it; the module then computes

    L = 0.5 * W_inter[b] * mean(W_intra[b] * (x - sg(x - g))^2)          (SPEC.md §4)

With no weighting callback both weights stay ``None`` and the loss is plain DMD, exactly.

What the built-in callbacks share travels in typed fields: the reward service's :class:`RewardResult` in
``ctx.reward`` (computed once, by the first callback that asks, through :func:`reward_result`), the balancing
penalty in ``ctx.balance`` (:class:`BalanceResult`). This module imports no callback and no reward model: the
reward service finds its place through the :class:`RewardSource` protocol, so nothing here imports in a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

from streamr1.rewards.result import RewardResult

if TYPE_CHECKING:
    import lightning.pytorch as pl


@dataclass(frozen=True)
class BalanceResult:
    """The adaptive balancing penalty of one update (SPEC.md §4.4): ``r_final = Overall - lam * penalty``.

    Attributes:
        penalty: ``P = std_unbiased(D_VQ, D_MQ, D_TA)`` over the global batch history (0 during the warm-up).
        lam: ``lambda``, the penalty's weight.
    """

    penalty: float
    lam: float


@dataclass
class RolloutContext:
    """Everything a weighting callback may read about one student rollout, and where it writes.

    Attributes:
        x: ``[B, F, C, H, W]`` the rollout, detached (callbacks never see the student's graph).
        dmd_grad: ``[B, F, C, H, W]`` the DMD gradient ``g`` (SPEC.md §3.3).
        prompts: ``B`` captions.
        cond: ``[B, L, D]`` text embeddings.
        decode: latents ``[B, F, C, H, W]`` -> pixels ``[B, T, 3, H, W]`` in ``[-1, 1]``, differentiable.
        student_step: number of student optimizer steps taken before this one.
        rollout_weight: ``[B]`` ``W_inter``, or ``None`` (all ones). Detached.
        element_weight: ``[B, F, 1, H, W]`` ``W_intra``, or ``None`` (all ones). Detached.
        reward: the reward service's scores and saliency of this rollout, once computed (:func:`reward_result`).
        balance: the balancing penalty, once :class:`~streamr1.callbacks.balancing.AdaptiveAxisBalancing` ran.
        cache: free scratch space for a user's own callbacks to share results (the built-ins use the typed fields).
        logs: scalars and tensors callbacks want logged (``name -> value``); the module logs them.
    """

    x: Tensor
    dmd_grad: Tensor
    prompts: Sequence[str]
    cond: Tensor
    decode: Callable[[Tensor], Tensor]
    student_step: int = 0
    rollout_weight: Tensor | None = None
    element_weight: Tensor | None = None
    reward: RewardResult | None = None
    balance: BalanceResult | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]


@runtime_checkable
class LossWeighting(Protocol):
    """A callback that reweights the student's DMD loss.

    ``weight_rollout`` is called once per student micro-batch, after the DMD gradient and
    before the loss, in ``trainer.callbacks`` order. It may set or multiply
    ``ctx.rollout_weight`` / ``ctx.element_weight`` (always detached) and fill ``ctx.logs``.
    """

    def weight_rollout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: RolloutContext) -> None: ...


@runtime_checkable
class RewardSource(Protocol):
    """What scores a rollout for the weighting callbacks (the :class:`~streamr1.rewards.service.RewardService`)."""

    def evaluate(self, ctx: RolloutContext) -> RewardResult: ...


def weighting_callbacks(trainer: pl.Trainer) -> list[LossWeighting]:
    """The trainer's loss-weighting callbacks, in list order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, LossWeighting)]


def reward_source(trainer: pl.Trainer) -> RewardSource:
    """The one reward source among ``trainer.callbacks``.

    Raises:
        RuntimeError: none (a weighting callback needs one), or more than one (each would score the rollout again,
            with its own statistics).
    """
    found = [cb for cb in trainer.callbacks if isinstance(cb, RewardSource)]
    if not found:
        raise RuntimeError(
            "No reward service on the trainer, but a reward-weighting callback needs one: layer a reward fragment "
            "(e.g. `--config configs/rewards/toy.yaml`, or `configs/rewards/videoreward.yaml` for Wan recipes) after "
            "the recipe, or add a `streamr1.rewards.service.RewardService` callback."
        )
    if len(found) > 1:
        raise RuntimeError(
            f"{len(found)} reward services on the trainer ({[type(cb).__name__ for cb in found]}); there must be "
            "exactly one (every weighting callback reads the same scores). Remove the extra one (a second --config "
            "may have added it)."
        )
    return found[0]


def reward_result(trainer: pl.Trainer, ctx: RolloutContext) -> RewardResult:
    """The rollout's :class:`RewardResult`: ``ctx.reward`` when already computed, else from the trainer's reward
    source, which scores the rollout once and stores it in ``ctx.reward``."""
    if ctx.reward is not None:
        return ctx.reward
    result = reward_source(trainer).evaluate(ctx)
    ctx.reward = result
    return result


def global_sum(trainer: pl.Trainer, pl_module: pl.LightningModule, t: Tensor) -> Tensor:
    """Sum a fixed-shape tensor over all ranks (``pl_module.all_gather``, then a sum in rank order).

    Every rank gets the same gathered tensor and adds it up in the same order, so the result is bitwise
    identical on all ranks. Summing fixed-shape statistics (sums and counts) rather than gathering per-sample
    values keeps it correct when ranks hold batches of different sizes. Must be called on every rank.

    Args:
        t: any fixed shape, the same on every rank.

    Returns:
        ``t`` summed over ranks (``t`` itself on a single process), on ``t``'s device.
    """
    if trainer.world_size <= 1:
        return t
    gathered = pl_module.all_gather(t.to(pl_module.device))
    return gathered.reshape(-1, *t.shape).sum(dim=0).to(t.device)
