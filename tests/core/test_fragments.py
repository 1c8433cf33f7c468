"""Fragments of a run (DESIGN.md, "Fragments a user layers"): a reward is its own fragment, never a stack's; a
missing or ill-fitting reward is refused at setup; every fit writes last.ckpt and a periodic checkpoint whatever
stack is layered, and ``--ckpt_path last`` after a crash continues with the same losses."""

from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from streamr1.callbacks.run_check import RunCheck
from streamr1.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")
STACK_DIR = os.path.join(ROOT, "callbacks")
STACKS = sorted(f[:-5] for f in os.listdir(STACK_DIR) if f.endswith(".yaml"))
REWARDS = os.path.join(ROOT, "configs", "rewards")


def stack(name: str) -> str:
    return os.path.join(STACK_DIR, f"{name}.yaml")


def reward(name: str) -> str:
    return os.path.join(REWARDS, f"{name}.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def _header(path: str) -> str:
    text = open(path, encoding="utf-8").read()
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


# ---------------------------------------------------------------------------------------------- the fragment files
@pytest.mark.parametrize("name", STACKS)
def test_no_stack_names_a_reward_model_or_a_checkpoint(name):
    cfg = yaml.safe_load(open(stack(name), encoding="utf-8"))
    assert set(cfg) == {"trainer"} and set(cfg["trainer"]) == {"callbacks"}
    paths = [cb["class_path"] for cb in cfg["trainer"]["callbacks"]]
    assert not [p for p in paths if "rewards" in p or p.endswith(("Reward", "RewardService", "Checkpoint"))]
    header = _header(stack(name))
    assert f"streamr1 fit --config configs/quickstart.yaml --config callbacks/{name}.yaml" in header
    if name != "dmd":  # every stack that weights by a reward shows the reward fragment in its command
        assert "--config configs/rewards/" in header


@pytest.mark.parametrize("name, model", [
    ("toy", "streamr1.rewards.openclip.OpenCLIPVideoReward"),
    ("toy_oracle", "streamr1.toy.oracle_reward.OracleReward"),
    ("videoreward", "streamr1.rewards.videoalign.VideoAlignReward"),
])
def test_each_reward_fragment_owns_only_the_reward_key_and_shows_its_command(name, model):
    cfg = yaml.safe_load(open(reward(name), encoding="utf-8"))
    assert set(cfg) == {"reward"}
    assert cfg["reward"]["model"]["class_path"] == model and cfg["reward"]["normalization"]
    assert f"--config configs/rewards/{name}.yaml" in _header(reward(name))


@pytest.mark.parametrize("recipe", ["quickstart", "wan2.1_t2v", "tiny_random"])
def test_every_recipe_header_shows_the_full_command(recipe):
    header = _header(os.path.join(ROOT, "configs", f"{recipe}.yaml"))
    assert f"fit --config configs/{recipe}.yaml" in header
    if recipe != "tiny_random":
        assert "--config callbacks/stream_r1.yaml" in header and "--config configs/rewards/" in header
        assert "--ckpt_path last" in header and "predict --config" in header


# ------------------------------------------------------------------------------------------ refused at setup
def test_a_stack_that_needs_a_reward_and_has_none_fails_at_setup_naming_the_fragment(tmp_path):
    with pytest.raises(ValueError, match=r"ReliabilityWeighting need a reward model.*`--config "
                                         r"configs/rewards/toy.yaml`"):
        main(["fit", "--config", TINY, "--config", stack("reward_forcing"), "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_checkpointing", "true"])
    assert not glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)  # refused before any step


def test_the_toy_reward_on_a_480x832_video_is_refused_at_setup_naming_videoreward(tmp_path):
    # the tiny recipe decodes its latent as it is (identity VAE): a 480x832 latent is a 480x832 video
    with pytest.raises(ValueError, match=r"OpenCLIPVideoReward was made for \d+x\d+ frames, but this recipe decodes "
                                         r"480x832 frames.*`--config configs/rewards/videoreward.yaml`"):
        main(["fit", "--config", TINY, "--config", stack("stream_r1"), "--config", reward("toy"),
              "--model.latent_shape", "[2, 3, 480, 832]", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path)])


def _wan_module(frames: int = 21, height: int = 60, width: int = 104):
    vae = SimpleNamespace(spatial_compression=8, num_pixel_frames=lambda f: 1 + 4 * (f - 1))
    return SimpleNamespace(latent_shape=(frames, 16, height, width), vae=vae)


def _trainer_with(model):
    return SimpleNamespace(callbacks=[SimpleNamespace(model=model, evaluate=lambda ctx: None)])


