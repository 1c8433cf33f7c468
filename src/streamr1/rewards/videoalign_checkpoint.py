"""VideoReward's published checkpoint folder: reading it, renaming its keys, refusing it when incomplete (SPEC.md §4.6).

The layout VideoAlign's trainer writes (KwaiVGI/VideoAlign ``train_reward.py``, ``trainer.py``, ``utils.py``)::

    VideoReward/
      model_config.json        data_config (fps, max_frame_pixels, prompt_template_type), model_config (base model,
                               special tokens, which parts were trained), peft_lora_config (r, alpha),
                               inference_config (per-axis means and stds)
      checkpoint-<step>/
        adapter_model.safetensors   the LoRA, peft keys ``base_model.model.<4.45 key>.lora_{A,B}.weight``
        adapter_config.json         its target modules (4.45 names)
        non_lora_state_dict.pth     every other trained weight: vision tower, merger, embeddings (with the three
                                    reward-token rows), ``rm_head``
        tokenizer/                  (optional) the tokenizer with the reward tokens

It was saved with transformers 4.45 and peft 0.10; :func:`legacy_key_renamer` maps its keys to the installed
transformers with transformers' own conversion mapping. :func:`load_videoreward` builds the model for
:class:`streamr1.rewards.videoalign.VideoAlignReward`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from streamr1.protocols import AXES


def read_videoreward_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model_config.json`` of a VideoReward folder (VideoAlign ``save_configs_to_json``)."""
    file = os.path.join(os.fspath(path), "model_config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"VideoAlignReward: {file!r} not found. `path` must be the VideoReward folder as published "
            "(huggingface.co/KwaiVGI/VideoReward: model_config.json and a checkpoint-<step>/ folder)."
        )
    with open(file, encoding="utf-8") as fh:
        cfg = json.load(fh)
    for section in ("model_config", "peft_lora_config"):
        if not isinstance(cfg.get(section), Mapping):
            raise ValueError(f"{file!r} has no {section!r} section; is it VideoAlign's model_config.json?")
    return cfg


