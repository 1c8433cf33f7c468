"""The toy world: a procedural video distribution where Stream-R1's claim can be measured exactly.

Stream-R1 (arXiv 2605.03849) reweights the DMD distillation loss by a reward on three axes (VQ: visual
quality, MQ: motion quality, TA: text alignment) so that the student moves toward the teacher's
*high-quality modes* rather than reproducing its whole mixture, flaws included. To measure that on a CPU
in minutes this module builds a world whose distribution is known in closed form:

- a video is ``[T=8, 3, 32, 32]`` in ``[-1, 1]`` (pixel space; the VAE is the identity): one soft-edged
  shape (circle, square, triangle) of one colour (red, green, blue, yellow) moving with constant velocity
  (left, right, up, down; optionally slow/fast) over a flat background (optionally dark/light);
- :class:`ToyWorld` is a fixed finite set of such videos with their captions, where a known fraction is
  deliberately flawed: ``"visual"`` (pixel noise or blur), ``"motion"`` (jitter or a jump in the
  trajectory) or ``"text"`` (wrong colour or wrong direction for the caption);
- :class:`MixtureTeacher` is the *exact* posterior-mean denoiser of that empirical distribution restricted to
  the videos whose caption matches the prompt, so the teacher's modes are exactly the world's videos and
  "which mode did the student land in" is a lookup, not a guess;
- :class:`ToyTextEncoder` gives deterministic structured embeddings and their inverse.

The flow-matching convention is the project's (``streamr1.flow``): ``x_t = (1 - s) x0 + s eps`` with
``s = t / 1000``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SPEEDS: tuple[str, ...] = ("slow", "fast")
BACKGROUNDS: tuple[str, ...] = ("dark", "light")
MODES: tuple[str, ...] = ("good", "visual", "motion", "text")
"""Quality modes of a rendered video: ``"good"`` and one low-quality mode per Stream-R1 axis (VQ, MQ, TA)."""

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES), ("colour", COLOURS), ("direction", DIRECTIONS), ("speed", SPEEDS), ("background", BACKGROUNDS),
)
"""Attribute categories in token order; ``ToyAttributes`` fields have the same names."""

VOCAB: tuple[str, ...] = tuple(w for _, words in CATEGORIES for w in words)
"""The 15 attribute words; everything else in a caption is ignored by the parser and the text encoder."""

NUM_CELLS: int = len(SHAPES) * len(COLOURS) * len(DIRECTIONS)
"""Number of (shape, colour, direction) cells: 48."""

DEFAULT_MODE_PROBS: dict[str, float] = {"good": 0.55, "visual": 0.15, "motion": 0.15, "text": 0.15}

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.9, -0.8, -0.8),
    "green": (-0.8, 0.8, -0.8),
    "blue": (-0.7, -0.5, 0.9),
    "yellow": (0.9, 0.8, -0.8),
}
"""Shape colours in ``[-1, 1]`` RGB."""

BACKGROUND_RGB: dict[str, tuple[float, float, float]] = {"dark": (-0.85, -0.85, -0.85), "light": (0.6, 0.6, 0.6)}
"""Background colours; a caption without a background is rendered ``"dark"``."""

DIRECTION_VEC: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                                 "down": (0.0, 1.0)}
"""Unit motion vectors ``(dx, dy)`` in image coordinates (``y`` grows downward)."""

TRAVEL: dict[str | None, float] = {"slow": 0.22, None: 0.38, "fast": 0.55}
"""Distance covered over the whole clip, as a fraction of the frame size (``None`` = unspecified = medium).
At ``T = 8, size = 32`` that is 1.0, 1.74 and 2.5 pixels a frame."""

SHAPE_RADIUS = 0.14
"""Shape radius as a fraction of the frame size (4.5 px at ``size = 32``)."""


@dataclass(frozen=True)
class ToyAttributes:
    """What a caption says about a video. ``speed``/``background`` are optional (``None``: not mentioned).

    A ``None`` speed renders at medium speed and a ``None`` background renders dark; as a *prompt*, ``None``
    is a wildcard (see :meth:`MixtureTeacher.match_mask`).
    """

    shape: str
    colour: str
    direction: str
    speed: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        for (name, words), value in zip(CATEGORIES, self.as_tuple(), strict=True):
            if value is None and name in ("speed", "background"):
                continue
            if value not in words:
                raise ValueError(f"ToyAttributes.{name}={value!r} is not one of {words}.")

    def as_tuple(self) -> tuple[str | None, ...]:
        return (self.shape, self.colour, self.direction, self.speed, self.background)

    def indices(self) -> tuple[int, int, int, int, int]:
        """Index of each attribute within its category; ``-1`` for an unset speed/background."""
        pairs = zip(CATEGORIES, self.as_tuple(), strict=True)
        return tuple(-1 if v is None else words.index(v) for (_, words), v in pairs)  # type: ignore[return-value]

    @property
    def cell(self) -> int:
        """The (shape, colour, direction) cell, ``0 .. NUM_CELLS - 1``."""
        return cell_index(self)


def cell_index(attrs: ToyAttributes) -> int:
    """``shape * 16 + colour * 4 + direction``: the (shape, colour, direction) cell of ``attrs`` in ``0..47``."""
    i = attrs.indices()
    return (i[0] * len(COLOURS) + i[1]) * len(DIRECTIONS) + i[2]


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _choice(g: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (), generator=g))]


def sample_attributes(generator: torch.Generator | int | None = None, p_speed: float = 0.3,
                      p_background: float = 0.3) -> ToyAttributes:
    """Uniform shape, colour and direction; speed/background mentioned with probability ``p_speed``/``p_background``.

    Args:
        generator: a ``torch.Generator`` (advanced in place) or an integer seed.
    """
    g = _generator(generator)
    shape, colour, direction = _choice(g, SHAPES), _choice(g, COLOURS), _choice(g, DIRECTIONS)
    speed = _choice(g, SPEEDS) if _uniform(g) < p_speed else None
    background = _choice(g, BACKGROUNDS) if _uniform(g) < p_background else None
    return ToyAttributes(shape, colour, direction, speed, background)


def caption(attrs: ToyAttributes) -> str:
    """``"a [slow|fast ]red circle moving left[ on a dark background]"``; :func:`parse_caption` inverts it."""
    speed = f"{attrs.speed} " if attrs.speed else ""
    bg = f" on a {attrs.background} background" if attrs.background else ""
    return f"a {speed}{attrs.colour} {attrs.shape} moving {attrs.direction}{bg}"


def _caption_words(text: str) -> dict[str, list[str]]:
    """Attribute words found in ``text`` per category, in order of appearance (unknown words ignored)."""
    found: dict[str, list[str]] = {name: [] for name, _ in CATEGORIES}
    for word in re.findall(r"[a-z]+", text.lower()):
        for name, words in CATEGORIES:
            if word in words:
                found[name].append(word)
    return found


def parse_caption(text: str) -> ToyAttributes | None:
    """The attributes a caption names, or ``None`` when it lacks a shape, colour or direction or names two
    different values of one attribute. Word order and extra words do not matter."""
    found = _caption_words(text)
    values: dict[str, str | None] = {}
    for name, _ in CATEGORIES:
        distinct = set(found[name])
        if len(distinct) > 1:
            return None
        values[name] = found[name][0] if distinct else None
    if values["shape"] is None or values["colour"] is None or values["direction"] is None:
        return None
    return ToyAttributes(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _extent(shape: str, radius: float) -> float:
    """Half-extent of the shape's bounding box (conservative), in pixels."""
    return {"circle": radius, "square": 0.9 * radius, "triangle": 1.2 * radius}[shape]


