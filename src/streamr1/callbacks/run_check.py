"""Checks that the fragments of a run fit together, and says at fit start what is active.

A run is a recipe, a callback stack, a reward fragment and optional presets (DESIGN.md, "Fragments a user
layers"). The CLI appends one :class:`RunCheck` to every ``fit``; it refuses at setup, before any step:

- a stack whose callbacks need a reward model with no reward configured (names the fragment to add), or two
  reward services (an old config's ``RewardService`` in ``trainer.callbacks`` plus a reward fragment);
- a reward model made for frames of another size than the recipe decodes (the toy world's tiny-frame reward on a
  480x832 Wan video), or the toy world's statistics on a recipe of another size (names the fragment to use).

At fit start it prints one line: the loss-weighting stack (or "none: plain DMD"), the reward model and its
statistics, and where ``last.ckpt`` and the periodic checkpoints go.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

REWARD_FRAGMENTS = {"toy": "configs/rewards/toy.yaml", "wan": "configs/rewards/videoreward.yaml"}
"""The reward fragment that fits each kind of recipe."""

TOY_MAX_SIDE = 64
"""Frames at most this many pixels a side are the toy world's (16x16 or 32x32); larger ones are a Wan-like recipe's."""

SIZE_FACTOR = 4.0
"""A reward model is refused when the decoded frames are more than this many times larger or smaller, per side,
than the frames it was made for (it would resize away, or invent, nearly everything it scores)."""

_REWARD_CONSUMERS = ("ReliabilityWeighting", "SaliencyWeighting", "AdaptiveAxisBalancing")


def needs_reward(callback: Any) -> bool:
    """Whether ``callback`` reads the reward service's scores: the built-in reliability, saliency and balancing
    callbacks (and subclasses), or any callback with ``needs_reward = True``."""
    flag = getattr(callback, "needs_reward", None)
    if flag is not None:
        return bool(flag)
    return any(cls.__name__ in _REWARD_CONSUMERS for cls in type(callback).__mro__)


def reward_services(trainer: pl.Trainer) -> list[Any]:
    """The trainer's reward services (callbacks with an ``evaluate(ctx)`` method and a ``model``)."""
    return [cb for cb in trainer.callbacks if callable(getattr(cb, "evaluate", None)) and hasattr(cb, "model")]


def decoded_frame_shape(pl_module: Any) -> tuple[int, int, int] | None:
    """``(frames, height, width)`` of the pixel videos the recipe's VAE decodes from ``pl_module.latent_shape``."""
    latent = getattr(pl_module, "latent_shape", None)
    if latent is None or len(latent) != 4:
        return None
    f, _, h, w = (int(v) for v in latent)
    vae = getattr(pl_module, "vae", None)
    scale = int(getattr(vae, "spatial_compression", 1) or 1)
    frames = vae.num_pixel_frames(f) if callable(getattr(vae, "num_pixel_frames", None)) else f
    return int(frames), h * scale, w * scale


