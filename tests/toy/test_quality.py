"""The quality table's arithmetic, and the table and the demo end to end on a very short budget (slow)."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from streamr1.toy.quality import aggregate, table_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_aggregate_is_mean_and_unbiased_std_over_seeds():
    runs = {"dmd": [{"good_fraction": 0.2}, {"good_fraction": 0.4}, {"good_fraction": 0.6}],
            "init": [{"good_fraction": 0.3}]}
    agg = aggregate(runs)
    mean, std = agg["dmd"]["good_fraction"]
    assert mean == pytest.approx(0.4)
    assert std == pytest.approx(math.sqrt((0.04 + 0 + 0.04) / 2))  # = 0.2
    assert agg["init"]["good_fraction"] == (0.3, 0.0)  # one run: std 0


def test_table_has_one_row_per_stack_with_mean_and_std():
    agg = {"dmd": {"good_fraction": (0.4, 0.2)}, "stream_r1": {"good_fraction": (0.5, 0.1)}}
    info = {"command": "c", "seeds": [0, 1, 2], "max_steps": 6, "critic_steps": 5, "student_steps": 1,
            "batch_size": 4, "samples": 48, "repeats": 1, "seconds": 60.0, "threads": [2], "fit_minutes": 1.0}
    md = table_markdown(agg, info)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| run | good-mode fraction |"
    assert rows[1] == "| plain DMD (Self-Forcing) | 0.400 ± 0.200 |"
    assert rows[2] == "| Stream-R1 | 0.500 ± 0.100 |"


@pytest.mark.slow
def test_quality_table_and_demo_run_end_to_end(tmp_path, monkeypatch):
    from streamr1.toy import demo, quality

    monkeypatch.chdir(ROOT)
    out = quality.main(["--output", str(tmp_path / "results"), "--logs", str(tmp_path / "logs"),
                        "--stacks", "dmd", "stream_r1", "--seeds", "0", "1", "--max-steps", "2", "--repeats", "1"])
    assert set(out["mean_std"]) == {"init", "dmd", "stream_r1"}
    for name in ("quality.md", "quality.json", "quality.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    data = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert len(data["runs"]["dmd"]) == 2 and data["info"]["seeds"] == [0, 1]
    # the batch is read from each run (the recipe's 4), not assumed
    assert {r["batch_size"] for r in data["runs"]["dmd"]} == {4.0} and data["info"]["batch_size"] == "4"
    report = demo.main(["--output", str(tmp_path / "demo"), "--max-steps", "2", "--repeats", "1"])
    assert report["student_steps"] == 1 and len(report["mp4s"]) == 48
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# Stream-R1 on the toy world")
    # A second demo into the same folder predicts from its own checkpoint, not the first run's last.ckpt.
    started = time.time()
    again = demo.main(["--output", str(tmp_path / "demo"), "--max-steps", "2", "--repeats", "1"])
    assert again["checkpoint"] != report["checkpoint"] and os.path.getmtime(again["checkpoint"]) >= started - 1


def test_asset_overrides_point_each_stack_at_the_folder(tmp_path):
    from streamr1.toy import assets
    from streamr1.toy.runs import asset_overrides, asset_paths

    with pytest.raises(FileNotFoundError, match="lacks the toy files"):
        asset_paths(str(tmp_path))
    for name in (assets.STUDENT_FILE, assets.PRETRAINED_FILE, assets.REWARD_FILE, assets.STATS_FILE,
                 assets.ORACLE_STATS_FILE):
        (tmp_path / name).write_bytes(b"")
    base = ["--model.student.init_args.pretrained", str(tmp_path / assets.STUDENT_FILE),
            "--model.critic.init_args.pretrained", str(tmp_path / assets.PRETRAINED_FILE)]
    assert asset_overrides("dmd", None) == []
    assert asset_overrides("dmd", str(tmp_path)) == base  # no reward in plain DMD
    assert asset_overrides("stream_r1", str(tmp_path)) == base + [
        "--reward.model.init_args.state_path", str(tmp_path / assets.REWARD_FILE),
        "--reward.normalization", str(tmp_path / assets.STATS_FILE)]
    assert asset_overrides("oracle_reliability", str(tmp_path)) == base + [
        "--reward.normalization", str(tmp_path / assets.ORACLE_STATS_FILE)]
