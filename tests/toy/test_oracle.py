"""Oracle scores of the toy world and the metrics built on them."""

from __future__ import annotations

import pytest
import torch

from streamr1.toy.metrics import CellCoverage, GoodModeFraction, ModeCoverage
from streamr1.toy.oracle import THRESHOLDS, classify_mode, good_mode, oracle_scores, track, visual_quality
from streamr1.toy.world import MODES, ToyAttributes, ToyWorld, caption, render, render_with_info, sample_attributes

PER_MODE = 100


@pytest.fixture(scope="module")
def fresh() -> dict[str, tuple[torch.Tensor, list[ToyAttributes]]]:
    """``PER_MODE`` fresh renders per quality mode (seeds no world uses by default)."""
    g = torch.Generator().manual_seed(2024)
    out = {}
    for k, mode in enumerate(MODES):
        attrs = [sample_attributes(g) for _ in range(PER_MODE)]
        videos = torch.stack([render(a, mode, seed=900_000 + 1000 * k + i) for i, a in enumerate(attrs)])
        out[mode] = (videos, attrs)
    return out


def test_each_quality_mode_is_classified_correctly(fresh):
    for mode, (videos, attrs) in fresh.items():
        scores = oracle_scores(videos, attrs)
        assert set(scores) == {"VQ", "MQ", "TA"} and all(s.shape == (PER_MODE,) for s in scores.values())
        acc = sum(c == mode for c in classify_mode(scores)) / PER_MODE
        assert acc > 0.95, (mode, acc)
        good = good_mode(scores).float().mean().item()
        assert good > 0.95 if mode == "good" else good < 0.05, (mode, good)
        assert ((scores["TA"] >= 0) & (scores["TA"] <= 1)).all()


def test_oracle_reads_the_right_thing():
    attrs = ToyAttributes("circle", "yellow", "right", "slow", "light")
    video, info = render_with_info(attrs, seed=3)
    centres = track(video[None])[0][0]
    assert (centres - info["centres"]).abs().max() < 0.1  # sub-pixel tracking of the anti-aliased shape
    wrong = [ToyAttributes("circle", "yellow", "left"), ToyAttributes("circle", "blue", "right"),
             ToyAttributes("circle", "blue", "left")]
    ta = oracle_scores(video[None].expand(4, -1, -1, -1, -1), [attrs, *wrong])["TA"]
    assert ta[0] > 0.95 and 0.4 < ta[1] < 0.6 and 0.4 < ta[2] < 0.6 and ta[3] < 0.1
    # captions are accepted in place of attributes
    assert torch.allclose(oracle_scores(video[None], [caption(attrs)])["TA"], ta[:1])
    with pytest.raises(ValueError, match="caption"):
        oracle_scores(video[None], ["a nice video"])


def test_ghosts_and_blank_videos_are_not_good():
    a, b = ToyAttributes("square", "green", "up"), ToyAttributes("square", "green", "up")
    v1, v2 = render(a, seed=1), render(b, seed=2)
    ghost = 0.5 * (v1 + v2)  # what a mode-averaging student produces
    blank = torch.full_like(v1, -0.85)
    scores = oracle_scores(torch.stack([v1, ghost, blank]), [a, a, a])
    assert good_mode(scores).tolist() == [True, False, False]
    assert classify_mode(scores)[1] == "visual"
    assert visual_quality(ghost[None])["fidelity"].item() > 0.5


def test_good_mode_thresholds_by_hand():
    scores = {"VQ": torch.tensor([1.0, 0.2, 1.0, 1.0, THRESHOLDS["VQ"]]),
              "MQ": torch.tensor([0.0, 0.0, -2.0, 0.0, THRESHOLDS["MQ"]]),
              "TA": torch.tensor([1.0, 1.0, 1.0, 0.5, THRESHOLDS["TA"]])}
    assert good_mode(scores).tolist() == [True, False, False, False, True]
    assert classify_mode(scores) == ["good", "visual", "motion", "text", "good"]