def test_rewards_and_statistics_are_checked_against_the_decoded_size():
    wan, toy = _wan_module(), SimpleNamespace(latent_shape=(8, 3, 16, 16), vae=SimpleNamespace())
    videoreward = SimpleNamespace(size=(336, 588))  # VideoAlignReward's resize target
    RunCheck(reward_statistics="/ckpt/videoreward_stats.json").check(_trainer_with(videoreward), wan)  # fits
    with pytest.raises(ValueError, match=r"made for 336x588 frames, but this recipe decodes 16x16 frames.*"
                                         r"`--config configs/rewards/toy.yaml`"):
        RunCheck().check(_trainer_with(videoreward), toy)
    # a reward that declares no frame size (the oracle) with the toy world's statistics on a Wan-size recipe
    with pytest.raises(ValueError, match=r"statistics pkg://streamr1/assets/toy_oracle_stats.json are the toy "
                                         r"world's.*480x832.*`--config configs/rewards/videoreward.yaml`"):
        RunCheck(reward_statistics="pkg://streamr1/assets/toy_oracle_stats.json").check(
            _trainer_with(object()), wan)
    # 4x per side is the limit: a 240x416 Wan latent (half size) with the 336x588 reward is fine
    RunCheck().check(_trainer_with(videoreward), _wan_module(height=30, width=52))
    # an old config's RewardService in trainer.callbacks plus a reward fragment: two services, refused
    two = SimpleNamespace(callbacks=[*_trainer_with(videoreward).callbacks, *_trainer_with(videoreward).callbacks])
    with pytest.raises(ValueError, match=r"2 reward services on the trainer .*top-level `reward:` key"):
        RunCheck().check(two, wan)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_recipe_plus_a_stack_writes_last_and_periodic_checkpoints(tmp_path, capsys):
    main(["fit", "--config", TINY, "--config", stack("dmd"), "--trainer.enable_checkpointing", "true",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_steps", "10",
          "--checkpoint.every_n_train_steps", "7", "--trainer.enable_progress_bar", "false"])
    folder = tmp_path / "tiny_random" / "version_0" / "checkpoints"
    # global_step after each cycle: 2 3 4 5 6 8 9 10 (a student cycle steps both optimizers). It never equals 7,
    # so a `global_step % 7 == 0` test would never save; crossing 7 saves at 8, and last.ckpt holds the end.
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step=8.ckpt"]
    assert torch.load(folder / "step=8.ckpt", weights_only=True)["global_step"] == 8
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 10
    out = capsys.readouterr().out
    assert (f"[streamr1] weighting: none: plain DMD | reward: none | checkpoints: {folder} (last.ckpt at every save "
            "and at the end; every 7 optimizer steps (newest 1 kept); resume with --ckpt_path last)") in out


def test_the_fit_start_line_names_the_stack_the_reward_and_its_statistics(tmp_path, capsys):
    main(["fit", "--config", TINY, "--config", stack("stream_r1"), "--config", reward("toy"),
          "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1",
          "--trainer.enable_progress_bar", "false"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[streamr1] weighting:"))
    assert ("weighting: stream_r1.yaml: AdaptiveAxisBalancing -> ReliabilityWeighting(BalancedOverall) -> "
            "SaliencyWeighting(adaptive) | reward: OpenCLIPVideoReward, statistics "
            "pkg://streamr1/assets/toy_reward_stats.json | checkpoints: none (trainer.enable_checkpointing is "
            "false)") in line


class CrashAt(Callback):
    """Raises once ``trainer.global_step`` reaches ``step`` (after that batch's optimizer steps, before its save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at global_step {trainer.global_step}")


def _recorder(cli):
    return next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LossRecorder")


def test_a_crash_then_ckpt_path_last_continues_with_the_same_losses(tmp_path, deterministic):
    # One prompt: the prompt loader is not resumable (a mid-epoch resume restarts its order); with one prompt every
    # order is the same, so the test isolates what the checkpoint restores.
    args = ["fit", "--config", TINY, "--config", stack("dmd"), "--trainer.enable_checkpointing", "true",
            "--trainer.max_steps", "12", "--checkpoint.every_n_train_steps", "2", "--model.dmd.student_every", "2",
            "--data.init_args.prompts", '["a red circle moving left"]', "--data.init_args.batch_size", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=tests.helpers.LossRecorder"]
    full = _recorder(main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "full")]))
    run = ["--trainer.logger.init_args.save_dir", str(tmp_path / "run")]
    # global_step after each cycle: 2 3 5 6 8 ...; the crash at 8 comes before that save: last.ckpt is step 6
    with pytest.raises(RuntimeError, match="simulated crash at global_step 8"):
        main([*args, *run, "--trainer.callbacks+=tests.core.test_fragments.CrashAt", "--trainer.callbacks.step", "8"])
    last = tmp_path / "run" / "tiny_random" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    resumed = main([*args, *run, "--ckpt_path", "last"])  # a new version_1 folder: last is found in version_0
    assert resumed.trainer.global_step == 12 and resumed.model.student_steps == 4
    rec = _recorder(resumed)
    assert [kind for kind, *_ in full.losses].count("student") == 4
    assert rec.losses == [e for e in full.losses if e[1] >= 4]  # cycles 4..7, the same numbers exactly
    assert rec.exits == full.exits[-len(rec.exits):]