def _alpha(shape: str, centres: Tensor, size: int, radius: float) -> Tensor:
    """Anti-aliased coverage ``[T, H, W]`` of ``shape`` centred at ``centres`` ``[T, 2]`` (x, y in pixels).

    A signed distance ``d`` (pixels, negative inside) gives a 1-pixel linear ramp ``clamp(0.5 - d, 0, 1)``.
    """
    coords = torch.arange(size, dtype=torch.float64) + 0.5
    dx = coords.view(1, 1, size) - centres[:, 0].view(-1, 1, 1)
    dy = coords.view(1, size, 1) - centres[:, 1].view(-1, 1, 1)
    if shape == "circle":
        d = torch.sqrt(dx**2 + dy**2) - radius
    elif shape == "square":
        d = torch.maximum(dx.abs(), dy.abs()) - 0.9 * radius
    else:  # equilateral triangle pointing up, circumradius 1.2 r, inradius 0.6 r
        n = [(0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5)]
        d = torch.stack([nx * dx + ny * dy for nx, ny in n]).amax(0) - 0.6 * radius
    return (0.5 - d).clamp(0.0, 1.0)


def gaussian_blur(video: Tensor, sigma: float) -> Tensor:
    """Spatial Gaussian blur of ``[..., H, W]`` (reflect padding, separable, radius ``ceil(3 sigma)``)."""
    if sigma <= 0:
        return video
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=video.dtype, device=video.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    shape = video.shape
    flat = video.reshape(-1, 1, shape[-2], shape[-1])
    pad_mode = "reflect" if min(shape[-2:]) > r else "replicate"
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=pad_mode), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=pad_mode), k.view(1, 1, -1, 1))
    return flat.reshape(shape)


