"""Bidirectional Wan denoisers (teacher, critic) and the one loader every Wan model goes through.

One code path, chosen by config (issue "Models", issue 11 "Loading what users hold"): ``pretrained`` is a local
diffusers folder, the original ``Wan-AI/Wan2.1-T2V-*`` folder, or one checkpoint file (``.safetensors``, ``.pt``,
``.pth``, ``.bin``) in diffusers or original Wan keys, flat or nested (Self-Forcing's ``{"generator": ...,
"generator_ema": ...}``); the layout is read off the keys (:mod:`streamr1.models.wan_weights`). With ``pretrained``
unset, ``config`` builds a random model (tiny configs in tests and the toy world). Nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor, nn

from streamr1.assets import resolve
from streamr1.flow import flow_to_x0
from streamr1.models.lora import LoRAArgs, apply_lora
from streamr1.models.wan_weights import load_wan_transformer, parse_dtype, target_dtype


def build_wan_transformer(
    pretrained: str | None = None,
    config: dict[str, Any] | None = None,
    subfolder: str | None = None,
    key_prefix: str | None = None,
    checkpoint_key: str = "auto",
    torch_dtype: str | torch.dtype | None = None,
    keep_fp32_modules: bool = True,
    defer_load: bool = False,
) -> WanTransformer3DModel:
    """Build a ``WanTransformer3DModel`` from a local folder, a checkpoint file, or a config dict.

    Args:
        pretrained: a diffusers folder, an original Wan folder, or a checkpoint file in diffusers or original Wan
            keys (:mod:`streamr1.models.wan_weights`). ``None``: random init from ``config``.
        config: ``WanTransformer3DModel`` constructor arguments. With a checkpoint file it is optional (read off the
            weights when unset, heads of 128) and checked against the weights' shapes before anything is loaded.
        subfolder: subfolder of ``pretrained`` that holds the transformer (``"transformer"`` in a Wan pipeline).
        key_prefix: prefix to strip from state-dict keys; ``None`` finds it (``model.`` in Self-Forcing files).
        checkpoint_key: where the state dict sits in a torch file: ``auto`` (``generator_ema``, else ``generator``,
            else ``state_dict``, else flat), ``none`` (flat), or the key itself (``generator_ema``, ``generator``,
            ``state_dict``, ``critic``, ...).
        torch_dtype: parameter dtype (``bfloat16`` for a frozen teacher); float32 when unset. Loaded without a
            float32 copy (meta-device model, tensors cast one at a time).
        keep_fp32_modules: keep diffusers' ``_keep_in_fp32_modules`` (time embedder, norms, modulation) in float32
            as ``from_pretrained`` does. Set ``False`` for a *trainable* bf16 model under FSDP2, which wants one
            dtype per group of trainable parameters.
        defer_load: build the model on the meta device (no memory; shapes checked against the checkpoint) and read
            the weights later, on the device: :meth:`~streamr1.module.DMDModule.configure_model` fills it after
            FSDP2 sharding, each rank reading only its own shard (no full copy on any rank), or, without a device
            mesh, before Lightning moves the module to the device (:mod:`streamr1.models.wan_deferred`). Needs
            ``pretrained``.

    Raises:
        FileNotFoundError: ``pretrained`` does not exist.
        ValueError: neither argument given, an unknown key layout, or weights that do not fit ``config``.
    """
    dtype = parse_dtype(torch_dtype)
    if pretrained is None and defer_load:
        raise ValueError(
            "defer_load: true needs `pretrained` (a checkpoint to read later); a model built from `config` alone is "
            "randomly initialised now. Set `pretrained`, or remove `defer_load`."
        )
    if pretrained is None:
        if config is None:
            raise ValueError(
                "A Wan model needs `pretrained` (a local folder or file) or `config` (a dict); got neither."
            )
        model = WanTransformer3DModel(**config)
        if dtype is not None:
            keep = tuple(model._keep_in_fp32_modules or ()) if keep_fp32_modules else ()
            for name, p in model.named_parameters():
                p.data = p.data.to(target_dtype(name, p, dtype, keep))
        return model
    path = os.path.expanduser(resolve(pretrained))  # pkg://<package>/<file>: a file shipped in a package
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Wan weights not found at {pretrained!r}. Point `pretrained` at a local diffusers folder, an original "
            "Wan folder or a checkpoint file (weights cannot be downloaded at run time), or remove it and give "
            "`config` to build a randomly initialised model."
        )
    if defer_load:
        from streamr1.models.wan_deferred import deferred_wan_transformer

        return deferred_wan_transformer(path, config, subfolder, checkpoint_key, key_prefix, dtype, keep_fp32_modules)
    return load_wan_transformer(path, config, subfolder, checkpoint_key, key_prefix, dtype, keep_fp32_modules)


def check_defer_load(defer_load: bool, lora: Any) -> None:
    """``defer_load`` fills the checkpoint's own parameters by name: LoRA's renamed base layers and new adapters
    would be left unfilled, so the two are refused together."""
    if defer_load and lora is not None:
        raise ValueError(
            "defer_load does not combine with `lora` (the adapters and the renamed base layers are not in the "
            "checkpoint it fills the model from): set `defer_load: false` for a LoRA model."
        )


def wan_flow(transformer: WanTransformer3DModel, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """Run a Wan transformer on ``[B, F, C, H, W]`` latents; returns the flow in the same layout.

    ``t`` is ``[B]`` or per-frame ``[B, F]`` (expanded to per-token timesteps). It reaches the transformer in
    float32 whatever the model's dtype (bf16 would round 937.5 to 936 while ``x0 = x_t - s v`` used 937.5);
    diffusers' time embedding takes a float32 ``t`` (sinusoidal projection in float32, then the embedder's dtype).
    """
    b, f, _, h, w = x_t.shape
    dtype = transformer.dtype
    t = t.to(torch.float32)
    if t.ndim == 2:
        p_t, p_h, p_w = transformer.config.patch_size
        t = t[:, :: p_t].repeat_interleave((h // p_h) * (w // p_w), dim=1)
    out = transformer(x_t.permute(0, 2, 1, 3, 4).to(dtype), t, cond.to(dtype), return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4).to(x_t.dtype)


class WanDenoiser(nn.Module):
    """A bidirectional Wan model as an x0 predictor (teacher, critic; SPEC §1).

    Args:
        pretrained: a diffusers folder, an original Wan folder or a checkpoint file (any layout of
            :func:`build_wan_transformer`); ``None`` builds from ``config``.
        config: ``WanTransformer3DModel`` arguments (random models; optional and checked with a checkpoint file).
        subfolder: subfolder of ``pretrained`` holding the transformer.
        checkpoint_key: where the state dict sits in a torch file (``auto``, ``generator_ema``, ``generator``,
            ``state_dict``, ``none``).
        key_prefix: prefix to strip from checkpoint keys; unset finds it.
        torch_dtype: parameter dtype, e.g. ``bfloat16`` for the frozen teacher (loaded without a float32 copy);
            float32 when unset.
        keep_fp32_modules: keep diffusers' float32 modules (time embedder, norms) in float32.
        defer_load: build on the meta device and read the weights on the device later, after FSDP2 sharding
            (each rank reads only its shard) or before the move to the device (:func:`build_wan_transformer`).
            Not with ``lora``.
        gradient_checkpointing: recompute each block in backward (saves activation memory, costs ~30% time).
        lora: LoRA adapters (``rank``, ``alpha``, ``target_modules``, ``dropout``; :mod:`streamr1.models.lora`), e.g.
            on the critic: only the adapters train. ``None``: the whole model trains (or none of it, the teacher).

    Example::

        teacher:
          class_path: streamr1.models.WanDenoiser
          init_args: {pretrained: /ckpt/Wan2.1-T2V-14B-Diffusers, subfolder: transformer, torch_dtype: bfloat16}
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
        gradient_checkpointing: bool = False,
        lora: LoRAArgs | None = None,
        defer_load: bool = False,
    ) -> None:
        super().__init__()
        check_defer_load(defer_load, lora)
        self.transformer = build_wan_transformer(pretrained, config, subfolder, key_prefix, checkpoint_key,
                                                 torch_dtype, keep_fp32_modules, defer_load)
        if lora is not None:
            apply_lora(self.transformer, lora)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def flow(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predicted flow ``v = eps - x0``, ``[B, F, C, H, W]``."""
        return wan_flow(self.transformer, x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Predicted ``x0``, ``[B, F, C, H, W]`` (Denoiser protocol)."""
        return flow_to_x0(x_t, self.flow(x_t, t, cond), t)
