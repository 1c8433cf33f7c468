"""Loading a Wan transformer from the folders and files users hold (issue 11, "Loading what users hold").

The layouts (diffusers or original Wan keys, prefixes, nested torch files, safetensors shards) are read by
:mod:`streamr1.models.wan_checkpoint`, whose public names are re-exported here; the deferred (meta-device, filled after
FSDP2 sharding) variant is :mod:`streamr1.models.wan_deferred`. Folders: a diffusers folder (``config.json`` with
``_class_name: WanTransformer3DModel``) goes through ``from_pretrained``; the original ``Wan-AI/Wan2.1-T2V-*`` folder
(``config.json`` with ``dim``/``num_heads``, weights in ``diffusion_pytorch_model*.safetensors``, sharded with
``diffusion_pytorch_model.safetensors.index.json``) and single files through the meta-device loader below.

Memory: the model is built on the meta device (``torch.device("meta")``); the checkpoint's shapes are checked
against it before any tensor is read (safetensors headers; torch files are memory-mapped); tensors are cast one at a
time to ``torch_dtype`` and assigned (``load_state_dict(assign=True)``), so a bf16 model never exists in float32 and
sharded files are read one shard at a time. A torch file is memory-mapped: tensors already in the target dtype
become the parameters without a copy (pages shared between processes until written), so do not overwrite such a file
in place while a run uses it. Measured (1.3B width, 6 layers, 305 M parameters, bf16 ``.pt`` in original keys):
peak host memory 0.6 GB loading it with ``torch_dtype: bfloat16``, against 1.7 GB for a float32 model cast after
``load_state_dict``. As ``WanTransformer3DModel.from_pretrained`` does, the modules in
``_keep_in_fp32_modules`` (time embedder, norms, modulation tables, rope) stay float32 unless
``keep_fp32_modules=False`` (FSDP2 needs one dtype per group of *trainable* parameters).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor

from streamr1.models.wan_checkpoint import (
    CHECKPOINT_KEYS,
    WanCheckpoint,
    _norm,
    _say,
    check_fits,
    infer_wan_config,
    open_checkpoint,
    parse_dtype,
    select_state_dict,
)

__all__ = [
    "CHECKPOINT_KEYS", "WanCheckpoint", "check_fits", "empty_wan", "infer_wan_config", "load_into_empty",
    "load_wan_transformer", "open_checkpoint", "parse_dtype", "select_state_dict", "target_dtype", "weight_files",
]


def empty_wan(config: dict[str, Any]) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` whose parameters are on the meta device: nothing is allocated or initialised
    (``torch.device("meta")``; ``accelerate.init_empty_weights`` would still create and initialise each parameter on
    the CPU before moving it). The rotary tables, the one non-persistent buffer, are then computed on the CPU."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    cfg = model.config
    model.rope = WanRotaryPosEmbed(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"WanTransformer3DModel has buffers this loader does not know how to rebuild: {left[:3]}.")
    return model


def target_dtype(name: str, tensor: Tensor, dtype: torch.dtype | None, keep_fp32: tuple[str, ...]) -> torch.dtype:
    """The dtype ``name`` is stored in: float32 for ``keep_fp32`` modules (as diffusers' ``from_pretrained``), else
    ``dtype`` (float32 when unset); non-floating tensors keep theirs."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if dtype is None:
        return torch.float32
    if keep_fp32 and any(m in name.split(".") for m in keep_fp32):
        return torch.float32
    return dtype


def load_into_empty(
    model: WanTransformer3DModel, ckpt: WanCheckpoint, dtype: torch.dtype | None, keep_fp32_modules: bool = True
) -> WanTransformer3DModel:
    """Fill a meta-device model from ``ckpt`` chunk by chunk, casting each tensor on its own (no full-size copy)."""
    keep = tuple(model._keep_in_fp32_modules or ()) if keep_fp32_modules else ()
    for chunk in ckpt.chunks():
        cast = {k: v.to(target_dtype(k, v, dtype, keep)).contiguous() for k, v in chunk.items()}
        del chunk
        model.load_state_dict(cast, strict=False, assign=True)
        del cast
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # check_fits makes this unreachable unless a file changed between the two reads
        raise RuntimeError(f"{ckpt.label}: {len(left)} parameters were not loaded (e.g. {left[:3]}).")
    return model


def _original_folder_config(path: str) -> dict[str, Any] | None:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    return cfg if ("dim" in cfg and "num_heads" in cfg) or cfg.get("_class_name") == "WanModel" else None


def weight_files(path: str) -> list[str]:
    """The weight files of a diffusers or original Wan folder: the shards named by the index json, else the
    ``diffusion_pytorch_model*.safetensors`` there."""
    index = os.path.join(path, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh)["weight_map"]
        files = [os.path.join(path, f) for f in dict.fromkeys(weight_map.values())]
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            raise FileNotFoundError(f"{index} names shards that are not there: {absent[:3]}.")
        return files
    files = sorted(glob.glob(os.path.join(path, "diffusion_pytorch_model*.safetensors")))
    if not files:
        present = sorted(os.listdir(path))
        raise FileNotFoundError(
            f"{path} holds no Wan transformer weights (found: {present[:8]}). Expected a diffusers folder (config.json "
            "+ diffusion_pytorch_model*.safetensors), an original Wan folder (its config.json + the same weight "
            "files), or a pipeline folder with `transformer/` (set `subfolder: transformer`); or point `pretrained` "
            "at a checkpoint file."
        )
    return files


def load_wan_transformer(
    path: str,
    config: dict[str, Any] | None = None,
    subfolder: str | None = None,
    checkpoint_key: str = "auto",
    key_prefix: str | None = None,
    torch_dtype: str | torch.dtype | None = None,
    keep_fp32_modules: bool = True,
) -> WanTransformer3DModel:
    """Load a ``WanTransformer3DModel`` from a folder or file in any layout this module knows (see its docstring).

    Args:
        path: an existing local folder or file.
        config: architecture; required for nothing, but when given it is checked against the weights (for a
            diffusers folder, against its ``config.json``) and used instead of the inferred one.
        subfolder: subfolder of ``path`` holding the transformer (``transformer`` in a diffusers pipeline).
        checkpoint_key: where the state dict sits in a torch file (:data:`CHECKPOINT_KEYS`).
        key_prefix: prefix to strip from every key; ``None`` finds it (whatever precedes ``patch_embedding.weight``).
        torch_dtype: parameter dtype (``float32`` when unset).
        keep_fp32_modules: keep diffusers' ``_keep_in_fp32_modules`` in float32 (as ``from_pretrained`` does).
    """
    dtype = parse_dtype(torch_dtype)
    root = _transformer_root(path, subfolder)
    if os.path.isdir(root) and _is_diffusers_folder(root):
        model = _load_diffusers_folder(root, config, dtype)
        if not keep_fp32_modules and dtype is not None:  # the float32-kept modules are small: cast them too
            for p in model.parameters():
                p.data = p.data.to(dtype)
        _say(f"loaded {root} (diffusers folder, {_dtypes(model)})")
        return model
    ckpt, config = _open_with_config(root, config, checkpoint_key, key_prefix)
    model = empty_wan(dict(config))
    check_fits(ckpt, dict(config), model)
    load_into_empty(model, ckpt, dtype, keep_fp32_modules)
    _say(f"loaded {ckpt.label} ({ckpt.note}, {_dtypes(model)})")
    return model


def _transformer_root(path: str, subfolder: str | None) -> str:
    root = os.path.join(path, subfolder) if subfolder else path
    if os.path.isdir(path) and not os.path.isdir(root):
        raise FileNotFoundError(f"{path} has no subfolder {subfolder!r}: set `subfolder` to where the transformer is.")
    if (not subfolder and os.path.isdir(os.path.join(path, "transformer"))
            and not os.path.isfile(os.path.join(path, "config.json"))):
        root = os.path.join(path, "transformer")  # a diffusers pipeline folder given without `subfolder`
    return root


def _is_diffusers_folder(root: str) -> bool:
    return _original_folder_config(root) is None and os.path.isfile(os.path.join(root, "config.json"))


def _open_with_config(
    root: str, config: dict[str, Any] | None, checkpoint_key: str, key_prefix: str | None
) -> tuple[WanCheckpoint, dict[str, Any]]:
    """Open a checkpoint file or a folder's weight files, and settle the architecture (given, or read off them)."""
    heads = eps = None
    if os.path.isdir(root):
        files = weight_files(root)
        original = _original_folder_config(root)
        kind = "original Wan folder" if original else "diffusers folder"
        ckpt = open_checkpoint(files, "none", key_prefix, label=f"{root} ({kind}, {len(files)} file(s))")
        if original:
            heads, eps = original.get("num_heads"), original.get("eps")
        elif config is None and os.path.isfile(os.path.join(root, "config.json")):
            with open(os.path.join(root, "config.json")) as fh:
                config = {k: v for k, v in json.load(fh).items() if not k.startswith("_")}
    else:
        ckpt = open_checkpoint([root], checkpoint_key, key_prefix)
    if config is None:
        config = infer_wan_config(ckpt.shapes, num_attention_heads=heads)
        if eps is not None:
            config["eps"] = eps
        _say(f"{ckpt.label}: no `config` given; read off the weights: {config}")
    return ckpt, dict(config)


def _dtypes(model: torch.nn.Module) -> str:
    counts: dict[str, int] = {}
    for p in model.parameters():
        counts[str(p.dtype).removeprefix("torch.")] = counts.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    def count(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"

    return ", ".join(f"{count(n)} params {d}" for d, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _load_diffusers_folder(root: str, config: dict[str, Any] | None, dtype: torch.dtype | None):
    if config is not None:
        _load_diffusers_folder_config_check(root, config)
    return WanTransformer3DModel.from_pretrained(root, torch_dtype=dtype, local_files_only=True)


def _load_diffusers_folder_config_check(root: str, config: dict[str, Any]) -> None:
    with open(os.path.join(root, "config.json")) as fh:
        held = json.load(fh)
    diff = {k: (held[k], v) for k, v in config.items() if k in held and _norm(held[k]) != _norm(v)}
    if diff:
        raise ValueError(
            f"{root}/config.json describes another architecture than the given `config` (folder vs config: "
            f"{diff}). Fix: remove `config` (a diffusers folder carries its own) or point `pretrained` at the "
            "folder of this architecture."
        )
