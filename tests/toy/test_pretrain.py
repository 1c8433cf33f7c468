"""Flow-matching pretraining of the toy Wan and the init check (issue 13, items 2 and 4), at tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from streamr1 import toy
from streamr1.flow import warped_steps
from streamr1.models import CausalWanDenoiser, WanDenoiser
from streamr1.toy.init_check import check_student, denoising_errors, format_report
from streamr1.toy.pretrain import bidirectional_flow_loss, causal_flow_loss, draw_levels, pretrain_denoiser
from streamr1.toy.teacher import MixtureTeacher
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import ToyWorld

pytestmark = pytest.mark.usefixtures("one_thread")

LEVELS = warped_steps(toy.DENOISING_STEPS, toy.SHIFT)
TINY = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 3,
        "out_channels": 3, "text_dim": toy.TEXT_DIM, "freq_dim": 16, "ffn_dim": 16, "num_layers": 1,
        "rope_max_seq_len": 32}


class ZeroFlow(nn.Module):
    """Predicts a zero flow and records its inputs (bidirectional ``flow`` and causal ``causal`` interfaces)."""

    chunk_frames = 2

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flow(self, x_t, t, cond):
        self.calls.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t) + self.w

    def causal(self, x_t, t, cond):
        return self.flow(x_t, t, cond)


def test_draw_levels_mixes_the_few_step_levels_and_a_shifted_spread():
    g = torch.Generator().manual_seed(0)
    t = draw_levels(4000, LEVELS, g, level_fraction=0.5)
    on_level = torch.isin(t, torch.tensor(LEVELS, dtype=torch.float32))
    assert 0.45 < on_level.float().mean().item() < 0.56  # half at the levels (plus a few spread hits: none exact)
    assert t.min() >= 1.0 and t.max() <= 1000.0
    spread = t[~on_level]
    # shift 3 (SPEC.md §1): the median of 1000 * 3u / (1 + 2u), u ~ U(0, 1), is 1000 * 1.5 / 2 = 750
    assert spread.median().item() == pytest.approx(750.0, abs=25.0)


def test_bidirectional_loss_by_hand_with_a_zero_flow():
    """Zero flow: the loss is mean((eps - x0)^2) over the scored frames; per-chunk samples keep earlier chunks clean
    (t = 0), later ones pure noise (t = 1000), and score only their chunk."""
    model = ZeroFlow()
    x0 = torch.randn(6, 8, 3, 4, 4)
    g = torch.Generator().manual_seed(1)
    loss = bidirectional_flow_loss(model, x0, torch.zeros(6, 4, 32), LEVELS, g, chunk_frames=2,
                                   per_chunk_fraction=1.0)
    x_t, t = model.calls[0]
    g2 = torch.Generator().manual_seed(1)
    level = draw_levels(6, LEVELS, g2, 0.5)
    eps = torch.randn(x0.shape, generator=g2)
    _ = torch.rand(6, generator=g2)
    k = torch.randint(0, 4, (6,), generator=g2)
    expected, count = 0.0, 0
    for b in range(6):
        lo, hi = 2 * int(k[b]), 2 * int(k[b]) + 2
        assert torch.all(t[b, :lo] == 0) and torch.all(t[b, hi:] == 1000) and torch.all(t[b, lo:hi] == level[b])
        assert torch.allclose(x_t[b, :lo], x0[b, :lo]) and torch.allclose(x_t[b, hi:], eps[b, hi:])
        expected += float((eps[b, lo:hi] - x0[b, lo:hi]).pow(2).mean(dim=(1, 2, 3)).sum())
        count += 2
    assert loss.item() == pytest.approx(expected / count, rel=1e-5)


def test_causal_loss_feeds_clean_context_and_scores_one_chunk():
    model = ZeroFlow()
    x0 = torch.randn(4, 8, 3, 4, 4)
    loss = causal_flow_loss(model, x0, torch.zeros(4, 4, 32), LEVELS, torch.Generator().manual_seed(2))
    assert [c[0].shape[1] for c in model.calls] == [2, 4, 6, 8]  # sample i trains chunk i: frames 0..2i+2 fed
    for k, (x_t, t) in enumerate(model.calls):
        assert torch.equal(x_t[:, :2 * k], x0[k:k + 1, :2 * k]) and torch.all(t[:, :2 * k] == 0)
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_pretraining_lowers_the_flow_loss_on_a_tiny_world():
    torch.manual_seed(0)
    videos = torch.randn(4, 4, 3, 4, 4).clamp(-1, 1)
    cond = torch.randn(4, 4, toy.TEXT_DIM)
    model = WanDenoiser(config=TINY)
    g = torch.Generator().manual_seed(0)
    before = sum(bidirectional_flow_loss(model, videos, cond, LEVELS, g).item() for _ in range(8))
    pretrain_denoiser(model, videos, cond, LEVELS, iterations=60, batch_size=4, lr=3e-3, warmup=5)
    g = torch.Generator().manual_seed(0)
    after = sum(bidirectional_flow_loss(model, videos, cond, LEVELS, g).item() for _ in range(8))
    assert after < 0.8 * before and not model.training


class TeacherAsStudent(nn.Module):
    """The exact teacher behind the causal student's full-sequence interface (later frames at t = 1000)."""

    def __init__(self, teacher: MixtureTeacher, frames: int) -> None:
        super().__init__()
        self.teacher, self.frames, self.chunk_frames = teacher, frames, 2

    def forward(self, x_t, t, cond):
        b, f = x_t.shape[:2]
        full = torch.cat([x_t, torch.zeros(b, self.frames - f, *x_t.shape[2:])], dim=1)
        tt = torch.cat([t, torch.full((b, self.frames - f), 1000.0)], dim=1)
        return self.teacher(full, tt, cond)[:, :f]


