"""``streamr1 evaluate`` through the CLI: one process, and two CPU processes (gloo) splitting the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamr1.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_random.yaml")
CLIP = '{"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, ' \
       '"head_width": 16}, "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, ' \
       '"layers": 1}}'
REWARD = """
trainer:
  logger: false
  callbacks:
    - class_path: streamr1.rewards.service.RewardService
      init_args:
        model:
          class_path: streamr1.rewards.openclip.OpenCLIPVideoReward
          init_args:
            model_config: {embed_dim: 32, vision_cfg: {image_size: 32, layers: 1, width: 32, patch_size: 8,
                           head_width: 16}, text_cfg: {context_length: 16, vocab_size: 49408, width: 32, heads: 2,
                           layers: 1}}
"""


def _args(tmp_path, out: str) -> list[str]:
    extra = tmp_path / "reward.yaml"
    extra.write_text(REWARD)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\na green triangle moving right\n")
    return ["evaluate", "--config", TINY, "--config", str(extra), "--output_dir", out, "--prompts_file",
            str(prompts), "--num_samples", "3", "--batch_size", "2", "--clip_model_config", CLIP]


def _bytes(folder) -> dict[str, bytes]:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_evaluate_command_writes_videos_and_summary(tmp_path, capsys):
    out = str(tmp_path / "one")
    main(_args(tmp_path, out))
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["num_videos"] == 9 and len(os.listdir(os.path.join(out, "videos"))) == 9
    assert set(summary["reward"]["raw"]) == {"VQ", "MQ", "TA"}  # the recipe's RewardService was found
    assert summary["clip_score"]["value"] >= 0
    assert summary["run"] == {"checkpoint": None, "ema": False, "suite_source": str(tmp_path / "prompts.txt")}
    assert "frames/s" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_split_the_suite_and_write_what_one_process_writes(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    main(_args(tmp_path, one))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "streamr1.cli", *_args(tmp_path, two), "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.accelerator", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    s1 = json.loads(open(os.path.join(one, "summary.json")).read())
    s2 = json.loads(open(os.path.join(two, "summary.json")).read())
    # 9 videos in batches of 2 -> 5 batches: rank 0 makes batches 0, 2, 4 (5 videos), rank 1 batches 1, 3 (4)
    assert [r["generated_videos"] for r in s2["speed"]["per_rank"]] == [5, 4]
    assert _bytes(os.path.join(one, "videos")) == _bytes(os.path.join(two, "videos"))
    assert [r["file"] for r in s2["videos"]] == [r["file"] for r in s1["videos"]]  # every video once
    # the metrics are synced over both ranks: the same numbers as one process
    assert s2["clip_score"]["value"] == pytest.approx(s1["clip_score"]["value"], abs=1e-4)
    for axis in ("VQ", "MQ", "TA"):
        assert s2["reward"]["raw"][axis] == pytest.approx(s1["reward"]["raw"][axis], abs=1e-5)


@pytest.mark.slow  # a fit and three evaluations through the CLI: about 20 s
def test_evaluate_samples_the_checkpoint_ema_unless_told_not_to(tmp_path):
    """A checkpoint with a StudentEMA: evaluate uses the EMA weights (the summary says so); --use_ema false the trained
    ones, which are other weights, so the same folder is refused as another run."""
    extra = tmp_path / "fit.yaml"
    extra.write_text(f"""
trainer:
  logger: false
  max_steps: 4                 # 2 cycles with student_every 1: 2 critic + 2 student steps
  enable_checkpointing: true
  callbacks:
    - class_path: streamr1.callbacks.ema.StudentEMA
      init_args: {{decay: 0.5}}
model:
  dmd: {{student_every: 1}}
checkpoint: {{dirpath: {tmp_path / "ckpt"}}}
""")
    main(["fit", "--config", TINY, "--config", str(extra), "--trainer.default_root_dir", str(tmp_path)])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    args = ["evaluate", "--config", TINY, "--trainer.logger", "false", "--ckpt_path", ckpt, "--num_samples", "1",
            "--prompts", '["a red circle moving left"]', "--output_dir", str(tmp_path / "eval")]
    main(args)
    summary = json.loads(open(os.path.join(tmp_path, "eval", "summary.json")).read())
    assert summary["run"]["ema"] is True and summary["run"]["checkpoint"] == ckpt
    with pytest.raises(ValueError, match=r"another evaluation \(its manifest differs in \['weights'\]"):
        main([*args, "--use_ema", "false"])
    main([*args[:-1], str(tmp_path / "trained"), "--use_ema", "false"])
    assert json.loads(open(os.path.join(tmp_path, "trained", "summary.json")).read())["run"]["ema"] is False
