"""``streamr1 export``: the student (EMA weights when present) as a diffusers folder, end to end through the CLI."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from diffusers import WanTransformer3DModel

from streamr1.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")
PREFIX = "causal.transformer."  # the transformer inside CausalWanDenoiser


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A checkpoint of the tiny recipe after 3 student steps, with a StudentEMA (decay 0.5) in it."""
    root = tmp_path_factory.mktemp("export_fit")
    extra = root / "extra.yaml"
    extra.write_text(f"""
trainer:
  max_steps: 12            # 10 cycles with student_every 4: student steps at cycles 0, 4, 8
  logger: false
  enable_checkpointing: true
  default_root_dir: {root}
  callbacks:
    - class_path: streamr1.callbacks.ema.StudentEMA
      init_args: {{decay: 0.5}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root / "ckpt"}, save_last: true, save_top_k: 0}}
model:
  dmd:
    student_every: 4
""")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped one_thread
    try:
        main(["fit", "--config", TINY, "--config", str(extra)])
    finally:
        torch.set_num_threads(threads)
    return str(root / "ckpt" / "last.ckpt")


def _export(ckpt: str, out: str, *extra: str) -> WanTransformer3DModel:
    cli = main(["export", "--config", TINY, "--trainer.logger", "false", "--ckpt_path", ckpt, "--output_dir", out,
                *extra])
    # export builds only the student side: the teacher and critic are parameter-free stand-ins (streamr1.sampling)
    assert type(cli.model.teacher).__name__ == type(cli.model.critic).__name__ == "NotLoaded"
    return WanTransformer3DModel.from_pretrained(out, local_files_only=True)


def test_export_writes_the_ema_weights_as_a_diffusers_folder(trained, tmp_path):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    assert ckpt["streamr1"]["student_steps"] == 3
    (ema,) = [v["shadow"] for k, v in ckpt["callbacks"].items() if k.startswith("StudentEMA")]
    raw = {k[len("student."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    # the EMA lags the trained weights (decay 0.5 over 3 steps), so "equal to the EMA" is a real check
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    model = _export(trained, str(tmp_path / "student"))
    exported = model.state_dict()
    assert exported.keys() == {k[len(PREFIX):] for k in ema}
    for k, v in ema.items():
        assert torch.equal(exported[k[len(PREFIX):]], v), k
    assert sorted(os.listdir(tmp_path)) == ["student"]  # written beside, renamed into place: no leftovers
    assert os.path.isfile(tmp_path / "student" / "config.json")
    assert glob.glob(str(tmp_path / "student" / "*.safetensors"))

    # the folder is a plain diffusers model: it runs without streamr1's causal processors
    x = torch.randn(1, 3, 2, 8, 8)
    out = model(x, torch.tensor([500.0]), torch.randn(1, 4, 16), return_dict=False)[0]
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_export_without_ema_writes_the_trained_weights_and_replaces_the_folder(trained, tmp_path):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    raw = {k[len("student." + PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    out = str(tmp_path / "student")
    _export(trained, out)  # an existing export (the EMA one) is replaced
    model = _export(trained, out, "--use_ema", "false")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in raw.items())
    assert sorted(os.listdir(tmp_path)) == ["student"]


def test_export_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        main(["export", "--config", TINY, "--trainer.logger", "false", "--ckpt_path", str(tmp_path / "no.ckpt"),
              "--output_dir", str(tmp_path / "out")])
