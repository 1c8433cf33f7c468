"""The speed benchmark (streamr1.bench): its measuring maths by hand, what it builds, and every section at the tiny
size (the numbers themselves are never asserted)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from streamr1.bench import measure, run, specs
from streamr1.bench.kv_cache import cached_generation, recompute_generation
from streamr1.bench.throughput import compute_dtype, forward_flops
from streamr1.models.wan import build_wan_transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and immune to a busy machine
    yield
    torch.set_num_threads(n)


def tiny(**kwargs) -> specs.BenchContext:
    return specs.BenchContext(specs.SIZES["tiny"], configs_dir=ROOT, **kwargs)


# ------------------------------------------------------------------------------------------- measuring, by hand
def test_interleaved_runs_warmup_then_rounds_a_b_a_b(monkeypatch):
    calls = []
    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])

    def work(name, seconds):
        def fn():
            calls.append(name)
            clock[0] += seconds
        return fn

    seconds = measure.interleaved({"A": work("A", 1.0), "B": work("B", 2.5)}, repeats=3,
                                  device=torch.device("cpu"), warmup=1)
    assert calls == ["A", "B"] + ["A", "B"] * 3  # one untimed warm-up round, then A, B, A, B, A, B
    assert seconds == {"A": [1.0, 1.0, 1.0], "B": [2.5, 2.5, 2.5]}  # warm-up calls are not in the series
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure.interleaved({"A": work("A", 1.0)}, repeats=0, device=torch.device("cpu"))


def test_spread_is_the_median_and_range():
    assert measure.spread([3.0, 1.0, 2.0]) == measure.Spread(median=2.0, low=1.0, high=3.0, n=3)
    assert measure.spread([4.0, 1.0, 3.0, 2.0]).median == 2.5  # even count: the mean of the two middle values
    assert measure.spread([0.25, 0.5, 1.0]).scaled(1e3) == measure.Spread(500.0, 250.0, 1000.0, 3)
    with pytest.raises(ValueError, match="at least one value"):
        measure.spread([])


def test_ratios_are_taken_per_round_then_summarised():
    # rounds: 2/1 = 2, 6/2 = 3, 3/3 = 1 -> median 2, range 1..3 (the ratio of medians, 3/2, is not what is reported)
    assert measure.pair_ratios([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == measure.Spread(2.0, 1.0, 3.0, 3)
    with pytest.raises(ValueError, match="as many numerators"):
        measure.pair_ratios([1.0, 2.0], [1.0])


def test_peak_memory_follows_live_tensors():
    mib = 2**20

    def work():
        a = torch.empty(mib, dtype=torch.uint8)
        b = torch.empty(mib, dtype=torch.uint8)
        del a
        c = torch.empty(2 * mib, dtype=torch.uint8)
        del b, c

    assert measure.peak_memory(work, torch.device("cpu")) == 3 * mib  # b + c after a was freed


def test_table_shows_median_range_and_count():
    rows = [measure.Row("s", "time", measure.Spread(12.0, 10.0, 15.5, 5), "ms", "note"),
            measure.Row("s", "count", 1, "per turn")]
    table = measure.markdown_table(rows).splitlines()
    assert table[0] == "| section | metric | median | range (min - max) | n | unit | note |"
    assert table[2] == "| s | time | 12.00 | 10.00 - 15.50 | 5 | ms | note |"
    assert table[3] == "| s | count | 1 | - | 1 | per turn |  |"


# ------------------------------------------------------------------------------------------- what is built
@pytest.mark.parametrize("recipe", ["configs/tiny_random.yaml", "configs/quickstart.yaml", "configs/wan2.1_t2v.yaml"])
def test_analytic_flops_equal_torch_flop_counter(recipe):
    config = yaml.safe_load(open(os.path.join(ROOT, recipe)))["model"]["student"]["init_args"]["config"]
    device = "meta" if "wan2.1" in recipe else "cpu"  # the 1.3B model by shape only
    with torch.device(device):
        transformer = build_wan_transformer(None, config)
    frames, h, w, text, batch = 3, 16, 32, 7, 2
    x = torch.randn(batch, config["in_channels"], frames, h, w, device=device)
    cond = torch.randn(batch, text, config["text_dim"], device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(x, torch.full((batch,), 500.0, device=device), cond, return_dict=False)
    _, ph, pw = config["patch_size"]
    tokens = frames * (h // ph) * (w // pw)
    assert forward_flops(transformer, tokens, text, batch) == counter.get_total_flops()


def test_compute_dtype_follows_the_trainer_precision():
    assert compute_dtype("bf16-mixed") == torch.bfloat16 and compute_dtype("bf16-true") == torch.bfloat16
    assert compute_dtype("16-mixed") == torch.float16 and compute_dtype("32-true") == torch.float32


def test_sizes_are_recipes_and_the_wan_sizes_read_the_recipes_student():
    wan = os.path.join(ROOT, "configs/wan2.1_t2v.yaml")
    student = yaml.safe_load(open(wan))["model"]["student"]["init_args"]["config"]
    args = specs.size_overrides(specs.SIZES["wan-reduced"], wan)
    given = dict(zip(args[::2], args[1::2], strict=True))
    assert json.loads(given["--model.student.init_args.config"]) == {**student, "num_layers": 1}
    assert given["--model.teacher.init_args.config"] == given["--model.critic.init_args.config"]
    assert given["--model.student.init_args.pretrained"] == "null" and given["--model.vae.init_args.config"] == "{}"
    assert json.loads(given["--model.latent_shape"]) == [6, 16, 8, 8]
    assert specs.size_overrides(specs.SIZES["quickstart"], "unused") == []  # the recipe as users run it
    for size in specs.SIZES.values():
        assert os.path.isfile(os.path.join(ROOT, size.recipe))


def test_the_stream_r1_turn_layers_the_stack_then_the_reward_fragment():
    files = specs.stream_r1_configs(ROOT)
    assert [os.path.relpath(f, ROOT) for f in files] == ["callbacks/stream_r1.yaml", "configs/rewards/toy.yaml"]


def test_a_missing_configs_dir_says_where_it_looked_and_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="--configs-dir"):
        specs.cli_args(specs.SIZES["tiny"], str(tmp_path), torch.device("cpu"))


# ------------------------------------------------------------------------------------------- sections, tiny size
def test_recompute_baseline_generates_what_the_cache_does(one_thread):
    ctx = tiny()
    m = ctx.build(overrides=("--model.student.init_args.local_window_frames", "4")).model.eval()
    prompts = ctx.prompts(2)
    noise = torch.randn(2, 3 * m.student.chunk_frames, *m.latent_shape[1:])
    torch.manual_seed(3)
    cached, cached_times = cached_generation(m, prompts, noise)
    torch.manual_seed(3)
    recomputed, recompute_times = recompute_generation(m.student, m.steps, noise, m.encode_prompts(prompts))
    assert len(cached_times) == len(recompute_times) == 3
    torch.testing.assert_close(recomputed, cached, rtol=1e-4, atol=1e-5)
    torch.manual_seed(4)
    other, _ = recompute_generation(m.student, m.steps, noise, m.encode_prompts(prompts))
    assert (other - cached).abs().max() > 1e-2  # the re-noising noise matters: equal seeds make them agree


def test_turns_count_one_reward_forward_and_backward_per_stream_r1_turn(one_thread):
    # The design (SPEC §4.1, §4.5): the reward service scores each rollout once, ONE forward and ONE batched
    # backward for every axis' saliency, however many callbacks read it; plain DMD never calls the reward model.
    from streamr1.bench.turns import section_turns

    rows = {r.metric: r for r in section_turns(tiny(repeats=2))}
    for kind, (forwards, backwards) in {"DMD": (0, 0), "Stream-R1": (1, 1)}.items():
        assert rows[f"{kind} student turn: reward forwards"].value == forwards
        assert rows[f"{kind} student turn: reward backwards"].value == backwards
    ratio = rows["Stream-R1 / DMD student turn"]
    assert ratio.unit == "x" and ratio.value.n == 2 and ratio.value.low <= ratio.value.median <= ratio.value.high
    for name in ("student turn: time", "critic turn: time", "Stream-R1 student turn: time", "reward pass: time"):
        assert rows[name].unit == "ms" and rows[name].value.n == 2 and rows[name].value.low > 0


def test_main_runs_the_other_sections_and_saves_json(tmp_path, capsys, one_thread):
    out = tmp_path / "bench.json"
    rows = run.main(["--size", "tiny", "--configs-dir", ROOT, "--sections", "kv_cache", "throughput", "streaming",
                     "--chunks", "2", "4", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| section | metric | median | range (min - max) | n | unit | note |" in printed
    saved = json.loads(out.read_text())
    assert saved["meta"]["size"] == "tiny" and saved["meta"]["repeats"] == 1
    assert [r["metric"] for r in saved["rows"]] == [r.metric for r in rows]
    metrics = {r.metric: r for r in rows}
    assert {r.section for r in rows} == {"kv_cache", "throughput", "streaming"}
    speedup = metrics["4 chunks: speed-up of the cache"]
    assert speedup.unit == "x" and float(speedup.note.rsplit("= ", 1)[1]) < 1e-4  # cached == recomputed
    assert {"student forward: tokens/s", "student forward+backward: model FLOP rate / matmul's"} <= metrics.keys()
    assert {"first chunk ready", "first chunk on screen", "frames per second"} <= metrics.keys()
    first, total = metrics["first chunk ready"].value.median, metrics["generation"].value.median
    assert 0 < first < total  # the first of two chunks is out before the whole video
    assert all(r.metric in printed for r in rows)


@pytest.mark.slow
def test_streaming_runs_the_wan_recipe_at_reduced_size_on_a_cpu():
    from streamr1.bench.streaming import section_streaming

    ctx = specs.BenchContext(specs.SIZES["wan-reduced"], configs_dir=ROOT, repeats=1)
    rows = {r.metric: r for r in section_streaming(ctx)}
    m = ctx.build().model
    assert type(m.vae).__name__ == "WanVAE" and m.student.transformer.config.num_attention_heads == 12
    assert "= 21 pixel frames, 2 chunks of 3" in rows["first chunk ready"].note
    assert rows["frames per second"].value.median > 0
