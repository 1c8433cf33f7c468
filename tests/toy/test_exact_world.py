"""The exact layout of the toy world (issue 13): every caption names every attribute, a fixed mix of modes a caption."""

from __future__ import annotations

import argparse
import collections

import pytest
import torch

from streamr1 import toy
from streamr1.toy.prompts import ToyPromptDataModule
from streamr1.toy.teacher import MixtureTeacher
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import (
    EXACT_COMBOS,
    MODES,
    ToyWorld,
    exact_attributes,
    parse_caption,
    render,
    render_with_info,
)
from streamr1.toy.world_options import add_world_arguments, world_from_arguments, world_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_exact_captions_are_distinct_fully_specified_and_spread_over_cells():
    attrs = exact_attributes(48, seed=0)
    assert len(set(attrs)) == 48 and len(EXACT_COMBOS) == 192
    assert all(None not in a.as_tuple() for a in attrs)  # no wildcard
    assert len({a.cell for a in attrs}) == 48  # up to 48 captions: 48 different cells
    first16 = exact_attributes(16, seed=0)
    assert first16 == attrs[:16] and len({a.cell for a in first16}) == 16
    assert len(set(exact_attributes(192, seed=1))) == 192
    with pytest.raises(ValueError, match="num_captions"):
        exact_attributes(0)


def test_the_recipe_world_has_the_fixed_mix_of_modes_per_caption():
    w = ToyWorld(**toy.WORLD)
    n, per, good = toy.WORLD["num_captions"], toy.WORLD["videos_per_caption"], toy.WORLD["good_per_caption"]
    assert len(w) == n * per and w.videos.shape == (n * per, *toy.LATENT_SHAPE)
    prompts = w.train_prompts()
    assert len(prompts) == n and all(parse_caption(p) is not None for p in prompts)
    for cap in prompts:
        modes = collections.Counter(m for c, m in zip(w.captions, w.modes, strict=True) if c == cap)
        assert modes["good"] == good and sum(modes.values()) == per
        assert all(modes[m] >= 1 for m in MODES[1:])  # 4 flawed videos: each flaw at least once
    assert int(w.good_mask().sum()) == n * good
    # renders are reproducible from the recorded seeds
    i = 5
    assert torch.equal(w.videos[i], render(w.attributes[i], w.modes[i], w.seeds[i], w.frames, w.size, w.shape_radius,
                                          w.travel_scale))


def test_teacher_restricts_each_exact_caption_to_its_own_videos():
    w = ToyWorld(**toy.WORLD)
    enc = ToyTextEncoder(dim=toy.TEXT_DIM)
    teacher = MixtureTeacher(world=w, text_encoder=enc)
    mask = teacher.match_mask(enc.encode(w.train_prompts()))
    assert mask.sum(1).tolist() == [toy.WORLD["videos_per_caption"]] * toy.WORLD["num_captions"]
    assert mask[0].tolist() == [c == w.train_prompts()[0] for c in w.captions]


def test_bad_exact_arguments_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="Leave num_videos unset"):
        ToyWorld(num_videos=100, num_captions=4)
    with pytest.raises(ValueError, match="good_per_caption"):
        ToyWorld(num_captions=4, videos_per_caption=2, good_per_caption=3)
    assert len(ToyWorld(num_videos=8, seed=1)) == 8 and ToyWorld(num_videos=8, seed=1).num_captions is None


def test_blur_flaw_keeps_its_pixel_scale_at_16_pixels():
    """At 16 px a blur of 0.6-1 px (the old ``size / 32`` scaling) passed the oracle as good in a quarter of the
    renders; the flaw keeps 1.2-2 px at sizes up to 32."""
    w = ToyWorld(**toy.WORLD)
    for i in range(len(w)):
        if w.modes[i] == "visual":
            _, info = render_with_info(w.attributes[i], "visual", w.seeds[i], w.frames, w.size)
            if info["corruption"] == "blur":
                break
    else:
        pytest.fail("no blurred video in the recipe's world")
    from streamr1.toy.oracle import visual_quality

    assert visual_quality(w.videos[i:i + 1])["sharpness"].item() < 0.65


