"""The speed benchmark's measuring tools and its entry point (the numbers themselves are never asserted)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from streamr1.bench import speed
from streamr1.flow import warped_steps
from streamr1.models import HashTextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("size", ["quickstart", "tiny", "small", "wan1.3b"])
def test_analytic_flops_equal_torch_flop_counter(size):
    spec = speed.make_spec(size)
    device = "meta" if size == "wan1.3b" else "cpu"  # the 1.4B model only by shape
    with torch.device(device):
        transformer = speed.build_student(spec).transformer
    h, w = spec.latent_hw
    x = torch.randn(spec.batch, spec.channels, spec.train_frames, h, w, device=device, dtype=spec.dtype)
    cond = torch.randn(spec.batch, spec.text_len, spec.wan["text_dim"], device=device, dtype=spec.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(x, torch.full((spec.batch,), 500.0, device=device), cond, return_dict=False)
    tokens = spec.train_frames * spec.tokens_per_frame
    assert speed.forward_flops(transformer, tokens, spec.text_len, spec.batch) == counter.get_total_flops()


def test_wan_size_has_the_paper_shapes():
    spec = speed.make_spec("wan1.3b")
    assert spec.tokens_per_frame == 30 * 52 and spec.train_frames // spec.chunk_frames == 7
    assert spec.dtype == torch.bfloat16 and spec.pixel_frames_per_latent == 4


def test_quickstart_size_is_the_default_and_has_the_recipes_shapes():
    import yaml

    args = speed.parse_args([])
    assert args.size == "quickstart" and "reward" in args.sections
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "quickstart.yaml")))
    model = cfg["model"]
    assert speed._quickstart_from_config() == speed.QUICKSTART  # the copy used without the repository
    spec = speed.make_spec("quickstart")
    assert spec.wan == model["student"]["init_args"]["config"] == model["critic"]["init_args"]["config"]
    assert spec.chunk_frames == model["student"]["init_args"]["chunk_frames"]
    assert [spec.train_frames, spec.channels, *spec.latent_hw] == model["latent_shape"]
    assert spec.batch == cfg["data"]["init_args"]["batch_size"] and spec.tokens_per_frame == 64
    assert list(speed.STEPS) == model["denoising_steps"] and speed.SHIFT == model["shift"]
    assert model["teacher"]["class_path"] == "streamr1.toy.teacher.MixtureTeacher" and spec.teacher == "mixture"
    assert model["text_encoder"]["class_path"] == "streamr1.toy.text.ToyTextEncoder"


def test_stream_r1_stack_is_the_presets_and_its_copy_agrees():
    stack = speed.stream_r1_stack()
    assert [path.rsplit(".", 1)[-1] for path, _ in stack] == [
        "RewardService", "AdaptiveAxisBalancing", "ReliabilityWeighting", "SaliencyWeighting"]  # no StudentEMA
    assert stack == [(path, dict(args)) for path, args in speed.STREAM_R1_STACK]


def test_reward_section_counts_one_reward_forward_and_backward_per_stream_r1_turn(threads):
    # The design (SPEC §4.1, §4.5): the reward service scores each rollout once, ONE forward and ONE batched
    # backward for every axis' saliency, however many callbacks read it; plain DMD never calls the reward model.
    expected = {"DMD": (0, 0), "Stream-R1": (1, 1)}
    torch.set_num_threads(1)
    rows = speed.section_reward(speed.BenchContext(speed.make_spec("tiny"), torch.device("cpu")))
    assert all(r.section == "reward" for r in rows)
    metrics = {r.metric: r for r in rows}
    for kind, (forwards, backwards) in expected.items():
        assert metrics[f"{kind} student turn: reward forwards"].value == forwards
        assert metrics[f"{kind} student turn: reward backwards"].value == backwards
    ratio = metrics["Stream-R1 / DMD student turn"]
    dmd, sr1 = metrics["DMD student turn: time"].value, metrics["Stream-R1 student turn: time"].value
    assert ratio.unit == "x" and ratio.value == pytest.approx(sr1 / dmd) and "target <= 1.3" in ratio.note
    assert metrics["reward pass: time"].value > 0 and metrics["reward pass: time"].unit == "ms"


def test_recompute_baseline_generates_what_the_cache_does(threads):
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and immune to a busy machine
    spec = speed.make_spec("tiny")
    student = speed.build_student(spec, window_frames=2 * spec.chunk_frames).eval()
    cond = HashTextEncoder(dim=16, length=spec.text_len).encode(["a red circle moving left"])
    noise = torch.randn(1, 3 * spec.chunk_frames, spec.channels, *spec.latent_hw)
    steps = warped_steps(speed.STEPS, speed.SHIFT)
    cached, cached_times = speed.cached_generation(student, noise, cond, steps, seed=3)
    recomputed, recompute_times = speed.recompute_generation(student, noise, cond, steps, seed=3)
    assert len(cached_times) == len(recompute_times) == 3
    torch.testing.assert_close(recomputed, cached, rtol=1e-4, atol=1e-5)
    other, _ = speed.recompute_generation(student, noise, cond, steps, seed=4)
    assert (other - cached).abs().max() > 1e-2  # the re-noising noise matters: equal seeds are what makes them agree


def test_peak_memory_follows_live_tensors():
    mib = 2**20

    def work():
        a = torch.empty(mib, dtype=torch.uint8)
        b = torch.empty(mib, dtype=torch.uint8)
        del a
        c = torch.empty(2 * mib, dtype=torch.uint8)
        del b, c

    assert speed.peak_memory(work, torch.device("cpu")) == 3 * mib  # b + c after a was freed


def test_main_prints_a_markdown_table_and_saves_json(tmp_path, capsys, threads):
    out = tmp_path / "bench.json"
    rows = speed.main(["--size", "tiny", "--sections", "kv_cache", "throughput", "--chunks", "2", "4",
                       "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| section | metric | value | unit | note |" in printed
    saved = json.loads(out.read_text())
    assert saved["meta"]["size"] == "tiny" and saved["meta"]["threads"] == 1
    assert [r["metric"] for r in saved["rows"]] == [r.metric for r in rows]
    metrics = {r.metric: r for r in rows}
    assert metrics["4 chunks: speed-up of the cache"].unit == "x"
    assert {"student forward: tokens/s", "student forward+backward: model FLOP rate"} <= metrics.keys()
    assert all(r.metric in printed for r in rows)
