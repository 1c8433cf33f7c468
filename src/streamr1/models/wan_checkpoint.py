"""Wan checkpoints in the layouts users hold, opened without reading their tensors (issue 11, "Loading what users
hold"): key layouts, containers, shapes, the architecture read off them, the fit check.

Key layouts, detected from the keys (never from a file name):

- **diffusers**: ``WanTransformer3DModel`` keys (``condition_embedder.time_embedder.linear_1.weight``,
  ``blocks.0.attn1.to_q.weight``, ...);
- **original**: the Wan repository's ``WanModel`` keys (``blocks.0.self_attn.q.weight``, ``head.modulation``, ...),
  which Self-Forcing, Reward Forcing and Causal Forcing also use. They are renamed with diffusers' own
  :func:`diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers` (no key table here).

Either may carry a prefix in front of every key (``model.``, ``model.diffusion_model.``, ``module.``): the prefix is
whatever precedes ``patch_embedding.weight``. FSDP/activation-checkpointing/compile wrapper segments
(``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``) are dropped wherever they occur.

Containers:

- a diffusers folder (``config.json`` with ``_class_name: WanTransformer3DModel``): ``from_pretrained``;
- the original ``Wan-AI/Wan2.1-T2V-*`` folder (``config.json`` with ``dim``/``num_heads``, weights in
  ``diffusion_pytorch_model*.safetensors``, sharded with ``diffusion_pytorch_model.safetensors.index.json``);
- one ``.safetensors`` file, or a torch file (``.pt``/``.pth``/``.bin``/``.ckpt``) whose state dict is flat or
  nested under a key: Self-Forcing's ``ode_init.pt`` and ``self_forcing_dmd.pt`` are
  ``{"generator": sd, "generator_ema": sd}`` (see :data:`CHECKPOINT_KEYS`).

Building and filling the model from them: :mod:`streamr1.models.wan_weights` (eager),
:mod:`streamr1.models.wan_deferred` (meta device, filled after FSDP2 sharding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

CHECKPOINT_KEYS = ("auto", "generator_ema", "generator", "state_dict", "none")
"""Common values of ``checkpoint_key``, where the state dict sits in a torch file. ``auto``: ``generator_ema`` if
present, else ``generator``, else ``state_dict`` (also ``model``, ``module``), else the file is the state dict;
``none``: the file is the state dict; any other value is the key itself (``critic`` in Self-Forcing's training
checkpoints)."""

_AUTO_ORDER = ("generator_ema", "generator", "state_dict", "model", "module")
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_ANCHOR = "patch_embedding.weight"  # the one key both layouts share
_DIFFUSERS_MARKERS = ("condition_embedder.time_embedder.linear_1.weight", "blocks.0.attn1.to_q.weight")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_KNOWN_LAYOUTS = (
    "diffusers WanTransformer3DModel keys (`patch_embedding.weight`, "
    "`condition_embedder.time_embedder.linear_1.weight`, `blocks.0.attn1.to_q.weight`, ...); "
    "original Wan keys (`patch_embedding.weight`, `head.modulation`, "
    "`blocks.0.self_attn.q.weight`, ...); either with a prefix (`model.`), flat or nested under "
    "`generator` / `generator_ema` / `state_dict` (option `checkpoint_key`)"
)


def _say(message: str) -> None:
    """Print once per job (rank 0 of a torchrun/SLURM launch, or a single process)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "0") != "0":
            return
    print(f"[streamr1] {message}", flush=True)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"``/``"bf16"``/``torch.bfloat16``/... -> ``torch.dtype``; ``None`` stays ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"Unknown torch_dtype {dtype!r}: use one of float32, bfloat16, float16 (or leave it unset).")
    return _DTYPES[key]


@dataclass
class WanCheckpoint:
    """A checkpoint opened without reading its tensors.

    Attributes:
        label: what to name in messages (the file, or the folder and its shard count).
        layout: ``"diffusers"`` or ``"original"`` (the keys as stored).
        shapes: diffusers key -> shape, after prefix stripping and conversion.
        chunks: yields the tensors under diffusers keys, one file (shard) at a time.
        note: how the state dict was found (nested key, stripped prefix), for the log line.
    """

    label: str
    layout: str
    shapes: dict[str, tuple[int, ...]]
    chunks: Callable[[], Iterator[dict[str, Tensor]]]
    note: str = ""


