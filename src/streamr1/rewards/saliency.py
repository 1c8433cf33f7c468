"""Putting a reward's saliency onto the latent grid (SPEC.md §4.3.1-2): pure functions over tensors.

* :func:`saliency_to_latent_grid`: a pixel-grid map ``[B, T, H, W]`` -> the rollout's latent grid
  ``[B, F, H_lat, W_lat]`` (trilinear, ``align_corners=False``, SPEC §4.3.2).
* :func:`unmerge_patch_order` / :func:`merge_patch_order`: between Qwen2-VL's 2x2-merge-window token order and
  raster order. A reward model that scores per patch (VideoReward is Qwen2-VL) stores the four patches of a merge
  window next to each other; a per-token saliency must be put back in raster order before it is reshaped into a
  map. The reference code skips this and folds its spatial maps (SPEC §4.3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F_
from torch import Tensor

ResizeMode = Literal["trilinear", "area"]


def saliency_to_latent_grid(s: Tensor, latent_shape: Sequence[int], mode: ResizeMode = "trilinear") -> Tensor:
    """Resize a per-pixel saliency map to the latent grid (SPEC §4.3.2).

    Frames, rows and columns are resized together as one 3-D volume. ``trilinear`` with ``align_corners=False``
    is the SPEC's choice: each latent cell reads the saliency at its centre (interpolated between the nearest
    pixels and frames). ``area`` averages every pixel that falls into the cell instead (adaptive average
    pooling); it keeps more of a sparse gradient map when the compression is large (Wan: 4x in time, 8x in
    space), at the price of not matching the reference.

    Args:
        s: ``[B, T, H, W]`` saliency on the pixel grid (any float dtype).
        latent_shape: ``(F, H_lat, W_lat)`` the latent grid.
        mode: ``trilinear`` (SPEC) or ``area``.

    Returns:
        ``[B, F, H_lat, W_lat]`` in ``s``'s dtype; ``s`` itself when the grids are equal.
    """
    if s.ndim != 4:
        raise ValueError(f"saliency must be [B, T, H, W], got shape {list(s.shape)}.")
    size = tuple(int(n) for n in latent_shape)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"latent_shape must be (F, H, W) with positive sizes, got {latent_shape}.")
    if tuple(s.shape[1:]) == size:
        return s
    if mode == "trilinear":
        out = F_.interpolate(s[:, None], size=size, mode="trilinear", align_corners=False)
    elif mode == "area":
        out = F_.adaptive_avg_pool3d(s[:, None], size)
    else:
        raise ValueError(f"Unknown resize mode {mode!r}; choose 'trilinear' or 'area'.")
    return out[:, 0]


def _check_grid(n: int, grid_thw: Sequence[int], merge: int) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in grid_thw)
    if merge < 1 or h % merge or w % merge:
        raise ValueError(f"grid (h, w) = ({h}, {w}) must be divisible by merge={merge} (Qwen2-VL merges 2x2 patches).")
    if n != t * h * w:
        raise ValueError(f"{n} tokens do not fill the patch grid (t, h, w) = ({t}, {h}, {w}): expected {t * h * w}.")
    return t, h, w


def unmerge_patch_order(tokens: Tensor, grid_thw: Sequence[int], merge: int = 2) -> Tensor:
    """Put Qwen2-VL ordered patch tokens back in raster order (SPEC §4.3.2).

    Qwen2-VL's processor orders the patches of a ``(t, h, w)`` patch grid as
    ``(t, h // m, w // m, m, m)``: every ``m x m`` merge window is contiguous, windows in raster order. So token
    ``((t_i * H_b + hb) * W_b + wb) * m * m + i * m + j`` is the patch at row ``hb * m + i`` and column
    ``wb * m + j`` of frame ``t_i``. Example for one 4x4 frame, ``m = 2``: token order
    ``0 1 4 5 | 2 3 6 7 | 8 9 12 13 | 10 11 14 15`` (raster indices) becomes rows
    ``[0 1 2 3], [4 5 6 7], ...``.

    Args:
        tokens: ``[N, *rest]`` per-patch values (a saliency ``[N]``, or features ``[N, D]``), ``N = t * h * w``.
        grid_thw: ``(t, h, w)`` the patch grid before merging (Qwen2-VL's ``image_grid_thw`` / ``video_grid_thw``).
        merge: the merge window side ``m`` (Qwen2-VL ``spatial_merge_size``: 2).

    Returns:
        ``[t, h, w, *rest]`` in raster order.
    """
    t, h, w = _check_grid(tokens.shape[0], grid_thw, merge)
    rest = tuple(tokens.shape[1:])
    x = tokens.reshape(t, h // merge, w // merge, merge, merge, *rest)
    x = x.permute(0, 1, 3, 2, 4, *range(5, 5 + len(rest)))  # (t, hb, i, wb, j, ...)
    return x.reshape(t, h, w, *rest)


def merge_patch_order(grid: Tensor, merge: int = 2) -> Tensor:
    """The inverse of :func:`unmerge_patch_order`: ``[t, h, w, *rest]`` raster -> ``[t * h * w, *rest]`` Qwen2-VL."""
    t, h, w = (int(v) for v in grid.shape[:3])
    _check_grid(t * h * w, (t, h, w), merge)
    rest = tuple(grid.shape[3:])
    x = grid.reshape(t, h // merge, merge, w // merge, merge, *rest)
    x = x.permute(0, 1, 3, 2, 4, *range(5, 5 + len(rest)))  # (t, hb, wb, i, j, ...)
    return x.reshape(t * h * w, *rest)
