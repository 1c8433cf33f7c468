"""The weight-tilt measurement (streamr1.toy.tilt) against hand-computed shares and the callbacks' formulas."""

from __future__ import annotations

import json
import math

import pytest
import torch

from streamr1 import toy
from streamr1.toy import tilt


def test_weight_shares_by_hand():
    # weights 1, 3, 4 on good, visual, good: good 5/8, visual 3/8; ESS = 8^2 / (3 * (1 + 9 + 16)) = 64/78
    out = tilt.weight_shares(torch.tensor([1.0, 3.0, 4.0]), ["good", "visual", "good"])
    assert out["share_good"] == pytest.approx(5 / 8)
    assert out["share_visual"] == pytest.approx(3 / 8)
    assert out["share_motion"] == 0.0 and out["share_text"] == 0.0
    assert out["ess"] == pytest.approx(64 / 78)
    uniform = tilt.weight_shares(torch.ones(4), ["good", "motion", "text", "good"])
    assert uniform["share_good"] == 0.5 and uniform["ess"] == pytest.approx(1.0)


@pytest.mark.parametrize("weights", [[1.0, float("nan")], [1.0, -1.0], [0.0, 0.0]])
def test_weight_shares_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="finite, non-negative"):
        tilt.weight_shares(torch.tensor(weights), ["good", "good"])
    with pytest.raises(ValueError, match="one weight per rollout"):
        tilt.weight_shares(torch.ones(3), ["good"])


def test_zscore_and_nan_reward():
    z = tilt.zscore({"VQ": torch.tensor([1.0, 2.0, 3.0])})["VQ"]
    torch.testing.assert_close(z, torch.tensor([-1.0, 0.0, 1.0]))  # sample std of 1, 2, 3 is 1
    with pytest.raises(ValueError, match="non-finite"):
        tilt.zscore({"MQ": torch.tensor([1.0, float("nan")])})


class AxisReward(torch.nn.Module):
    """A reward whose every axis scores the rollout's index: later rollouts weigh exp(2 z) more."""

    def forward(self, video, prompts):
        n = video.shape[0]
        return {a: torch.arange(n, dtype=torch.float32) for a in ("VQ", "MQ", "TA")}


def test_measure_uses_the_callbacks_weight_on_teacher_rollouts():
    video, prompts = tilt.teacher_rollouts(repeats=1, seed=0)
    n = toy.WORLD["num_captions"]
    assert video.shape == (n, *toy.LATENT_SHAPE) and len(prompts) == n
    assert float(video.min()) >= -1 and float(video.max()) <= 1
    from streamr1.toy.oracle import classify_mode, oracle_scores

    modes = classify_mode(oracle_scores(video, prompts))
    out = tilt.measure(video, prompts, AxisReward())
    # W = 1: the oracle's own mode mix
    assert out["dmd"]["share_good"] == pytest.approx(modes.count("good") / n)
    # every toy row: r_final = z-score of the index (all axes equal), W_i = exp(2 z_i)
    z = (torch.arange(float(n)) - (n - 1) / 2) / torch.arange(float(n)).std()
    w = torch.exp(2 * z.double())
    expected = float(sum(wi for wi, m in zip(w, modes, strict=True) if m == "good") / w.sum())
    for row in ("reward_forcing", "stream_r1", "vq_only", "ta_only"):
        assert out[row]["share_good"] == pytest.approx(expected, rel=1e-5)
    for row in out.values():
        assert math.fsum(row[f"share_{m}"] for m in ("good", "visual", "motion", "text")) == pytest.approx(1.0)


def test_main_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(tilt, "teacher_rollouts", lambda repeats, seed, world=None: _fake_rollouts(seed))
    payload = tilt.main(["--output", str(tmp_path), "--repeats", "1", "--seeds", "0", "1"])
    assert len(payload["per_seed"]) == 2 and set(payload["per_seed"][0]) == set(tilt.ROWS)
    text = (tmp_path / "tilt.md").read_text()
    assert text.count("\n| ") == len(tilt.ROWS) + 1  # header row + one row a weighting
    assert json.loads((tmp_path / "tilt.json").read_text())["info"]["seeds"] == [0, 1]


def _fake_rollouts(seed):
    from streamr1.toy.world import ToyAttributes, caption, render

    attrs = [ToyAttributes("circle", "red", "left"), ToyAttributes("square", "blue", "up")]
    video = torch.stack([render(a, mode, seed=seed) for a in attrs for mode in ("good", "visual")])
    return video, [caption(a) for a in attrs for _ in range(2)]
