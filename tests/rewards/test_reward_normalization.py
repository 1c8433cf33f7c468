"""Per-axis z-normalisation, running statistics and calibration (SPEC.md §4.1)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from streamr1.rewards.calibration import calibrate_from_rollouts, calibrate_from_videos
from streamr1.rewards.normalization import RewardNormalizer, RewardStatistics, to_unit
from streamr1.rewards.service import RewardService

STATS = {"VQ": {"mean": 1.0, "std": 2.0}, "MQ": {"mean": -0.5, "std": 0.25}, "TA": {"mean": 0.5, "std": 0.0}}


def test_normalizer_against_hand_values():
    norm = RewardNormalizer(STATS)
    raw = {"VQ": torch.tensor([3.0, 1.0]), "MQ": torch.tensor([0.0, -1.0]), "TA": torch.tensor([0.5, 0.5 + 2**-20])}
    out = norm(raw)
    assert torch.allclose(out["VQ"], torch.tensor([1.0, 0.0]))  # (3 - 1) / 2, (1 - 1) / 2
    assert torch.allclose(out["MQ"], torch.tensor([2.0, -2.0]))  # (0 + .5) / .25, (-1 + .5) / .25
    assert norm.std[2].item() == pytest.approx(1e-6)  # std floor
    assert torch.allclose(out["TA"], torch.tensor([0.0, 2**-20 / 1e-6]))  # / floor, not / 0
    assert norm.calibrated and not RewardNormalizer().calibrated
    ident = RewardNormalizer()({"VQ": torch.tensor([5.0]), "MQ": torch.tensor([6.0]), "TA": torch.tensor([7.0])})
    assert [v.item() for v in ident.values()] == [5.0, 6.0, 7.0]
    assert torch.isnan(norm({"VQ": torch.tensor([math.nan]), "MQ": torch.zeros(1), "TA": torch.zeros(1)})["VQ"]).all()


def test_normalizer_accepts_pairs_and_names_missing_axes():
    norm = RewardNormalizer({"VQ": [1.0, 2.0], "MQ": (0.0, 1.0), "TA": {"mean": 0, "std": 1}, "extra": [9, 9]})
    assert norm.to_dict()["VQ"] == {"mean": 1.0, "std": 2.0}
    with pytest.raises(ValueError, match=r"\['TA'\]"):
        RewardNormalizer({"VQ": [0, 1], "MQ": [0, 1]})
    with pytest.raises(ValueError, match="finite"):
        RewardNormalizer({"VQ": [math.nan, 1], "MQ": [0, 1], "TA": [0, 1]})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_normalizer_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"sub/stats{suffix}"
    RewardNormalizer(STATS).save(path)
    loaded = RewardNormalizer.load(path)
    assert loaded.axes == ("VQ", "MQ", "TA")
    assert loaded.to_dict() == RewardNormalizer(STATS).to_dict()
    assert RewardNormalizer.from_config(str(path)).to_dict() == loaded.to_dict()
    assert RewardNormalizer.load(path, axes=["TA"]).axes == ("TA",)
    with pytest.raises(FileNotFoundError, match="streamr1 calibrate"):
        RewardNormalizer.load(tmp_path / "missing.json")


def test_reward_statistics_match_torch():
    data = torch.tensor([[0.5, -1.0, 2.0], [1.5, 3.0, 2.0], [2.5, 0.0, 2.0], [-4.0, 7.5, 2.0], [3.0, 1.0, 2.0]])
    metric = RewardStatistics(axes=("VQ", "MQ", "TA"))
    metric.update({"VQ": data[:2, 0], "MQ": data[:2, 1], "TA": data[:2, 2]})
    metric.update({"VQ": data[2:, 0], "MQ": data[2:, 1], "TA": data[2:, 2], "other": torch.zeros(3)})
    metric.update({"VQ": torch.tensor([math.nan]), "MQ": torch.tensor([math.inf]), "TA": torch.tensor([-math.inf])})
    out = metric.compute()
    for i, axis in enumerate(("VQ", "MQ", "TA")):
        mean, std = out[axis]
        assert mean.item() == pytest.approx(data[:, i].double().mean().item(), abs=1e-12)
        assert std.item() == pytest.approx(data[:, i].double().std().item(), abs=1e-9)  # unbiased, like torch
    stats = metric.stats_dict()
    assert stats["MQ"]["count"] == 5 and json.dumps(stats)
    single = RewardStatistics(axes=("VQ",))
    single.update({"VQ": torch.tensor([4.0])})
    assert single.compute()["VQ"][1].item() == 0.0


class PixelMeanReward(nn.Module):
    """VQ = mean pixel, MQ = mean |frame difference|, TA = prompt length: easy to compute by hand."""

    axes = ("VQ", "MQ", "TA")

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, video, prompts):
        assert video.min() >= 0 and video.max() <= 1
        return {"VQ": self.scale * video.mean(dim=(1, 2, 3, 4)),
                "MQ": (video[:, 1:] - video[:, :-1]).abs().mean(dim=(1, 2, 3, 4)),
                "TA": torch.tensor([float(len(p)) for p in prompts])}


def test_calibrate_from_videos_and_rollouts(tmp_path):
    g = torch.Generator().manual_seed(0)
    videos = [(torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, "x" * (i + 1)) for i in range(5)]
    videos.append((torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, "y"))  # another shape: its own batch
    reward = PixelMeanReward()
    stats = calibrate_from_videos(reward, iter(videos), batch_size=2, output=tmp_path / "stats.json")
    unit = [((v + 1) / 2) for v, _ in videos]
    vq = torch.stack([u.mean() for u in unit]).double()
    ta = torch.tensor([len(p) for _, p in videos], dtype=torch.float64)
    assert stats["VQ"]["mean"] == pytest.approx(vq.mean().item(), abs=1e-6)
    assert stats["VQ"]["std"] == pytest.approx(vq.std().item(), abs=1e-6)
    assert stats["TA"] == {"mean": pytest.approx(ta.mean().item()), "std": pytest.approx(ta.std().item()), "count": 6}
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    assert RewardNormalizer.load(tmp_path / "stats.json").to_dict()["TA"]["mean"] == pytest.approx(ta.mean().item())

    calls = []

    def generate(prompts):
        calls.append(list(prompts))
        return torch.stack([videos[len(p) - 1][0] for p in prompts])

    prompts = ["x" * (i + 1) for i in range(5)]
    again = calibrate_from_rollouts(reward, generate, prompts, batch_size=2, axes=["TA", "VQ"])
    assert list(again) == ["TA", "VQ"] and [len(c) for c in calls] == [2, 2, 1]
    assert again["VQ"]["mean"] == pytest.approx(vq[:5].mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_from_videos(reward, videos[:1])


def test_calibration_scores_through_the_service_reward_inputs():
    """A service subclass that crops its inputs is calibrated on the crops it will score in training."""

    class CroppingService(RewardService):
        def reward_inputs(self, pixels):
            return pixels[..., :2, :2]

    g = torch.Generator().manual_seed(1)
    videos = [(torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, "p" * (i + 1)) for i in range(4)]
    service = CroppingService(model=PixelMeanReward())
    stats = calibrate_from_videos(service, iter(videos), batch_size=2)
    crops = torch.stack([to_unit(v)[..., :2, :2].mean() for v, _ in videos]).double()
    assert stats["VQ"]["mean"] == pytest.approx(crops.mean().item(), abs=1e-6)
    assert stats["VQ"]["std"] == pytest.approx(crops.std().item(), abs=1e-6)
    assert service.forward_calls == 2  # one scoring call a batch, through the service


def test_to_unit_maps_both_pixel_conventions():
    assert torch.equal(to_unit(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(to_unit(torch.tensor([0, 51, 255], dtype=torch.uint8)), torch.tensor([0.0, 0.2, 1.0]))