def render_with_info(attrs: ToyAttributes, quality_mode: str = "good", seed: int = 0, frames: int = 8,
                     size: int = 32, shape_radius: float = SHAPE_RADIUS,
                     travel_scale: float = 1.0) -> tuple[Tensor, dict[str, Any]]:
    """:func:`render` plus what was drawn: ``{"centres": [T, 2] (x, y px), "colour": str, "direction": str,
    "corruption": str}`` (the colour/direction actually rendered, which differ from ``attrs`` in ``"text"`` mode)."""
    if not 0.05 <= shape_radius <= 0.3 or not 0.0 < travel_scale <= 1.0:
        raise ValueError(f"shape_radius must be in [0.05, 0.3] (a fraction of the frame) and travel_scale in (0, 1]; "
                         f"got {shape_radius} and {travel_scale}.")
    if quality_mode not in MODES:
        raise ValueError(f"quality_mode={quality_mode!r}: expected one of {MODES}.")
    if frames < 2 or size < 8:
        raise ValueError(f"render needs frames >= 2 and size >= 8 (got frames={frames}, size={size}).")
    g = torch.Generator().manual_seed(int(seed))
    # Draw the start position first so that every quality mode of one seed shares the same base video.
    u = torch.rand(2, generator=g, dtype=torch.float64)
    colour, direction, corruption = attrs.colour, attrs.direction, "none"
    if quality_mode == "text":
        if _uniform(g) < 0.5:
            colour, corruption = _choice(g, [c for c in COLOURS if c != attrs.colour]), "colour"
        else:
            direction, corruption = _choice(g, [d for d in DIRECTIONS if d != attrs.direction]), "direction"
    radius = shape_radius * size
    margin = _extent(attrs.shape, radius) + 1.0
    travel = TRAVEL[attrs.speed] * travel_scale * size
    vel = torch.tensor(DIRECTION_VEC[direction], dtype=torch.float64) * travel / (frames - 1)
    start = torch.empty(2, dtype=torch.float64)
    for ax in range(2):
        span = abs(float(vel[ax])) * (frames - 1)
        lo, hi = margin + (span if vel[ax] < 0 else 0.0), size - margin - (span if vel[ax] > 0 else 0.0)
        start[ax] = (lo + hi) / 2 if hi <= lo else lo + float(u[ax]) * (hi - lo)
    steps = torch.arange(frames, dtype=torch.float64).unsqueeze(1)
    centres = start + steps * vel
    if quality_mode == "motion":
        scale = size / 32
        if _uniform(g) < 0.5:
            corruption = "jitter"
            amp = _uniform(g, 1.5, 3.0) * scale
            centres = centres + amp * (2 * torch.rand(frames, 2, generator=g, dtype=torch.float64) - 1)
        else:
            corruption = "jump"
            k = int(torch.randint(2, frames - 1, (), generator=g))
            angle = _uniform(g, 0, 2 * math.pi)
            jump = _uniform(g, 5.0, 7.0) * scale
            # Turn the jump (in 45-degree steps) until the frame border does not swallow it.
            best, best_len = centres, -1.0
            for j in range(8):
                a = angle + j * math.pi / 4
                moved = centres.clone()
                moved[k:] += jump * torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64)
                moved = moved.clamp(margin, size - margin)
                length = float((moved[k] - centres[k]).norm())
                if length > best_len:
                    best, best_len = moved, length
                if length >= 0.9 * jump:
                    break
            centres = best
        centres = centres.clamp(margin, size - margin)
    alpha = _alpha(attrs.shape, centres, size, radius).unsqueeze(1)  # [T, 1, H, W]
    fg = torch.tensor(COLOUR_RGB[colour], dtype=torch.float64).view(1, 3, 1, 1)
    bg = torch.tensor(BACKGROUND_RGB[attrs.background or "dark"], dtype=torch.float64).view(1, 3, 1, 1)
    video = bg * (1 - alpha) + fg * alpha
    if quality_mode == "visual":
        if _uniform(g) < 0.5:
            corruption = "noise"
            std = _uniform(g, 0.15, 0.3)
            video = video + std * torch.randn(video.shape, generator=g, dtype=torch.float64)
        else:
            corruption = "blur"
            # 1.2-2 px at size 32 and below (at 16 px a 0.6-1 px blur would be too faint for any detector: the
            # oracle's sharpness test sees the same pixel-scale blur at every size), scaled up above 32.
            video = gaussian_blur(video, _uniform(g, 1.2, 2.0) * max(size, 32) / 32)
    video = video.clamp(-1.0, 1.0).float()
    return video, {"centres": centres.float(), "colour": colour, "direction": direction, "corruption": corruption}


