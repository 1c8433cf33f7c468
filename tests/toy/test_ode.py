"""The ODE-regression initialisation (streamr1.toy.ode) against hand-derived values.

With a teacher whose x0 prediction is a fixed video X (whatever x_t), the guided flow ODE is a straight line:
from x = X + s (n - X), one Euler step ``x <- x0 + (s'/s)(x - x0)`` gives X + s' (n - X), so the trajectory at any
level s is the forward noising ``(1 - s) X + s n`` (SPEC §1) and its end point is X, exactly, with any step count.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from streamr1.flow import add_noise, warped_steps
from streamr1.toy.ode import (
    causal_teacher_ode,
    causal_teacher_sampler,
    make_ode_pairs,
    ode_grid,
    ode_regression_loss,
    teacher_ode,
)

STEPS = (1000.0, 750.0, 500.0, 250.0)


class ConstantTeacher(nn.Module):
    """x0 prediction = ``video`` (broadcast over the batch) for any input, timestep or condition."""

    def __init__(self, video: torch.Tensor) -> None:
        super().__init__()
        self.video = video

    def forward(self, x_t, t, cond):
        return self.video.expand_as(x_t).clone()


def test_grid_runs_1000_to_0_and_hits_the_warped_steps():
    grid, index = ode_grid(STEPS, num_steps=7, shift=5.0)
    assert float(grid[0]) == 1000.0 and float(grid[-1]) == 0.0
    assert all(float(a) > float(b) for a, b in zip(grid, grid[1:], strict=False))
    assert [float(grid[i]) for i in index] == pytest.approx(warped_steps(STEPS, 5.0))  # [1000, 937.5, 833.3, 625]
    with pytest.raises(ValueError, match="num_steps"):
        ode_grid(STEPS, 0, 5.0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_steps", [3, 16])
def test_constant_teacher_gives_the_straight_line(causal, num_steps):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(6, 3, 4, 4, generator=g)
    noise = torch.randn(2, 6, 3, 4, 4, generator=g)
    cond, neg = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    teacher = ConstantTeacher(video)
    if causal:
        xs, x0 = causal_teacher_ode(teacher, cond, neg, noise, chunk_frames=2, num_steps=num_steps,
                                    record_steps=STEPS, continuation_steps=2)
    else:
        xs, x0 = teacher_ode(teacher, cond, neg, noise, num_steps=num_steps, record_steps=STEPS)
    assert xs.shape == (2, 4, 6, 3, 4, 4)
    torch.testing.assert_close(x0, video.expand_as(x0), atol=1e-5, rtol=0)
    for j, t in enumerate(warped_steps(STEPS, 5.0)):
        expected = add_noise(video.expand_as(noise), noise, torch.full((2,), t))
        torch.testing.assert_close(xs[:, j], expected, atol=1e-5, rtol=0)


class ZeroStudent(nn.Module):
    """Predicts 0 and records what it was fed (input frames and per-frame timesteps)."""

    chunk_frames = 2

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x, t, cond):
        self.calls.append((x.shape[1], t.clone()))
        return torch.zeros_like(x)


def test_regression_loss_is_the_mean_over_samples_of_their_chunk_error():
    g = torch.Generator().manual_seed(1)
    b, f = 5, 6
    x0 = torch.randn(b, f, 3, 2, 2, generator=g)
    xs = torch.randn(b, 4, f, 3, 2, 2, generator=g)
    steps = warped_steps(STEPS, 5.0)
    student = ZeroStudent()
    loss = ode_regression_loss(student, xs, x0, torch.zeros(b, 1, 4), steps, torch.Generator().manual_seed(0))
    # sample i trains chunk i mod 3 (frames 2k, 2k+1); with a zero prediction its error is mean(x0[i, chunk]^2)
    expected = sum(x0[i, 2 * (i % 3):2 * (i % 3) + 2].pow(2).mean() for i in range(b)) / b
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # chunk k sees only frames 0..2k+1: the clean earlier chunks at t = 0, its own frames at a recorded level
    assert sorted(n for n, _ in student.calls) == [2, 4, 6]
    for n, t in student.calls:
        assert torch.all(t[:, : n - 2] == 0)
        assert all(float(v) in [pytest.approx(s) for s in steps] for v in t[:, n - 2:].flatten())


class RecordingTeacher(ConstantTeacher):
    """A :class:`ConstantTeacher` that also records the per-frame timesteps of every call."""

    def __init__(self, video: torch.Tensor) -> None:
        super().__init__(video)
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x_t, t, cond):
        self.timesteps.append(t.clone())
        return super().forward(x_t, t, cond)


def test_sampler_pairs_of_a_constant_teacher_are_its_renoised_predictions():
    # The teacher predicts X everywhere, so cfg_x0(X, X, g) = X at every level; the sampler feeds level 0 the noise
    # and level j > 0 add_noise(X, fresh_j, t_j) with the fresh noise drawn in (chunk, level) order.
    g = torch.Generator().manual_seed(0)
    video = torch.randn(6, 3, 4, 4, generator=g)
    noise = torch.randn(2, 6, 3, 4, 4, generator=g)
    cond, neg = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    steps = warped_steps(STEPS, 5.0)
    teacher = RecordingTeacher(video)
    xs, targets, x0 = causal_teacher_sampler(teacher, cond, neg, noise, chunk_frames=2, steps=steps,
                                             generator=torch.Generator().manual_seed(7))
    assert xs.shape == targets.shape == (2, 4, 6, 3, 4, 4)
    torch.testing.assert_close(targets, video.expand_as(targets), atol=1e-6, rtol=0)
    torch.testing.assert_close(x0, video.expand_as(x0), atol=1e-6, rtol=0)
    replay = torch.Generator().manual_seed(7)
    for k in range(3):
        chunk = slice(2 * k, 2 * k + 2)
        torch.testing.assert_close(xs[:, 0, chunk], noise[:, chunk])
        for j in range(1, 4):
            fresh = torch.randn(2, 2, 3, 4, 4, generator=replay)
            expected = add_noise(video[chunk].expand(2, -1, -1, -1, -1), fresh, torch.full((2,), steps[j]))
            torch.testing.assert_close(xs[:, j, chunk], expected, atol=1e-6, rtol=0)
    # chunk k: earlier frames clean (t = 0), its own at the level, later frames pure noise (t = 1000)
    assert len(teacher.timesteps) == 3 * 4
    for call, t in enumerate(teacher.timesteps):
        k, j = divmod(call, 4)
        assert torch.all(t[:, :2 * k] == 0) and torch.all(t[:, 2 * k + 2:] == 1000)
        torch.testing.assert_close(t[:, 2 * k:2 * k + 2], torch.full((4, 2), steps[j]))  # cond and neg batched


def test_sampler_pairs_need_a_chunk_size_and_a_known_target():
    teacher = ConstantTeacher(torch.zeros(4, 3, 2, 2))

    class Encoder:
        def encode(self, prompts):
            return torch.zeros(len(prompts), 1, 4)

    pairs = make_ode_pairs(teacher, Encoder(), ["a", "b", "c"], (4, 3, 2, 2), causal_chunk_frames=2,
                           target="sampler", batch_size=2)
    assert pairs.targets is not None and pairs.targets.shape == pairs.xs.shape == (3, 4, 4, 3, 2, 2)
    assert make_ode_pairs(teacher, Encoder(), ["a"], (4, 3, 2, 2), num_steps=2).targets is None
    with pytest.raises(ValueError, match="causal_chunk_frames"):
        make_ode_pairs(teacher, Encoder(), ["a"], (4, 3, 2, 2), target="sampler")
    with pytest.raises(ValueError, match="'ode'"):
        make_ode_pairs(teacher, Encoder(), ["a"], (4, 3, 2, 2), target="score")


def test_regression_loss_with_per_level_targets_scores_each_sample_at_its_level():
    g = torch.Generator().manual_seed(2)
    b, f = 6, 6
    x0 = torch.randn(b, f, 3, 2, 2, generator=g)
    xs = torch.randn(b, 4, f, 3, 2, 2, generator=g)
    targets = torch.randn(b, 4, f, 3, 2, 2, generator=g)
    loss = ode_regression_loss(ZeroStudent(), xs, x0, torch.zeros(b, 1, 4), warped_steps(STEPS, 5.0),
                               torch.Generator().manual_seed(3), targets)
    level = torch.randint(0, 4, (b,), generator=torch.Generator().manual_seed(3))  # the loss's first draw
    expected = sum(targets[i, level[i], 2 * (i % 3):2 * (i % 3) + 2].pow(2).mean() for i in range(b)) / b
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.slow  # every stage of the asset build at the tiny budget: about 5 minutes on 2 cores
def test_tiny_budget_makes_every_shipped_file(tmp_path):
    from streamr1 import toy
    from streamr1.rewards.normalization import read_stats
    from streamr1.rewards.openclip import OpenCLIPVideoReward
    from streamr1.toy import assets

    old = os.umask(0o022)
    try:
        manifest = assets.main(["--budget", "tiny", "--output", str(tmp_path), "--num-captions", "2"])
    finally:
        os.umask(old)
    assert assets.BUDGETS["tiny"].student_iterations == 2  # presets unchanged by a run
    names = {assets.PRETRAINED_FILE, assets.STUDENT_FILE, assets.REWARD_FILE, assets.STATS_FILE,
             assets.ORACLE_STATS_FILE, assets.SPEARMAN_FILE, assets.MANIFEST_FILE}
    assert names <= set(os.listdir(tmp_path))
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    student = assets.build_student(str(tmp_path / assets.STUDENT_FILE))
    assert sum(p.numel() for p in student.parameters()) == manifest["student"]["parameters"]
    critic = assets.build_pretrained(str(tmp_path / assets.PRETRAINED_FILE))  # the critic's start loads too
    assert sum(p.numel() for p in critic.parameters()) == manifest["pretrained"]["parameters"]
    assert manifest["command"] == f"python -m streamr1.toy.assets --output {tmp_path} --budget tiny --num-captions 2"
    assert manifest["world"] == {**toy.WORLD, "num_captions": 2}
    assert manifest["initial_student"]["samples"] == 2 * assets.BUDGETS["tiny"].calibration_repeats  # the 2 captions
    assert set(manifest["student"]) >= {"causal_flow", "ode_regression"}
    assert 0.0 <= manifest["initial_student"]["oracle"]["good_fraction"] <= 1.0
    reward = OpenCLIPVideoReward(state_path=str(tmp_path / assets.REWARD_FILE))
    scores = reward((torch.rand(2, 8, 3, 16, 16)), ["a red circle moving left"] * 2)
    assert set(scores) == {"VQ", "MQ", "TA"} and all(v.shape == (2,) for v in scores.values())
    stats = read_stats(tmp_path / assets.STATS_FILE)
    assert all(stats[a]["std"] >= 0 and stats[a]["count"] > 0 for a in ("VQ", "MQ", "TA"))
    rho = json.loads((tmp_path / assets.SPEARMAN_FILE).read_text())
    assert rho["spearman_reward_vs_oracle"] == manifest["reward"]["spearman"]
    assert all(-1.0 <= float(v) <= 1.0 for v in rho["spearman_reward_vs_oracle"].values())
    assert set(rho["spearman_reward_vs_oracle"]) == {"VQ", "MQ", "TA"} == set(rho["spearman_student_rollouts"])


def test_manifest_command_names_the_budget_overrides(capsys):
    from dataclasses import replace

    from streamr1.toy import assets

    long = assets.BUDGETS["long"]
    assert assets._override_flags(long, "long") == ""
    changed = replace(long, student_iterations=2400, ode_per_prompt=96)
    assert assets._override_flags(changed, "long") == " --student-iterations 2400 --ode-per-prompt 96"
    with pytest.raises(SystemExit):
        assets.main(["--help"])
    help_text = capsys.readouterr().out
    for name in assets.OVERRIDES:  # every flag the manifest may name is one the command takes
        assert "--" + name.replace("_", "-") in help_text


def test_asset_command_refuses_a_device_this_machine_lacks(tmp_path, capsys):
    from streamr1.toy import assets

    missing = "cuda:99"  # no machine has a hundredth GPU
    with pytest.raises(SystemExit):
        assets.main(["--output", str(tmp_path), "--budget", "tiny", "--device", missing])
    err = capsys.readouterr().err
    assert f"--device {missing} is not usable here" in err and "--device cpu" in err
    assert not list(tmp_path.iterdir())  # refused before any stage wrote anything



def test_world_flags_name_the_world_they_make():
    import argparse

    from streamr1 import toy
    from streamr1.toy.world_options import add_world_arguments, world_flags, world_from_arguments

    assert world_flags(dict(toy.WORLD)) == ""
    other = {**toy.WORLD, "num_captions": 6, "shape_radius": 0.18, "starts_per_caption": 2}
    flags = world_flags(other)
    assert flags == " --num-captions 6 --starts-per-caption 2 --shape-radius 0.18"
    parser = argparse.ArgumentParser()
    add_world_arguments(parser)
    assert world_from_arguments(parser.parse_args(flags.split())) == other  # the flags remake the world
    with pytest.raises(ValueError, match="size"):
        world_flags({**toy.WORLD, "size": 32})


def test_partial_asset_build_refuses_files_made_on_another_world(tmp_path):
    from streamr1 import toy
    from streamr1.toy import assets

    made_on = {**toy.WORLD, "num_captions": toy.WORLD["num_captions"] + 2}
    (tmp_path / assets.MANIFEST_FILE).write_text(json.dumps({"world": made_on}))
    with pytest.raises(ValueError, match="remake every stage"):
        assets.make_assets(str(tmp_path), assets.BUDGETS["tiny"], stages=["reward"], budget_name="tiny")
    assert json.loads((tmp_path / assets.MANIFEST_FILE).read_text()) == {"world": made_on}  # left as it was
