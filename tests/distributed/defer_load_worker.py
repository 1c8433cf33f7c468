"""``defer_load`` under FSDP2 (``ModelParallelStrategy``) on 2 CPU processes (gloo); run by test_defer_load_fsdp.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/defer_load_worker.py DIR

``DIR`` holds the checkpoint files (written by the test). The same recipe is fitted twice in one process group,
eagerly loaded then deferred, and each rank writes what it saw to ``DIR/<mode>_rank<r>.pt``.
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
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402

from streamr1.args import DMDArgs  # noqa: E402
from streamr1.data import PromptDataModule  # noqa: E402
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser  # noqa: E402
from streamr1.models.wan_deferred import has_pending_weights  # noqa: E402
from streamr1.module import DMDModule  # noqa: E402
from tests.distributed.worker import PROMPTS, _full_state  # noqa: E402
from tests.helpers import WAN_TINY, LossRecorder  # noqa: E402

STEPS = 4  # 2 cycles of a critic and a student step (student_every 1)


class CriticAtStart(pl.Callback):
    """Whether the critic equals the student when training starts (``critic_init_from_student``, run in
    ``on_fit_start``: after the deferred models were filled in ``configure_model``)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: DMDModule) -> None:
        critic, student = _full_state(pl_module.critic.transformer), _full_state(pl_module.student.transformer)
        self.equal = critic.keys() == student.keys() and all(torch.equal(critic[k], student[k]) for k in critic)


def _module(folder: str, defer: bool) -> DMDModule:
    def path(name: str) -> str:
        return os.path.join(folder, name)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.05)

    return DMDModule(
        student=CausalWanDenoiser(pretrained=path("ode_init.pt"), config=WAN_TINY, chunk_frames=2, defer_load=defer),
        teacher=WanDenoiser(pretrained=path("teacher.safetensors"), config=WAN_TINY, defer_load=defer),
        critic=WanDenoiser(pretrained=path("critic.safetensors"), config=WAN_TINY, defer_load=defer),
        text_encoder=HashTextEncoder(dim=16, length=4), vae=IdentityVAE(), latent_shape=(4, 3, 8, 8),
        dmd=DMDArgs(student_every=1, critic_init_from_student=True),
        student_optimizer=sgd, critic_optimizer=sgd,
    )


def run(folder: str, mode: str) -> None:
    from torch.distributed.tensor import DTensor

    rank = int(os.environ["RANK"])
    module = _module(folder, mode == "deferred")
    result: dict[str, Any] = {"pending_before": has_pending_weights(module),
                              "meta_before": sum(p.is_meta for p in module.parameters())}
    pl.seed_everything(100 + rank)
    torch.use_deterministic_algorithms(True)
    rec, start = LossRecorder(), CriticAtStart()
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo",
                                     timeout=timedelta(seconds=120))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=STEPS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[rec, start], default_root_dir=folder, deterministic=True)
    trainer.fit(module, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1, samples_per_epoch=100))
    params = {n: p for n, p in module.named_parameters()}
    result.update(
        losses=rec.losses, exits=rec.exits, critic_is_student_at_start=start.equal,
        pending_after=has_pending_weights(module),
        dtensor=sum(isinstance(p, DTensor) for p in params.values()), params=len(params),
        local_numel=sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params.values()),
        numel=sum(p.numel() for p in params.values()),
        student=_full_state(module.student), critic=_full_state(module.critic), teacher=_full_state(module.teacher),
        student_steps=module.student_steps,
    )
    torch.save(result, os.path.join(folder, f"{mode}_rank{rank}.pt"))
    trainer.strategy.barrier()


if __name__ == "__main__":
    for name in ("eager", "deferred"):
        run(sys.argv[1], name)
