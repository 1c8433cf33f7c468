"""The ``streamr1`` CLI: fit, predict, --help, --print_config, composition, bad keys."""

from __future__ import annotations

import glob
import json
import os

import pytest

from streamr1.cli import main

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


def test_fit_then_predict_writes_videos_and_reports_fps(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    main(["fit", "--config", TINY, "--trainer.logger.init_args.save_dir", runs, "--trainer.max_steps", "2",
          "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", runs])
    ckpts = glob.glob(os.path.join(runs, "**", "*.ckpt"), recursive=True)
    assert ckpts, "fit wrote no checkpoint"
    vids = str(tmp_path / "videos")
    main(["predict", "--config", TINY, "--ckpt_path", ckpts[0], "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path),
          "--trainer.callbacks+=streamr1.callbacks.video_writer.VideoWriter",
          "--trainer.callbacks.output_dir", vids])
    mp4s = glob.glob(os.path.join(vids, "*.mp4"))
    assert len(mp4s) == 3  # the 3 inline prompts (validation prompts default to the first num_val=4)
    speed = json.load(open(os.path.join(vids, "speed_r0.json")))
    assert speed["frames"] == 3 * 4 and speed["frames_per_second"] > 0
    assert "frames/s" in capsys.readouterr().out
