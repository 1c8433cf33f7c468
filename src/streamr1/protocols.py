"""The contracts every part of streamr1 is written against (DESIGN.md, "Contracts").

Small ``typing.Protocol`` classes, not base classes: anything with the right methods
plugs in, including models from other packages. Shapes follow SPEC.md: latents are
``[B, F, C, H, W]`` (batch, latent frames, channels, height, width); decoded videos are
``[B, T, 3, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

AXES: tuple[str, ...] = ("VQ", "MQ", "TA")
"""The three reward axes of Stream-R1: visual quality, motion quality, text alignment."""


@runtime_checkable
class Denoiser(Protocol):
    """Predicts the clean sample ``x0`` from a noisy one (flow matching, SPEC.md §1): teacher and critic.

    Written as ``forward`` (what an ``nn.Module`` defines and ``__call__`` runs), so the CLI can check a configured
    class against it. Args of ``forward``:
        x_t: ``[B, F, C, H, W]`` noisy latents.
        t: ``[B]`` timesteps on the 0..1000 scale (already shifted), float32.
        cond: ``[B, L, D]`` text embeddings.

    Returns:
        ``[B, F, C, H, W]`` the predicted ``x0``.
    """

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor: ...


@runtime_checkable
class CausalStudent(Denoiser, Protocol):
    """The student: a :class:`Denoiser` that also generates chunk by chunk through a KV cache (SPEC.md §2).

    ``chunk_frames`` latent frames a chunk; ``new_cache()`` an empty cache for one batch; ``chunk_x0(x_t [B, f, C, H,
    W], t [B], cond, cache, write)`` the chunk's ``x0``, reading the cache and, with ``write``, appending the chunk's
    keys and values. :class:`streamr1.models.CausalWanDenoiser` is the implementation.
    """

    chunk_frames: int

    def new_cache(self) -> Any: ...

    def chunk_x0(self, x_t: Tensor, t: Tensor, cond: Tensor, cache: Any, write: bool = False) -> Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Maps prompts to the embeddings the denoisers cross-attend to: ``[B, L, D]``."""

    def encode(self, prompts: Sequence[str]) -> Tensor: ...


@runtime_checkable
class VAE(Protocol):
    """Moves between pixels ``[B, T, 3, H, W]`` in ``[-1, 1]`` and normalised latents ``[B, F, C, H, W]``.

    ``decode`` must be differentiable: the reward's saliency is a gradient through it.
    """

    def encode(self, video: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores decoded videos on the Stream-R1 axes (SPEC.md §4.1).

    Args of ``__call__``:
        video: ``[B, T, 3, H, W]`` in ``[0, 1]``; differentiable with respect to it.
        prompts: ``B`` captions.

    Returns:
        Raw (un-normalised) scores, at least the configured axes: ``{"VQ": [B], "MQ": [B], "TA": [B]}``.
    """

    def __call__(self, video: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]: ...


def as_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a module's first parameter (CPU/float32 if it has none)."""
    for p in module.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32
