"""Reading Wan transformer weights in the layouts users hold (issue 11, "Loading what users hold").

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
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import WanTransformer3DModel
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
    onto the device, never in host memory. Same arguments and layouts as :func:`load_wan_transformer`.
    """
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
