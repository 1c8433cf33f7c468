"""LoRA adapters on a Wan transformer through peft (Hu et al. 2021, "LoRA", arXiv 2106.09685).

Each targeted linear layer ``W`` becomes ``W x + (alpha / r) B A x`` with ``A`` ``[r, in]`` (Kaiming-uniform init)
and ``B`` ``[out, r]`` (zeros), so an adapted model starts exactly as its base. Only ``A`` and ``B`` train: the base
is frozen (``requires_grad=False``), the optimizers and the student EMA hold only the trainable tensors
(:func:`trainable_parameters`, :class:`~streamr1.callbacks.ema.StudentEMA`), and a checkpoint holds the adapters (with
the frozen base, so a resume needs nothing else), both optimizers and the EMA.

A config switch on the model loaders (:class:`~streamr1.models.CausalWanDenoiser`,
:class:`~streamr1.models.WanDenoiser`)::

    model:
      student:
        init_args:
          pretrained: /ckpt/self_forcing_ode_init.safetensors
          lora: {rank: 64, alpha: 64, target_modules: [to_q, to_k, to_v, to_out.0]}
      critic:                       # optional: adapters on the critic too
        init_args: {pretrained: /ckpt/Wan2.1-T2V-1.3B-Diffusers, subfolder: transformer, lora: {rank: 64}}

``streamr1 export`` merges the adapters into the base (:func:`merged_copy`: ``W <- W + (alpha / r) B A``) and writes a
plain diffusers folder, or with ``--adapter_only true`` writes the adapter alone in peft's layout
(:func:`save_adapter`: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``peft.PeftModel.from_pretrained(WanTransformer3DModel.from_pretrained(base), folder)``).

Under FSDP2 the adapters live inside the transformer blocks, so ``fully_shard(block)`` shards them with their block.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Wan's attention projections (self- and cross-attention of every block), the usual LoRA targets of video DiTs."""

ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoRAArgs:
    """LoRA adapters of one model (peft ``LoraConfig``).

    Args:
        rank: ``r``, the adapters' inner dimension.
        alpha: scale numerator: the update is ``(alpha / r) B A``; default ``r`` (scale 1).
        target_modules: names (or name suffixes) of the linear layers that get adapters; Wan's are ``to_q``,
            ``to_k``, ``to_v``, ``to_out.0`` (attention), ``ffn.net.0.proj``, ``ffn.net.2`` (feed-forward),
            ``proj_out``.
        dropout: dropout on the adapter's input.
    """

    rank: int = 16
    alpha: float | None = None
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank} (remove `lora` to train the full model).")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}.")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: name the linear layers to adapt (e.g. [to_q, to_k]).")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}.")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


def _coerce(args: LoRAArgs | dict[str, Any]) -> LoRAArgs:
    if isinstance(args, LoRAArgs):
        return args
    if isinstance(args, dict):
        known = {f.name for f in dataclasses.fields(LoRAArgs)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"Unknown lora keys {unknown}; known: {sorted(known)}.")
        return LoRAArgs(**args)
    raise TypeError(f"lora must be LoRAArgs or a dict, got {type(args).__name__}.")


def apply_lora(model: nn.Module, args: LoRAArgs | dict[str, Any]) -> nn.Module:
    """Put LoRA adapters on ``model``'s target linear layers in place (peft ``inject_adapter_in_model``); freezes
    everything else. Returns ``model``.

    Raises:
        ValueError: no layer matches ``target_modules`` (the error lists the linear layers there are).
    """
    from peft import LoraConfig, inject_adapter_in_model

    args = _coerce(args)
    linear = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n
                     for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    hits = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and any(n == t or n.endswith("." + t) for t in args.target_modules)]
    if not hits:
        raise ValueError(f"lora.target_modules {list(args.target_modules)} match no linear layer of "
                         f"{type(model).__name__}; its linear layers are {linear}.")
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha if args.alpha is not None else args.rank,
                        target_modules=list(args.target_modules), lora_dropout=args.dropout,
                        init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries peft LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train (``requires_grad``): the adapters of a LoRA model, everything of a full one."""
    return [p for p in model.parameters() if p.requires_grad]


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA layer merged into its base (``W <- W + (alpha / r) B A``) and replaced by
    the plain layer: the same class and state-dict keys as a model that never had adapters. ``model`` is untouched.
    A model without adapters is returned as a plain copy."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in names:
        layer = out.get_submodule(name)
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, layer.get_base_layer())
    if hasattr(out, "peft_config"):
        del out.peft_config
    out.requires_grad_(True)
    return out


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s weights under plain (adapter-free) names, adapters merged in (``W + (alpha / r) B A``; e.g. to
    initialise a critic from a LoRA student). No copy of the model: works on FSDP2-sharded models (the small
    adapters are gathered, the merged update is laid out like its base weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    sd = model.state_dict()
    if not has_lora(model):
        return sd
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    return _plain(sd, layers)


@torch.no_grad()
def _plain(sd: dict[str, Tensor], layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".lora_" in key:
            continue
        owner, sep, rest = key.partition(".base_layer.")
        if not sep:
            out[key] = value
            continue
        if rest == "weight":
            layer = layers[owner]
            delta = layer.scaling[ADAPTER_NAME] * (_full(layer.lora_B[ADAPTER_NAME].weight)
                                                   @ _full(layer.lora_A[ADAPTER_NAME].weight))
            if hasattr(value, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                delta = distribute_tensor(delta.to(value.dtype), value.device_mesh, value.placements)
            value = value + delta.to(value.dtype)
        out[f"{owner}.{rest}"] = value
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, under peft's saved names (``...to_q.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in
            get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()}


def save_adapter(model: nn.Module, folder: str) -> None:
    """Write ``model``'s adapter in peft's layout: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from safetensors.torch import save_file

    if not has_lora(model):
        raise ValueError("The model has no LoRA adapters to write: export the whole model instead.")
    os.makedirs(folder, exist_ok=True)
    model.peft_config[ADAPTER_NAME].save_pretrained(folder)  # adapter_config.json, peft's own format
    # PeftModel's own names: the wrapped model sits under base_model.model
    tensors = {f"base_model.model.{k}": v for k, v in adapter_state_dict(model).items()}
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))


def load_plain_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load adapter-free weights (plain names) into ``model``: into the base layers of a LoRA model (its adapters
    are left as they are), or as they are into a plain one.

    Raises:
        ValueError: the weights do not fit (missing or unexpected tensors, other than the adapters).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not has_lora(model):
        model.load_state_dict(state_dict)
        return
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    remapped = {}
    for key, value in state_dict.items():
        owner = next((n for n in wrapped if key.startswith(n + ".")), None)
        remapped[f"{owner}.base_layer.{key[len(owner) + 1:]}" if owner else key] = value
    missing, unexpected = model.load_state_dict(remapped, strict=False)
    missing = [k for k in missing if ".lora_" not in k]
    if missing or unexpected:
        raise ValueError(f"The weights do not fit the LoRA model: missing {missing[:3]}, unexpected {unexpected[:3]}.")
