"""Saliency onto the latent grid and Qwen2-VL patch order, on hand-built examples (SPEC.md §4.3.2)."""

from __future__ import annotations

import pytest
import torch

from streamr1.rewards.saliency import merge_patch_order, saliency_to_latent_grid, unmerge_patch_order


def test_trilinear_to_latent_grid_by_hand():
    s = torch.arange(8.0).view(1, 2, 2, 2)  # [B=1, T=2, H=2, W=2]
    # one latent cell: its centre is the centre of the volume -> the mean of all 8 values
    assert saliency_to_latent_grid(s, (1, 1, 1)).item() == pytest.approx(3.5)
    # halve H and W only: each frame's 4 values average; keep T
    out = saliency_to_latent_grid(s, (2, 1, 1))
    assert out.flatten().tolist() == pytest.approx([1.5, 5.5])
    # upsample time 1 -> 2 (align_corners=False clamps at the border): both latent frames copy the pixel frame
    s1 = torch.tensor([[[[1.0, 3.0]]]])  # [1, 1, 1, 2]
    assert saliency_to_latent_grid(s1, (2, 1, 2)).tolist() == [[[[1.0, 3.0]], [[1.0, 3.0]]]]
    # 4 -> 2 columns: centres at 0.5 and 2.5 of [0, 10, 20, 30] -> 5 and 25 (SPEC: trilinear, align_corners False)
    s2 = torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, 1, 1, 4)
    assert saliency_to_latent_grid(s2, (1, 1, 2)).flatten().tolist() == pytest.approx([5.0, 25.0])
    assert saliency_to_latent_grid(s, (2, 2, 2)) is s


def test_area_resize_averages_blocks():
    s = torch.zeros(1, 2, 8, 8)
    s[0, 0, 0, 0] = 32.0  # one hot pixel
    out = saliency_to_latent_grid(s, (1, 2, 2), mode="area")
    assert out.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])  # 32 / (2 frames * 4 * 4)
    # trilinear reads each 4x4 block at its centre (pixels 1-2): a 4x compression misses the hot pixel
    assert saliency_to_latent_grid(s, (1, 2, 2)).sum() == 0.0
    with pytest.raises(ValueError):
        saliency_to_latent_grid(s[0], (1, 2, 2))


def test_unmerge_patch_order_by_hand():
    # A 4x4 patch grid, raster index r = 4 * row + col. Qwen2-VL stores 2x2 merge windows together, windows in
    # raster order: window (0,0) = 0 1 4 5, window (0,1) = 2 3 6 7, window (1,0) = 8 9 12 13, (1,1) = 10 11 14 15.
    qwen_order = torch.tensor([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    grid = unmerge_patch_order(qwen_order, (1, 4, 4))
    assert grid.shape == (1, 4, 4)
    assert torch.equal(grid[0], torch.arange(16).view(4, 4))
    # the naive reshape the reference does folds the map: row 0 would read 0 1 4 5
    assert qwen_order.view(4, 4)[0].tolist() == [0, 1, 4, 5]


def test_unmerge_with_time_features_and_inverse():
    t, h, w = 2, 2, 4
    raster = torch.arange(t * h * w).view(t, h, w)
    # hand-built Qwen order for (t, h, w) = (2, 2, 4): per frame, windows (0,0) then (0,1)
    qwen = torch.tensor([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    assert torch.equal(unmerge_patch_order(qwen, (t, h, w)), raster)
    feats = torch.stack([qwen, -qwen], dim=-1).float()  # [N, D=2]: the token dim leads, features follow
    out = unmerge_patch_order(feats, (t, h, w))
    assert out.shape == (t, h, w, 2) and torch.equal(out[..., 1], -raster.float())
    assert torch.equal(merge_patch_order(raster), qwen)
    x = torch.randn(3 * 4 * 6, 5)
    assert torch.equal(merge_patch_order(unmerge_patch_order(x, (3, 4, 6))), x)
    with pytest.raises(ValueError, match="divisible"):
        unmerge_patch_order(torch.zeros(9), (1, 3, 3))
    with pytest.raises(ValueError, match="tokens"):
        unmerge_patch_order(torch.zeros(15), (1, 4, 4))
