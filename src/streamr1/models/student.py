"""The student: a causal, chunk-wise Wan with a KV cache (SPEC.md §1-2; Self-Forcing, arXiv 2506.08009)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from streamr1.flow import flow_to_x0
from streamr1.models.causal import CausalWanStudent, KVCache
from streamr1.models.lora import LoRAArgs, apply_lora
from streamr1.models.wan import build_wan_transformer, check_defer_load


class CausalWanDenoiser(nn.Module):
    """A Wan transformer made block-causal: each chunk attends to itself and the cached chunks before it.

    Args:
        pretrained: a checkpoint file or folder in any layout of :func:`~streamr1.models.wan.build_wan_transformer`:
            Self-Forcing's ``ode_init.pt`` / ``self_forcing_dmd.pt`` (original Wan keys under ``model.``, nested under
            ``generator`` / ``generator_ema``), a diffusers folder or file, the original Wan folder; ``None`` builds
            from ``config``.
        config: ``WanTransformer3DModel`` arguments (random models; optional and checked with a checkpoint file).
        subfolder: subfolder of ``pretrained`` holding the transformer.
        checkpoint_key: where the state dict sits in a torch file: ``auto`` (``generator_ema`` if present, else
            ``generator``, else ``state_dict``, else flat), or one of ``generator_ema``, ``generator``,
            ``state_dict``, ``none``. The log line says which was used.
        key_prefix: prefix to strip from checkpoint keys; unset finds it (``model.``).
        torch_dtype: parameter dtype; float32 when unset (the trained student keeps float32 master weights).
        keep_fp32_modules: keep diffusers' float32 modules in float32; set ``False`` for a bf16 student under FSDP2.
        chunk_frames: latent frames per chunk (3 at Wan scale; the latent frame count must be a multiple).
        local_window_frames: frames attended at most (cache + current chunk); ``None`` attends to all. Set it to
            generate videos longer than the training length with a rolling cache.
        sink_frames: first frames kept in the rolling cache forever (attention sinks).
        gradient_checkpointing: recompute each block in backward (less activation memory, ~30% more time).
        lora: LoRA adapters (``rank``, ``alpha``, ``target_modules``, ``dropout``; :mod:`streamr1.models.lora`): only
            the adapters train, the loaded weights stay frozen. ``None``: the whole model trains.
        defer_load: build on the meta device and read the weights on the device later, after FSDP2 sharding
            (each rank reads only its shard) or before the move to the device
            (:func:`~streamr1.models.wan.build_wan_transformer`). Not with ``lora``.

    Example::

        student:
          class_path: streamr1.models.CausalWanDenoiser
          init_args: {pretrained: /ckpt/self_forcing/ode_init.pt, checkpoint_key: generator, chunk_frames: 3}
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        subfolder: str | None = None,
        checkpoint_key: str = "auto",
        key_prefix: str | None = None,
        torch_dtype: str | None = None,
        keep_fp32_modules: bool = True,
        chunk_frames: int = 3,
        local_window_frames: int | None = None,
        sink_frames: int = 0,
        gradient_checkpointing: bool = False,
        lora: LoRAArgs | None = None,
        defer_load: bool = False,
    ) -> None:
        super().__init__()
        check_defer_load(defer_load, lora)
        transformer = build_wan_transformer(pretrained, config, subfolder, key_prefix, checkpoint_key, torch_dtype,
                                            keep_fp32_modules, defer_load)
        if lora is not None:
            apply_lora(transformer, lora)
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
