"""Checkpoints: what they hold, exact resume, refusing another recipe's checkpoint, crash-safe saving."""

from __future__ import annotations

import errno
import glob
import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import streamr1.module as module_lib
from streamr1.callbacks.ema import StudentEMA
from streamr1.checkpoint import AtomicCheckpointIO, atomic_torch_save
from streamr1.data import PromptDataModule
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.module import DMDModule
from tests.helpers import WAN_TINY, LossRecorder, tiny_module

# Seven prompts, shuffled, 8 a epoch in batches of 2: cycles 0-3 are epoch 0, cycles 4-5 epoch 1 (pass 0 of the
# prompt stream ends inside batch 3). A resume must continue the prompt stream where the checkpoint left it.
PROMPTS = [f"a {c} {s} moving {d}" for c, s, d in [("red", "circle", "left"), ("blue", "square", "up"),
                                                   ("green", "triangle", "right"), ("yellow", "star", "down"),
                                                   ("white", "circle", "up"), ("black", "square", "left"),
                                                   ("purple", "star", "right")]]
CKPT_STEP = 5  # global_step after cycle index 2 with student_every=2: 3 critic + 2 student steps
MAX_STEPS = 9  # 6 cycles: 6 critic + 3 student steps
STEPS_AFTER_CYCLE = [2, 3, 5, 6, 8, 9]  # global_step after cycles 0..5: c + 1 critic + c // 2 + 1 student steps


def _data(prompts=PROMPTS, batch_size=2, **kw) -> PromptDataModule:
    kw.setdefault("samples_per_epoch", 8)
    return PromptDataModule(prompts=prompts, batch_size=batch_size, seed=1, **kw)


