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


def _attr(module: Any, name: str) -> Any:
    return getattr(module, name, None)


def check_models_fit(student: Any, teacher: Any, critic: Any, text_encoder: Any, vae: Any,
                     latent_shape: Sequence[int]) -> None:
    """Fail before training on models that cannot work together, naming the mismatch and the fix.

    Checks the contracts above (the student a :class:`CausalStudent` ``nn.Module``, the critic an ``nn.Module``) and
    that ``latent_shape`` ``[F, C, H, W]`` fits every model: F a multiple of the student's chunk, C the channels of
    the denoisers and the VAE, H, W and F divisible by the patch sizes, the text width the denoisers expect.
    """
    f, c, h, w = (int(v) for v in latent_shape)
    if not isinstance(student, CausalStudent) or not isinstance(student, torch.nn.Module):
        raise ValueError("`student` must be a causal chunk-wise nn.Module (streamr1.protocols.CausalStudent, e.g. "
                         f"streamr1.models.CausalWanDenoiser), got {type(student).__name__}.")
    if not isinstance(critic, torch.nn.Module):
        raise ValueError(f"`critic` must be a trainable nn.Module, got {type(critic).__name__}.")
    chunk = student.chunk_frames
    if f % chunk != 0:
        raise ValueError(
            f"latent_shape has {f} latent frames, not a multiple of the student's chunk_frames={chunk}: "
            f"set `model.latent_shape[0]` to a multiple of {chunk} or change `student.init_args.chunk_frames`."
        )
    for name, m in (("student", student), ("teacher", teacher), ("critic", critic)):
        ch = _attr(m, "latent_channels")
        if ch is not None and ch != c:
            raise ValueError(
                f"The {name} works on {ch} latent channels but latent_shape has C={c} "
                f"(VAE channels: {_attr(vae, 'latent_channels')}): make `latent_shape[1]`, the VAE and the "
                f"{name}'s `in_channels` agree."
            )
        patch = _attr(m, "patch_size")
        if patch is not None and (h % patch[1] or w % patch[2] or f % patch[0]):
            raise ValueError(f"latent_shape {list(latent_shape)} is not divisible by the {name}'s patch size {patch}.")
        tdim, edim = _attr(m, "text_dim"), _attr(text_encoder, "dim")
        if tdim is not None and edim is not None and tdim != edim:
            raise ValueError(
                f"The {name} expects text embeddings of size {tdim} but the text encoder gives {edim}: "
                "use matching `text_dim` and encoder."
            )
    vae_ch = _attr(vae, "latent_channels")
    if vae_ch is not None and vae_ch != c:
        raise ValueError(f"The VAE has {vae_ch} latent channels but latent_shape has C={c}.")
