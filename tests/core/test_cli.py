"""The ``streamr1`` CLI: fit, predict, --help, --print_config, composition, bad keys."""

from __future__ import annotations

import glob
import json
import os

import av
import pytest
import torch

from streamr1.cli import main
from streamr1.sampling import NotLoaded

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")


def _run(args, capsys=None):
    return main(args)


def test_help_documents_arguments_from_docstrings(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.dmd.student_every" in out
    assert "student takes an optimizer step every this many optimizer cycles" in out
    assert "--model.dmd.accumulate" in out
    # the fragments' top-level keys: the reward, the checkpoint every fit writes, predict's video writer
    for key in ("--reward ", "--checkpoint.every_n_train_steps", "--checkpoint.save_top_k", "--video.fps"):
        assert key in out, key


def test_print_config_composes_two_configs(tmp_path, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  dmd:\n    student_every: 3\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY, "--config", str(extra), "--print_config"])
    out = capsys.readouterr().out
    assert "student_every: 3" in out and "CausalWanDenoiser" in out


def test_unknown_config_key_fails_and_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  studnet_every: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", TINY, "--config", str(bad)])
    assert e.value.code != 0
    assert "studnet_every" in capsys.readouterr().err


def test_predict_samples_the_checkpoints_student_at_the_command_lines_shape_and_streams_videos(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    main(["fit", "--config", TINY, "--config", os.path.join(ROOT, "callbacks", "dmd.yaml"),  # dmd: a StudentEMA
          "--trainer.logger.init_args.save_dir", runs, "--trainer.max_steps", "4", "--model.dmd.student_every", "1",
          "--trainer.enable_checkpointing", "true", "--trainer.enable_progress_bar", "false"])  # 2 student steps
    (last,) = glob.glob(os.path.join(runs, "**", "last.ckpt"), recursive=True)
    vids = str(tmp_path / "videos")
    # the same fragments as a Stream-R1 fit (stack + reward): predict builds neither the reward nor teacher/critic
    cli = main(["predict", "--config", TINY, "--config", os.path.join(ROOT, "callbacks", "stream_r1.yaml"),
                "--config", os.path.join(ROOT, "configs", "rewards", "toy.yaml"),
                "--trainer.logger.init_args.save_dir", runs, "--ckpt_path", "last",  # the newest last.ckpt of the run
                "--model.latent_shape", "[6, 3, 8, 8]",  # the checkpoint was trained at [4, 3, 16, 16]
                "--model.student.init_args.local_window_frames", "4", "--model.student.init_args.sink_frames", "2",
                "--video.output_dir", vids, "--video.fps", "5", "--trainer.enable_progress_bar", "false"])
    m = cli.model
    assert isinstance(m.teacher, NotLoaded) and isinstance(m.critic, NotLoaded)
    assert not [cb for cb in cli.trainer.callbacks if type(cb).__name__ in ("RewardService", "RunCheckpoint")]
    assert m.latent_shape == (6, 3, 8, 8) and torch.load(last, weights_only=True)["streamr1"]["latent_shape"] == [
        4, 3, 16, 16]
    assert (m.student.causal.local_window_frames, m.student.causal.sink_frames) == (4, 2)
    ckpt = torch.load(last, weights_only=True)
    (ema,) = [v["shadow"] for k, v in ckpt["callbacks"].items() if k.startswith("StudentEMA")]
    assert all(torch.equal(m.student.state_dict()[k], v) for k, v in ema.items())  # the EMA weights are sampled
    assert cli.trainer.predict_loop.return_predictions is False  # nothing kept in memory
    mp4s = sorted(glob.glob(os.path.join(vids, "*.mp4")))
    assert len(mp4s) == 3  # the 3 inline prompts
    with av.open(mp4s[0]) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 5
    assert len(frames) == 6 and frames[0].shape == (8, 8, 3)
    speed = json.load(open(os.path.join(vids, "speed_r0.json")))
    assert speed["frames"] == 3 * 6 and speed["frames_per_second"] > 0
    out = capsys.readouterr().out
    assert "frames/s" in out and "sampling with the EMA student weights" in out
    assert "latent_shape: [6, 3, 8, 8] from the config (the checkpoint was trained with [4, 3, 16, 16])" in out
    assert "sampling: " not in out  # the shape was changed on purpose; the few-step list and shift were not

    out_dir = str(tmp_path / "student")  # export finds the same last.ckpt
    main(["export", "--config", TINY, "--trainer.logger.init_args.save_dir", runs, "--ckpt_path", "last",
          "--output_dir", out_dir])
    assert os.path.isfile(os.path.join(out_dir, "config.json"))

    raw = main(["predict", "--config", TINY, "--ckpt_path", last, "--use_ema", "false", "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]).model
    trained = {k[len("student."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    assert all(torch.equal(raw.student.state_dict()[k], v) for k, v in trained.items())
    assert any(not torch.equal(trained[k], v) for k, v in ema.items())  # the two runs sampled different weights


def test_predict_warns_without_a_checkpoint_and_without_a_writer(tmp_path):
    with pytest.warns(UserWarning) as record:
        main(["predict", "--config", TINY, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"])
    messages = [str(w.message) for w in record]
    assert any("has no --ckpt_path: sampling with the recipe's initial student weights" in m for m in messages)
    assert any("writes nothing: no video writer is configured. Pass --video.output_dir" in m for m in messages)
    assert not glob.glob(str(tmp_path / "**" / "*.mp4"), recursive=True)


def test_ckpt_path_last_without_a_last_checkpoint_is_refused_by_sampling_commands(tmp_path):
    for command in (["predict"], ["export", "--output_dir", str(tmp_path / "out")]):
        with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last.ckpt in this run's checkpoint folders"):
            main([*command[:1], "--config", TINY, "--trainer.logger", "false", "--trainer.default_root_dir",
                  str(tmp_path), "--ckpt_path", "last", *command[1:]])
