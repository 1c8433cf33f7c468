"""Export the student as a plain diffusers ``WanTransformer3DModel`` folder (EMA weights when present)."""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from lightning.pytorch import LightningModule

from streamr1.callbacks.ema import StudentEMA


def _ema_shadow(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    for key, state in checkpoint.get("callbacks", {}).items():
        if str(key).startswith(StudentEMA.__name__) and state.get("shadow"):
            return state["shadow"]
    return None


def export_student(module: LightningModule, output_dir: str, ckpt_path: str | None = None, use_ema: bool = True) -> str:
    """Write ``module.student``'s transformer to ``output_dir`` with ``save_pretrained``.

    Args:
        module: a :class:`~streamr1.module.DMDModule` built from the recipe that wrote the checkpoint.
        output_dir: target folder; written beside it first and renamed into place, so a crash leaves either the
            old folder or the new one, never half of one.
        ckpt_path: the checkpoint; ``None`` exports the module's current student.
        use_ema: use the :class:`~streamr1.callbacks.ema.StudentEMA` weights when the checkpoint holds them.

    Returns:
        ``output_dir``.
    """
    student = module.student
    if ckpt_path is not None:
        if not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"Checkpoint not found: {ckpt_path!r} (pass --ckpt_path to an existing .ckpt).")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        prefix = "student."
        sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{ckpt_path!r} holds no student weights (no 'student.*' keys).")
        student.load_state_dict(sd)
        shadow = _ema_shadow(ckpt) if use_ema else None
        if shadow is not None:
            student.load_state_dict({k: v for k, v in shadow.items()}, strict=False)
    transformer = student.transformer
    parent = os.path.dirname(os.path.abspath(output_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        # the causal processors are ours; the saved config and weights are the plain diffusers model's
        transformer.save_pretrained(tmp, safe_serialization=True)
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