def render(attrs: ToyAttributes, quality_mode: str = "good", seed: int = 0, frames: int = 8, size: int = 32,
           shape_radius: float = SHAPE_RADIUS, travel_scale: float = 1.0) -> Tensor:
    """Render one video ``[T, 3, H, W]`` in ``[-1, 1]``, deterministic in ``(attrs, quality_mode, seed)``.

    A soft-edged (1-pixel anti-aliased) shape moves with constant velocity from a random start (chosen so
    that it stays inside the frame) over a flat background. The seed also fixes the start position, which
    is drawn first, so the quality modes of one seed are corruptions of the same good video:

    - ``"good"``: as described;
    - ``"visual"``: strong i.i.d. Gaussian pixel noise (std 0.15-0.3) or a spatial Gaussian blur
      (sigma 1.2-2 px at size 32 and below, scaled with the size above), half the time each;
    - ``"motion"``: the trajectory jitters (uniform +-1.5-3 px a frame on both axes) or jumps once
      (5-7 px at a random frame, in a random direction the frame border does not block), half the time each;
    - ``"text"``: the shape is drawn in another colour or moves in another direction than the caption
      says, half the time each.
    """
    return render_with_info(attrs, quality_mode, seed, frames, size, shape_radius, travel_scale)[0]


EXACT_COMBOS: tuple[tuple[str, str, str, str, str], ...] = tuple(
    (s, c, d, sp, bg) for s in SHAPES for c in COLOURS for d in DIRECTIONS for sp in SPEEDS for bg in BACKGROUNDS)