class PromptLog(Callback):
    """The prompts of every training batch, in order."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(list(batch["prompt"]))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)




def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.0, 0.999), weight_decay=0.01)


def _step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _module(init_seed: int = 0) -> DMDModule:
    torch.manual_seed(init_seed)
    return tiny_module(student_every=2, student_optimizer=_adamw, critic_optimizer=_adamw,
                       student_scheduler=_step_lr, critic_scheduler=_step_lr)


def _trainer(root, callbacks, max_steps=MAX_STEPS, **kw) -> pl.Trainer:
    kw.setdefault("limit_val_batches", 0)
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root),
                      plugins=[AtomicCheckpointIO()], callbacks=callbacks, **kw)


# validation (one batch, sampling from the global RNG) after every 2nd training batch: after cycles 1, 3 and 5
VALIDATE = {"limit_val_batches": 1, "val_check_interval": 2, "num_sanity_val_steps": 0}


def _run(root, ckpt_path=None, save=False, scramble=False, every=CKPT_STEP, log=None, validate=False):
    pl.seed_everything(123)
    m, rec, ema = _module(0), LossRecorder(), StudentEMA(decay=0.5)
    if scramble:  # other student and critic weights (the frozen teacher reloads from its own weights, not these)
        with torch.no_grad():
            for p in [*m.student.parameters(), *m.critic.parameters()]:
                p.add_(torch.randn_like(p))
    callbacks = [rec, ema] + ([log] if log is not None else [])
    if save:
        callbacks.append(ModelCheckpoint(dirpath=str(root), every_n_train_steps=every, save_top_k=-1))
    trainer = _trainer(root, callbacks, enable_checkpointing=save, **(VALIDATE if validate else {}))
    trainer.fit(m, datamodule=_data(), ckpt_path=ckpt_path)
    return m, rec, ema, trainer


def _ckpt(root, step=CKPT_STEP) -> str:
    (path,) = glob.glob(os.path.join(str(root), f"*step={step}.ckpt"))
    return path


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    m, _, ema, _ = _run(tmp_path, save=True)
    ckpt = torch.load(_ckpt(tmp_path), weights_only=True)  # loadable without unpickling arbitrary objects
    keys = set(ckpt["state_dict"])
    assert keys == {f"student.{k}" for k in m.student.state_dict()} | {f"critic.{k}" for k in m.critic.state_dict()}
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert all(len(o["state"]) == len(list(m.student.parameters())) for o in ckpt["optimizer_states"])
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [2, 3]  # student, critic steps at the save
    (ema_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("StudentEMA")]
    assert ema_state["shadow"].keys() == dict(m.student.named_parameters()).keys()
    state = ckpt["streamr1"]
    assert (state["student_steps"], state["critic_steps"], state["micro_batches"]) == (2, 3, 3)
    assert len(state["global_rng"]) == 1 and set(state["global_rng"][0]) >= {"torch", "numpy", "python"}


def test_resume_gives_the_same_losses_and_weights_as_the_uninterrupted_run(tmp_path, deterministic):
    full_m, full_rec, full_ema, full_tr = _run(tmp_path / "full", save=True)
    # other trained weights: everything that matters must come from the checkpoint
    res_m, res_rec, res_ema, res_tr = _run(tmp_path / "resumed", ckpt_path=_ckpt(tmp_path / "full"), scramble=True)
    assert [kind for kind, *_ in full_rec.losses].count("student") == 3
    assert res_rec.losses == [e for e in full_rec.losses if e[1] >= 3]  # cycles 3..5, exactly
    assert (res_m.student_steps, res_m.critic_steps, res_m.micro_batches) == (3, 6, 6)
    assert res_tr.global_step == full_tr.global_step == MAX_STEPS
    def lrs(trainer: pl.Trainer) -> list[list[float]]:
        return [c.scheduler.get_last_lr() for c in trainer.lr_scheduler_configs]

    assert lrs(res_tr) == lrs(full_tr) == [[1e-3 * 0.5], [1e-3 * 0.5**3]]  # StepLR(2) after 3 and 6 steps
    for a, b in ((full_m.student, res_m.student), (full_m.critic, res_m.critic)):
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(va, vb), k
    assert full_ema.shadow.keys() == res_ema.shadow.keys()
    assert all(torch.equal(full_ema.shadow[k], res_ema.shadow[k]) for k in full_ema.shadow)


def test_resume_from_every_step_continues_the_prompt_stream(tmp_path, deterministic):
    """Checkpoints after every cycle (mid-epoch, the epoch's last batch, inside epoch 1, before a validation and
    not): each resumed run trains on exactly the batches, prompts and losses of the uninterrupted run from there on,
    and Lightning does not warn that the loader is not resumable."""
    full_log = PromptLog()
    _, full_rec, _, _ = _run(tmp_path / "full", save=True, every=1, log=full_log, validate=True)
    assert len(full_log.batches) == 6
    stream = [p for b in full_log.batches for p in b]
    assert sorted(stream[:7]) == sorted(PROMPTS)  # the first pass of the shuffled stream covers the list
    assert stream[:7] != PROMPTS
    for cycle, step in enumerate(STEPS_AFTER_CYCLE[:-1]):
        log = PromptLog()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, rec, _, tr = _run(tmp_path / f"resumed{step}", ckpt_path=_ckpt(tmp_path / "full", step), log=log,
                                 validate=True)
        assert log.batches == full_log.batches[cycle + 1:], step
        assert rec.losses == [e for e in full_rec.losses if e[1] > cycle], step
        assert tr.global_step == MAX_STEPS
        assert not [w for w in caught if "not resumable" in str(w.message)], step
    state = torch.load(_ckpt(tmp_path / "full", 5), weights_only=True)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 0, "batches": 3, "batch_size": 2, "num_replicas": 1,
                                         "num_prompts": 7, "seed": 1}]


def test_without_the_loader_state_a_resume_replays_the_first_prompts(tmp_path, deterministic, monkeypatch):
    """Control for the test above: a loader that ignores its saved position starts the epoch over."""
    from streamr1.data.prompts import ResumablePromptLoader

    full_log = PromptLog()
    _run(tmp_path / "full", save=True, log=full_log)
    monkeypatch.setattr(ResumablePromptLoader, "load_state_dict", lambda self, state: None)
    log = PromptLog()
    _run(tmp_path / "resumed", ckpt_path=_ckpt(tmp_path / "full"), log=log)
    # the rest of epoch 0 (one batch by Lightning's count) is the epoch's first batch again, not its fourth
    assert log.batches[0] == full_log.batches[0] != full_log.batches[3]
    assert log.batches != full_log.batches[3:]


def test_a_validation_that_kept_the_rng_it_drew_from_would_break_the_resume(tmp_path, deterministic, monkeypatch):
    """Control for the validation part above: the checkpoint after cycle 1 is written before the validation that
    follows it; if validation did not hand back the RNG streams, the resumed run (which skips that validation) would
    draw other training noise."""
    monkeypatch.setattr(DMDModule, "on_validation_end", lambda self: None)
    _, full_rec, _, _ = _run(tmp_path / "full", save=True, every=1, validate=True)
    _, rec, _, _ = _run(tmp_path / "resumed", ckpt_path=_ckpt(tmp_path / "full", STEPS_AFTER_CYCLE[1]), validate=True)
    expected = [e for e in full_rec.losses if e[1] > 1]
    assert [e[:2] for e in rec.losses] == [e[:2] for e in expected]
    assert rec.losses[0][2] != expected[0][2]


def test_resume_without_the_rng_state_would_draw_other_noise(tmp_path, deterministic, monkeypatch):
    """Control for the test above: the saved RNG streams are what makes the resumed losses equal."""
    _, full_rec, _, _ = _run(tmp_path / "full", save=True)
    monkeypatch.setattr(module_lib, "set_rng_state", lambda state: None)
    _, res_rec, _, _ = _run(tmp_path / "resumed", ckpt_path=_ckpt(tmp_path / "full"))
    expected = [e for e in full_rec.losses if e[1] >= 3]
    assert [e[:2] for e in res_rec.losses] == [e[:2] for e in expected]
    assert all(a[2] != b[2] for a, b in zip(res_rec.losses, expected, strict=True))


def _other_recipe(**config) -> DMDModule:
    other = dict(WAN_TINY, **config)
    return DMDModule(student=CausalWanDenoiser(config=other, chunk_frames=2), teacher=WanDenoiser(config=other),
                     critic=WanDenoiser(config=other), text_encoder=HashTextEncoder(dim=16, length=4),
                     vae=IdentityVAE(), latent_shape=(4, 3, 8, 8))


@pytest.mark.parametrize("build, message", [
    (lambda: _other_recipe(ffn_dim=48), r"Checkpoint does not match this recipe's models: \d+ tensors of another "),
    (lambda: _other_recipe(num_layers=3), r"Checkpoint does not match this recipe's models: 0 tensors of another "
                                          r"shape \(e.g. \[\]\), \d+ missing"),
    (lambda: tiny_module(frames=6), r"Checkpoint is from a recipe with latent_shape \[4, 3, 8, 8\]"),
])
def test_checkpoint_of_another_recipe_is_refused_before_anything_loads(tmp_path, build, message):
    src = tiny_module()
    trainer = _trainer(tmp_path, [], max_steps=1, enable_checkpointing=False)
    trainer.fit(src, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1))
    path = str(tmp_path / "src.ckpt")
    trainer.save_checkpoint(path)
    other = build()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, [], max_steps=2).fit(other, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1),
                                                ckpt_path=path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # not half-loaded
    assert other.student_steps == other.critic_steps == 0


def _half_then_fail(exc: BaseException):
    """A ``torch.save`` that writes the first half of the real bytes to the target, then raises ``exc``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise exc

    return save


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_leaves_the_last_checkpoint_loadable_and_unchanged(tmp_path, monkeypatch, exc):
    m = tiny_module()
    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path), save_last=True, save_top_k=0)
    trainer = _trainer(tmp_path, [ckpt_cb], max_steps=2)
    trainer.fit(m, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1))
    last = str(tmp_path / "last.ckpt")
    original = open(last, "rb").read()
    m.student_steps = 99  # the interrupted save would have written new state
    monkeypatch.setattr(torch, "save", _half_then_fail(exc))
    with pytest.raises(type(exc)):
        trainer.save_checkpoint(last)
    monkeypatch.undo()
    assert open(last, "rb").read() == original
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the temporary file is gone too
    assert torch.load(last, weights_only=True)["streamr1"]["student_steps"] == 1
    resumed = tiny_module()
    _trainer(tmp_path, [], max_steps=3).fit(resumed, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1),
                                            ckpt_path=last)
    assert resumed.critic_steps == 2


