"""Oracle metrics of the toy world, computed from pixels only (never from a reward model).

Stream-R1 (arXiv 2605.03849) scores videos on visual quality (VQ), motion quality (MQ) and text alignment
(TA) with a learned reward model. In the toy world (:mod:`streamr1.toy.world`) the ground truth is known, so
these hand-written detectors measure each axis directly from the pixels; they are the yardstick both for
calibrating a reward model (rank correlation) and for the paper's claim (does the reward-weighted student
land in good modes more often than plain DMD?).

- ``VQ``: ``1 - noise / 0.05 - relu(0.8 - sharpness) / 0.3 - relu(fidelity - 0.3) / 0.25 - relu(0.3 - opacity) /
  0.1``, from the median absolute high-frequency residual (``x - blur(x)``: noise), the steepest edge relative to
  the image's contrast (blur), the distance of the shape's colour to the palette (ghosts: averages of videos of
  different colours) and the opaque share of the shape (ghosts: semi-transparent copies of one shape). About 1 for
  a clean, sharp render, below 0 for a noisy, blurred or ghosted one.
- ``MQ``: ``-mean_t ||c_{t+1} - 2 c_t + c_{t-1}||`` (pixels at ``size = 32``) of the tracked foreground centroid
  ``c_t``: about 0 for constant velocity, strongly negative for jitter and jumps.
- ``TA``: ``(p_colour + p_direction) / 2`` in ``[0, 1]``: the soft probability that the dominant foreground colour
  is the caption's colour and that the least-squares motion direction is the caption's direction.

:func:`good_mode` thresholds the three; :class:`GoodModeFraction`, :class:`CellCoverage` and
:class:`ModeCoverage` are the torchmetrics ``Metric`` versions (their states sum across DDP ranks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from streamr1.toy.world import (
    COLOUR_RGB,
    COLOURS,
    DIRECTION_VEC,
    DIRECTIONS,
    ToyAttributes,
    gaussian_blur,
    parse_caption,
)

NOISE_REF = 0.05
"""Median absolute high-frequency residual at which VQ has lost 1 (clean renders: 0; noisy: about 0.1-0.2)."""
SHARP_REF = 0.8
"""Relative edge steepness below which VQ is penalised (anti-aliased renders: 1.0, 0.72-0.99 after an H.264
round trip; blurred: 0.38-0.59)."""
SHARP_SCALE = 0.3
FIDELITY_REF = 0.3
"""Distance of the foreground colour to the palette above which VQ is penalised (clean renders: below 0.06, below
0.21 after an H.264 round trip; a 70/30 ghost: about 0.5)."""
FIDELITY_SCALE = 0.25
OPACITY_REF = 0.45
"""Opaque share of the shape below which VQ is penalised: pixels at least ``OPAQUE_ALPHA`` opaque over the shape's
total opacity. Clean renders: 0.48-0.9 (the smallest shapes at size 16 lowest; the recipe's world 0.68-0.9). A
50/50 or 70/30 blend of two displaced copies of one shape keeps only the copies' overlap opaque, a share that depends
on the displacement over the radius: about 0.3 one radius apart, 0.0-0.2 two radii apart. Was 0.3, set for shapes of
radius 0.14; the recipe's radius-0.22 shapes passed half of the ghosts whose copies are 1.15 radii apart."""
OPACITY_SCALE = 0.1
OPAQUE_ALPHA = 0.75
FG_THRESHOLD = 0.25
"""Colour distance (RGB, ``[-1, 1]`` units) to the background below which a pixel is not foreground."""
DIRECTION_TEMPERATURE = 0.25
"""Velocity (pixels a frame at size 32) per unit logit of the direction softmax."""
COLOUR_TEMPERATURE = 0.25
"""Squared colour distance per unit logit of the colour softmax."""

THRESHOLDS: dict[str, float] = {"VQ": 0.5, "MQ": -0.5, "TA": 0.75}
"""A video is in a good mode when ``VQ >= 0.5``, ``MQ >= -0.5`` and ``TA >= 0.75`` (calibrated on ToyWorld
renders: each quality mode is classified correctly in well over 95% of fresh renders; see the tests)."""


def _as_attrs(attrs: Sequence[ToyAttributes | str]) -> list[ToyAttributes]:
    out = []
    for a in attrs:
        if isinstance(a, str):
            parsed = parse_caption(a)
            if parsed is None:
                raise ValueError(f"Cannot read shape, colour and direction from the caption {a!r}: oracle TA needs "
                                 "toy captions such as 'a red circle moving left'.")
            a = parsed
        out.append(a)
    return out


def _check_video(video: Tensor) -> Tensor:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B, T, 3, H, W] in [-1, 1]; got {tuple(video.shape)}.")
    return video.detach().float()


