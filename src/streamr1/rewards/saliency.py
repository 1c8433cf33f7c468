"""Putting a reward's saliency onto the latent grid (SPEC.md §4.3.1-2): pure functions over tensors.

* :func:`saliency_to_latent_grid`: a pixel-grid map ``[B, T, H, W]`` -> the rollout's latent grid
  ``[B, F, H_lat, W_lat]`` (trilinear, ``align_corners=False``, SPEC §4.3.2).
* :func:`fill_unscored_frames` and :func:`vae_temporal_grouping`: a reward that scores only some frames (VideoReward
  samples 10 of 81 at 2 fps) leaves the other frames' saliency at zero; the scored frames' maps are interpolated in
  time to every frame, then each latent frame averages the pixel frames the VAE folded into it (Wan: latent frame 0
  = pixel frame 0, latent frame k >= 1 = pixel frames 4k-3..4k), so every latent frame gets a weight (SPEC §4.6).
  :func:`saliency_to_latent_grid` does this when given ``scored_frames``.
* :func:`unmerge_patch_order` / :func:`merge_patch_order`: between Qwen2-VL's 2x2-merge-window token order and
  raster order. A reward model that scores per patch (VideoReward is Qwen2-VL) stores the four patches of a merge
  window next to each other; a per-token saliency must be put back in raster order before it is reshaped into a
  map. The reference code skips this and folds its spatial maps (SPEC §4.3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F_
from torch import Tensor

ResizeMode = Literal["trilinear", "area"]


def saliency_to_latent_grid(s: Tensor, latent_shape: Sequence[int], mode: ResizeMode = "trilinear",
                            scored_frames: Sequence[int] | None = None) -> Tensor:
    """Resize a per-pixel saliency map to the latent grid (SPEC §4.3.2).

    Frames, rows and columns are resized together as one 3-D volume. ``trilinear`` with ``align_corners=False``
    is the SPEC's choice: each latent cell reads the saliency at its centre (interpolated between the nearest
    pixels and frames). ``area`` averages every pixel that falls into the cell instead (adaptive average
    pooling); it keeps more of a sparse gradient map when the compression is large (Wan: 4x in time, 8x in
    space), at the price of not matching the reference.

    With ``scored_frames`` (the source frames the reward scored; the others have zero saliency), time is mapped
    differently (SPEC §4.6): the scored frames' maps are interpolated to every frame (:func:`fill_unscored_frames`),
    each latent frame averages its VAE group of pixel frames (:func:`vae_temporal_grouping`, when ``T = 1 + k (F -
    1)``; otherwise the filled frames are resized in time as above), then rows and columns are resized (bilinear
    for ``trilinear``, average pooling for ``area``).

    Args:
        s: ``[B, T, H, W]`` saliency on the pixel grid (any float dtype).
        latent_shape: ``(F, H_lat, W_lat)`` the latent grid.
        mode: ``trilinear`` (SPEC) or ``area``.
        scored_frames: indices into ``T`` of the frames the reward scored, or ``None`` (all of them).

    Returns:
        ``[B, F, H_lat, W_lat]`` in ``s``'s dtype; ``s`` itself when the grids are equal.
    """
    if s.ndim != 4:
        raise ValueError(f"saliency must be [B, T, H, W], got shape {list(s.shape)}.")
    size = tuple(int(n) for n in latent_shape)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"latent_shape must be (F, H, W) with positive sizes, got {latent_shape}.")
    if mode not in ("trilinear", "area"):
        raise ValueError(f"Unknown resize mode {mode!r}; choose 'trilinear' or 'area'.")
    if scored_frames is not None:
        s = fill_unscored_frames(s, scored_frames)
        n_t, n_f = s.shape[1], size[0]
        if n_f > 1 and (n_t - 1) % (n_f - 1) == 0 and n_t > n_f:
            s = vae_temporal_grouping(s, n_f)
            if tuple(s.shape[2:]) == size[1:]:
                return s
            if mode == "trilinear":
                return F_.interpolate(s, size=size[1:], mode="bilinear", align_corners=False)
            return F_.adaptive_avg_pool2d(s, size[1:])
    if tuple(s.shape[1:]) == size:
        return s
    if mode == "trilinear":
        out = F_.interpolate(s[:, None], size=size, mode="trilinear", align_corners=False)
    elif mode == "area":
        out = F_.adaptive_avg_pool3d(s[:, None], size)
    else:
        raise ValueError(f"Unknown resize mode {mode!r}; choose 'trilinear' or 'area'.")
    return out[:, 0]


def fill_unscored_frames(s: Tensor, scored_frames: Sequence[int]) -> Tensor:
    """Give every frame a saliency map from the frames a reward scored (SPEC §4.6).

    A frame between two scored frames ``a < t < b`` gets ``(1 - w) s[a] + w s[b]``, ``w = (t - a) / (b - a)``
    (linear in time); frames before the first or after the last scored frame take that frame's map. Scored frames
    keep their own map. Example: scored ``[0, 4]`` of 6 frames with maps 1 and 3 gives ``1, 1.5, 2, 2.5, 3, 3``.

    Args:
        s: ``[B, T, H, W]``, zero (or anything) on the frames not scored.
        scored_frames: the scored frame indices into ``T`` (any order, repeats allowed).

    Returns:
        ``[B, T, H, W]``.
    """
    n_t = s.shape[1]
    idx = sorted({int(i) for i in scored_frames})
    if not idx or idx[0] < 0 or idx[-1] >= n_t:
        raise ValueError(f"scored_frames must be non-empty indices into {n_t} frames, got {list(scored_frames)}.")
    if len(idx) == n_t:
        return s
    # [T, K] interpolation matrix: row t mixes the two scored frames around t.
    pos = torch.arange(n_t, dtype=torch.float64)
    known = torch.tensor(idx, dtype=torch.float64)
    right = torch.searchsorted(known, pos).clamp(1, max(len(idx) - 1, 1))
    left = right - 1
    if len(idx) == 1:
        mix = torch.ones(n_t, 1, dtype=torch.float64)
    else:
        w = ((pos - known[left]) / (known[right] - known[left])).clamp(0.0, 1.0)
        mix = torch.zeros(n_t, len(idx), dtype=torch.float64)
        mix[torch.arange(n_t), left] = 1.0 - w
        mix[torch.arange(n_t), right] += w
    mix = mix.to(device=s.device, dtype=s.dtype)
    return torch.einsum("tk,bkhw->bthw", mix, s[:, idx])


def scored_frames_of(model: object, num_frames: int) -> list[int] | None:
    """The frames a reward model scores in a ``num_frames`` video, from its optional hook
    ``scored_frames(num_frames) -> indices`` (:class:`~streamr1.rewards.videoalign.VideoAlignReward` has one);
    ``None`` when it has none (it scores every frame)."""
    hook = getattr(model, "scored_frames", None)
    return [int(i) for i in hook(int(num_frames))] if callable(hook) else None


def vae_temporal_grouping(s: Tensor, num_latent_frames: int) -> Tensor:
    """``[B, T, H, W]`` pixel frames -> ``[B, F, H, W]`` latent frames, each the mean of the pixel frames the causal
    video VAE folds into it: latent frame 0 is pixel frame 0, latent frame ``k >= 1`` is pixel frames
    ``s (k - 1) + 1 .. s k`` with ``s = (T - 1) / (F - 1)`` (Wan, ``s = 4``: 81 frames -> 21 latent frames, latent
    ``k`` = pixel frames ``4k-3..4k``).

    Raises:
        ValueError: ``T - 1`` is not a multiple of ``F - 1``.
    """
    n_t, n_f = s.shape[1], int(num_latent_frames)
    if n_f == 1:
        return s[:, :1] if n_t == 1 else s.mean(dim=1, keepdim=True)
    if n_t < n_f or (n_t - 1) % (n_f - 1):
        raise ValueError(f"{n_t} pixel frames do not fold into {n_f} latent frames as 1 + k (F - 1).")
    k = (n_t - 1) // (n_f - 1)
    rest = s[:, 1:].reshape(s.shape[0], n_f - 1, k, *s.shape[2:]).mean(dim=2)
    return torch.cat([s[:, :1], rest], dim=1)


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


def channel_norm(g: Tensor) -> Tensor:
    """``[A, B, T, C, H, W]`` -> ``[A, B, T, H, W]``: the L2 norm over ``C`` (SPEC §4.3.1: ``||d raw_a / d pixels||``),
    in float32. Written as ``sqrt(sum g^2)``: ``Tensor.norm`` over a middle dimension is about 100x slower on CPU.
    """
    g = g.float()
    return (g * g).sum(dim=3).sqrt()
