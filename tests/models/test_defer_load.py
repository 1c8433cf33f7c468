"""``defer_load: true`` in a recipe (issue 11, "built without a full copy on every rank"): the teacher, critic and
student are built on the meta device and filled by ``DMDModule.configure_model`` before Lightning moves the module to
its device. A run must train exactly as the eagerly loaded one. The 2-process FSDP2 version is
tests/distributed/test_defer_load_fsdp.py."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from streamr1.cli import main
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.models.wan_deferred import has_pending_weights
from streamr1.module import DMDModule
from tests.helpers import WAN_TINY
from tests.models.test_wan_weights import to_original

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


def write_checkpoints(folder) -> dict[str, str]:
    """Three different tiny random Wan models in three layouts users hold: the teacher as one original-key
    safetensors file, the critic as one diffusers-key safetensors file, the student as Self-Forcing's ``ode_init.pt``
    (original Wan keys under ``model.``, nested under ``generator``). Not a diffusers folder here: its eager load
    (``from_pretrained``) draws from the global RNG, so the two runs would draw different noise (the deferred folder
    load is checked in test_wan_deferred.py)."""
    models = {}
    for seed, name in enumerate(("teacher", "critic", "student")):
        torch.manual_seed(seed)
        models[name] = WanTransformer3DModel(**WAN_TINY)
    paths = {"teacher": str(folder / "teacher.safetensors"), "critic": str(folder / "critic.safetensors"),
             "student": str(folder / "ode_init.pt")}
    save_file(to_original(models["teacher"].state_dict()), paths["teacher"])
    save_file(models["critic"].state_dict(), paths["critic"])
    torch.save({"generator": to_original(models["student"].state_dict(), "model.")}, paths["student"])
    return paths


def _recipe(tmp_path, paths: dict[str, str], defer: bool, name: str) -> str:
    d = str(defer).lower()
    extra = tmp_path / f"{name}.yaml"
    extra.write_text(f"""
trainer:
  max_steps: 4
  enable_checkpointing: true
  default_root_dir: {tmp_path / name}
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {tmp_path / name}, name: log}}}}
model:
  student: {{init_args: {{pretrained: {paths["student"]}, defer_load: {d}}}}}
  teacher: {{init_args: {{pretrained: {paths["teacher"]}, defer_load: {d}}}}}
  critic: {{init_args: {{pretrained: {paths["critic"]}, defer_load: {d}}}}}
  dmd: {{student_every: 1}}
  memory: {{offload_teacher: true}}
checkpoint: {{dirpath: {tmp_path / name / "ckpt"}}}
""")
    return str(extra)


def _losses(folder) -> list[dict[str, str]]:
    with open(os.path.join(folder, "log", "version_0", "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    keys = sorted(k for k in rows[0] if "loss" in k)
    assert keys, "no loss logged"
    return [{k: r[k] for k in keys} for r in rows if any(r[k] for k in keys)]


@pytest.mark.slow  # two CLI fits: about 30 s on a loaded 2-core machine
def test_a_deferred_recipe_trains_exactly_like_the_eager_one(tmp_path):
    """2 cycles (each a critic then a student step: ``student_every: 1``, ``max_steps: 4``) from the same files:
    the deferred run logs the same losses and ends with the same student and critic, bit for bit."""
    paths = write_checkpoints(tmp_path)
    states = {}
    for name, defer in (("eager", False), ("deferred", True)):
        main(["fit", "--config", TINY, "--config", _recipe(tmp_path, paths, defer, name)])
        states[name] = torch.load(tmp_path / name / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    eager, deferred = states["eager"], states["deferred"]
    assert eager.keys() == deferred.keys() and any(k.startswith("critic.") for k in eager)
    assert all(torch.equal(eager[k], deferred[k]) for k in eager), [k for k in eager
                                                                    if not torch.equal(eager[k], deferred[k])][:3]
    losses = _losses(tmp_path / "eager")
    assert len(losses) >= 2 and losses == _losses(tmp_path / "deferred")
    # the run moved away from the files: the equality above is about training, not two untouched copies
    torch.manual_seed(1)
    critic0 = WanTransformer3DModel(**WAN_TINY).state_dict()
    assert not torch.equal(eager["critic.transformer.proj_out.weight"], critic0["proj_out.weight"])


def test_defer_load_is_refused_without_a_checkpoint_and_with_lora(tmp_path):
    with pytest.raises(ValueError, match="defer_load: true needs `pretrained`"):
        WanDenoiser(config=WAN_TINY, defer_load=True)
    path = write_checkpoints(tmp_path)["student"]
    with pytest.raises(ValueError, match="defer_load does not combine with `lora`"):
        CausalWanDenoiser(pretrained=path, config=WAN_TINY, defer_load=True,
                          lora={"rank": 2, "target_modules": ["to_q"]})
    student = CausalWanDenoiser(pretrained=path, config=WAN_TINY, defer_load=True, chunk_frames=2)
    assert has_pending_weights(student) and all(p.is_meta for p in student.parameters())


def _module(paths: dict[str, str], defer: bool) -> DMDModule:
    return DMDModule(
        student=CausalWanDenoiser(pretrained=paths["student"], config=WAN_TINY, chunk_frames=2, defer_load=defer),
        teacher=WanDenoiser(pretrained=paths["teacher"], config=WAN_TINY, defer_load=defer),
        critic=WanDenoiser(pretrained=paths["critic"], config=WAN_TINY, defer_load=defer),
        text_encoder=HashTextEncoder(dim=16, length=4), vae=IdentityVAE(), latent_shape=(4, 3, 8, 8),
    )


def test_configure_model_fills_the_deferred_models_before_the_move_to_the_device(tmp_path):
    """Without a device mesh ``configure_model`` (which Lightning runs before ``model.to(device)``) fills every
    deferred model whole, with the files' weights: the module then equals the eagerly loaded one, and moves."""
    paths = write_checkpoints(tmp_path)
    eager, deferred = _module(paths, False), _module(paths, True)
    assert has_pending_weights(deferred) and all(p.is_meta for p in deferred.parameters())
    deferred.configure_model()
    assert not has_pending_weights(deferred) and not any(p.is_meta for p in deferred.parameters())
    want, got = dict(eager.named_parameters()), dict(deferred.named_parameters())
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert [n for n, p in deferred.named_parameters() if p.requires_grad] == \
        [n for n, p in eager.named_parameters() if p.requires_grad]  # the teacher stays frozen
    deferred.configure_model()  # Lightning may call it again (fit, then validate): nothing left to fill
    deferred.to(torch.float64)  # a copy works now (the strategy's model.to(device) is one)


def test_a_checkpoint_loads_into_a_deferred_student(tmp_path):
    """``predict``/``export``/``evaluate`` load the trained student before any trainer hook runs: a meta-device
    student would take ``load_state_dict`` as a silent no-op and later be filled from its initial file, so
    ``load_student`` fills it first; the checkpoint's weights win."""
    from streamr1.export import load_student

    paths = write_checkpoints(tmp_path)
    trained = {f"student.{k}": v + 1.0 for k, v in _module(paths, False).student.state_dict().items()}
    torch.save({"state_dict": trained}, tmp_path / "run.ckpt")
    module = _module(paths, True)
    load_student(module, str(tmp_path / "run.ckpt"), use_ema=False)
    got = module.student.state_dict()
    assert all(torch.equal(got[k[len("student."):]], v) for k, v in trained.items())
    assert has_pending_weights(module.teacher)  # only the student was read: the teacher waits for configure_model
