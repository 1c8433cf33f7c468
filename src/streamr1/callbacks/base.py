"""The loss-weighting extension point (DESIGN.md, "Contracts"; SPEC.md §4).

Lightning hooks can observe a loss but not change it. So on every student turn the DMD
module builds one :class:`RolloutContext`, asks ``trainer.callbacks`` for the callbacks that
satisfy :class:`LossWeighting` (in their list order), and hands the context to each. They
write their part of the weights into it; the module then computes

    L = 0.5 * W_inter[b] * mean(W_intra[b] * (x - sg(x - g))^2)          (SPEC.md §4)

With no weighting callback both weights stay ``None`` and the loss is plain DMD, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    import lightning.pytorch as pl


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
        cache: results shared between callbacks for this rollout (the reward service stores
            its scores and saliency here so that every callback reads the same numbers).
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
    ``ctx.rollout_weight`` / ``ctx.element_weight`` (always detached) and fill ``ctx.cache``
    and ``ctx.logs``.
    """

    def weight_rollout(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: RolloutContext) -> None: ...


def weighting_callbacks(trainer: pl.Trainer) -> list[LossWeighting]:
    """The trainer's loss-weighting callbacks, in list order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, LossWeighting)]
