"""The toy evaluator (oracle metrics as one torchmetrics collection) on world renders of known quality modes."""

from __future__ import annotations

import pytest
import torch

from streamr1.toy.metrics import METRIC_NAMES, ToyOracleMetrics
from streamr1.toy.world import MODES, ToyAttributes, ToyWorld, caption, render


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return ToyWorld(num_videos=96, seed=5)


def test_world_renders_give_the_known_good_fraction_and_full_coverage(world):
    metrics = ToyOracleMetrics(world=world)
    good = world.good_mask()
    metrics.update(world.videos[:48], world.captions[:48])  # two batches, one state
    metrics.update(world.videos[48:], world.captions[48:])
    out = metrics.compute()
    assert set(out) == set(METRIC_NAMES)
    true_fraction = float(good.float().mean())
    assert abs(float(out["good_fraction"]) - true_fraction) < 0.05  # the oracle classifies > 95% of renders right
    # every good world video is its own nearest good neighbour: (almost) all good modes are reached
    assert float(out["mode_coverage"]) > 0.9
    shares = sum(float(out[f"mode_{m}"]) for m in MODES)
    assert shares == pytest.approx(1.0)


def test_flawed_renders_are_not_good_and_cover_nothing(world):
    metrics = ToyOracleMetrics(world=world)
    attrs = [ToyAttributes("circle", "red", "left"), ToyAttributes("square", "blue", "up")]
    for mode in ("visual", "motion"):
        video = torch.stack([render(a, mode, seed=s) for a in attrs for s in range(4)])
        metrics.update(video, [caption(a) for a in attrs for _ in range(4)])
    out = metrics.compute()
    assert float(out["good_fraction"]) <= 0.125
    assert float(out["mode_coverage"]) <= 0.1
    assert float(out["mode_visual"]) + float(out["mode_motion"]) >= 0.85
    metrics.reset()
    good = torch.stack([render(attrs[0], "good", seed=s) for s in range(4)])
    metrics.update(good, [caption(attrs[0])] * 4)
    out = metrics.compute()
    assert float(out["good_fraction"]) == 1.0 and float(out["cell_coverage"]) == 1.0
    assert float(out["VQ"]) > 0.5 and float(out["MQ"]) > -0.5 and float(out["TA"]) > 0.75


def test_wrong_video_shape_names_the_fix(world):
    metrics = ToyOracleMetrics(world=world)
    with pytest.raises(ValueError, match="latent_shape"):
        metrics.update(torch.zeros(1, 4, 3, 32, 32), ["a red circle moving left"])
