"""A LoRA student under FSDP2 (``ModelParallelStrategy``) on 2 CPU processes (gloo); run by test_lora_fsdp.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/models/lora_fsdp_worker.py OUT

Each rank writes what it saw to ``OUT/rank<r>.pt``: how the adapters are sharded, what the optimizers and the EMA
hold, the full (gathered) student before and after, and rank 0 exports the sharded checkpoint merged.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402

from streamr1.callbacks.ema import StudentEMA  # noqa: E402
from streamr1.data import PromptDataModule  # noqa: E402
from tests.models.test_lora import PROMPTS, _module  # noqa: E402


def _full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
            for k, v in module.state_dict().items()}


def main(out: str) -> None:
    from torch.distributed.tensor import DTensor

    rank = int(os.environ["RANK"])
    pl.seed_everything(100 + rank)
    module = _module()  # seeded inside: the same initial weights on both ranks
    before = _full(module.student)
    ema = StudentEMA(decay=0.5)
    ckpt = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=False, every_n_train_steps=6, save_top_k=-1)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo",
                                     timeout=timedelta(seconds=120))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=6, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[ema, ckpt], default_root_dir=out)
    trainer.fit(module, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1, samples_per_epoch=100))
    opt_s, opt_c = trainer.optimizers
    named = dict(module.student.named_parameters())
    adapters = {n for n, p in named.items() if ".lora_" in n}
    result = {
        "adapters": sorted(adapters),
        "adapter_placements": {n: [str(pl_) for pl_ in named[n].placements] for n in adapters
                               if isinstance(named[n], DTensor)},
        "adapter_local_rows": {n: named[n].to_local().shape[0] for n in adapters if isinstance(named[n], DTensor)},
        "adapter_rows": {n: named[n].shape[0] for n in adapters},
        "optimizer": sorted(n for n, p in named.items()
                            if any(p is q for g in opt_s.param_groups for q in g["params"])),
        "optimizer_state": sorted(n for n, p in named.items() if p in opt_s.state),
        "ema": sorted(ema.shadow),
        "ema_dtensor": all(isinstance(v, DTensor) for v in ema.shadow.values()),
        "ema_full": {k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in ema.shadow.items()},
        "before": before,
        "after": _full(module.student),
        "student_steps": module.student_steps,
    }
    trainer.strategy.barrier()
    if rank == 0:
        from streamr1.export import export_student

        path = os.path.join(out, "ckpt", "epoch=0-step=6.ckpt")
        result["ckpt_is_dir"] = os.path.isdir(path)
        export_student(_module(), os.path.join(out, "export"), ckpt_path=path)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    trainer.strategy.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