def visual_quality(video: Tensor, colour: Tensor | None = None) -> dict[str, Tensor]:
    """VQ and its parts, each ``[B]``, for ``video`` ``[B, T, 3, H, W]`` in ``[-1, 1]`` (module docstring).

    - ``noise``: median over pixels of ``|x - blur_1(x)|``, averaged over frames and channels (flat regions
      dominate the median, so clean edges do not count);
    - ``sharpness``: the largest two-pixel difference ``|x[i+1] - x[i-1]|`` in a frame over the frame's contrast
      (in the channel of largest contrast), capped at 1 and averaged over frames: a 1-pixel anti-aliased edge
      spans the full contrast within two pixels whatever its sub-pixel phase (1.0), a blurred one does not;
    - ``fidelity``: RGB distance from the foreground's core colour (:func:`track`) to the nearest palette colour:
      a ghost (the average of several videos, semi-transparent shapes) or a washed-out shape is far from every
      palette colour; 2 when there is no foreground at all;
    - ``opacity``: each pixel's opacity ``alpha`` is its position on the segment from the frame's background (border
      median) to the palette colour nearest the foreground colour, clamped to ``[0, 1]``; ``opacity`` is the number
      of pixels with ``alpha >= OPAQUE_ALPHA`` over the total ``alpha`` of the pixels above 0.1, averaged over
      frames. A render's shape is opaque inside its one-pixel anti-aliased rim; a blend of two displaced copies of
      one shape (a ghost of one caption: same colour, so ``fidelity`` cannot see it) is semi-transparent except
      where the copies overlap. A copy weighted ``>= 0.75`` with a faint second one stays opaque: within tolerance.

    ``VQ = 1 - noise / NOISE_REF - relu(SHARP_REF - sharpness) / SHARP_SCALE - relu(fidelity - FIDELITY_REF) /
    FIDELITY_SCALE - relu(OPACITY_REF - opacity) / OPACITY_SCALE``. ``colour`` ``[B, 3]``: the foreground colour if
    already tracked.
    """
    v = _check_video(video)
    resid = (v - gaussian_blur(v, 1.0)).abs().flatten(3)  # [B, T, 3, HW]
    noise = resid.median(dim=-1).values.mean(dim=(1, 2))
    gx = (v[..., :, 2:] - v[..., :, :-2]).abs().flatten(3).amax(-1)
    gy = (v[..., 2:, :] - v[..., :-2, :]).abs().flatten(3).amax(-1)
    grad = torch.maximum(gx, gy)  # [B, T, 3]
    flat = v.flatten(3)
    contrast = flat.amax(-1) - flat.amin(-1)  # [B, T, 3]
    best = contrast.argmax(-1, keepdim=True)
    sharp = (grad.gather(-1, best) / contrast.gather(-1, best).clamp_min(0.2)).squeeze(-1).clamp(max=1.0).mean(1)
    colour = track(v)[1] if colour is None else colour
    palette = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=v.dtype, device=v.device)
    fidelity = torch.cdist(colour, palette).amin(-1)
    fidelity = torch.where(torch.isnan(fidelity), torch.full_like(fidelity, 2.0), fidelity)
    opacity = _opacity(v, palette[torch.cdist(torch.nan_to_num(colour), palette).argmin(-1)])
    vq = (1.0 - noise / NOISE_REF - F.relu(SHARP_REF - sharp) / SHARP_SCALE
          - F.relu(fidelity - FIDELITY_REF) / FIDELITY_SCALE - F.relu(OPACITY_REF - opacity) / OPACITY_SCALE)
    return {"VQ": vq, "noise": noise, "sharpness": sharp, "fidelity": fidelity, "opacity": opacity}