def test_good_mode_fraction_by_hand_and_merge():
    assert GoodModeFraction().compute().item() == 0.0
    m = GoodModeFraction()
    m.update(torch.tensor([True, True, False, True]))
    # a second "rank": states are sums, so merging is exact (what DDP sync does)
    other = GoodModeFraction()
    other.update(torch.tensor([False, False, False, False]))
    merged = GoodModeFraction()
    merged.merge_state(m)
    merged.merge_state(other)
    assert m.compute().item() == pytest.approx(0.75)
    assert merged.compute().item() == pytest.approx(3 / 8)
    # from videos: 3 good renders and 1 noisy one
    attrs = [ToyAttributes("circle", "red", d) for d in ("left", "right", "up", "down")]
    videos = torch.stack([render(a, "visual" if i == 3 else "good", seed=40 + i) for i, a in enumerate(attrs)])
    v = GoodModeFraction()
    v.update(videos, attrs)
    assert v.compute().item() == pytest.approx(0.75)


def test_cell_coverage_by_hand():
    red_left, red_right = ToyAttributes("circle", "red", "left"), ToyAttributes("circle", "red", "right")
    blue_up = ToyAttributes("square", "blue", "up", "fast")
    m = CellCoverage()
    m.update(torch.tensor([True, False, False]), [red_left, red_right, blue_up])
    other = CellCoverage()
    other.update(torch.tensor([True, True]), [caption(red_left), caption(blue_up)])
    merged = CellCoverage()
    merged.merge_state(m)
    merged.merge_state(other)
    assert m.compute().item() == pytest.approx(1 / 3)
    assert merged.compute().item() == pytest.approx(2 / 3)  # red/right never good


def test_mode_coverage_by_hand():
    world = ToyWorld(num_videos=64, seed=11)
    good = world.good_mask()
    # the cell with the most good videos
    cells, counts = torch.unique(world.cells[good], return_counts=True)
    cell = int(cells[counts.argmax()])
    members = [i for i in range(len(world)) if world.modes[i] == "good" and int(world.cells[i]) == cell]
    assert len(members) >= 2
    a = world.attributes[members[0]]
    prompt = ToyAttributes(a.shape, a.colour, a.direction)
    m = ModeCoverage(world)
    # two samples on the first good video (slightly off), one bad sample near the second
    near = world.videos[members[0]] + 0.02 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noisy = render(prompt, "visual", seed=5)
    m.update(torch.stack([world.videos[members[0]], near.clamp(-1, 1), noisy]), [prompt] * 3)
    # another rank reaches the second video: coverage 2 / |good videos of the requested cell|
    other = ModeCoverage(world)
    other.update(world.videos[members[1]][None], [prompt])
    merged = ModeCoverage(world)
    merged.merge_state(m)
    merged.merge_state(other)
    assert m.compute().item() == pytest.approx(1 / len(members))
    assert merged.compute().item() == pytest.approx(2 / len(members))
    # every good video of the world, prompted by its own caption: full coverage
    full = ModeCoverage(world)
    idx = torch.nonzero(good).squeeze(1)
    full.update(world.videos[idx], [world.attributes[i] for i in idx.tolist()])
    assert full.compute().item() == pytest.approx(1.0)


def _ddp_worker(rank: int, world_size: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        world = ToyWorld(num_videos=32, seed=11)
        frac, cells, modes = GoodModeFraction(), CellCoverage(), ModeCoverage(world)
        flags = torch.tensor([True, True, True, False]) if rank == 0 else torch.tensor([False, False])
        attrs = [world.attributes[i] for i in range(len(flags))]
        frac.update(flags)
        cells.update(flags, attrs)
        idx = [i for i in range(len(world)) if world.modes[i] == "good"][rank::2][:3]
        modes.update(world.videos[idx], [world.attributes[i] for i in idx])
        queue.put((rank, frac.compute().item(), cells.compute().item(), modes.compute().item()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_sync_across_two_gloo_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    # the same value on both ranks, equal to the value over the union of both ranks' updates
    world = ToyWorld(num_videos=32, seed=11)
    frac, cells, modes = GoodModeFraction(), CellCoverage(), ModeCoverage(world)
    flags = torch.tensor([True, True, True, False, False, False])
    frac.update(flags)
    cells.update(flags, [world.attributes[i] for i in (0, 1, 2, 3, 0, 1)])
    for rank in range(2):
        idx = [i for i in range(len(world)) if world.modes[i] == "good"][rank::2][:3]
        modes.update(world.videos[idx], [world.attributes[i] for i in idx])
    expected = (frac.compute().item(), cells.compute().item(), modes.compute().item())
    assert frac.compute().item() == pytest.approx(0.5)
    for _, *values in results:
        assert values == pytest.approx(list(expected))
