"""Writes ``streamr1 predict`` outputs as mp4 files as they are made, and reports the generation speed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from streamr1.io import atomic_output


def _slug(text: str, n: int = 48) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    return "_".join(filter(None, keep.split("_")))[:n] or "video"


class VideoWriter(BasePredictionWriter):
    """Saves each predicted video as ``{output_dir}/{index:05d}_r{rank}_{prompt}.mp4`` and a ``speed_r{rank}.json``.

    Each batch's videos are written in ``on_predict_batch_end`` (``write_interval="batch"``), as soon as they are
    generated, and ``streamr1 predict`` runs with ``return_predictions=False``: nothing accumulates in memory.
    Each mp4 gets a sidecar ``.txt`` with its full prompt, so the folder is a
    :class:`~streamr1.data.videos.VideoFolderDataset` as it is: ``streamr1 calibrate --video_dir`` and the toy
    evaluation (``python -m streamr1.toy.evaluation <folder>``) read it directly.

    The CLI builds it from the top-level ``video:`` key; each recipe sets ``fps`` to its model's frame rate.

    Args:
        output_dir: folder for the videos; ``None``: write nothing (the CLI then adds no writer and warns).
        fps: frame rate written into the files: the model's (Wan2.1 generates 16 fps video; the toy world 8).

    Example::

        streamr1 predict --config configs/wan2.1_t2v.yaml --ckpt_path last --video.output_dir videos

    .. code-block:: yaml

        video: {fps: 16}    # in the recipe: the model's frame rate
    """

    def __init__(self, output_dir: str | None = None, fps: int = 16) -> None:
        super().__init__(write_interval="batch")
        if fps <= 0:
            raise ValueError(f"video.fps must be > 0, got {fps}.")
        self.output_dir, self.fps = output_dir, int(fps)
        self.frames = 0
        self.seconds = 0.0
        self.paths: list[str] = []

    @override
    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        from streamr1.data.videos import write_video

        if self.output_dir is None:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        video, prompts = prediction["video"], prediction["prompts"]
        index = prediction.get("index")
        for i, prompt in enumerate(prompts):
            n = int(index[i]) if index is not None else len(self.paths)
            path = os.path.join(self.output_dir, f"{n:05d}_r{trainer.global_rank}_{_slug(prompt)}.mp4")
            write_video(path, video[i], fps=self.fps)
            with atomic_output(path[:-4] + ".txt", fsync=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                fh.write(prompt + "\n")
            self.paths.append(path)
        self.frames += video.shape[0] * video.shape[1]
        self.seconds += float(prediction["seconds"])

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output_dir is None:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        fps = self.frames / max(self.seconds, 1e-9)
        summary = {"videos": len(self.paths), "frames": self.frames, "seconds": self.seconds, "frames_per_second": fps}
        path = os.path.join(self.output_dir, f"speed_r{trainer.global_rank}.json")
        with atomic_output(path, fsync=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
        print(f"[streamr1] wrote {len(self.paths)} videos to {self.output_dir}: {fps:.1f} frames/s "
              f"({self.frames} frames in {self.seconds:.2f} s, chunk by chunk through the KV cache)")