def _background(v: Tensor) -> Tensor:
    """``[B, T, 3]``: the median of each frame's one-pixel border."""
    border = torch.cat([v[..., 0, :], v[..., -1, :], v[..., 1:-1, 0], v[..., 1:-1, -1]], dim=-1)  # [B, T, 3, P]
    return border.median(dim=-1).values


def _opacity(v: Tensor, fg: Tensor) -> Tensor:
    """``[B]``: the opaque share of the shape (:func:`visual_quality`) for foreground colours ``fg`` ``[B, 3]``."""
    bg = _background(v)  # [B, T, 3]
    d = fg.unsqueeze(1) - bg  # [B, T, 3]
    norm = d.pow(2).sum(-1).clamp_min(1e-6)  # [B, T]
    alpha = (((v - bg[..., None, None]) * d[..., None, None]).sum(2) / norm[..., None, None]).clamp(0.0, 1.0)
    mass = (alpha * (alpha > 0.1)).flatten(2).sum(-1)  # [B, T]
    opaque = (alpha >= OPAQUE_ALPHA).flatten(2).sum(-1).to(v.dtype)
    return (opaque / mass.clamp_min(1e-6)).clamp(max=1.0).mean(1)


def track(video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Foreground tracking of ``video`` ``[B, T, 3, H, W]``.

    The background colour is the median of each frame's one-pixel border; the frame is smoothed (Gaussian,
    sigma 0.7 px) and each pixel weighted by ``relu(||rgb - background|| - FG_THRESHOLD)``.

    Returns:
        ``centres [B, T, 2]`` (x, y in pixels; the frame centre where a frame has no foreground), ``colour
        [B, 3]`` (the foreground colour, weights to the 4th power so the shape's core dominates, ``NaN`` when no
        foreground at all) and ``mass [B, T]`` (total foreground weight).
    """
    v = _check_video(video)
    b, t, _, h, w = v.shape
    bg = _background(v)  # [B, T, 3]
    smooth = gaussian_blur(v, 0.7)
    dist = (smooth - bg[..., None, None]).pow(2).sum(dim=2).sqrt()  # [B, T, H, W]
    wgt = F.relu(dist - FG_THRESHOLD)
    mass = wgt.flatten(2).sum(-1)  # [B, T]
    ys = torch.arange(h, dtype=v.dtype, device=v.device) + 0.5
    xs = torch.arange(w, dtype=v.dtype, device=v.device) + 0.5
    safe = mass.clamp_min(1e-8)
    cx = (wgt.sum(-2) * xs).sum(-1) / safe
    cy = (wgt.sum(-1) * ys).sum(-1) / safe
    present = mass > 1e-3
    centres = torch.stack([torch.where(present, cx, torch.full_like(cx, w / 2)),
                           torch.where(present, cy, torch.full_like(cy, h / 2))], dim=-1)
    w4 = wgt.pow(4)
    colour = (v * w4.unsqueeze(2)).sum(dim=(1, 3, 4)) / w4.sum(dim=(1, 2, 3)).unsqueeze(-1)  # [B, 3]
    return centres, colour, mass


def oracle_scores(video: Tensor, attrs: Sequence[ToyAttributes | str]) -> dict[str, Tensor]:
    """Oracle ``{"VQ", "MQ", "TA"}`` scores ``[B]`` (float32) of ``video`` ``[B, T, 3, H, W]`` in ``[-1, 1]``.

    Args:
        video: the videos (a generated set or world renders); any ``T >= 3`` and ``H, W >= 8``.
        attrs: ``B`` :class:`ToyAttributes` (or toy captions) the videos were asked to show (for TA).

    Pixel distances are normalised to a 32-pixel frame, so the thresholds hold at other sizes.
    """
    v = _check_video(video)
    attrs = _as_attrs(attrs)
    b, t, _, h, w = v.shape
    if len(attrs) != b:
        raise ValueError(f"oracle_scores got {b} videos and {len(attrs)} attributes.")
    scale = 32.0 / max(h, w)
    centres, colour, _ = track(v)
    vq = visual_quality(v, colour)["VQ"]
    centres = centres * scale
    second = centres[:, 2:] - 2 * centres[:, 1:-1] + centres[:, :-2]  # [B, T-2, 2]
    mq = -second.norm(dim=-1).mean(-1)
    # TA: least-squares velocity over the frames, then soft matches to the caption's colour and direction.
    steps = torch.arange(t, dtype=v.dtype, device=v.device)
    steps = steps - steps.mean()
    vel = (centres * steps[None, :, None]).sum(1) / steps.pow(2).sum()  # [B, 2] px/frame (size 32)
    dirs = torch.tensor([DIRECTION_VEC[d] for d in DIRECTIONS], dtype=v.dtype, device=v.device)  # [4, 2]
    p_dir = torch.softmax(vel @ dirs.T / DIRECTION_TEMPERATURE, dim=-1)
    palette = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=v.dtype, device=v.device)  # [4, 3]
    d2 = (colour.unsqueeze(1) - palette.unsqueeze(0)).pow(2).sum(-1)  # [B, 4]
    p_col = torch.softmax(-d2 / COLOUR_TEMPERATURE, dim=-1)
    p_col = torch.where(torch.isnan(p_col), torch.full_like(p_col, 1.0 / len(COLOURS)), p_col)
    want_col = torch.tensor([COLOURS.index(a.colour) for a in attrs], device=v.device)
    want_dir = torch.tensor([DIRECTIONS.index(a.direction) for a in attrs], device=v.device)
    ta = 0.5 * p_col.gather(1, want_col[:, None]).squeeze(1) + 0.5 * p_dir.gather(1, want_dir[:, None]).squeeze(1)
    return {"VQ": vq, "MQ": mq, "TA": ta}


def good_mode(scores: dict[str, Tensor], thresholds: dict[str, float] | None = None) -> Tensor:
    """``[B]`` bool: every axis at or above its threshold (:data:`THRESHOLDS` by default)."""
    th = THRESHOLDS if thresholds is None else thresholds
    return (scores["VQ"] >= th["VQ"]) & (scores["MQ"] >= th["MQ"]) & (scores["TA"] >= th["TA"])


def classify_mode(scores: dict[str, Tensor], thresholds: dict[str, float] | None = None) -> list[str]:
    """The quality mode (:data:`~streamr1.toy.world.MODES`) the oracle assigns: the first failing axis in the order
    VQ (``"visual"``), MQ (``"motion"``), TA (``"text"``), else ``"good"``. (Noise upsets the tracker and jitter the
    direction estimate, so an earlier axis takes precedence.)"""
    th = THRESHOLDS if thresholds is None else thresholds
    out = []
    for vq, mq, ta in zip(scores["VQ"].tolist(), scores["MQ"].tolist(), scores["TA"].tolist(), strict=True):
        if not vq >= th["VQ"]:
            out.append("visual")
        elif not mq >= th["MQ"]:
            out.append("motion")
        elif not ta >= th["TA"]:
            out.append("text")
        else:
            out.append("good")
    return out