"""Every fully specified attribute combination (192): the possible exact captions."""


def exact_attributes(num_captions: int, seed: int = 0) -> list[ToyAttributes]:
    """``num_captions`` distinct fully specified attributes (every attribute named: no wildcard in the caption).

    A seeded permutation of :data:`EXACT_COMBOS`, stably reordered so that new (shape, colour, direction) cells come
    first: up to 48 captions are in 48 different cells, and shapes, colours and directions are spread evenly.
    """
    if not 1 <= num_captions <= len(EXACT_COMBOS):
        raise ValueError(f"num_captions must be in 1..{len(EXACT_COMBOS)}, got {num_captions}.")
    g = torch.Generator().manual_seed(int(seed))
    order = [EXACT_COMBOS[i] for i in torch.randperm(len(EXACT_COMBOS), generator=g).tolist()]
    seen: dict[tuple[str, str, str], int] = {}
    rank = []
    for combo in order:
        cell = combo[:3]
        rank.append(seen.get(cell, 0))
        seen[cell] = seen.get(cell, 0) + 1
    ranked = [combo for _, combo in sorted(zip(rank, order, strict=True), key=lambda rc: rc[0])]
    return [ToyAttributes(*combo) for combo in ranked[:num_captions]]


# ----------------------------------------------------------------------------------------------------------------
# The world

_WORLD_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}

WORLD_DEFAULTS: dict[str, Any] = {"starts_per_caption": None, "shape_radius": SHAPE_RADIUS, "travel_scale": 1.0}
""":class:`ToyWorld`'s defaults for the rendering arguments a world dict may leave out."""