def test_denoising_errors_are_zero_for_the_teacher_itself_and_not_for_a_random_student():
    world = ToyWorld(num_captions=2, videos_per_caption=2, good_per_caption=1, size=16)
    enc = ToyTextEncoder(dim=toy.TEXT_DIM)
    teacher = MixtureTeacher(world=world, text_encoder=enc)
    cond = enc.encode(world.captions)
    perfect = denoising_errors(TeacherAsStudent(teacher, 8), teacher, world.videos, cond, LEVELS)
    assert max(perfect["continuation"] + perfect["chunk0"]) < 1e-5
    # with clean context the teacher knows the video: its continuation is the video itself
    assert max(perfect["continuation_to_video"]) < 1e-3
    random = CausalWanDenoiser(config=TINY, chunk_frames=2)
    errors = denoising_errors(random, teacher, world.videos, cond, LEVELS)
    assert min(errors["continuation"]) > 0.1 and len(errors["chunk0"]) == len(LEVELS)


def test_init_check_reports_errors_and_oracle_numbers_at_small_size():
    world = ToyWorld(num_captions=2, videos_per_caption=2, good_per_caption=1, size=16)
    student = CausalWanDenoiser(config=TINY, chunk_frames=2)
    result = check_student(student, world, ToyTextEncoder(dim=toy.TEXT_DIM), LEVELS, repeats=2, error_videos=4)
    assert result["samples"] == 4 and 0.0 <= result["oracle"]["good_fraction"] <= 1.0
    assert set(result["errors"]) == {"continuation", "chunk0", "continuation_to_video", "chunk0_to_video"}
    text = format_report(result)
    assert "good-mode fraction" in text and "continuation vs teacher" in text


def test_evaluation_samples_do_not_depend_on_the_global_rng():
    from streamr1.toy.evaluation import sample_student

    student = CausalWanDenoiser(config=TINY, chunk_frames=2)
    enc = ToyTextEncoder(dim=toy.TEXT_DIM)
    prompts = ToyWorld(**toy.WORLD).train_prompts()[:3]
    torch.manual_seed(1)
    a = sample_student(student, enc, prompts, toy.LATENT_SHAPE, LEVELS, seed=7)
    torch.manual_seed(2)
    torch.randn(10)
    b = sample_student(student, enc, prompts, toy.LATENT_SHAPE, LEVELS, seed=7)
    assert torch.equal(a, b)
