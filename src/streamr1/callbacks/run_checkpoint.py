"""The checkpoint every ``streamr1 fit`` writes, whatever callback stacks are layered (DESIGN.md, "Fragments").

The CLI builds it from the top-level ``checkpoint:`` key (always present, with defaults) and appends it to the
trainer's callbacks, so a stack's ``trainer.callbacks`` list cannot drop it. It writes ``last.ckpt`` and one
periodic checkpoint every ``every_n_train_steps`` optimizer steps, and finds ``last.ckpt`` again for
``--ckpt_path last`` in any earlier version folder of the run.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")  # last.ckpt, or last-v1.ckpt when Lightning kept an older one


class RunCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` with the defaults and the triggers a DMD run needs.

    What it changes from Lightning's class, and why:

    - **Periodic saves under manual optimization.** DMD steps two optimizers, so ``trainer.global_step`` (what
      ``max_steps`` counts: critic + student steps) advances by 2 on a student cycle and can jump over a multiple
      of ``every_n_train_steps``; Lightning's ``global_step % N == 0`` test then skips that save. Here a save
      happens whenever ``global_step`` *crosses* a multiple of N (it is checked after every training batch).
    - **last.ckpt at the end.** ``last.ckpt`` is written with every periodic save and once more when fit ends
      (Lightning's class skips the final one when a periodic save already happened earlier in the run), so it
      always holds the latest state.
    - **--ckpt_path last finds the previous run.** Without a fixed ``dirpath`` the checkpoints go to the logger's
      ``<save_dir>/<name>/version_N/checkpoints``, and a new run gets a new ``version_N``. Lightning looks for
      ``last.ckpt`` only in the new (empty) version folder, so a restart after a crash silently started from
      scratch. Here ``--ckpt_path last`` picks the newest ``last*.ckpt`` of every version folder of the run (or of
      ``dirpath`` when it is set).

    Defaults: ``save_last=True``, ``every_n_train_steps=500``, ``save_top_k=1`` (the newest periodic checkpoint is
    kept, the one before it removed; ``-1`` keeps every one: at Wan scale a checkpoint with both optimizers is tens
    of GB), file names ``step=<global_step>.ckpt``. Every other argument is Lightning's. ``save_on_exception`` stays
    off by default: an exception can come between the student's and the critic's optimizer steps of one cycle, and a
    checkpoint of that state would not resume into the run that an uninterrupted fit makes; the last periodic
    checkpoint does.

    Example::

        checkpoint:                  # top-level key of any recipe or fragment
          every_n_train_steps: 100   # optimizer steps (critic + student), as trainer.max_steps counts them
          save_top_k: -1             # keep every periodic checkpoint

    .. code-block:: bash

        streamr1 fit --config configs/quickstart.yaml --checkpoint.every_n_train_steps 10
        streamr1 fit --config configs/quickstart.yaml --ckpt_path last    # resume after a crash
    """

    def __init__(self, dirpath: str | None = None, filename: str | None = "step={step}",
                 save_last: bool | None = True, save_top_k: int = 1, every_n_train_steps: int | None = 500,
                 auto_insert_metric_name: bool = False, **kwargs: Any) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"checkpoint.every_n_train_steps must be >= 0 (0: no periodic checkpoint), got "
                             f"{every_n_train_steps}.")
        super().__init__(dirpath=dirpath, filename=filename, save_last=save_last, save_top_k=save_top_k,
                         every_n_train_steps=every_n_train_steps, auto_insert_metric_name=auto_insert_metric_name,
                         **kwargs)
        # The period (global_step // N) of the last save or of the run's start: a save happens when it grows.
        self._period = 0

    @property
    def period(self) -> int:
        """Optimizer steps between periodic checkpoints (0: none)."""
        return int(self._every_n_train_steps or 0)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._period = trainer.global_step // self.period if self.period > 0 else 0

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.automatic_optimization or self.monitor is not None or self._train_time_interval is not None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.period < 1 or self._should_skip_saving_checkpoint(trainer):
            return
        period = trainer.global_step // self.period
        if period <= self._period:
            return
        self._period = period
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        # Called by the trainer for ckpt_path="last" before setup has resolved this run's own folder.
        found = set(super()._find_last_checkpoints(trainer))
        for folder in self.run_folders(trainer):
            found |= {os.path.normpath(p) for p in glob.glob(os.path.join(glob.escape(folder), "last*.ckpt"))
                      if _LAST.match(os.path.basename(p))}
        return found

    def run_folders(self, trainer: pl.Trainer) -> list[str]:
        """Folders that may hold this run's ``last.ckpt``: ``dirpath`` when set, else every
        ``<save_dir>/<name>/*/checkpoints`` of the first logger (every version of the run), else
        ``<default_root_dir>/checkpoints``."""
        if self.dirpath is not None:
            return [str(self.dirpath)]
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            return sorted(glob.glob(os.path.join(glob.escape(os.path.join(str(save_dir), str(logger.name))), "*",
                                                 "checkpoints")))
        return [os.path.join(trainer.default_root_dir, "checkpoints")]

    def describe(self) -> str:
        """One phrase for the fit-start summary: where and when checkpoints are written."""
        keep = "every one kept" if self.save_top_k < 0 else f"newest {self.save_top_k} kept"
        periodic = (f"every {self.period} optimizer steps ({keep})" if self.period > 0 and self.save_top_k != 0
                    else "no periodic checkpoint")
        last = "last.ckpt at every save and at the end" if self.save_last else "no last.ckpt"
        return f"{self.dirpath} ({last}; {periodic}; resume with --ckpt_path last)"