class ToyWorld(Dataset):
    """A fixed finite set of rendered videos with captions, attributes and quality-mode labels.

    Two layouts, both pure functions of the arguments:

    - *random* (``num_captions=None``, the original world): video ``i`` has attributes from
      :func:`sample_attributes` (speed and background often unnamed: wildcard captions), a quality mode drawn from
      ``mode_probs`` and a render seed, all drawn from one generator seeded with ``seed``;
    - *exact* (``num_captions`` set; the recipe's world since issue 13): ``num_captions`` fully specified captions
      (:func:`exact_attributes`), each with ``videos_per_caption`` videos of which ``good_per_caption`` are good and
      the others flawed (visual, motion, text in turn). Every caption's teacher mixture is then a small fixed set
      of known modes, and chunk 0 from pure noise has a handful of videos to choose from instead of a blend of
      backgrounds and speeds.

    Worlds are cached in memory per argument tuple (:meth:`clear_cache` frees them); the tensors are shared between
    instances, so do not modify them in place.

    Args:
        num_videos: ``N`` of the random layout (default 512); in the exact layout leave it unset (it is
            ``num_captions * videos_per_caption``).
        seed: world seed.
        mode_probs: probability of each quality mode in the random layout (normalised; keys among :data:`MODES`).
        frames: ``T``.
        size: ``H = W``.
        p_speed, p_background: probability that a random-layout caption mentions a speed / a background.
        num_captions: exact layout: the number of distinct exact captions (1..192).
        videos_per_caption, good_per_caption: exact layout: videos a caption, and how many of them are good.
        starts_per_caption: exact layout: distinct render seeds (start positions) a caption; video ``j`` uses seed
            ``j mod k``, so the flawed videos corrupt the good ones' paths (``None``: a seed for every video).
        shape_radius, travel_scale: shape radius as a fraction of the frame, factor on the distance travelled.

    Attributes:
        videos: ``[N, T, 3, H, W]`` float32 in ``[-1, 1]``.
        captions: ``N`` strings.
        attributes: ``N`` :class:`ToyAttributes` (what the caption says, not what a ``"text"`` video shows).
        modes: ``N`` mode names; ``mode_ids``: ``[N]`` long, indices into :data:`MODES`.
        attribute_ids: ``[N, 5]`` long, :meth:`ToyAttributes.indices` of each video.
        cells: ``[N]`` long, the (shape, colour, direction) cell of each caption.
        seeds: ``N`` render seeds (``render(attributes[i], modes[i], seeds[i], frames, size) == videos[i]``).
    """

    def __init__(self, num_videos: int | None = None, seed: int = 0, mode_probs: Mapping[str, float] | None = None,
                 frames: int = 8, size: int = 32, p_speed: float = 0.3, p_background: float = 0.3,
                 num_captions: int | None = None, videos_per_caption: int = 8, good_per_caption: int = 4,
                 starts_per_caption: int | None = None, shape_radius: float = SHAPE_RADIUS,
                 travel_scale: float = 1.0) -> None:
        self.num_captions = None if num_captions is None else int(num_captions)
        self.starts_per_caption = None if starts_per_caption is None else int(starts_per_caption)
        if self.starts_per_caption is not None and num_captions is None:
            raise ValueError("starts_per_caption applies to the exact layout only: set num_captions too (or leave "
                             "starts_per_caption null).")
        if self.starts_per_caption is not None and not 1 <= self.starts_per_caption <= int(videos_per_caption):
            raise ValueError(f"starts_per_caption must be in 1..videos_per_caption={videos_per_caption} (or null: a "
                             f"start for every video), got {starts_per_caption}.")
        self.videos_per_caption, self.good_per_caption = int(videos_per_caption), int(good_per_caption)
        if self.num_captions is not None:
            if not 1 <= self.num_captions <= len(EXACT_COMBOS):
                raise ValueError(f"num_captions must be in 1..{len(EXACT_COMBOS)} (distinct exact captions), "
                                 f"got {num_captions}.")
            if not 0 <= self.good_per_caption <= self.videos_per_caption or self.videos_per_caption < 1:
                raise ValueError(f"Need 0 <= good_per_caption <= videos_per_caption and videos_per_caption >= 1 "
                                 f"(got {good_per_caption} and {videos_per_caption}).")
            expected = self.num_captions * self.videos_per_caption
            if num_videos is not None and int(num_videos) != expected:
                raise ValueError(f"An exact world has num_captions * videos_per_caption = {expected} videos; got "
                                 f"num_videos={num_videos}. Leave num_videos unset (null) with num_captions.")
            num_videos = expected
            good = self.good_per_caption / self.videos_per_caption
            mode_probs = {"good": good, **{m: (1 - good) / 3 for m in MODES[1:]}}
        num_videos = 512 if num_videos is None else num_videos
        if num_videos < 1:
            raise ValueError(f"ToyWorld needs num_videos >= 1 (got {num_videos}).")
        probs = dict(DEFAULT_MODE_PROBS if mode_probs is None else mode_probs)
        unknown = set(probs) - set(MODES)
        if unknown or any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
            raise ValueError(f"mode_probs={probs}: keys must be among {MODES}, values >= 0 with a positive sum.")
        total = sum(probs.values())
        self.mode_probs = {m: probs.get(m, 0.0) / total for m in MODES}
        self.num_videos, self.seed, self.frames, self.size = int(num_videos), int(seed), int(frames), int(size)
        self.p_speed, self.p_background = float(p_speed), float(p_background)
        self.shape_radius, self.travel_scale = float(shape_radius), float(travel_scale)
        key = (self.num_videos, self.seed, tuple(self.mode_probs.values()), self.frames, self.size, self.p_speed,
               self.p_background, self.num_captions, self.videos_per_caption, self.good_per_caption,
               self.starts_per_caption, self.shape_radius, self.travel_scale)
        if key not in _WORLD_CACHE:
            _WORLD_CACHE[key] = self._build() if self.num_captions is None else self._build_exact()
        data = _WORLD_CACHE[key]
        self.videos: Tensor = data["videos"]
        self.attributes: list[ToyAttributes] = data["attributes"]
        self.captions: list[str] = [caption(a) for a in self.attributes]
        self.modes: list[str] = data["modes"]
        self.seeds: list[int] = data["seeds"]
        self.mode_ids = torch.tensor([MODES.index(m) for m in self.modes], dtype=torch.long)
        self.attribute_ids = torch.tensor([a.indices() for a in self.attributes], dtype=torch.long)
        self.cells = torch.tensor([a.cell for a in self.attributes], dtype=torch.long)

    def _build(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed)
        weights = torch.tensor([self.mode_probs[m] for m in MODES], dtype=torch.float64)
        attributes, modes, seeds, videos = [], [], [], []
        for _ in range(self.num_videos):
            attrs = sample_attributes(g, self.p_speed, self.p_background)
            mode = MODES[int(torch.multinomial(weights, 1, generator=g))]
            rseed = int(torch.randint(0, 2**31 - 1, (), generator=g))
            attributes.append(attrs)
            modes.append(mode)
            seeds.append(rseed)
            videos.append(self._render(attrs, mode, rseed))
        return {"videos": torch.stack(videos), "attributes": attributes, "modes": modes, "seeds": seeds}

    def _build_exact(self) -> dict[str, Any]:
        """The exact layout: :func:`exact_attributes` captions, each with ``videos_per_caption`` videos of which the
        first ``good_per_caption`` are good and the rest cycle through the flawed modes (visual, motion, text, starting
        at a different one for each caption so the flaws stay balanced)."""
        g = torch.Generator().manual_seed(self.seed + 1)
        flawed = MODES[1:]
        attributes, modes, seeds, videos = [], [], [], []
        for c, attrs in enumerate(exact_attributes(self.num_captions, self.seed)):
            bases = [int(torch.randint(0, 2**31 - 1, (), generator=g)) for _ in range(self.starts_per_caption or 0)]
            for j in range(self.videos_per_caption):
                mode = "good" if j < self.good_per_caption else flawed[(c + j - self.good_per_caption) % len(flawed)]
                rseed = bases[j % len(bases)] if bases else int(torch.randint(0, 2**31 - 1, (), generator=g))
                attributes.append(attrs)
                modes.append(mode)
                seeds.append(rseed)
                videos.append(self._render(attrs, mode, rseed))
        return {"videos": torch.stack(videos), "attributes": attributes, "modes": modes, "seeds": seeds}

    def _render(self, attrs: ToyAttributes, mode: str, seed: int) -> Tensor:
        return render(attrs, mode, seed, self.frames, self.size, self.shape_radius, self.travel_scale)

    @staticmethod
    def clear_cache() -> None:
        """Forget every cached world."""
        _WORLD_CACHE.clear()

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"video": [T, 3, H, W], "prompt": str, "mode": str, "index": int}``."""
        return {"video": self.videos[i], "prompt": self.captions[i], "mode": self.modes[i], "index": i}

    def prompts(self) -> list[str]:
        """The distinct captions of the world, sorted."""
        return sorted(set(self.captions))

    def train_prompts(self) -> list[str]:
        """The prompts a student is distilled and evaluated on: the exact captions in world order (exact layout), or
        one caption per (shape, colour, direction) cell (:meth:`cell_prompts`, the random layout's wildcards)."""
        if self.num_captions is None:
            return self.cell_prompts()
        return list(dict.fromkeys(self.captions))

    @staticmethod
    def cell_prompts() -> list[str]:
        """One caption per (shape, colour, direction) cell (no speed, no background), in cell order (48)."""
        return [caption(ToyAttributes(s, c, d)) for s in SHAPES for c in COLOURS for d in DIRECTIONS]

    def good_mask(self) -> Tensor:
        """``[N]`` bool: the videos rendered in the ``"good"`` mode."""
        return self.mode_ids == MODES.index("good")
