"""Deferred Wan loading: the model on the meta device first, its weights read later on the device, after FSDP2
``fully_shard`` when sharded, so that no rank ever holds the whole model (issue 11, "built without a full copy on every
rank"; the torchtitan recipe: meta-device init, shard, ``to_empty``, load).

:func:`deferred_wan_transformer` builds the empty model with its checkpoint attached; :func:`has_pending_weights` says
whether a module holds one not yet filled; :func:`materialize_pending` fills them. In a run, ``defer_load: true`` on
:class:`~streamr1.models.WanDenoiser` / :class:`~streamr1.models.CausalWanDenoiser` builds them this way, and
:meth:`streamr1.module.DMDModule.configure_model` fills them (after sharding under ``ModelParallelStrategy``, see
:func:`streamr1.distributed.fsdp_shard`) before Lightning moves the module to its device.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from streamr1.models.wan_checkpoint import _say, check_fits, parse_dtype

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import WanTransformer3DModel

# The module itself imports neither diffusers nor the loaders (imported where a model is built or filled): the
# sharding code asks has_pending_weights of every run, the toy world's included, without paying for diffusers.

PENDING = "_streamr1_pending_weights"
"""Attribute of a model built by :func:`deferred_wan_transformer`: the checkpoint :func:`materialize_pending` reads."""


def deferred_wan_transformer(
    path: str,
    config: dict[str, Any] | None = None,
    subfolder: str | None = None,
    checkpoint_key: str = "auto",
    key_prefix: str | None = None,
    torch_dtype: str | torch.dtype | None = None,
    keep_fp32_modules: bool = True,
) -> WanTransformer3DModel:
    """The model of ``path`` on the meta device (no memory), checked against the checkpoint's shapes and in its
    final dtypes, with the checkpoint attached: :func:`materialize_pending` fills it later, on the device.

    Meant for FSDP2: ``fully_shard`` the meta model, then :func:`materialize_pending` makes each rank read the
    checkpoint one tensor file at a time and keep only its own shard, so no rank ever holds the whole model (the
    torchtitan recipe: meta-device init, shard, ``to_empty``, load). Without sharding, it loads the full model straight
    onto the device; host memory holds only the weight file being read (a safetensors file is read whole, a torch
    file is memory-mapped). Same arguments and layouts as :func:`~streamr1.models.wan_weights.load_wan_transformer`.
    """
    from streamr1.models.wan_weights import (
        _is_diffusers_folder,
        _load_diffusers_folder_config_check,
        _open_with_config,
        _transformer_root,
        empty_wan,
        target_dtype,
    )

    dtype = parse_dtype(torch_dtype)
    root = _transformer_root(path, subfolder)
    if os.path.isdir(root) and _is_diffusers_folder(root) and config is not None:
        _load_diffusers_folder_config_check(root, config)
    ckpt, config = _open_with_config(root, config, checkpoint_key, key_prefix)
    model = empty_wan(config)
    check_fits(ckpt, config, model)
    keep = tuple(model._keep_in_fp32_modules or ()) if keep_fp32_modules else ()
    for name, p in model.named_parameters():  # meta tensors: casting costs nothing
        p.data = p.data.to(target_dtype(name, p, dtype, keep))
    setattr(model, PENDING, ckpt)
    _say(f"{ckpt.label} ({ckpt.note}): built on the meta device; weights are read when it is placed or sharded")
    return model


def has_pending_weights(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a model of :func:`deferred_wan_transformer` not yet filled."""
    return any(hasattr(m, PENDING) for m in module.modules())


@torch.no_grad()
def materialize_pending(module: torch.nn.Module, device: torch.device | str) -> int:
    """Fill every deferred Wan model inside ``module`` on ``device`` (after ``fully_shard`` if sharded).

    Parameters that are FSDP2 ``DTensor`` shards receive only this rank's slice of each tensor
    (``distribute_tensor(..., src_data_rank=None)``: every rank slices its own copy, no communication); plain
    parameters receive the whole tensor. Buffers (the rotary tables) are kept. Returns how many models were filled.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    from streamr1.models.wan_weights import _dtypes

    filled = 0
    for sub in list(module.modules()):
        ckpt = getattr(sub, PENDING, None)
        if ckpt is None:
            continue
        buffers = {n: b.detach().clone() for n, b in sub.named_buffers()}
        sub.to_empty(device=torch.device(device))
        for n, b in buffers.items():
            sub.get_buffer(n).copy_(b)
        params = dict(sub.named_parameters())
        seen: set[str] = set()
        for chunk in ckpt.chunks():
            for k, v in chunk.items():
                p = params[k]
                v = v.to(p.dtype)
                if isinstance(p, DTensor):
                    shard = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                    p.to_local().copy_(shard.to_local())
                else:
                    p.copy_(v)
                seen.add(k)
            del chunk
        if seen != set(params):  # check_fits makes this unreachable unless the file changed since
            raise RuntimeError(f"{ckpt.label}: {len(set(params) - seen)} parameters were not in the checkpoint.")
        delattr(sub, PENDING)
        _say(f"loaded {ckpt.label} on {device} ({_dtypes(sub)})")
        filled += 1
    return filled
