"""TensorBoard helpers: videos as animated GIFs (NOTES.md: ``add_video`` needs moviepy < 2; a GIF needs only Pillow)."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor


def video_to_uint8(video: Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` in ``[-1, 1]`` -> ``[T, H, W, 3]`` uint8."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 1).cpu().numpy()


def gif_bytes(video: Tensor, fps: int = 8, scale: int = 1) -> bytes:
    """Encode ``[T, 3, H, W]`` in ``[-1, 1]`` as an animated GIF (looping), optionally upscaled ``scale`` times."""
    from PIL import Image

    frames = video_to_uint8(video)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def log_gif(experiment, tag: str, video: Tensor, step: int, fps: int = 8, scale: int = 4) -> None:
    """Write a GIF image summary to a TensorBoard ``SummaryWriter`` (it animates in TensorBoard's Images tab)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    t, _, h, w = video.shape
    image = Summary.Image(height=h * scale, width=w * scale, colorspace=3, encoded_image_string=gif_bytes(video, fps,
                                                                                                          scale))
    experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def tensorboard_experiments(trainer) -> list:
    """The ``SummaryWriter`` of every TensorBoard logger of the trainer."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]
