"""Media in any logger: sample videos, saliency heat maps and weight histograms through one interface.

:func:`log_media` (or :func:`log_video`, :func:`log_image`, :func:`log_histogram`) sends one item to every logger of
the trainer, on global rank 0:

=================  =====================================  ==========================  ==============================
logger             video ``[T, 3, H, W]`` in ``[-1, 1]``  image ``[3, H, W]`` [0, 1]  histogram (any tensor)
=================  =====================================  ==========================  ==============================
TensorBoard        animated GIF as an image summary       ``add_image``               ``add_histogram``
wandb              ``wandb.Video`` of a GIF file          ``wandb.Image``             ``wandb.Histogram``
CSV                GIF file in ``<log_dir>/media/<key>/`` PNG file there              ``<key>/{mean,std,min,max}``
anything else      skipped, with a one-time warning naming the logger, the kind and the key
=================  =====================================  ==========================  ==============================

Videos become GIFs written with Pillow because TensorBoard's ``add_video`` and ``wandb.Video`` of raw frames both
need moviepy (NOTES.md), which pulls a 165 MB ffmpeg; a GIF needs nothing else and animates in both UIs. wandb gets
the step as ``trainer/global_step``, as Lightning's own ``WandbLogger.log_metrics`` does (wandb's internal step must
increase monotonically, and Lightning's scalar logging already advances it).

Nothing is dropped silently: every call returns, for each logger, ``"logged"`` or ``"skipped: <why>"``, and a skipped
(logger type, kind) pair warns once.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

MediaKind = Literal["video", "image", "histogram"]
KINDS: tuple[str, ...] = ("video", "image", "histogram")
_NOTIFIED: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------- encoders
def video_to_uint8(video: Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` in ``[-1, 1]`` -> ``[T, H, W, 3]`` uint8."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 1).cpu().numpy()


def image_to_uint8(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` float in ``[0, 1]`` (or uint8) -> ``[H, W, 3]`` uint8."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"An image must be [3, H, W] (or [1, H, W]), got {list(image.shape)}.")
    img = image.detach().cpu()
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).contiguous().numpy()


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


def png_bytes(image: Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def _gif_scale(video: Tensor) -> int:
    """Enlarge tiny videos (the toy world's 32x32) so they are visible: to at least 128 pixels high."""
    return max(1, 128 // max(1, int(video.shape[-2])))


def log_gif(experiment: Any, tag: str, video: Tensor, step: int, fps: int = 8, scale: int = 4) -> None:
    """Write a GIF image summary to a TensorBoard ``SummaryWriter`` (it animates in TensorBoard's Images tab)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    _, _, h, w = video.shape
    image = Summary.Image(height=h * scale, width=w * scale, colorspace=3,
                          encoded_image_string=gif_bytes(video, fps, scale))
    experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def tensorboard_experiments(trainer: Any) -> list:
    """The ``SummaryWriter`` of every TensorBoard logger of the trainer."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]


# ---------------------------------------------------------------------------------------------- per-logger writers
def _is_tensorboard(logger: Any) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)


def _is_wandb(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - always there in lightning 2.x
        WandbLogger = ()  # type: ignore[assignment]
    return isinstance(logger, WandbLogger) or type(getattr(logger, "_experiment", None)).__module__.startswith(
        "wandb")


def _is_csv(logger: Any) -> bool:
    from lightning.pytorch.loggers import CSVLogger

    return isinstance(logger, CSVLogger)


def _tensorboard(logger: Any, kind: str, key: str, value: Tensor, step: int, fps: int) -> None:
    exp = logger.experiment
    if kind == "video":
        log_gif(exp, key, value, step, fps, scale=_gif_scale(value))
    elif kind == "image":
        exp.add_image(key, torch.from_numpy(image_to_uint8(value)), global_step=step, dataformats="HWC")
    else:
        exp.add_histogram(key, value.detach().float().cpu().flatten(), step)


def _wandb(logger: Any, kind: str, key: str, value: Tensor, step: int, fps: int) -> None:
    import wandb

    exp = logger.experiment
    if kind == "video":
        with tempfile.TemporaryDirectory(prefix="streamr1-media-") as tmp:
            path = os.path.join(tmp, "video.gif")
            with open(path, "wb") as fh:
                fh.write(gif_bytes(value, fps, scale=_gif_scale(value)))
            exp.log({key: wandb.Video(path, format="gif"), "trainer/global_step": step})  # copied at log time
    elif kind == "image":
        exp.log({key: wandb.Image(image_to_uint8(value)), "trainer/global_step": step})
    else:
        exp.log({key: wandb.Histogram(value.detach().float().cpu().flatten().numpy()), "trainer/global_step": step})


def _safe_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _csv(logger: Any, kind: str, key: str, value: Tensor, step: int, fps: int) -> None:
    from streamr1.io import atomic_output

    if kind == "histogram":
        v = value.detach().double().cpu().flatten()
        logger.log_metrics({f"{key}/mean": float(v.mean()), f"{key}/std": float(v.std()) if v.numel() > 1 else 0.0,
                            f"{key}/min": float(v.min()), f"{key}/max": float(v.max())}, step=step)
        return
    folder = os.path.join(logger.log_dir, "media", _safe_key(key))
    ext, data = ("gif", gif_bytes(value, fps, scale=_gif_scale(value))) if kind == "video" else ("png",
                                                                                                 png_bytes(value))
    with atomic_output(os.path.join(folder, f"step_{int(step):08d}.{ext}"), fsync=False) as tmp, \
            open(tmp, "wb") as fh:
        fh.write(data)


def _writer(logger: Any):
    if _is_tensorboard(logger):
        return _tensorboard
    if _is_wandb(logger):
        return _wandb
    if _is_csv(logger):
        return _csv
    return None


# ---------------------------------------------------------------------------------------------- the interface
def _loggers(target: Any) -> tuple[list[Any], bool]:
    """(loggers, is this global rank 0) of a Trainer, a logger or a list of loggers."""
    if hasattr(target, "loggers"):
        return list(target.loggers), bool(getattr(target, "is_global_zero", True))
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        return list(target), True
    return [target], True


def _check(kind: str, value: Any) -> Tensor:
    if kind not in KINDS:
        raise ValueError(f"Unknown media kind {kind!r}: use one of {list(KINDS)}.")
    value = torch.as_tensor(value)
    if kind == "video" and (value.ndim != 4 or value.shape[1] != 3):
        raise ValueError(f"A video must be [T, 3, H, W] in [-1, 1], got {list(value.shape)}.")
    if kind == "histogram" and value.numel() == 0:
        raise ValueError("A histogram needs at least one value.")
    return value


def log_media(target: Any, kind: MediaKind, key: str, value: Any, step: int, fps: int = 8) -> dict[str, str]:
    """Send one media item to every logger of ``target`` (a Trainer, a logger or a list of loggers).

    Args:
        target: a ``Trainer`` (its ``loggers``; only global rank 0 logs), a logger, or loggers.
        kind: ``"video"`` (``[T, 3, H, W]`` in ``[-1, 1]``), ``"image"`` (``[3, H, W]`` float in ``[0, 1]`` or
            uint8) or ``"histogram"`` (a tensor of values).
        key: the tag (``val/sample_0``, ``weights/saliency_heatmap``, ``weights/W_inter``).
        value: the item.
        step: the x-axis value (for wandb: ``trainer/global_step``).
        fps: frame rate of a video.

    Returns:
        ``{"<LoggerClass>[i]": "logged" | "skipped: <why>"}`` (empty on ranks other than 0).
    """
    value = _check(kind, value)
    loggers, rank_zero = _loggers(target)
    if not rank_zero:
        return {}
    outcome: dict[str, str] = {}
    for i, logger in enumerate(loggers):
        name = f"{type(logger).__name__}[{i}]"
        write = _writer(logger)
        if write is None:
            reason = f"{type(logger).__name__} has no way to show {kind}s (TensorBoard, wandb and CSV loggers do)"
            outcome[name] = f"skipped: {reason}"
            if (type(logger).__name__, kind) not in _NOTIFIED:
                _NOTIFIED.add((type(logger).__name__, kind))
                warnings.warn(f"streamr1 media: {reason}; '{key}' and later {kind}s are not sent to it.", stacklevel=2)
            continue
        write(logger, kind, key, value, int(step), int(fps))
        outcome[name] = "logged"
    return outcome


def log_video(target: Any, key: str, video: Tensor, step: int, fps: int = 8) -> dict[str, str]:
    """:func:`log_media` of a video ``[T, 3, H, W]`` in ``[-1, 1]``."""
    return log_media(target, "video", key, video, step, fps)


def log_image(target: Any, key: str, image: Tensor, step: int) -> dict[str, str]:
    """:func:`log_media` of an image ``[3, H, W]`` in ``[0, 1]``."""
    return log_media(target, "image", key, image, step)


def log_histogram(target: Any, key: str, values: Tensor, step: int) -> dict[str, str]:
    """:func:`log_media` of a histogram of ``values``."""
    return log_media(target, "histogram", key, values, step)
