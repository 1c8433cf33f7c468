"""Multi-process scenarios for tests/distributed, run by ``torch.distributed.run`` on CPU (gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/worker.py OUT SCENARIO...

Each process imports the stack once (6-9 s) and runs every scenario asked for, in order, in one
process group; each rank writes what it saw to ``OUT/<scenario>_rank<r>.pt``. The tests compare
ranks and scenarios. Scenarios:

* ``ddp``: DDP (``find_unused_parameters``), 6 optimizer cycles with SGD; ranks seeded differently
  (global RNG and the module's control generator), so only the broadcast keeps their exit steps equal.
* ``fsdp_sgd``: the same run under ``ModelParallelStrategy`` (FSDP2); with SGD the result must equal DDP's.
* ``fsdp_full`` / ``fsdp_resume``: AdamW, an LR scheduler and StudentEMA under FSDP2, 6 cycles with a
  sharded checkpoint after cycle 3; then a new Trainer resumes from that checkpoint to cycle 6.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy  # noqa: E402

from streamr1.callbacks.ema import StudentEMA  # noqa: E402
from streamr1.data import PromptDataModule  # noqa: E402
from streamr1.module import DMDModule  # noqa: E402
from tests.helpers import LossRecorder, tiny_module  # noqa: E402

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow star moving down"]
CYCLES = 6
STUDENT_EVERY = 2  # student steps at cycles 0, 2, 4: global_step = critic + student steps
CKPT_STEP = 5  # global_step after cycle 3 (index 2): 3 critic + 2 student steps


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def _adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.0, 0.999), weight_decay=0.01)


def _step_lr(opt: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


class Recorder(LossRecorder):
    """:class:`~tests.helpers.LossRecorder` that also keeps the full student weights at ``snapshot_step``."""

    def __init__(self, snapshot_step: int | None = None) -> None:
        super().__init__()
        self.snapshot_step = snapshot_step
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.prompts: list[list[str]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: DMDModule, batch: Any, *args: Any) -> None:
        self.prompts.append(list(batch["prompt"]))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: DMDModule, *args: Any) -> None:
        if trainer.global_step == self.snapshot_step and self.snapshot is None:
            self.snapshot = _full_state(pl_module.student)


def _full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU copy of a state dict (collective for DTensors)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
            for k, v in module.state_dict().items()}


def _trainer(strategy: Any, callbacks: list[Callback], max_steps: int, root: str) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, logger=False,
                      enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=callbacks, default_root_dir=root, deterministic=True)


def _fsdp() -> ModelParallelStrategy:
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo",
                                 timeout=timedelta(seconds=120))


def _facts(module: DMDModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Where each model's parameters live: sharded or not, in an optimizer or not, with a gradient or not."""
    from torch.distributed.tensor import DTensor

    in_opt = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
    with_state = {id(p) for opt in trainer.optimizers for p in opt.state}
    facts: dict[str, Any] = {}
    for name in ("student", "critic", "teacher"):
        params = list(getattr(module, name).parameters())
        facts[name] = {
            "params": len(params),
            "dtensor": sum(isinstance(p, DTensor) for p in params),
            "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
            "numel": sum(p.numel() for p in params),
            "in_optimizer": sum(id(p) in in_opt for p in params),
            "optimizer_state": sum(id(p) in with_state for p in params),
            "with_grad": sum(p.grad is not None for p in params),
            "requires_grad": sum(p.requires_grad for p in params),
        }
    return facts


def run(scenario: str, out: str) -> None:
    rank = _rank()
    pl.seed_everything(100 + rank)  # ranks draw different noise; only the broadcast keeps control flow equal
    torch.use_deterministic_algorithms(True)
    # The resume scenarios: 4 prompts shuffled, 8 a epoch over both ranks (4 batches a rank): the checkpoint after
    # cycle 2 is mid-epoch, and cycles 4-5 are epoch 1; the resumed run must continue each rank's prompt stream.
    data = PromptDataModule(prompts=PROMPTS, batch_size=1,
                            samples_per_epoch=8 if scenario in ("fsdp_full", "fsdp_resume") else 100_000)
    ckpt_dir = os.path.join(out, "ckpt")
    result: dict[str, Any] = {}
    if scenario in ("ddp", "fsdp_sgd"):
        # different control seeds per rank: the exit steps agree only through the broadcast from rank 0
        module = tiny_module(student_every=STUDENT_EVERY, seed=1000 + rank,
                             student_optimizer=_sgd(0.05), critic_optimizer=_sgd(0.05))
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo") if scenario == "ddp" \
            else _fsdp()
        rec = Recorder()
        trainer = _trainer(strategy, [rec], CYCLES + 3, out)
        trainer.fit(module, datamodule=data)
        result.update(exits=rec.exits, losses=rec.losses)
    elif scenario in ("fsdp_full", "fsdp_resume"):
        module = tiny_module(student_every=STUDENT_EVERY, student_optimizer=_adamw(1e-3),
                             critic_optimizer=_adamw(1e-3), student_scheduler=_step_lr, critic_scheduler=_step_lr)
        rec, ema = Recorder(snapshot_step=CKPT_STEP), StudentEMA(decay=0.5)
        callbacks: list[Callback] = [rec, ema]
        ckpt_path = None
        if scenario == "fsdp_full":
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=CKPT_STEP, save_top_k=-1))
        else:
            ckpt_path = os.path.join(ckpt_dir, f"epoch=0-step={CKPT_STEP}.ckpt")
            result["ckpt_is_dir"] = os.path.isdir(ckpt_path)
        trainer = _trainer(_fsdp(), callbacks, CYCLES + 3, out)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        result.update(losses=rec.losses, exits=rec.exits, student_at_ckpt=rec.snapshot, ckpt_dir=ckpt_dir,
                      prompts=rec.prompts,
                      ema={k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in
                           ema.shadow.items()},
                      ema_is_dtensor=all(hasattr(v, "full_tensor") for v in ema.shadow.values()),
                      lrs=[g["lr"] for opt in trainer.optimizers for g in opt.param_groups])
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    result.update(student=_full_state(module.student), critic=_full_state(module.critic),
                  counters=(module.student_steps, module.critic_steps, module.micro_batches),
                  global_step=trainer.global_step, facts=_facts(module, trainer), world_size=trainer.world_size)
    torch.save(result, os.path.join(out, f"{scenario}_rank{rank}.pt"))
    trainer.strategy.barrier()


if __name__ == "__main__":
    out_dir, *scenarios = sys.argv[1:]
    for name in scenarios:
        run(name, out_dir)