def videoreward_statistics(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """VideoReward's own per-axis ``{axis: {"mean", "std"}}`` (``inference_config`` of its ``model_config.json``),
    in the format of the RewardService's ``normalization`` (SPEC §4.6: z-scores).

    Raises:
        ValueError: the file has no ``inference_config`` with ``{axis}_mean`` / ``{axis}_std`` for every axis.
    """
    inf = read_videoreward_config(path).get("inference_config") or {}
    try:
        return {a: {"mean": float(inf[f"{a}_mean"]), "std": float(inf[f"{a}_std"])} for a in AXES}
    except KeyError as err:
        raise ValueError(f"{path!r}: model_config.json's inference_config lacks {err}; calibrate statistics instead "
                         "(`streamr1 calibrate`).") from None


def find_checkpoint(path: str | os.PathLike[str], step: int | None = None) -> str:
    """The ``checkpoint-<step>`` folder: the given step, else the latest (VideoAlign ``load_model_from_checkpoint``)."""
    found = glob.glob(os.path.join(os.fspath(path), "checkpoint-*"))
    steps = {int(m.group(1)): d for d in found if (m := re.search(r"checkpoint-(\d+)$", d)) and os.path.isdir(d)}
    if not steps:
        raise FileNotFoundError(f"VideoAlignReward: no checkpoint-<step>/ folder in {os.fspath(path)!r}.")
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise FileNotFoundError(f"VideoAlignReward: checkpoint-{step} not in {os.fspath(path)!r}; found steps "
                                f"{sorted(steps)}.")
    return steps[step]


def legacy_key_renamer(model: nn.Module):
    """A function ``old_key -> key`` from a transformers-4.45 Qwen2-VL state-dict key to the installed layout.

    Uses transformers' own conversion mapping for the model class (``get_model_conversion_mapping``, the one
    ``from_pretrained`` applies). Refuses keys that would need a tensor conversion, not just a rename.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = {k: True for k in model.state_dict()}

    def rename(key: str) -> str:
        new, converter = rename_source_key(key, renamings, converters, getattr(model, "base_model_prefix", None), meta)
        if converter is not None:
            raise ValueError(f"Checkpoint key {key!r} needs a tensor conversion ({converter}), not a rename.")
        return new

    return rename


def _strip(key: str, prefix: str = "base_model.model.") -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _refuse(path: str, what: str, names: Sequence[str]) -> ValueError:
    shown = ", ".join(sorted(names)[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    return ValueError(f"VideoAlignReward: the checkpoint {path!r} {what}: {shown}. Nothing was loaded; point `path` "
                      "at the complete VideoReward folder (model_config.json and checkpoint-<step>/ with "
                      "adapter_model.safetensors and non_lora_state_dict.pth).")


def load_videoreward(path: str | os.PathLike[str], *, checkpoint_step: int | None = None,
                     base_model: str | os.PathLike[str] | None = None, torch_dtype: torch.dtype = torch.float32,
                     attn_implementation: str = "sdpa", merge_lora: bool = True) -> tuple[nn.Module, Any, Tensor,
                                                                                          dict[str, Any]]:
    """Build Qwen2-VL, the LoRA and the reward head from a VideoReward folder.

    Steps (VideoAlign ``create_model_and_processor`` + ``load_model_from_checkpoint``): the base Qwen2-VL from
    ``base_model`` (default: ``model_config.model_name_or_path``, so a local folder or the HF cache); the tokenizer
    from ``checkpoint-*/tokenizer`` if present, else the base's plus the three reward tokens; the embedding resized
    to the checkpoint's rows; a LoRA (r, alpha, rsLoRA from ``peft_lora_config``) on exactly the modules the adapter
    file holds; then the adapter and the non-LoRA weights (vision tower, merger, embeddings, ``rm_head``), every key
    renamed from transformers 4.45 to the installed layout. With ``merge_lora`` the LoRA is merged into the weights
    (a frozen reward: same outputs, no extra matmuls).

    Returns:
        ``(qwen2vl_for_conditional_generation, tokenizer, rm_head_weight [3, hidden], model_config_dict)``.

    Raises:
        FileNotFoundError: a file of the layout is missing.
        ValueError: LoRA weights, the reward head, or a part the run trained (vision tower, merger, special-token
            embeddings, per ``model_config``) are missing or do not fit; nothing is loaded then.
    """
    import safetensors.torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from streamr1.rewards.videoalign import REWARD_TOKENS

    path = os.fspath(path)
    cfg = read_videoreward_config(path)
    mcfg, lcfg = cfg["model_config"], cfg["peft_lora_config"]
    if mcfg.get("reward_token", "special") != "special" or not mcfg.get("use_special_tokens", True):
        raise ValueError(f"{path!r}: VideoAlignReward reads the scores at the special reward tokens; this checkpoint "
                         f"uses reward_token={mcfg.get('reward_token')!r}.")
    if int(mcfg.get("output_dim", 3)) != 3:
        raise ValueError(f"{path!r}: expected a reward head with 3 outputs (VQ, MQ, TA), got {mcfg.get('output_dim')}.")
    if not lcfg.get("lora_enable", False) or lcfg.get("vision_lora", False):
        raise ValueError(f"{path!r}: VideoAlignReward loads VideoReward's layout, a LoRA on the language model only "
                         "(lora_enable true, vision_lora false).")
    check_transformers()
    ckpt = find_checkpoint(path, checkpoint_step)
    adapter_file = os.path.join(ckpt, "adapter_model.safetensors")
    non_lora_file = os.path.join(ckpt, "non_lora_state_dict.pth")
    for f, what in ((adapter_file, "LoRA weights"), (non_lora_file, "non-LoRA weights (vision tower, rm_head)")):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"VideoAlignReward: {what} file {f!r} not found (a full-model `model.pth` "
                                    "checkpoint is not supported).")
    adapter = safetensors.torch.load_file(adapter_file)
    non_lora = torch.load(non_lora_file, map_location="cpu", weights_only=True)

    base = os.fspath(base_model) if base_model is not None else mcfg.get("model_name_or_path")
    if not base:
        raise ValueError(f"{path!r}: model_config.json names no base model; set `base_model` to a local "
                         "Qwen2-VL-2B-Instruct folder.")
    tok_dir = os.path.join(ckpt, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir if os.path.isdir(tok_dir) else base, padding_side="right")
    tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS.values())})

    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch_dtype,
                                                            attn_implementation=attn_implementation)
    rename = legacy_key_renamer(model)

    # Split and rename the non-LoRA weights; rm_head is ours.
    rest = {_strip(k): v for k, v in non_lora.items()}
    head = rest.pop("rm_head.weight", None)
    if head is None:
        raise _refuse(ckpt, "has no reward head", ["rm_head.weight"])
    hidden = model.config.get_text_config().hidden_size
    if tuple(head.shape) != (3, hidden):
        raise ValueError(f"VideoAlignReward: rm_head.weight has shape {list(head.shape)}, expected [3, {hidden}].")
    rest = {rename(k): v for k, v in rest.items()}
    embed_key = next((k for k in rest if k.endswith("embed_tokens.weight")), None)
    rows = int(rest[embed_key].shape[0]) if embed_key else len(tokenizer)
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)
    ids = tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS.values()))
    if max(ids) >= rows:
        raise ValueError(f"VideoAlignReward: reward token ids {ids} do not fit the checkpoint's {rows} embedding rows; "
                         "the tokenizer does not match the checkpoint.")

    own = model.state_dict()
    required = set()
    if mcfg.get("use_special_tokens", True):
        required |= {k for k in own if k.endswith("embed_tokens.weight")}
    if not mcfg.get("freeze_vision_tower", False):
        required |= {k for k in own if ".visual." in f".{k}"}
    if mcfg.get("tune_merger", False):
        required |= {k for k in own if ".visual.merger." in f".{k}"}
    unexpected = [k for k in rest if k not in own]
    if unexpected:
        raise _refuse(ckpt, "holds non-LoRA weights this Qwen2-VL does not have", unexpected)
    missing = [k for k in required if k not in rest]
    if missing:
        raise _refuse(ckpt, "lacks weights that VideoReward trained (model_config.json says so)", missing)
    bad = [k for k, v in rest.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise _refuse(ckpt, "has weights of the wrong shape", bad)

    # The LoRA: on exactly the modules the adapter holds, r and alpha from the config.
    lora = {}
    for k, v in adapter.items():
        m = re.match(r"^(.*)\.(lora_[AB])(?:\.[^.]+)?\.weight$", _strip(k))
        if m is None:
            raise _refuse(ckpt, "has adapter keys that are not LoRA A/B weights", [k])
        lora[(rename(m.group(1) + ".weight")[: -len(".weight")], m.group(2))] = v
    modules = sorted({mod for mod, _ in lora})
    if not modules:
        raise _refuse(ckpt, "has an empty adapter", [adapter_file])
    half = [f"{mod}.{ab}" for mod in modules for ab in ("lora_A", "lora_B") if (mod, ab) not in lora]
    if half:
        raise _refuse(ckpt, "has LoRA modules with only one of A and B", half)
    named = dict(model.named_modules())
    absent = [mod for mod in modules if not isinstance(named.get(mod), nn.Linear)]
    if absent:
        raise _refuse(ckpt, "has LoRA weights for modules that are not linear layers of this Qwen2-VL", absent)
    adapter_cfg_file = os.path.join(ckpt, "adapter_config.json")
    if os.path.isfile(adapter_cfg_file):
        with open(adapter_cfg_file, encoding="utf-8") as fh:
            targets = json.load(fh).get("target_modules")
        if isinstance(targets, list):
            declared = {rename(t + ".weight")[: -len(".weight")] for t in targets}
            no_weights = sorted(declared - set(modules))
            if no_weights:
                raise _refuse(ckpt, "declares LoRA target modules whose weights are missing", no_weights)
    r, alpha = int(lcfg.get("lora_r", 64)), int(lcfg.get("lora_alpha", 128))
    wrong_r = [f"{mod}.lora_A" for mod in modules if lora[(mod, "lora_A")].shape[0] != r]
    if wrong_r:
        raise _refuse(ckpt, f"has LoRA ranks other than lora_r={r}", wrong_r)

    model.load_state_dict(rest, strict=False)  # partial by design: what the run did not train stays the base's
    peft_model = get_peft_model(model, LoraConfig(  # a regex string is full-matched against module names
        r=r, lora_alpha=alpha, lora_dropout=0.0, use_rslora=bool(lcfg.get("use_rslora", False)), bias="none",
        target_modules="^(" + "|".join(re.escape(m) for m in modules) + ")$"))
    sd = {f"base_model.model.{mod}.{ab}.default.weight": v for (mod, ab), v in lora.items()}
    result = peft_model.load_state_dict(sd, strict=False)
    lora_keys = {k for k in peft_model.state_dict() if ".lora_" in k}
    not_filled = sorted(lora_keys - set(sd))
    if result.unexpected_keys or not_filled:
        raise _refuse(ckpt, "does not fill the LoRA it describes", list(result.unexpected_keys) + not_filled)
    model = peft_model.merge_and_unload() if merge_lora else peft_model
    return model, tokenizer, head.to(torch_dtype), cfg


def check_transformers() -> None:
    """Raise ``ImportError`` unless transformers >= 5 is installed (what VideoAlignReward is written against)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise ImportError(f"VideoAlignReward needs transformers >= 5 (found {transformers.__version__}): Qwen2-VL's "
                          "forward takes mm_token_type_ids there. Install with `pip install 'streamr1[videoreward]'`.")
