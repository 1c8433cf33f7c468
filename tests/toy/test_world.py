"""The toy world: captions, rendering, the world bank, the structured text encoder and the exact mixture teacher."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from streamr1.protocols import Denoiser, TextEncoder
from streamr1.toy.teacher import MixtureTeacher
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    MODES,
    NUM_CELLS,
    SHAPES,
    SPEEDS,
    ToyAttributes,
    ToyWorld,
    caption,
    parse_caption,
    render,
    render_with_info,
    sample_attributes,
)


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return ToyWorld(num_videos=96, seed=7)


# ---------------------------------------------------------------------------------------------------------------
# Captions


def test_caption_parse_round_trip_every_combination():
    for combo in itertools.product(SHAPES, COLOURS, DIRECTIONS, (None, *SPEEDS), (None, *BACKGROUNDS)):
        attrs = ToyAttributes(*combo)
        assert parse_caption(caption(attrs)) == attrs


def test_caption_text_and_parse_rules():
    attrs = ToyAttributes("circle", "red", "left", "fast", "dark")
    assert caption(attrs) == "a fast red circle moving left on a dark background"
    assert caption(ToyAttributes("square", "blue", "up")) == "a blue square moving up"
    # word order, case, punctuation and extra words do not matter
    assert parse_caption("Moving LEFT, the red CIRCLE (fast!) on a dark background") == attrs
    assert parse_caption("a red circle") is None  # no direction
    assert parse_caption("a red and blue circle moving left") is None  # two colours
    assert parse_caption("") is None
    assert parse_caption("a red red circle moving left") == ToyAttributes("circle", "red", "left")


def test_attributes_validate_and_index():
    with pytest.raises(ValueError, match="colour"):
        ToyAttributes("circle", "purple", "left")
    a = ToyAttributes("triangle", "yellow", "down", None, "light")
    assert a.indices() == (2, 3, 3, -1, 1)
    assert a.cell == (2 * 4 + 3) * 4 + 3 == NUM_CELLS - 1


def test_sample_attributes_is_deterministic():
    assert sample_attributes(3) == sample_attributes(3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [sample_attributes(g1) for _ in range(20)] == [sample_attributes(g2) for _ in range(20)]
    many = [sample_attributes(i) for i in range(200)]
    assert {a.shape for a in many} == set(SHAPES) and {a.direction for a in many} == set(DIRECTIONS)
    assert any(a.speed is None for a in many) and any(a.speed is not None for a in many)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def test_render_shape_range_determinism():
    attrs = ToyAttributes("circle", "red", "right")
    v = render(attrs, seed=1)
    assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1
    assert torch.equal(v, render(attrs, seed=1))
    assert not torch.equal(v, render(attrs, seed=2))  # random start
    # anti-aliased: some pixels strictly between background and shape colour
    red = v[:, 0]
    assert ((red > -0.8) & (red < 0.85)).any()
    assert render(attrs, size=48, frames=5).shape == (5, 3, 48, 48)


def test_good_render_moves_with_constant_velocity_inside_the_frame():
    for direction, (dx, dy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        for speed in (None, *SPEEDS):
            for seed in range(3):
                _, info = render_with_info(ToyAttributes("triangle", "green", direction, speed), seed=seed)
                c = info["centres"]
                step = c[1:] - c[:-1]
                assert torch.allclose(step, step[0].expand_as(step), atol=1e-5)
                assert step[0, 0] * dx >= 0 and step[0, 1] * dy >= 0 and step[0].norm() > 0.9
                assert c.min() > 4 and c.max() < 28


def test_quality_modes():
    attrs = ToyAttributes("square", "blue", "down")
    good = render(attrs, "good", seed=4)
    seen = {"visual": set(), "motion": set(), "text": set()}
    for seed in range(12):
        for mode in seen:
            v, info = render_with_info(attrs, mode, seed=seed)
            seen[mode].add(info["corruption"])
            if mode == "text":
                assert (info["colour"] != attrs.colour) != (info["direction"] != attrs.direction)
            if mode == "motion":
                second = info["centres"][2:] - 2 * info["centres"][1:-1] + info["centres"][:-2]
                assert second.norm(dim=-1).max() > 1.0
    assert seen == {"visual": {"noise", "blur"}, "motion": {"jitter", "jump"}, "text": {"colour", "direction"}}
    # a corrupted render is the same base video (same start) with the corruption applied
    blur_or_noise = render(attrs, "visual", seed=4)
    assert (blur_or_noise - good).abs().mean() < 0.3
    with pytest.raises(ValueError, match="quality_mode"):
        render(attrs, "ugly")


# ---------------------------------------------------------------------------------------------------------------
# World


def test_world_is_deterministic_cached_and_consistent(world):
    again = ToyWorld(num_videos=96, seed=7)
    assert again.videos is world.videos  # cached
    ToyWorld.clear_cache()
    rebuilt = ToyWorld(num_videos=96, seed=7)
    assert rebuilt.videos is not world.videos and torch.equal(rebuilt.videos, world.videos)
    assert rebuilt.captions == world.captions and rebuilt.modes == world.modes
    assert world.videos.shape == (96, 8, 3, 32, 32)
    for i in (0, 17, 95):
        assert torch.equal(world.videos[i], render(world.attributes[i], world.modes[i], world.seeds[i]))
        assert parse_caption(world.captions[i]) == world.attributes[i]
    item = world[3]
    assert set(item) == {"video", "prompt", "mode", "index"} and item["prompt"] == world.captions[3]
    assert not torch.equal(ToyWorld(num_videos=96, seed=8).videos, world.videos)


def test_world_mode_probabilities():
    big = ToyWorld(num_videos=800, seed=1)
    frac = {m: big.modes.count(m) / 800 for m in MODES}
    assert abs(frac["good"] - 0.55) < 0.06 and all(abs(frac[m] - 0.15) < 0.05 for m in ("visual", "motion", "text"))
    only_good = ToyWorld(num_videos=20, seed=1, mode_probs={"good": 1.0})
    assert set(only_good.modes) == {"good"} and bool(only_good.good_mask().all())
    with pytest.raises(ValueError, match="mode_probs"):
        ToyWorld(num_videos=4, mode_probs={"great": 1.0})
    assert len(ToyWorld.cell_prompts()) == NUM_CELLS


# ---------------------------------------------------------------------------------------------------------------
# Text encoder


def test_text_encoder_structure_and_inverse():
    enc = ToyTextEncoder(dim=32)
    assert isinstance(enc, TextEncoder)
    prompts = ["a fast red circle moving left on a light background", "a blue square moving up", "", "hello world",
               "a purple circle"]
    e = enc.encode(prompts)
    assert e.shape == (5, 4, 32)
    assert torch.count_nonzero(e[2]) == 0 and torch.count_nonzero(e[3]) == 0  # empty / unknown -> zeros
    assert torch.count_nonzero(e[1, 0]) > 16  # dense, not a bare one-hot
    assert torch.equal(enc.encode(prompts), ToyTextEncoder(dim=32).encode(prompts))  # deterministic
    decoded = enc.decode_attributes(e)
    assert decoded[0] == ToyAttributes("circle", "red", "left", "fast", "light")
    assert decoded[1] == ToyAttributes("square", "blue", "up")
    assert decoded[2] is None and decoded[3] is None and decoded[4] is None
    assert enc.decode_indices(e)[4].tolist() == [0, -1, -1, -1, -1]  # partial prompt: shape only
    with pytest.raises(ValueError, match="dim"):
        ToyTextEncoder(dim=8)


# ---------------------------------------------------------------------------------------------------------------
# Mixture teacher


def _matching(world: ToyWorld, attrs: ToyAttributes) -> list[int]:
    """Videos whose caption matches ``attrs`` by hand (unset speed/background are wildcards)."""
    out = []
    for i, a in enumerate(world.attributes):
        if (a.shape, a.colour, a.direction) != (attrs.shape, attrs.colour, attrs.direction):
            continue
        if attrs.speed is not None and a.speed != attrs.speed:
            continue
        if attrs.background is not None and a.background != attrs.background:
            continue
        out.append(i)
    return out


def test_teacher_is_a_denoiser_and_keeps_shape(world):
    teacher = MixtureTeacher(world)
    assert isinstance(teacher, Denoiser)
    cond = ToyTextEncoder().encode(world.captions[:3])
    x = torch.randn(3, 8, 3, 32, 32)
    out = teacher(x, torch.tensor([900.0, 500.0, 100.0]), cond)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="shape"):
        teacher(torch.randn(1, 4, 3, 32, 32), torch.tensor([500.0]), cond[:1])
    # a precision cast (e.g. Lightning's bf16-true) leaves the bank in float64
    assert teacher.to(torch.bfloat16).bank.dtype == torch.float64
    assert torch.allclose(teacher(x, torch.tensor([900.0, 500.0, 100.0]), cond), out)


def test_teacher_at_s1_is_the_mean_of_matching_videos(world):
    teacher = MixtureTeacher(world)
    enc = teacher.text_encoder
    prompt_attrs = world.attributes[0]
    core = ToyAttributes(prompt_attrs.shape, prompt_attrs.colour, prompt_attrs.direction)
    prompts = [caption(core), caption(prompt_attrs), ""]
    out = teacher(torch.randn(3, 8, 3, 32, 32), torch.full((3,), 1000.0), enc.encode(prompts))
    for b, attrs in enumerate([core, prompt_attrs]):
        idx = _matching(world, attrs)
        assert 0 in idx
        assert torch.allclose(out[b], world.videos[idx].mean(0), atol=1e-5)
    assert torch.allclose(out[2], world.videos.mean(0), atol=1e-5)  # empty prompt: unconditional


def test_teacher_at_tiny_s_returns_nearest_matching_video(world):
    teacher = MixtureTeacher(world)
    enc = teacher.text_encoder
    g = torch.Generator().manual_seed(0)
    # from a video of the prompt's cell (slightly perturbed): that video itself
    i = 5
    x = world.videos[i : i + 1] + 0.01 * torch.randn(1, 8, 3, 32, 32, generator=g)
    out = teacher(x, torch.tensor([0.05]), enc.encode([world.captions[i]]))
    assert torch.allclose(out[0], world.videos[i], atol=1e-6)
    # from elsewhere: the nearest video *among the matching ones*, found by brute force
    attrs = ToyAttributes("circle", "red", "left")
    idx = _matching(world, attrs)
    assert len(idx) >= 2
    x = torch.randn(1, 8, 3, 32, 32, generator=g) * 0.5
    dist = [float((x[0] - world.videos[j]).pow(2).sum()) for j in idx]
    nearest = idx[int(np.argmin(dist))]
    out = teacher(x, torch.tensor([0.0]), enc.encode([caption(attrs)]))
    assert torch.allclose(out[0], world.videos[nearest], atol=1e-6)


def test_teacher_posterior_matches_hand_computation_on_two_videos():
    world = ToyWorld(num_videos=2, seed=3)
    teacher = MixtureTeacher(world)
    cond = teacher.text_encoder.encode(["", ""])  # unconditional: both videos
    x0, x1 = world.videos[0].double().numpy(), world.videos[1].double().numpy()
    g = torch.Generator().manual_seed(1)
    for t in (150.0, 600.0, 950.0):
        s = t / 1000
        eps = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64).numpy()
        x_t = (1 - s) * (0.5 * x0 + 0.5 * x1) + s * eps  # between the two videos
        d0 = ((x_t - (1 - s) * x0) ** 2).sum() / (2 * s**2)
        d1 = ((x_t - (1 - s) * x1) ** 2).sum() / (2 * s**2)
        w0 = 1.0 / (1.0 + math.exp(d0 - d1))
        xt = torch.from_numpy(x_t).float().unsqueeze(0).repeat(2, 1, 1, 1, 1)
        tt = torch.full((2,), t)
        w = teacher.posterior(xt, tt, cond)
        assert w.shape == (2, 2) and w.dtype == torch.float64
        # x_t is stored in float32, which shifts the log-odds by about 1e-7 * |x_t|^2 / s^2
        assert w[0, 0].item() == pytest.approx(w0, abs=1e-3)
        expected = w0 * x0 + (1 - w0) * x1
        out = teacher(xt, tt, cond)[0].double().numpy()
        assert np.abs(out - expected).max() < 2e-3 * np.abs(x0 - x1).max()


def test_teacher_per_frame_timesteps_and_fallback(world):
    teacher = MixtureTeacher(world)
    enc = teacher.text_encoder
    cond = enc.encode([world.captions[2]] * 2)
    x = torch.randn(2, 8, 3, 32, 32)
    t = torch.tensor([400.0, 700.0])
    assert torch.allclose(teacher(x, t, cond), teacher(x, t[:, None].expand(2, 8), cond))
    per_frame = teacher(x, torch.linspace(100, 900, 8).expand(2, 8), cond)
    assert per_frame.shape == x.shape and torch.isfinite(per_frame).all()
    # a prompt no caption satisfies falls back to the videos matching the most named attributes
    missing = next(c for c in (ToyAttributes(s, c, d, sp, bg) for s in SHAPES for c in COLOURS for d in DIRECTIONS
                               for sp in SPEEDS for bg in BACKGROUNDS) if not _matching(world, c))
    mask = teacher.match_mask(enc.encode([caption(missing)]))
    assert mask.any() and torch.isfinite(teacher(x[:1], t[:1], enc.encode([caption(missing)]))).all()
    assert teacher.match_mask(enc.encode([""])).all()
