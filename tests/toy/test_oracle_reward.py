"""OracleReward: the toy oracle behind the RewardModel protocol (videos in [0, 1])."""

from __future__ import annotations

import torch

from streamr1.rewards.service import RewardService
from streamr1.toy.oracle import oracle_scores
from streamr1.toy.oracle_reward import OracleReward
from streamr1.toy.world import ToyAttributes, caption, render


def test_scores_are_the_oracles_on_the_same_pixels_and_rank_the_flaws():
    a = ToyAttributes("circle", "red", "right")
    video = torch.stack([render(a, mode, seed=1) for mode in ("good", "visual", "motion", "text")])  # [-1, 1]
    prompts = [caption(a)] * 4
    got = OracleReward()((video + 1) / 2, prompts)
    want = oracle_scores(video, prompts)
    for axis in ("VQ", "MQ", "TA"):
        torch.testing.assert_close(got[axis], want[axis], atol=1e-5, rtol=1e-5)
    assert got["VQ"][0] > got["VQ"][1] and got["MQ"][0] > got["MQ"][2] and got["TA"][0] > got["TA"][3]


def test_the_service_scores_with_it_and_normalises():
    a = ToyAttributes("square", "blue", "up")
    video = torch.stack([render(a, "good", seed=s) for s in range(3)])
    service = RewardService(OracleReward(), normalization={"VQ": [1.0, 2.0], "MQ": [0.0, 1.0], "TA": [0.5, 0.25]})
    service.prepare("cpu")
    result = service.score(video, [caption(a)] * 3)  # the service takes [-1, 1] and hands the model [0, 1]
    torch.testing.assert_close(result.raw["VQ"], oracle_scores(video, [caption(a)] * 3)["VQ"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.normalized["VQ"], (result.raw["VQ"] - 1.0) / 2.0)
    torch.testing.assert_close(result.normalized["TA"], (result.raw["TA"] - 0.5) / 0.25)
