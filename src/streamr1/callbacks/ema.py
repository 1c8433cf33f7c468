"""A student-only exponential moving average (SPEC.md §3.6: decay 0.99).

Lightning's ``EMAWeightAveraging`` deep-copies the whole LightningModule (teacher and critic
too), updates on critic steps as well and does not support sharding (NOTES.md). This one keeps
a shadow copy of the student's trained parameters only (a LoRA student's adapters, not its frozen
base: :func:`trained_parameters`), updates once per student optimizer step, and
works on sharded (DTensor) parameters because every operation is elementwise.

Checkpoints: :meth:`StudentEMA.state_dict` holds full (unsharded) CPU tensors whatever the strategy, so the
state fits Lightning's callback section of any checkpoint (in a sharded FSDP2 checkpoint that section is
written by rank 0 alone) and can be exported without the strategy that wrote it. On load the shadow is put
back in the student's own layout (device, and the parameters' DTensor sharding) before its first use.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override


def trained_parameters(student: torch.nn.Module) -> dict[str, Tensor]:
    """The student's parameters that train (``requires_grad``), by name: all of them, or a LoRA student's adapters
    only (:mod:`streamr1.models.lora`), so the EMA never shadows frozen weights."""
    return {k: p for k, p in student.named_parameters() if p.requires_grad}


class StudentEMA(Callback):
    """EMA of the student's weights: ``ema <- decay * ema + (1 - decay) * student`` after each student step.

    Args:
        decay: EMA decay per student step.
        start_step: student steps before the EMA starts tracking (it copies the weights at that step).

    Example::

        trainer:
          callbacks:
            - class_path: streamr1.callbacks.ema.StudentEMA
              init_args: {decay: 0.99, start_step: 0}

    .. code-block:: python

        ema = StudentEMA(decay=0.99)
        trainer = Trainer(callbacks=[ema]); trainer.fit(module)
        with ema.swapped(module.student): module.sample(["a red ball"])
    """

    def __init__(self, decay: float = 0.99, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay, self.start_step = decay, start_step
        # name -> shadow tensor; empty until start_step. Kept off the module so DDP/FSDP never see it.
        self.shadow: dict[str, Tensor] = {}
        self._last_student_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, start_step=self.start_step)

    def _align(self, params: dict[str, Tensor]) -> None:
        """Put every shadow tensor in its parameter's layout: device, and DTensor sharding (after a load).

        Raises:
            ValueError: the shadow does not belong to this student (other names or shapes).
        """
        from torch.distributed.tensor import DTensor, distribute_tensor

        for k, v in list(self.shadow.items()):
            p = params.get(k)
            if p is None or tuple(p.shape) != tuple(v.shape):
                raise ValueError(
                    f"EMA state does not match the student (parameter {k!r}): resume with the same recipe."
                )
            if isinstance(p, DTensor):
                if not isinstance(v, DTensor):  # a full tensor from a checkpoint: keep this rank's shard only
                    v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            elif isinstance(v, DTensor):
                v = v.full_tensor()
            if v.device != p.device:
                v = v.to(p.device)
            self.shadow[k] = v

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """One EMA update from the student's current weights (copy at the first call)."""
        params = trained_parameters(student)
        if not self.shadow:
            self.shadow = {k: p.detach().clone() for k, p in params.items()}
            return
        self._align(params)
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach().to(self.shadow[k].dtype), 1.0 - self.decay)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(getattr(pl_module, "student_steps", 0))
        if step != self._last_student_step and step > self.start_step:
            self.update(pl_module.student)
        self._last_student_step = step

    @contextmanager
    def swapped(self, student: torch.nn.Module):
        """Temporarily load the EMA weights into ``student`` (e.g. for sampling or export)."""
        if not self.shadow:
            yield student
            return
        params = trained_parameters(student)
        self._align(params)
        backup = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield student
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(backup[k])

    @override
    def state_dict(self) -> dict[str, Any]:
        """Full CPU tensors; gathers DTensor shards (a collective: Lightning calls this on every rank)."""
        shadow = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
                  for k, v in self.shadow.items()}
        return {"shadow": shadow,
                "last_student_step": self._last_student_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict.get("shadow", {}))
        self._last_student_step = int(state_dict.get("last_student_step", -1))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Under ModelParallelStrategy the checkpoint is restored after this hook: update()/swapped() align again.
        self._align(trained_parameters(pl_module.student))
