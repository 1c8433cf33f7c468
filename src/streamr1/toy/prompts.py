"""Prompts of the toy world for ``streamr1 fit`` / ``predict`` / ``calibrate`` (DMD is data-free: text only)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from streamr1.data.prompts import PromptDataModule, PromptDataset
from streamr1.toy.world import ToyWorld, caption, exact_attributes


class ToyPromptDataModule(PromptDataModule):
    """The toy world's captions as a prompt datamodule.

    With ``num_captions`` (the exact world, :class:`~streamr1.toy.world.ToyWorld`'s exact layout) the prompts are the
    world's exact captions (``"a slow red circle moving left on a dark background"``), in world order; without it,
    one caption per (shape, colour, direction) cell (``"a red circle moving left"``; no speed or background, so every
    prompt's teacher mixture holds all the random world's videos of its cell, good and flawed). Training cycles
    (shuffled) through them. Validation,
    test and prediction use the same captions, each repeated ``val_repeats`` times in a row (more samples per prompt
    give steadier oracle numbers), optionally cut to the first ``num_val``.

    Args:
        batch_size: training micro-batch per device.
        val_repeats: samples per caption in validation / test / prediction.
        num_val: keep only the first ``num_val`` validation prompts (``None``: all of them, ``val_repeats`` each).
        val_batch_size: batch size of validation / test / prediction (generation only; defaults to ``batch_size``).
        samples_per_epoch: captions per training epoch, cut from a stream of shuffled passes over all 48 captions
            (:class:`~streamr1.data.prompts.PromptDataModule`); bound training with ``max_steps``.
        seed: shuffling seed.
        num_captions, world_seed: the exact world's caption count and seed (the teacher's ``num_captions`` and
            ``seed``); ``None``: the 48 cell captions.

    Example::

        data:
          class_path: streamr1.toy.prompts.ToyPromptDataModule
          init_args: {batch_size: 4, val_repeats: 1, val_batch_size: 48}
    """

    def __init__(self, batch_size: int = 4, val_repeats: int = 1, num_val: int | None = None,
                 val_batch_size: int | None = None, samples_per_epoch: int = 100_000, seed: int = 0,
                 num_captions: int | None = None, world_seed: int = 0) -> None:
        if val_repeats < 1:
            raise ValueError(f"val_repeats must be >= 1, got {val_repeats}.")
        if num_captions is None:
            cells = ToyWorld.cell_prompts()
        else:
            cells = [caption(a) for a in exact_attributes(num_captions, world_seed)]
        val = [p for p in cells for _ in range(val_repeats)]
        if num_val is not None:
            if num_val < 1:
                raise ValueError(f"num_val must be >= 1 or null, got {num_val}.")
            val = val[:num_val]
        super().__init__(prompts=cells, val_prompts=val, batch_size=batch_size, samples_per_epoch=samples_per_epoch,
                         seed=seed)
        self.val_repeats = val_repeats
        self.val_batch_size = int(val_batch_size or batch_size)

    def _eval_loader(self, prompts: list[str]) -> DataLoader:
        from streamr1.data.prompts import collate_prompts

        # own generator: creating the iterator must not draw from the global RNG (the training noise; exact resume)
        return DataLoader(PromptDataset(prompts), batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_prompts,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_prompts)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_prompts)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_prompts)