def test_prompt_datamodule_and_world_arguments_follow_the_world():
    dm = ToyPromptDataModule(num_captions=toy.WORLD["num_captions"], world_seed=toy.WORLD["seed"], val_repeats=2)
    assert dm.val_prompts == [p for p in ToyWorld(**toy.WORLD).train_prompts() for _ in range(2)]
    parser = argparse.ArgumentParser()
    add_world_arguments(parser)
    assert world_from_arguments(parser.parse_args([])) == toy.WORLD
    other = world_from_arguments(parser.parse_args(["--good-per-caption", "2", "--videos-per-caption", "6"]))
    assert other["good_per_caption"] == 2 and other["videos_per_caption"] == 6 and other["size"] == toy.WORLD["size"]


def test_starts_per_caption_shares_bases_between_a_captions_videos():
    """``starts_per_caption=k``: video ``j`` of a caption uses base ``j mod k``, so its flawed videos corrupt the same
    start positions as its good ones; the default gives every video its own start."""
    w = ToyWorld(num_captions=4, videos_per_caption=6, good_per_caption=2, size=16, starts_per_caption=2)
    for c in range(4):
        seeds = w.seeds[6 * c: 6 * (c + 1)]
        assert seeds[0::2] == [seeds[0]] * 3 and seeds[1::2] == [seeds[1]] * 3 and seeds[0] != seeds[1]
        good = w.videos[6 * c: 6 * c + 2]
        assert not torch.equal(good[0], good[1])
    free = ToyWorld(num_captions=4, videos_per_caption=6, good_per_caption=2, size=16)
    assert len(set(free.seeds)) == 24
    with pytest.raises(ValueError, match="starts_per_caption"):
        ToyWorld(num_captions=4, videos_per_caption=6, good_per_caption=2, size=16, starts_per_caption=7)
    with pytest.raises(ValueError, match="exact layout only"):
        ToyWorld(num_videos=8, size=16, starts_per_caption=2)


def test_shape_radius_and_travel_scale_set_what_is_drawn():
    """A circle of radius ``r * size`` covers about ``pi (r size)^2`` pixels; the centre travels ``TRAVEL * scale *
    size`` pixels over the clip (``TRAVEL[None] = 0.38``: 0.38 * 0.5 * 32 = 6.08 px)."""
    from streamr1.toy.world import ToyAttributes

    attrs = ToyAttributes("circle", "red", "right", None, "dark")
    for radius in (0.14, 0.25):
        _, info = render_with_info(attrs, "good", seed=1, size=32, shape_radius=radius)
        video = render(attrs, "good", seed=1, size=32, shape_radius=radius)
        coverage = (video[0, 0] + 0.85) / (0.9 + 0.85)  # red channel: alpha
        assert coverage.sum().item() == pytest.approx(torch.pi * (radius * 32) ** 2, rel=0.03)
    _, info = render_with_info(attrs, "good", seed=1, size=32, travel_scale=0.5)
    assert (info["centres"][-1, 0] - info["centres"][0, 0]).item() == pytest.approx(0.38 * 0.5 * 32, abs=1e-4)
    with pytest.raises(ValueError, match="shape_radius"):
        render(attrs, "good", size=32, shape_radius=0.5)
    w = ToyWorld(num_captions=2, videos_per_caption=2, good_per_caption=1, size=16, shape_radius=0.25,
                 travel_scale=0.5)
    assert torch.equal(w.videos[0], render(w.attributes[0], w.modes[0], w.seeds[0], 8, 16, 0.25, 0.5))


def test_world_arguments_carry_the_rendering_options_to_the_fit_overrides():
    parser = argparse.ArgumentParser()
    add_world_arguments(parser)
    world = world_from_arguments(parser.parse_args(["--starts-per-caption", "2", "--shape-radius", "0.2"]))
    assert world["starts_per_caption"] == 2 and world["shape_radius"] == 0.2 and "travel_scale" not in world
    args = world_overrides(world)
    pairs = dict(zip(args[0::2], args[1::2], strict=True))
    assert pairs["--model.teacher.init_args.starts_per_caption"] == "2"
    assert pairs["--model.evaluator.init_args.shape_radius"] == "0.2"
    teacher = MixtureTeacher(**{k: v for k, v in world.items()}, text_dim=32)
    assert torch.equal(teacher.world.videos, ToyWorld(**world).videos)
