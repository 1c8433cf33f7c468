"""VAEs behind the :class:`~streamr1.protocols.VAE` protocol.

Pixels ``[B, T, 3, H, W]`` in ``[-1, 1]`` <-> latents ``[B, F, C, H, W]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn


class IdentityVAE(nn.Module):
    """For pixel-space models (the toy world): latents are the pixels, ``F = T`` and ``C = 3``."""

    latent_channels = 3
    temporal_compression = 1
    spatial_compression = 1

    def encode(self, video: Tensor) -> Tensor:
        return video

    def decode(self, latents: Tensor) -> Tensor:
        return latents

    def num_pixel_frames(self, latent_frames: int) -> int:
        return latent_frames


class WanVAE(nn.Module):
    """``AutoencoderKLWan`` with Wan's per-channel latent normalisation applied (diffusers does not apply it).

    ``z = (mu - latents_mean) / latents_std`` on encode and the inverse before decode. Pixel frame count is
    ``1 + 4 (F - 1)`` for ``F`` latent frames.

    Args:
        pretrained: a local folder (a Wan pipeline folder with ``vae/``, or the VAE folder itself).
        config: ``AutoencoderKLWan`` arguments for a random (tiny) VAE, used when ``pretrained`` is unset.
        torch_dtype: parameter dtype; ``float32`` by default (Wan's pipelines keep the VAE in float32: 127 M
            parameters, 0.5 GB), ``bfloat16`` halves it. Loaded straight into that dtype.
    """

    def __init__(
        self, pretrained: str | None = None, config: dict[str, Any] | None = None, torch_dtype: str = "float32"
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        from streamr1.models.wan_weights import parse_dtype

        dtype = parse_dtype(torch_dtype)
        if pretrained is not None:
            if not os.path.isdir(pretrained):
                raise FileNotFoundError(
                    f"Wan VAE folder not found at {pretrained!r}: set `vae.init_args.pretrained` to a local folder."
                )
            sub = "vae" if os.path.isdir(os.path.join(pretrained, "vae")) else None
            self.vae = AutoencoderKLWan.from_pretrained(pretrained, subfolder=sub, torch_dtype=dtype,
                                                        local_files_only=True)
        elif config is not None:
            self.vae = AutoencoderKLWan(**config)
            if dtype is not None:
                self.vae.to(dtype)
        else:
            raise ValueError("WanVAE needs `pretrained` (a local folder) or `config` (a dict).")
        self.vae.requires_grad_(False).eval()
        cfg = self.vae.config
        zdim = int(cfg.z_dim)
        mean = torch.tensor(cfg.latents_mean[:zdim] if cfg.latents_mean else [0.0] * zdim)
        std = torch.tensor(cfg.latents_std[:zdim] if cfg.latents_std else [1.0] * zdim)
        self.register_buffer("latents_mean", mean.view(1, 1, zdim, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, 1, zdim, 1, 1), persistent=False)
        self.latent_channels = zdim
        # one 2x time step per True in temperal_downsample (Wan: [False, True, True] -> 4), 2x space per level
        self.temporal_compression = int(2 ** sum(bool(d) for d in cfg.temperal_downsample))
        self.spatial_compression = int(2 ** (len(cfg.dim_mult) - 1))

    def encode(self, video: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` -> ``[B, F, C, h, w]`` normalised latents (posterior mean)."""
        x = video.permute(0, 2, 1, 3, 4).to(self.vae.dtype)
        mu = self.vae.encode(x).latent_dist.mean
        z = mu.permute(0, 2, 1, 3, 4).float()
        return (z - self.latents_mean) / self.latents_std

    def decode(self, latents: Tensor) -> Tensor:
        """``[B, F, C, h, w]`` -> ``[B, T, 3, H, W]`` in about ``[-1, 1]``; differentiable."""
        z = latents * self.latents_std + self.latents_mean
        out = self.vae.decode(z.permute(0, 2, 1, 3, 4).to(self.vae.dtype), return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).to(latents.dtype)

    def num_pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_compression * (latent_frames - 1)