def reward_frame_size(model: Any) -> tuple[int, int] | None:
    """``(height, width)`` of the frames a reward model was made for: its ``image_size`` (OpenCLIP rewards) or its
    ``size`` (``VideoAlignReward``: the resize target), when it declares one."""
    for name in ("image_size", "size"):
        value = getattr(model, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value, value
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return int(value[0]), int(value[1])
    return None


def fragment_for(frame: tuple[int, int]) -> str:
    """The reward fragment for a recipe that decodes ``(height, width)`` frames."""
    return REWARD_FRAGMENTS["toy" if max(frame) <= TOY_MAX_SIDE else "wan"]


class RunCheck(Callback):
    """Refuses fragments that do not fit together (at setup) and prints what is active (at fit start).

    Added by the CLI to every ``fit``; it has no state and changes no number. See the module docstring.

    Args:
        stacks: the ``--config`` files of the run that are callback stacks (``callbacks/*.yaml``), for the summary.
        reward_statistics: where the reward's statistics come from (the ``reward.normalization`` value).
    """

    def __init__(self, stacks: Sequence[str] = (), reward_statistics: str | None = None) -> None:
        self.stacks = [str(s) for s in stacks]
        self.reward_statistics = reward_statistics

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Raise ``ValueError`` when the reward is missing or does not fit the recipe (see the module docstring)."""
        frame = decoded_frame_shape(pl_module)
        fragment = fragment_for(frame[1:]) if frame is not None else "configs/rewards/<reward>.yaml"
        consumers = [type(cb).__name__ for cb in trainer.callbacks if needs_reward(cb)]
        services = reward_services(trainer)
        if consumers and not services:
            raise ValueError(
                f"{', '.join(consumers)} need a reward model, and this run has none: the callback stacks in "
                f"callbacks/ name no reward. Layer a reward fragment after the recipe and the stack: "
                f"`--config {fragment}` (the toy world: {REWARD_FRAGMENTS['toy']}; Wan recipes: "
                f"{REWARD_FRAGMENTS['wan']}), or set the top-level `reward:` key."
            )
        if len(services) > 1:
            raise ValueError(
                f"{len(services)} reward services on the trainer ({[type(s.model).__name__ for s in services]}): a "
                "reward is configured once, by the top-level `reward:` key (a fragment from configs/rewards/). Remove "
                "the RewardService from trainer.callbacks (an older config may still list one)."
            )
        if not services or frame is None:
            return
        video = f"{frame[1]}x{frame[2]}"
        for service in services:
            model = getattr(service, "model", None)
            size = reward_frame_size(model)
            if size is not None:
                ratio = max(frame[1] / size[0], frame[2] / size[1], size[0] / frame[1], size[1] / frame[2])
                if ratio > SIZE_FACTOR:
                    raise ValueError(
                        f"The reward model {type(model).__name__} was made for {size[0]}x{size[1]} frames, but this "
                        f"recipe decodes {video} frames (latent_shape {list(pl_module.latent_shape)}): its scores "
                        f"would say nothing about these videos. Use `--config {fragment}` instead of the reward "
                        f"fragment layered now, or a reward model made for {video} videos."
                    )
        stats = str(self.reward_statistics or "")
        if stats.startswith("pkg://streamr1/assets/toy_") and max(frame[1:]) > TOY_MAX_SIDE:
            raise ValueError(
                f"The reward statistics {stats} are the toy world's (measured on its tiny videos), but this recipe "
                f"decodes {video} frames: z-scores from them would be meaningless. Use `--config {fragment}` "
                f"instead, or set `reward.normalization` to statistics of this recipe's reward (`streamr1 calibrate`)."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"[streamr1] {self.summary(trainer)}", flush=True)

    def summary(self, trainer: pl.Trainer) -> str:
        """One line: ``weighting: ...; reward: ...; checkpoints: ...``."""
        weights = [cb for cb in trainer.callbacks if callable(getattr(cb, "weight_rollout", None))]
        if weights:
            names = " -> ".join(_describe_weighting(cb) for cb in weights)
            stack = f"{', '.join(self.stacks)}: " if self.stacks else ""
            weighting = f"{stack}{names}"
        else:
            weighting = "none: plain DMD"
        services = reward_services(trainer)
        if services:
            service = services[0]
            stats = self.reward_statistics or "none (raw scores)"
            reward = f"{type(service.model).__name__}, statistics {stats}"
        else:
            reward = "none"
        ckpts = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        if not ckpts:
            checkpoints = "none (trainer.enable_checkpointing is false)"
        else:
            checkpoints = "; ".join(cb.describe() if callable(getattr(cb, "describe", None))
                                    else f"{cb.dirpath} (save_last={cb.save_last})" for cb in ckpts)
        return f"weighting: {weighting} | reward: {reward} | checkpoints: {checkpoints}"


def _describe_weighting(cb: Any) -> str:
    """``ReliabilityWeighting(BalancedOverall)``, ``SaliencyWeighting(adaptive)``, or the class name."""
    name = type(cb).__name__
    detail = getattr(cb, "reward_mode", None) or getattr(cb, "fusion", None)
    return f"{name}({detail})" if isinstance(detail, str) else name