def _clean_keys(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Drop wrapper segments from every key; with a ``prefix``, keep only the keys under it, without it."""
    out = {}
    for k, v in sd.items():
        for w in _WRAPPERS:
            k = k.replace(w, "")
        if not prefix:
            out[k] = v
        elif k.startswith(prefix):
            out[k[len(prefix):]] = v
    return out


def _find_prefix(keys: list[str], key_prefix: str | None, label: str) -> str:
    """``key_prefix`` if given, else what precedes ``patch_embedding.weight`` (one Wan model per state dict)."""
    if key_prefix is not None:
        return key_prefix
    cleaned = list(_clean_keys(dict.fromkeys(keys), ""))
    prefixes = sorted({k[: -len(_ANCHOR)] for k in cleaned if k == _ANCHOR or k.endswith("." + _ANCHOR)}, key=len)
    if len(prefixes) > 1:
        raise ValueError(
            f"{label} holds several Wan models, under the key prefixes {prefixes[:6]}: set `key_prefix` to the one "
            f"to load (e.g. key_prefix: {prefixes[-1]!r})."
        )
    return prefixes[0] if prefixes else ""


def _check_prefix(kept: dict[str, Any], prefix: str, raw_keys: list[str], label: str) -> None:
    if prefix and not kept:
        raise ValueError(
            f"{label}: no key starts with key_prefix {prefix!r} ({len(raw_keys)} keys, e.g. {sorted(raw_keys)[:4]}). "
            "Fix `key_prefix`, or leave it unset to find the prefix from the keys."
        )


def _detect_layout(keys: set[str], label: str) -> str:
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    if any(k in keys for k in CHECKPOINT_KEY_NAMES["wan"]):  # diffusers' own test for an original Wan checkpoint
        return "original"
    if any(k in keys for k in _DIFFUSERS_MARKERS):
        return "diffusers"
    found = sorted(keys)
    raise ValueError(
        f"{label}: unknown checkpoint layout ({len(found)} keys, e.g. {found[:5]}). Known layouts: {_KNOWN_LAYOUTS}. "
        "If the weights sit under another key of a torch file, or behind a prefix, set `checkpoint_key` / "
        "`key_prefix`."
    )


def _to_diffusers(sd: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "diffusers":
        return sd
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(sd))  # it pops from its argument


def select_state_dict(obj: Any, checkpoint_key: str, label: str) -> tuple[dict[str, Tensor], str]:
    """The state dict inside a loaded torch file, and the key it was found under (``""`` when flat)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{label} holds a {type(obj).__name__}, not a state dict (a dict of tensors).")

    def nested(k: str) -> bool:
        return isinstance(obj.get(k), dict) and any(isinstance(v, Tensor) for v in obj[k].values())

    if checkpoint_key == "auto":
        used = next((k for k in _AUTO_ORDER if nested(k)), "")
    elif checkpoint_key == "none":
        used = ""
    else:
        if not nested(checkpoint_key):
            tops = [k for k in obj if isinstance(obj[k], dict)]
            raise ValueError(
                f"{label} has no state dict under {checkpoint_key!r} (nested dicts found: {tops[:6]}). Set "
                f"`checkpoint_key` to one of them, or to `auto`."
            )
        used = checkpoint_key
    sd = obj[used] if used else obj
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"{label} has no tensors at {'key ' + repr(used) if used else 'its top level'} (top-level keys: "
            f"{list(obj)[:8]}). Set `checkpoint_key` to the key that holds the model's state dict."
        )
    return tensors, used


