"""``streamr1 calibrate``: estimate the reward's per-axis mean and std (SPEC.md §4.1) and save them.

The statistics z-normalise each axis (``r_a = (raw_a - mean_a) / std_a``) so that ``beta`` in
``W_inter = exp(beta * r_final)`` means the same for every reward model. Estimate them on what
the reward will see in training: rollouts of the current student (default), or a folder of
videos (``--video_dir``, read with decord, PyAV where decord fails).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer

from streamr1.io import atomic_output
from streamr1.module import DMDModule


def _atomic_json(path: str, payload: dict[str, Any]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)


def calibrate(trainer: Trainer, module: DMDModule, datamodule: LightningDataModule | None, output: str,
              video_dir: str | None = None, num_samples: int = 64, batch_size: int = 4) -> dict[str, Any]:
    """Score ``num_samples`` student rollouts (or every video in ``video_dir``) and write the per-axis stats.

    Scored through the trainer's :class:`~streamr1.rewards.service.RewardService` (its ``reward_inputs`` apply, as in
    training).
    """
    from streamr1.distributed import fill_deferred
    from streamr1.rewards.calibration import calibrate_from_rollouts, calibrate_from_videos
    from streamr1.rewards.service import find_reward_service

    fill_deferred(module, module.device)  # a defer_load student (no trainer hook runs here) is read before sampling
    service = find_reward_service(trainer)
    service.prepare(module.device)
    if video_dir is not None:
        from streamr1.data.videos import VideoFolderDataset

        ds = VideoFolderDataset(video_dir)
        stats = calibrate_from_videos(service, ((item["video"], item["prompt"]) for item in ds), batch_size=batch_size)
    else:
        if datamodule is None:
            raise ValueError("calibrate from rollouts needs prompts: give a `data:` section (or --video_dir).")
        prompts = list(getattr(datamodule, "train_prompts", []))
        if not prompts:
            raise ValueError("The datamodule has no `train_prompts` to generate rollouts from.")
        prompts = [prompts[i % len(prompts)] for i in range(num_samples)]

        @torch.no_grad()
        def generate(batch_prompts: list[str]) -> torch.Tensor:
            return module.decode(module.sample(batch_prompts)).clamp(-1, 1)

        stats = calibrate_from_rollouts(service, generate, prompts, batch_size=batch_size)
    _atomic_json(output, stats)
    return stats
