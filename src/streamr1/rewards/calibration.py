"""Calibration of the reward's per-axis statistics (SPEC.md §4.1): ``streamr1 calibrate`` and the toy assets.

Every video is scored through :meth:`RewardService.score`, the same function training uses, so a service subclass
that changes :meth:`~RewardService.reward_inputs` (a crop, another resize) is calibrated on what it will score.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from streamr1.protocols import AXES, as_device_dtype
from streamr1.rewards.normalization import AxisStats, RewardStatistics, write_stats
from streamr1.rewards.service import RewardService


def as_service(reward: RewardService | Callable[..., Mapping[str, Tensor]],
               axes: Sequence[str] | None = None) -> RewardService:
    """``reward`` itself if it is a :class:`RewardService`, else a fresh service around the reward model (prepared
    on the model's device and dtype), so that every score goes through :meth:`RewardService.score`."""
    if isinstance(reward, RewardService):
        if reward._device is None:
            reward.prepare()
        return reward
    chosen = tuple(axes) if axes is not None else tuple(getattr(reward, "axes", None) or AXES)
    service = RewardService(model=reward, axes=chosen)
    device, dtype = as_device_dtype(reward) if isinstance(reward, nn.Module) else (torch.device("cpu"), None)
    service.prepare(device, dtype)
    return service


@torch.no_grad()
def _calibrate(reward: RewardService | Callable[..., Mapping[str, Tensor]],
               batches: Iterable[tuple[Tensor, list[str]]], axes: Sequence[str] | None,
               output: str | os.PathLike[str] | None) -> AxisStats:
    service = as_service(reward, axes)
    model = service.model
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()  # scores as the frozen reward service will compute them
    stats = RewardStatistics(axes=tuple(axes) if axes is not None else service.axes)
    seen = False
    try:
        for video, prompts in batches:
            stats.update(service.score(video, prompts).raw)
            seen = True
    finally:
        if was_training:
            model.train()
    if not seen:
        raise ValueError("Calibration got no videos.")
    result = stats.stats_dict()
    few = {a: v["count"] for a, v in result.items() if v["count"] < 2}
    if few:
        raise ValueError(f"Calibration needs at least 2 finite scores an axis; got {few}. Score more videos.")
    if output is not None:
        write_stats(output, result)
    return result


def _batched_videos(videos: Iterable[tuple[Tensor, str]], batch_size: int) -> Iterator[tuple[Tensor, list[str]]]:
    """Stack consecutive ``(video [T, 3, H, W], prompt)`` pairs into batches; a change of shape starts a new one."""
    buf: list[Tensor] = []
    prompts: list[str] = []
    for video, prompt in videos:
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"Each video must be [T, 3, H, W], got {list(video.shape)}.")
        if buf and (len(buf) == batch_size or video.shape != buf[0].shape):
            yield torch.stack(buf), prompts
            buf, prompts = [], []
        buf.append(video)
        prompts.append(str(prompt))
    if buf:
        yield torch.stack(buf), prompts


def calibrate_from_videos(reward: RewardService | Callable[..., Mapping[str, Tensor]],
                          videos: Iterable[tuple[Tensor, str]],
                          batch_size: int = 4, axes: Sequence[str] | None = None,
                          output: str | os.PathLike[str] | None = None) -> AxisStats:
    """Per-axis mean and std of the reward over a set of videos (SPEC §4.1).

    Args:
        reward: a :class:`RewardService` (its :meth:`~RewardService.reward_inputs` apply, as in training), or a
            reward model (``[B, T, 3, H, W]`` in ``[0, 1]``, prompts) -> ``{axis: [B]}``, wrapped in a fresh service;
            scored without grad, in eval mode, on the model's own device and dtype.
        videos: ``(video [T, 3, H, W] in [-1, 1] (or uint8), prompt)`` pairs; consecutive videos of one shape are
            batched together.
        batch_size: videos a reward call.
        axes: axes to report; default: the reward's ``axes`` attribute, else every axis it returns.
        output: if given, also write the result there (JSON, or YAML for ``.yaml``/``.yml``).

    Returns:
        ``{axis: {"mean": m, "std": s, "count": n}}`` (unbiased std; non-finite scores left out), ready for
        :class:`RewardNormalizer` and ``RewardService(normalization=...)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return _calibrate(reward, _batched_videos(videos, batch_size), axes, output)


def calibrate_from_rollouts(reward: RewardService | Callable[..., Mapping[str, Tensor]],
                            generate: Callable[[list[str]], Tensor],
                            prompts: Sequence[str], batch_size: int = 4, axes: Sequence[str] | None = None,
                            output: str | os.PathLike[str] | None = None) -> AxisStats:
    """Per-axis mean and std of the reward over generated videos, one batch of prompts at a time (SPEC §4.1).

    Args:
        reward: as in :func:`calibrate_from_videos`.
        generate: ``prompts (list of B) -> [B, T, 3, H, W]`` pixels in ``[-1, 1]`` (e.g. decoded student rollouts).
        prompts: every prompt to generate for (one video each), taken ``batch_size`` at a time.
        batch_size, axes, output: as in :func:`calibrate_from_videos`.

    Returns:
        ``{axis: {"mean": m, "std": s, "count": n}}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    prompts = [str(p) for p in prompts]

    def batches() -> Iterator[tuple[Tensor, list[str]]]:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            video = generate(chunk)
            if video.ndim != 5 or video.shape[0] != len(chunk) or video.shape[2] != 3:
                raise ValueError(f"generate() must return [B={len(chunk)}, T, 3, H, W], got {list(video.shape)}.")
            yield video.detach(), chunk

    return _calibrate(reward, batches(), axes, output)