def _torch_load(path: str) -> Any:
    try:  # memory-mapped: tensors are read (and cast) one at a time, not all at once
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch files cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def open_checkpoint(
    files: list[str], checkpoint_key: str = "auto", key_prefix: str | None = None, label: str | None = None
) -> WanCheckpoint:
    """Open one checkpoint file, or the shards of one checkpoint, reading shapes but no tensor data."""
    label = label or files[0]
    if all(f.endswith(".safetensors") for f in files):
        if checkpoint_key not in ("auto", "none"):
            raise ValueError(
                f"{label} is a safetensors file, which is flat: checkpoint_key={checkpoint_key!r} names a nested "
                "state dict it cannot have. Set `checkpoint_key: auto` (use `key_prefix` for a prefix)."
            )
        from safetensors import safe_open

        raw_shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(f, framework="pt") as fh:
                for k in fh.keys():
                    raw_shapes[k] = tuple(fh.get_slice(k).get_shape())
        prefix = _find_prefix(list(raw_shapes), key_prefix, label)
        metas = _clean_keys({k: torch.empty(s, device="meta") for k, s in raw_shapes.items()}, prefix)
        _check_prefix(metas, prefix, list(raw_shapes), label)
        layout = _detect_layout(set(metas), label)

        def chunks() -> Iterator[dict[str, Tensor]]:
            from safetensors.torch import load_file

            for f in files:
                yield _to_diffusers(_clean_keys(load_file(f, device="cpu"), prefix), layout)

        used, ignored = "", len(raw_shapes) - len(metas)
    else:
        if len(files) != 1:
            raise ValueError(f"{label}: sharded checkpoints must be .safetensors files, got {files[:3]}.")
        sd, used = select_state_dict(_torch_load(files[0]), checkpoint_key, label)
        prefix = _find_prefix(list(sd), key_prefix, label)
        raw_keys, sd = list(sd), _clean_keys(sd, prefix)
        _check_prefix(sd, prefix, raw_keys, label)
        ignored = len(raw_keys) - len(sd)
        metas = {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
        layout = _detect_layout(set(metas), label)

        def chunks() -> Iterator[dict[str, Tensor]]:
            yield _to_diffusers(sd, layout)

    shapes = {k: tuple(v.shape) for k, v in _to_diffusers(metas, layout).items()}
    parts = [f"{layout} keys"]
    if used:
        parts.append(f"state dict under {used!r}")
    if prefix:
        parts.append(f"prefix {prefix!r} stripped")
    if ignored:
        parts.append(f"{ignored} keys outside it ignored")
    return WanCheckpoint(label, layout, shapes, chunks, ", ".join(parts))


def infer_wan_config(
    shapes: dict[str, tuple[int, ...]], num_attention_heads: int | None = None, head_dim: int = 128
) -> dict[str, Any]:
    """``WanTransformer3DModel`` arguments read off a (diffusers-key) state dict's shapes.

    Shapes fix every width but not how the model width splits into heads: ``num_attention_heads`` if given, else
    ``width / head_dim`` (every Wan2.1/2.2 model has 128-wide heads: 1536 = 12 x 128, 5120 = 40 x 128).
    ``rope_max_seq_len`` keeps the Wan default (1024).
    """
    try:
        pe = shapes["patch_embedding.weight"]
        width, in_channels, patch = pe[0], pe[1], tuple(pe[2:])
        blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}
        config: dict[str, Any] = {
            "patch_size": list(patch),
            "in_channels": in_channels,
            "out_channels": shapes["proj_out.weight"][0] // math.prod(patch),
            "text_dim": shapes["condition_embedder.text_embedder.linear_1.weight"][1],
            "freq_dim": shapes["condition_embedder.time_embedder.linear_1.weight"][1],
            "ffn_dim": shapes["blocks.0.ffn.net.0.proj.weight"][0],
            "num_layers": max(blocks) + 1,
            "cross_attn_norm": "blocks.0.norm2.weight" in shapes,
            "qk_norm": "rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in shapes else None,
        }
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"Cannot read the Wan architecture off the checkpoint (no {e}): give `config` (WanTransformer3DModel "
            "arguments) explicitly."
        ) from None
    if "condition_embedder.image_embedder.norm1.weight" in shapes:  # image-to-video variants
        config["image_dim"] = shapes["condition_embedder.image_embedder.norm1.weight"][0]
        config["added_kv_proj_dim"] = shapes["blocks.0.attn2.add_k_proj.weight"][1]
        if "condition_embedder.image_embedder.pos_embed" in shapes:
            config["pos_embed_seq_len"] = shapes["condition_embedder.image_embedder.pos_embed"][1]
    if num_attention_heads is None:
        if width % head_dim:
            raise ValueError(
                f"The checkpoint's width {width} is not a multiple of {head_dim}: the head count cannot be inferred. "
                "Give `config` with `num_attention_heads` and `attention_head_dim`."
            )
        num_attention_heads = width // head_dim
    if width % num_attention_heads:
        raise ValueError(f"Width {width} does not split into {num_attention_heads} heads.")
    config["num_attention_heads"] = num_attention_heads
    config["attention_head_dim"] = width // num_attention_heads
    return config


def _shape_errors(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> tuple[list[tuple[str, tuple, tuple]], list[str], list[str]]:
    mismatched = [(k, expected[k], found[k]) for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    return mismatched, missing, unexpected


def check_fits(ckpt: WanCheckpoint, config: dict[str, Any], model: torch.nn.Module) -> None:
    """Raise a ``ValueError`` naming the file, the counts and one example when ``ckpt`` does not fit ``model``.

    Runs on shapes only: no tensor has been read, and ``load_state_dict`` is never reached with a mismatch
    (issue 12: no torch "size mismatch" traceback).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched, missing, unexpected = _shape_errors(expected, ckpt.shapes)
    if not (mismatched or missing or unexpected):
        return
    parts = []
    if mismatched:
        k, e, f = mismatched[0]
        parts.append(f"{len(mismatched)} tensors of another shape (e.g. {k}: expected {list(e)}, found {list(f)})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:2]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    try:
        held = infer_wan_config(ckpt.shapes, head_dim=int(config.get("attention_head_dim", 128)))
        diff = {k: v for k, v in held.items() if k in config and _norm(config[k]) != _norm(v)}
        hint = (f" The file holds a model with {diff or held}; the given `config` says "
                f"{ {k: config[k] for k in diff} or config}.")
    except ValueError:
        hint = ""
    raise ValueError(
        f"{ckpt.label} ({ckpt.note}) does not fit the architecture in `config`: " + "; ".join(parts) + "." + hint +
        " Fix: set `config` to the checkpoint's architecture (or remove `config` to read it from the file), or point "
        "`pretrained` at the checkpoint made for this architecture."
    )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v