class _FullDisk:
    """A binary file that takes its first ``room`` bytes, then fails as a full disk does (``ENOSPC``)."""

    def __init__(self, path, mode="wb", room=600):
        self.fh, self.room = open(path, mode), room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self):
        self.fh.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_a_save_on_a_full_disk_ends_with_the_os_error_and_the_path(tmp_path, monkeypatch):
    import traceback

    import streamr1.checkpoint as checkpoint_lib

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_lib, "open", _FullDisk, raising=False)
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    lines = "".join(traceback.format_exception(info.value)).rstrip().splitlines()
    assert info.value.errno == errno.ENOSPC
    assert lines[-1].startswith(f"OSError: [Errno {errno.ENOSPC}] No space left on device: could not save the "
                                f"checkpoint {path} (")
    assert lines[-1].endswith("the previous file is unchanged. Free space, or point the checkpoint folder elsewhere.")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]


def test_torch_saves_internal_error_on_a_full_disk_is_reported_as_the_os_error(tmp_path, monkeypatch):
    """On a real full file system (a 2 MiB tmpfs, checked by hand) ``torch.save`` ends in ``RuntimeError: [enforce
    fail at inline_container.cc:671] . unexpected pos 704 vs 598`` with the ``OSError`` only as its context; the
    wrapper finds the OS error in that chain."""
    import traceback

    def save(obj, f, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        atomic_torch_save({"x": 1}, tmp_path / "last.ckpt")
    last = "".join(traceback.format_exception(info.value)).rstrip().splitlines()[-1]
    assert last.startswith("OSError: [Errno 28] No space left on device: could not save the checkpoint ")
    assert "enforce fail" in "".join(traceback.format_exception(info.value))  # the original stays above
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not an OS error")))
    with pytest.raises(RuntimeError, match="not an OS error"):  # other errors pass through unchanged
        atomic_torch_save({"x": 1}, tmp_path / "last.ckpt")


def test_the_fake_interrupted_writer_does_corrupt_a_plain_save(tmp_path, monkeypatch):
    """Control for the test above: without write-then-rename the same failure leaves a truncated file."""
    path = str(tmp_path / "plain.ckpt")
    torch.save({"x": torch.arange(1000)}, path)
    monkeypatch.setattr(torch, "save", _half_then_fail(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        torch.save({"x": torch.arange(2000)}, path)
    monkeypatch.undo()
    with pytest.raises(Exception):  # noqa: B017 - any unpickling/zip error: the file is broken
        torch.load(path, weights_only=True)
    atomic_torch_save({"x": torch.arange(3)}, path)  # and an atomic save replaces it cleanly
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))


def test_cli_trainer_writes_checkpoints_atomically_by_default(tmp_path):
    from lightning.fabric.plugins import TorchCheckpointIO

    from streamr1.cli import StreamR1CLI, StreamR1Trainer
    from streamr1.module import DMDModule as Module

    tiny = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny_random.yaml")
    common = dict(model_class=Module, datamodule_class=pl.LightningDataModule, subclass_mode_data=True,
                  trainer_class=StreamR1Trainer, auto_configure_optimizers=False, run=False)
    cli = StreamR1CLI(**common, args=["--config", tiny, "--trainer.logger", "false"])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    other = tmp_path / "plugins.yaml"
    other.write_text("trainer:\n  plugins:\n    - class_path: lightning.fabric.plugins.TorchCheckpointIO\n")
    cli = StreamR1CLI(**common, args=["--config", tiny, "--config", str(other), "--trainer.logger", "false"])
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO  # a configured CheckpointIO is kept
