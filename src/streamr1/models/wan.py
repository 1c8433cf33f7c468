"""Bidirectional Wan denoisers (teacher, critic) and the one loader every Wan model goes through.

One code path, chosen by config (issue "Models"): ``pretrained`` is a local diffusers folder
(``config.json`` + weights) or a state-dict file (``.safetensors``, ``.pt``, ``.bin``; then
``config`` gives the architecture); with ``pretrained`` unset, ``config`` builds a random
model (tiny configs in tests and the toy world). Nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor, nn

from streamr1.assets import resolve
from streamr1.flow import flow_to_x0


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torch state-dict file onto the CPU."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def build_wan_transformer(
    pretrained: str | None = None,
    config: dict[str, Any] | None = None,
    subfolder: str | None = None,
    key_prefix: str = "",
) -> WanTransformer3DModel:
    """Build a ``WanTransformer3DModel`` from a local folder, a state-dict file, or a config dict.

    Args:
        pretrained: local diffusers folder, or a state-dict file (needs ``config``). ``None``: random init.
        config: ``WanTransformer3DModel`` constructor arguments (overrides the folder's config keys when both
            are given is not supported: pass one or the other for folders).
        subfolder: subfolder of ``pretrained`` that holds the transformer (``"transformer"`` in a Wan pipeline).
        key_prefix: prefix to strip from state-dict keys (e.g. ``"model."`` in other repositories' checkpoints).

    Raises:
        FileNotFoundError: ``pretrained`` does not exist.
        ValueError: neither argument given, or the state dict does not match the config.
    """
    if pretrained is None:
        if config is None:
            raise ValueError(
                "A Wan model needs `pretrained` (a local folder or file) or `config` (a dict); got neither."
            )
        return WanTransformer3DModel(**config)
    path = os.path.expanduser(resolve(pretrained))  # pkg://<package>/<file>: a file shipped in a package
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Wan weights not found at {pretrained!r}. Point `pretrained` at a local diffusers folder or a "
            "state-dict file (weights cannot be downloaded at run time), or remove it and give `config` to "
            "build a randomly initialised model."
        )
    if os.path.isdir(path):
        return WanTransformer3DModel.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    if config is None:
        raise ValueError(f"{pretrained!r} is a state-dict file: also give `config` (the architecture) to load it.")
    model = WanTransformer3DModel(**config)
    sd = load_state_dict_file(path)
    if key_prefix:
        sd = {k[len(key_prefix):]: v for k, v in sd.items() if k.startswith(key_prefix)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{pretrained!r} does not match the given `config`: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Check the architecture in `config` or "
            "set `key_prefix` if the keys carry a prefix."
        )
    return model


def wan_flow(transformer: WanTransformer3DModel, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """Run a Wan transformer on ``[B, F, C, H, W]`` latents; returns the flow in the same layout.

    ``t`` is ``[B]`` or per-frame ``[B, F]`` (expanded to per-token timesteps).
    """
    b, f, _, h, w = x_t.shape
    dtype = transformer.dtype
    if t.ndim == 2:
        p_t, p_h, p_w = transformer.config.patch_size
        t = t[:, :: p_t].repeat_interleave((h // p_h) * (w // p_w), dim=1)
    out = transformer(
        x_t.permute(0, 2, 1, 3, 4).to(dtype), t.to(dtype if dtype != torch.float16 else torch.float32),
        cond.to(dtype), return_dict=False,
    )[0]
    return out.permute(0, 2, 1, 3, 4).to(x_t.dtype)


class WanDenoiser(nn.Module):
    """A bidirectional Wan model as an x0 predictor (teacher, critic; SPEC §1).

    Args:
        pretrained: local diffusers folder or state-dict file; ``None`` builds from ``config``.
        config: ``WanTransformer3DModel`` arguments (tiny random models in tests and the toy world).
        subfolder: subfolder of ``pretrained`` holding the transformer.
        gradient_checkpointing: recompute each block in backward (saves activation memory, costs ~30% time).

    Example::

        teacher:
          class_path: streamr1.models.WanDenoiser
          init_args: {pretrained: /ckpt/Wan2.1-T2V-14B-Diffusers, subfolder: transformer}
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        subfolder: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.transformer = build_wan_transformer(pretrained, config, subfolder)
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
