"""Prompt data: DMD is data-free, a run needs only text prompts (SPEC.md §5).

Training draws prompts from an endless *stream*: pass ``p`` over the list is a permutation of every prompt, seeded by
``(seed, p)``, and the passes follow one another. An epoch is the next ``samples_per_epoch`` positions of that stream
(one pass when ``samples_per_epoch`` is ``None``), so every prompt of a list of any length is drawn once per pass:
a list longer than an epoch is covered by consecutive epochs, never cut to its first ``samples_per_epoch`` prompts.
With ``R`` data-parallel processes, rank ``r`` takes the positions ``r, r + R, r + 2R, ...`` of each epoch (as
``torch.utils.data.DistributedSampler`` does within one permutation).

The training loader is resumable: :class:`ResumablePromptLoader` has ``state_dict``/``load_state_dict``, which
Lightning's fit loop saves in every checkpoint (``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``)
and hands back on resume, so a run resumed from any step continues the prompt stream where the checkpoint left it
and reproduces the uninterrupted run's batches exactly (and Lightning's "dataloader is not resumable" warning is gone).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


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
        return {"prompt": self.prompts[i % len(self.prompts)], "index": i % len(self.prompts)}


class PromptStreamSampler(DistributedSampler):
    """Indices into a list of ``num_prompts`` prompts: successive seeded permutations, cut into epochs, rank-strided.

    Position ``s`` of the stream is prompt ``perm_p[s mod N]`` with ``p = s // N`` and ``perm_p`` the permutation of
    ``range(N)`` drawn by ``numpy.random.default_rng([seed, p])`` (the same on every rank). Epoch ``e`` holds the
    positions ``[e * L, (e + 1) * L)`` with ``L = num_replicas * ceil(samples_per_epoch / num_replicas)``, and rank
    ``r`` reads ``e * L + r + k * num_replicas`` for ``k = skip, skip + 1, ...``, ``skip`` being the samples this rank
    already consumed in the epoch (set by a resume). It subclasses ``DistributedSampler`` so that Lightning keeps it
    instead of injecting its own; ``set_epoch`` is called by Lightning's fit loop at every epoch start.

    Args:
        num_prompts: ``N``, the length of the prompt list.
        samples_per_epoch: stream positions per epoch over all ranks (``None``: one pass, ``N``).
        num_replicas: data-parallel processes.
        rank: this process's data-parallel rank.
        seed: permutation seed.
    """

    def __init__(self, num_prompts: int, samples_per_epoch: int | None = None, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        if num_prompts < 1:
            raise ValueError("PromptStreamSampler needs at least one prompt.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or null (one pass over the prompts), got "
                             f"{samples_per_epoch}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        super().__init__(range(num_prompts), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_prompts = int(num_prompts)
        self.samples_per_epoch = self.num_prompts if samples_per_epoch is None else int(samples_per_epoch)
        self.num_samples = math.ceil(self.samples_per_epoch / num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas  # L
        self.skip = 0  # samples of the current epoch this rank has already consumed (a resume sets it)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (Lightning calls it before each epoch); a pending resume offset of another epoch is
        dropped."""
        if int(epoch) != self.epoch:
            self.skip = 0
        self.epoch = int(epoch)

    def permutation(self, p: int) -> np.ndarray:
        """``perm_p``: the order of pass ``p`` over the prompts."""
        if self._perm_cache is None or self._perm_cache[0] != p:
            self._perm_cache = (p, np.random.default_rng([self.seed, p]).permutation(self.num_prompts))
        return self._perm_cache[1]

    def stream(self, start: int, stop: int, step: int = 1) -> Iterator[int]:
        """Prompt indices at stream positions ``range(start, stop, step)``."""
        n = self.num_prompts
        for s in range(start, stop, step):
            yield int(self.permutation(s // n)[s % n])

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.total_size
        first = base + self.rank + self.skip * self.num_replicas
        self.skip = 0  # an offset applies to one iteration only
        return self.stream(first, base + self.total_size, self.num_replicas)

    def __len__(self) -> int:
        return self.num_samples


class ResumablePromptLoader(DataLoader):
    """A ``DataLoader`` over a :class:`PromptStreamSampler` whose position survives a checkpoint.

    ``state_dict()`` is ``{"epoch", "batches", "batch_size", "num_replicas", "num_prompts", "seed"}``: the epoch and
    the batches this process has taken from it. Lightning's fit loop stores it in the checkpoint and calls
    ``load_state_dict`` on resume, before it iterates; the next iteration then skips exactly those batches.
    Lightning does not prefetch from a loader with a length, so the batches taken are the batches trained on.
    """

    sampler: PromptStreamSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        sampler = kwargs.get("sampler")
        # A DataLoader draws its workers' base seed at every iterator creation, from the global torch RNG unless it
        # has a generator; that would shift the training noise stream at each epoch start, and a run resumed at an
        # epoch boundary (whose RNG state was saved before that draw) would draw other noise than the uninterrupted run.
        kwargs.setdefault("generator", torch.Generator().manual_seed(getattr(sampler, "seed", 0)))
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, PromptStreamSampler):
            raise TypeError("ResumablePromptLoader needs `sampler=PromptStreamSampler(...)`.")
        self._position = (-1, 0)  # (epoch, batches of it taken so far, a resume offset included)

    def __iter__(self) -> Iterator[Any]:
        return _CountingIterator(self)

    def _skipped_batches(self) -> int:
        return math.ceil(self.sampler.skip / self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        s = self.sampler
        epoch, batches = self._position
        if epoch != s.epoch:  # nothing taken yet from the sampler's current epoch
            epoch, batches = s.epoch, self._skipped_batches()
        if batches >= len(self):  # the epoch is over: the next batch is the first of the next epoch
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches, "batch_size": self.batch_size, "num_replicas": s.num_replicas,
                "num_prompts": s.num_prompts, "seed": s.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.sampler
        s.epoch, s.skip = int(state["epoch"]), 0
        if (state["num_prompts"], state["seed"]) != (s.num_prompts, s.seed):
            warnings.warn(
                f"The checkpoint's prompt order is of {state['num_prompts']} prompts with seed {state['seed']}, this "
                f"run has {s.num_prompts} prompts with seed {s.seed}: the resumed epoch {state['epoch']} starts over "
                "in the new order (the batches differ from an uninterrupted run).", stacklevel=2)
            return
        samples = int(state["batches"]) * int(state["batch_size"])  # per rank, in the saving run
        if (state["batch_size"], state["num_replicas"]) != (self.batch_size, s.num_replicas):
            # Continue from the same global stream position with the new split (not bit-exact: no run of either
            # shape would have drawn exactly these batches).
            samples = samples * int(state["num_replicas"]) // s.num_replicas
            warnings.warn(
                f"The checkpoint was written with batch size {state['batch_size']} on {state['num_replicas']} "
                f"processes, this run has {self.batch_size} on {s.num_replicas}: the prompt stream continues from the "
                "same position, split differently.", stacklevel=2)
        s.skip = samples


class _CountingIterator:
    """Iterates a :class:`ResumablePromptLoader`, counting the batches taken. The underlying ``DataLoader`` iterator
    (and so the sampler, and the workers' prefetching) starts at the first ``next``: after Lightning's ``set_epoch``
    and after a resume's ``load_state_dict``."""

    def __init__(self, loader: ResumablePromptLoader) -> None:
        self.loader = loader
        self.inner: Iterator[Any] | None = None

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        loader = self.loader
        if self.inner is None:
            loader._position = (loader.sampler.epoch, loader._skipped_batches())
            self.inner = DataLoader.__iter__(loader)
        batch = next(self.inner)
        epoch, batches = loader._position
        loader._position = (epoch, batches + 1)
        return batch

    def __len__(self) -> int:
        return len(self.loader)


class PromptDataModule(pl.LightningDataModule):
    """Prompts for training (a shuffled stream over the whole list, resumable), validation, test and prediction.

    Args:
        prompts_file: text file, one prompt a line (used when ``prompts`` is empty).
        prompts: prompts given inline (the toy world and tests).
        val_prompts: prompts for validation/test/predict; defaults to the first ``num_val`` training prompts.
        num_val: validation prompts taken from the training ones when ``val_prompts`` is unset.
        predict_prompts_file: prompts for ``streamr1 predict`` (defaults to the validation prompts).
        batch_size: micro-batch per device.
        samples_per_epoch: prompts per training epoch over all processes; ``null``: one pass over the list. Epochs
            cut a stream of successive shuffled passes over the *whole* list, so a list longer than an epoch is
            covered by the following epochs (every prompt is drawn once per pass). Bound training with ``max_steps``.
        num_workers: data-loader workers (prompts are tiny: 0 is fine).
        seed: shuffling seed (the same order on every rank; each rank takes every ``world_size``-th prompt).
    """

    def __init__(
        self,
        prompts_file: str | None = None,
        prompts: list[str] | None = None,
        val_prompts: list[str] | None = None,
        num_val: int = 4,
        predict_prompts_file: str | None = None,
        batch_size: int = 1,
        samples_per_epoch: int | None = 100_000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if prompts_file is None and not prompts:
            raise ValueError("PromptDataModule needs `prompts_file` (one prompt a line) or a non-empty `prompts` list.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or null (one pass over the prompts), got "
                             f"{samples_per_epoch}.")
        self.prompts_file, self.inline = prompts_file, list(prompts or [])
        self.val_inline, self.num_val = val_prompts, num_val
        self.predict_prompts_file = predict_prompts_file
        self.batch_size, self.samples_per_epoch = batch_size, samples_per_epoch
        self.num_workers, self.seed = num_workers, seed
        # Read eagerly so that a missing or empty file fails before any model is built.
        self.train_prompts = self.inline or read_prompts(prompts_file)  # type: ignore[arg-type]
        self.val_prompts = list(val_prompts) if val_prompts else self.train_prompts[:num_val]
        self.predict_prompts = read_prompts(predict_prompts_file) if predict_prompts_file else self.val_prompts

    def _replicas(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` of data parallelism: the trainer's, or ``(1, 0)`` without one."""
        trainer = self.trainer
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        if not kwargs:
            return 1, 0
        return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        # own generator: creating the iterator must not draw from the global RNG (see ResumablePromptLoader)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          generator=gen, collate_fn=collate_prompts)

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._replicas()
        sampler = PromptStreamSampler(len(self.train_prompts), self.samples_per_epoch, num_replicas=replicas,
                                      rank=rank, seed=self.seed)
        return ResumablePromptLoader(PromptDataset(self.train_prompts), batch_size=self.batch_size, sampler=sampler,
                                     num_workers=self.num_workers, collate_fn=collate_prompts)

    def val_dataloader(self) -> DataLoader:
        return self._loader(PromptDataset(self.val_prompts), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(PromptDataset(self.predict_prompts), shuffle=False)


def collate_prompts(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"prompt": [it["prompt"] for it in items], "index": torch.tensor([it["index"] for it in items])}
