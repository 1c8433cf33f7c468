"""The student: a causal, chunk-wise Wan with a KV cache (SPEC.md §1-2; Self-Forcing, arXiv 2506.08009)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from streamr1.flow import flow_to_x0
from streamr1.models.causal import CausalWanStudent, KVCache
from streamr1.models.wan import build_wan_transformer


class CausalWanDenoiser(nn.Module):
    """A Wan transformer made block-causal: each chunk attends to itself and the cached chunks before it.

    Args:
        pretrained: local diffusers folder or state-dict file (e.g. the Self-Forcing ODE initialisation,
            or the bidirectional teacher); ``None`` builds from ``config``.
        config: ``WanTransformer3DModel`` arguments.
        subfolder: subfolder of ``pretrained`` holding the transformer.
        chunk_frames: latent frames per chunk (3 at Wan scale; the latent frame count must be a multiple).
        local_window_frames: frames attended at most (cache + current chunk); ``None`` attends to all. Set it to
            generate videos longer than the training length with a rolling cache.
        sink_frames: first frames kept in the rolling cache forever (attention sinks).
        gradient_checkpointing: recompute each block in backward (less activation memory, ~30% more time).

    Example::

        student:
          class_path: streamr1.models.CausalWanDenoiser
          init_args: {pretrained: /ckpt/self_forcing_ode_init.safetensors, config: {...}, chunk_frames: 3}
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        subfolder: str | None = None,
        chunk_frames: int = 3,
        local_window_frames: int | None = None,
        sink_frames: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        transformer = build_wan_transformer(pretrained, config, subfolder)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.causal = CausalWanStudent(transformer, chunk_frames, local_window_frames, sink_frames)
        self.chunk_frames = chunk_frames

    @property
    def transformer(self) -> nn.Module:
        return self.causal.transformer

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def new_cache(self) -> KVCache:
        """An empty KV cache for one video (batch) being generated."""
        return self.causal.new_cache()

    def chunk_x0(self, x_t: Tensor, t: Tensor, cond: Tensor, cache: KVCache, write: bool = False) -> Tensor:
        """``x0`` of one chunk ``[B, f, C, H, W]`` at timestep ``t`` ``[B]``.

        Reads the cache, and with ``write`` appends this chunk's keys and values to it.
        """
        flow = self.causal.forward_chunk(x_t, t, cond, cache, write=write)
        return flow_to_x0(x_t, flow, t)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Full-sequence block-causal ``x0`` prediction, ``t`` ``[B]`` or ``[B, F]`` (teacher-forced use)."""
        flow = self.causal(x_t, t, cond)
        return flow_to_x0(x_t, flow, t)


def denoiser_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
