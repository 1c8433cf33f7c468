"""Video files feed evaluation and reward calibration: toy-world renders written as mp4 by the test, read back.

The renders' quality modes are known, so the oracle's answer on the files is known too; the calibration through
``streamr1 calibrate --video_dir`` must equal the statistics of the reward's scores on the same decoded files.
"""

from __future__ import annotations

import os

import pytest
import torch

from streamr1.data.videos import VideoFolderDataset, write_video
from streamr1.toy.evaluation import evaluate_folder, evaluate_videos
from streamr1.toy.world import ToyAttributes, ToyWorld, caption, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CELLS = [ToyAttributes("circle", "red", "left"), ToyAttributes("square", "blue", "up"),
         ToyAttributes("triangle", "green", "right")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 videos: per cell, 2 good renders and one of each flaw (visual, motion); sidecar .txt captions."""
    root = tmp_path_factory.mktemp("videos")
    n = 0
    for a in CELLS:
        for mode, seed in (("good", 0), ("good", 1), ("visual", 2), ("motion", 3)):
            write_video(str(root / f"{n:03d}.mp4"), render(a, mode, seed=seed))
            (root / f"{n:03d}.txt").write_text(caption(a))
            n += 1
    return root


@pytest.fixture(scope="module")
def world():
    return ToyWorld(num_videos=96, seed=5)


def test_oracle_on_the_files_sees_the_known_modes(folder, world):
    out = evaluate_folder(str(folder), world=world)
    assert out["good_fraction"] == pytest.approx(0.5, abs=1 / 12)  # 6 good of 12, codec may flip at most one
    assert out["cell_coverage"] == 1.0  # every cell has a good video
    assert out["mode_visual"] + out["mode_motion"] >= 5 / 12


def test_calibrate_reads_the_folder_through_the_cli(folder, tmp_path):
    from streamr1.cli import main
    from streamr1.rewards.normalization import read_stats
    from streamr1.toy.reward import reward_scores, toy_reward

    out = tmp_path / "stats.json"
    main(["calibrate", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
          "--config", os.path.join(ROOT, "configs", "rewards", "toy.yaml"), "--trainer.logger", "false",
          "--video_dir", str(folder), "--output", str(out)])
    stats = read_stats(out)
    # the same files decoded the same way, scored by the same reward: mean and unbiased std (RewardStatistics)
    ds = VideoFolderDataset(str(folder))
    video = torch.stack([ds[i]["video"] for i in range(len(ds))])
    scores = reward_scores(toy_reward("pkg://streamr1/assets/toy_reward.pt"), video, ds.prompts)
    for axis, s in scores.items():
        s = s.double()
        assert stats[axis]["mean"] == pytest.approx(float(s.mean()), rel=1e-4, abs=1e-5)
        assert stats[axis]["std"] == pytest.approx(float(s.std()), rel=1e-4, abs=1e-6)
        assert stats[axis]["count"] == 12


def test_files_and_tensors_give_the_same_oracle_numbers(folder, world):
    ds = VideoFolderDataset(str(folder))
    video = torch.stack([ds[i]["video"] for i in range(len(ds))])
    assert evaluate_folder(str(folder), world=world) == evaluate_videos(video, ds.prompts, world)
