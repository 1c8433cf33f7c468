"""Saliency of a reward that scores only some frames reaches every latent frame (SPEC.md §4.6, issue 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from streamr1.rewards.saliency import (
    fill_unscored_frames,
    saliency_to_latent_grid,
    scored_frames_of,
    vae_temporal_grouping,
)
from streamr1.rewards.service import RewardService
from streamr1.rewards.videoalign import sample_frame_indices

WAN_2FPS = [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]
"""VideoAlign's uniform 2 fps sampling of 81 frames at 16 fps: round(linspace(0, 80, 10))."""


def test_fill_unscored_frames_by_hand():
    s = torch.zeros(1, 6, 1, 1)
    s[0, 0], s[0, 4] = 1.0, 3.0
    out = fill_unscored_frames(s, [0, 4])
    assert out.flatten().tolist() == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 3.0])
    # Before the first scored frame: that frame's map.
    s2 = torch.zeros(1, 4, 1, 1)
    s2[0, 2] = 5.0
    assert fill_unscored_frames(s2, [2]).flatten().tolist() == [5.0] * 4
    with pytest.raises(ValueError, match="indices into 4 frames"):
        fill_unscored_frames(s2, [4])


def test_vae_temporal_grouping_by_hand():
    # 9 frames -> 3 latent frames with stride 4: latent 0 = frame 0, latent 1 = frames 1..4, latent 2 = 5..8.
    s = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1)
    assert vae_temporal_grouping(s, 3).flatten().tolist() == [0.0, 2.5, 6.5]
    with pytest.raises(ValueError, match="do not fold"):
        vae_temporal_grouping(torch.zeros(1, 8, 1, 1), 3)


def test_sampled_frames_reach_all_21_latent_frames():
    """10 of 81 frames scored (2 fps): trilinear leaves most latent frames at zero, the scored-frame mapping none."""
    assert sample_frame_indices(81, sample_fps=2.0, source_fps=16.0) == WAN_2FPS
    s = torch.zeros(1, 81, 16, 16)
    s[:, WAN_2FPS] = torch.rand(1, 10, 16, 16) + 0.1
    plain = saliency_to_latent_grid(s, (21, 2, 2)).mean(dim=(2, 3))[0]
    assert int((plain == 0).sum()) > 0  # the failure the issue describes
    for mode in ("trilinear", "area"):
        lat = saliency_to_latent_grid(s, (21, 2, 2), mode, scored_frames=WAN_2FPS)
        assert lat.shape == (1, 21, 2, 2)
        assert bool((lat.mean(dim=(2, 3)) > 0).all()), mode
    # Latent frame 0 is pixel frame 0 itself (spatially area-pooled); latent frame 1 averages the interpolated frames
    # 1..4, i.e. (1 - t/9) s[0] + (t/9) s[9] for t = 1..4.
    lat = saliency_to_latent_grid(s, (21, 2, 2), "area", scored_frames=WAN_2FPS)
    pooled = torch.nn.functional.adaptive_avg_pool2d(s[:, [0, 9]], (2, 2))
    w = torch.tensor([1, 2, 3, 4], dtype=torch.float32) / 9
    expected1 = ((1 - w).mean() * pooled[0, 0] + w.mean() * pooled[0, 1])
    torch.testing.assert_close(lat[0, 0], pooled[0, 0])
    torch.testing.assert_close(lat[0, 1], expected1)


def test_every_frame_scored_keeps_last_frame_weighted():
    """Stream-R1's default (80 of 81): frame 80 borrows frame 79's map, so latent frame 20 is not diluted."""
    idx = sample_frame_indices(81)
    assert idx == list(range(80))
    s = torch.zeros(1, 81, 4, 4)
    s[:, :80] = 1.0
    lat = saliency_to_latent_grid(s, (21, 4, 4), scored_frames=idx)
    torch.testing.assert_close(lat, torch.ones(1, 21, 4, 4))


class SampledReward(nn.Module):
    """Scores the mean of frames 0, 9, ..., 80 (10 of 81), per axis with a different pixel weighting."""

    axes = ("VQ", "MQ", "TA")

    def scored_frames(self, n: int) -> list[int]:
        return sample_frame_indices(n, sample_fps=2.0, source_fps=16.0)

    def forward(self, video, prompts):
        v = video[:, self.scored_frames(video.shape[1])]
        return {"VQ": (v**2).mean(dim=(1, 2, 3, 4)), "MQ": v[..., 0, :, :].mean(dim=(1, 2, 3)),
                "TA": v.sin().mean(dim=(1, 2, 3, 4))}


def test_service_uses_the_scored_frames_hook():
    model = SampledReward()
    assert scored_frames_of(model, 81) == WAN_2FPS
    assert scored_frames_of(nn.Identity(), 81) is None
    service = RewardService(model=model, normalization=None)
    service.prepare("cpu")
    video = torch.rand(1, 81, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = service.score(video, ["x"], saliency=True, latent_shape=(21, 2, 2))
    for axis in model.axes:
        per_frame = result.saliency[axis].mean(dim=(2, 3))[0]
        assert per_frame.shape == (21,)
        assert bool((per_frame > 0).all()), axis
