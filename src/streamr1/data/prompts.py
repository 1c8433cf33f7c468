"""Prompt data: DMD is data-free, a run needs only text prompts (SPEC.md §5)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset


def read_prompts(path: str) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no prompt.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Prompt file not found: {path!r}. Set `data.prompts_file` to a text file, one prompt a line."
        )
    with open(path, encoding="utf-8") as fh:
        prompts = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"Prompt file {path!r} is empty: it needs at least one non-blank line (one prompt a line).")
    return prompts


class PromptDataset(Dataset):
    """``{"prompt": str, "index": int}`` items; ``length`` > number of prompts cycles through them."""

    def __init__(self, prompts: Sequence[str], length: int | None = None) -> None:
        if not prompts:
            raise ValueError("PromptDataset needs at least one prompt.")
        self.prompts = list(prompts)
        self.length = len(self.prompts) if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prompt": self.prompts[i % len(self.prompts)], "index": i}


class PromptDataModule(pl.LightningDataModule):
    """Prompts for training (shuffled, cycled), validation, test and prediction.

    Args:
        prompts_file: text file, one prompt a line (used when ``prompts`` is empty).
        prompts: prompts given inline (the toy world and tests).
        val_prompts: prompts for validation/test/predict; defaults to the first ``num_val`` training prompts.
        num_val: validation prompts taken from the training ones when ``val_prompts`` is unset.
        predict_prompts_file: prompts for ``streamr1 predict`` (defaults to the validation prompts).
        batch_size: micro-batch per device.
        samples_per_epoch: length of one training epoch (prompts cycle); bound training with ``max_steps``.
        num_workers: data-loader workers (prompts are tiny: 0 is fine).
        seed: shuffling seed (the sampler is seeded identically on all ranks; DDP splits it).
    """

    def __init__(
        self,
        prompts_file: str | None = None,
        prompts: list[str] | None = None,
        val_prompts: list[str] | None = None,
        num_val: int = 4,
        predict_prompts_file: str | None = None,
        batch_size: int = 1,
        samples_per_epoch: int = 100_000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if prompts_file is None and not prompts:
            raise ValueError("PromptDataModule needs `prompts_file` (one prompt a line) or a non-empty `prompts` list.")
        self.prompts_file, self.inline = prompts_file, list(prompts or [])
        self.val_inline, self.num_val = val_prompts, num_val
        self.predict_prompts_file = predict_prompts_file
        self.batch_size, self.samples_per_epoch = batch_size, samples_per_epoch
        self.num_workers, self.seed = num_workers, seed
        # Read eagerly so that a missing or empty file fails before any model is built.
        self.train_prompts = self.inline or read_prompts(prompts_file)  # type: ignore[arg-type]
        self.val_prompts = list(val_prompts) if val_prompts else self.train_prompts[:num_val]
        self.predict_prompts = read_prompts(predict_prompts_file) if predict_prompts_file else self.val_prompts

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          generator=gen if shuffle else None, collate_fn=collate_prompts)

    def train_dataloader(self) -> DataLoader:
        return self._loader(PromptDataset(self.train_prompts, self.samples_per_epoch), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(PromptDataset(self.val_prompts), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(PromptDataset(self.predict_prompts), shuffle=False)


def collate_prompts(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"prompt": [it["prompt"] for it in items], "index": torch.tensor([it["index"] for it in items])}
