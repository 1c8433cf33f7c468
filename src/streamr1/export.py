"""Export the student as a plain diffusers ``WanTransformer3DModel`` folder (EMA weights when present).

Reads both checkpoint layouts Lightning writes: a single ``.ckpt`` file (single device, DDP) and the sharded
folder of ``ModelParallelStrategy`` (FSDP2; ``torch.distributed.checkpoint`` shards plus ``meta.pt``), the latter on
one process without a process group. Only the student's tensors are read from the shards.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from lightning.pytorch import LightningModule

from streamr1.callbacks.ema import StudentEMA
from streamr1.models.lora import has_lora, merged_copy, save_adapter


def _ema_shadow(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    for key, state in checkpoint.get("callbacks", {}).items():
        if str(key).startswith(StudentEMA.__name__) and state.get("shadow"):
            return state["shadow"]
    return None


def _read_student(ckpt_path: str, student: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The student's state dict and the rest of the checkpoint (callbacks, counters) from a file or sharded folder."""
    prefix = "student."
    if os.path.isdir(ckpt_path):
        import torch.distributed.checkpoint as dcp

        meta_path = os.path.join(ckpt_path, "meta.pt")
        if not os.path.isfile(meta_path):
            raise ValueError(f"{ckpt_path!r} is a folder but not a sharded Lightning checkpoint (no meta.pt).")
        own = student.state_dict()
        wanted = {"state_dict": {prefix + k: torch.empty_like(v, device="cpu") for k, v in own.items()}}
        try:
            dcp.load(wanted, checkpoint_id=ckpt_path, no_dist=True)
        except Exception as err:  # DCP names the missing or mis-shaped keys; say which recipe to use
            raise ValueError(
                f"The sharded checkpoint {ckpt_path!r} does not hold this recipe's student: {err}. "
                "Export with the recipe (model sizes) that wrote it."
            ) from err
        sd = {k[len(prefix):]: v for k, v in wanted["state_dict"].items()}
        return sd, torch.load(meta_path, map_location="cpu", weights_only=False)
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"Checkpoint not found: {ckpt_path!r} (pass --ckpt_path to an existing .ckpt).")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"{ckpt_path!r} holds no student weights (no 'student.*' keys).")
    return sd, ckpt


def load_student(module: LightningModule, ckpt_path: str | None, use_ema: bool = True) -> dict[str, object]:
    """Load the student's weights from ``ckpt_path`` (a ``.ckpt`` file or an FSDP2 sharded folder) into
    ``module.student``, then the :class:`~streamr1.callbacks.ema.StudentEMA` weights over them when ``use_ema`` and
    the checkpoint holds an EMA (with LoRA the EMA holds only the adapter tensors: the frozen base comes from the
    checkpoint's weights). ``ckpt_path=None`` keeps the module's current weights.

    Returns:
        What was loaded: ``{"checkpoint": path or None, "ema": bool}`` (for manifests and reports).
    """
    if ckpt_path is None:
        return {"checkpoint": None, "ema": False}
    student = module.student
    from streamr1.models.wan_deferred import materialize_pending

    # defer_load: a student still on the meta device would take load_state_dict as a silent no-op (and then be
    # filled from its `pretrained` file): fill it first, on the CPU like an eagerly loaded one
    materialize_pending(student, "cpu")
    sd, ckpt = _read_student(ckpt_path, student)
    student.load_state_dict(sd)
    shadow = _ema_shadow(ckpt) if use_ema else None
    if shadow is not None:
        missing = sorted(set(shadow) - set(student.state_dict()))
        if missing:
            raise ValueError(f"The checkpoint's EMA names tensors the student does not have (e.g. {missing[:3]}): "
                             "load it with the recipe (LoRA settings included) that wrote it.")
        student.load_state_dict(dict(shadow.items()), strict=False)
    return {"checkpoint": os.path.abspath(ckpt_path), "ema": shadow is not None}


def export_student(module: LightningModule, output_dir: str, ckpt_path: str | None = None, use_ema: bool = True,
                   adapter_only: bool = False) -> str:
    """Write ``module.student``'s transformer to ``output_dir`` with ``save_pretrained``.

    Args:
        module: a :class:`~streamr1.module.DMDModule` built from the recipe that wrote the checkpoint.
        output_dir: target folder; written beside it first and renamed into place, so a crash leaves either the
            old folder or the new one, never half of one.
        ckpt_path: the checkpoint (a ``.ckpt`` file or an FSDP2 sharded folder); ``None`` exports the module's
            current student.
        use_ema: use the :class:`~streamr1.callbacks.ema.StudentEMA` weights when the checkpoint holds them.
        adapter_only: for a LoRA student, write only the adapter (peft layout: ``adapter_config.json``,
            ``adapter_model.safetensors``) instead of the merged model.

    A LoRA student (:mod:`streamr1.models.lora`) is written merged (``W <- W + (alpha / r) B A``, plain diffusers
    keys): saving it unmerged would give ``base_layer`` / ``lora_*`` keys that ``from_pretrained`` does not know and
    silently leaves as meta tensors.

    Returns:
        ``output_dir``.
    """
    student = module.student
    load_student(module, ckpt_path, use_ema)
    transformer = student.transformer
    parent = os.path.dirname(os.path.abspath(output_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        # the causal processors are ours; the saved config and weights are the plain diffusers model's
        if adapter_only:
            save_adapter(transformer, tmp)
        else:
            plain = merged_copy(transformer) if has_lora(transformer) else transformer
            plain.save_pretrained(tmp, safe_serialization=True)
        if os.path.isdir(output_dir):
            old = output_dir.rstrip("/") + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
