"""``streamr1.evaluation.evaluate`` end to end on tiny random models: files, seeds, scores, resume, refusals."""

from __future__ import annotations

import copy
import json
import os

import av
import pytest
import torch
from torchmetrics import MeanMetric, Metric

from streamr1.data.videos import read_video
from streamr1.evaluation import evaluate, video_seed
from streamr1.evaluation.clip import VideoCLIPScore, open_clip_for_torchmetrics
from tests.helpers import tiny_module
from tests.rewards.conftest import TINY_CLIP

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red circle moving left", "a blue square moving up", "AC/DC on stage"]


class PixelMean(Metric):
    """A stand-in evaluator with a number known by hand: the mean pixel value of every video seen."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = MeanMetric()

    def update(self, video, prompts) -> None:
        self.mean.update(video.float().mean(dim=(1, 2, 3, 4)))

    def compute(self):
        return {"pixel_mean": self.mean.compute()}

    def reset(self) -> None:
        super().reset()
        self.mean.reset()


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    m = tiny_module(frames=4, size=8)
    m.evaluator = PixelMean()
    return m


@pytest.fixture(scope="module")
def service():
    from streamr1.rewards.openclip import OpenCLIPVideoReward
    from streamr1.rewards.service import RewardService

    return RewardService(OpenCLIPVideoReward(model_config=copy.deepcopy(TINY_CLIP)))


def _run(module, out, service=None, **kw):
    kw.setdefault("num_samples", 2)
    kw.setdefault("batch_size", 2)
    return evaluate(module, str(out), kw.pop("prompts", PROMPTS), reward_service=service,
                    clip={"model_config": copy.deepcopy(TINY_CLIP)}, **kw)


def _by_hand(module, text, seed):
    """The documented rule: one generator seeded with the video's seed draws its noise, then its re-noising."""
    from streamr1.rollout import generate

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(*module.latent_shape, generator=g)[None]
    latents = generate(module.student, noise, module.encode_prompts([text]), module.steps, generator=[g])
    return module.decode(latents).clamp(-1, 1)[0]


def _encoded(video, folder):
    """``video`` as it reads back after ``write_video`` (the file encoder, 8 frames/s)."""
    from streamr1.data.videos import write_video

    path = os.path.join(folder, "expected.mp4")
    write_video(path, video, fps=8)
    out = read_video(path)
    os.remove(path)
    return out


def _bytes(folder) -> dict[str, bytes]:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def first(module, service, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    return out, _run(module, out, service)


def test_writes_vbench_standard_layout_at_the_model_frame_rate(first):
    out, summary = first
    files = sorted(os.listdir(out / "videos"))
    h = __import__("hashlib").sha256(b"AC/DC on stage").hexdigest()[:10]
    assert files == sorted([f"{p}-{i}.mp4" for p in PROMPTS[:2] for i in range(2)]
                           + [f"AC_DC on stage~{h}-{i}.mp4" for i in range(2)])
    assert summary["renamed"] == [{"file": f"AC_DC on stage~{h}-{i}.mp4", "prompt": "AC/DC on stage"}
                                  for i in range(2)]
    with av.open(str(out / "videos" / files[0])) as c:
        assert c.streams.video[0].average_rate == 8  # pixel-space model: the toy world's 8 frames/s
    assert sorted(os.listdir(out)) == ["manifest.json", "summary.json", "summary.md", "videos"]
    assert json.loads((out / "summary.json").read_text())["num_videos"] == 6


def test_each_video_comes_from_the_noise_its_seed_gives(module, first):
    out, _ = first
    prompt, i = PROMPTS[1], 1
    expected = _by_hand(module, prompt, video_seed(prompt, i))
    got = read_video(str(out / "videos" / f"{prompt}-{i}.mp4"))
    other = read_video(str(out / "videos" / f"{prompt}-0.mp4"))
    # random-weight videos are pixel noise, which H.264's 4:2:0 chroma blurs: compare with the expected video
    # through the same encoder (equal up to a rare rounding flip); another seed's video is far off
    assert (got - _encoded(expected, out.parent)).abs().max() < 0.02 < (other - got).abs().mean()


def test_scores_are_those_of_the_files_as_written(module, service, first):
    out, summary = first
    files = [r["file"] for r in summary["videos"]]
    assert len(files) == 6 and len(set(files)) == 6
    video = torch.stack([read_video(str(out / "videos" / f)) for f in files])
    prompts = [r["prompt"] for r in summary["videos"]]
    result = service.score(video, prompts)
    for axis in ("VQ", "MQ", "TA"):
        assert summary["reward"]["raw"][axis] == pytest.approx(float(result.raw[axis].mean()), abs=1e-5)
        assert [r["reward"][axis] for r in summary["videos"]] == pytest.approx(result.raw[axis].tolist(), abs=1e-5)
    assert summary["evaluator"]["pixel_mean"] == pytest.approx(float(video.mean()), abs=1e-5)
    model, proc = open_clip_for_torchmetrics(model_config=copy.deepcopy(TINY_CLIP))
    frames = VideoCLIPScore(model, proc).frame_scores(video, prompts)
    assert summary["clip_score"]["value"] == pytest.approx(max(float(frames.mean()), 0.0), abs=1e-4)
    speed = summary["speed"]
    assert speed["frames_per_second"] > 0 and speed["video_shape"] == [4, 3, 8, 8]
    assert speed["dtype"] == "float32" and "CPU" in speed["device"] and speed["per_rank"][0]["generated_videos"] == 6
    md = (out / "summary.md").read_text()
    assert "frames/s on" in md and "reward VQ" in md and "CLIP score" in md


def test_a_second_run_writes_identical_files_and_a_rerun_resumes(module, first, tmp_path):
    out, _ = first
    again = _run(module, tmp_path / "again")  # another folder, another run: the same bytes
    assert _bytes(tmp_path / "again" / "videos") == _bytes(out / "videos")
    os.remove(tmp_path / "again" / "videos" / f"{PROMPTS[0]}-1.mp4")  # a crashed run: resume
    resumed = _run(module, tmp_path / "again")
    assert resumed["speed"]["per_rank"][0]["generated_videos"] == 2  # the one batch that lost a file
    assert _bytes(tmp_path / "again" / "videos") == _bytes(out / "videos")
    assert again["clip_score"] == resumed["clip_score"]


def test_a_folder_of_another_run_is_refused_unless_overwritten(module, tmp_path):
    _run(module, tmp_path / "r", prompts=PROMPTS[:1], num_samples=1)
    with pytest.raises(ValueError, match=r"another evaluation \(its manifest differs in \['base_seed'\]"):
        _run(module, tmp_path / "r", prompts=PROMPTS[:1], num_samples=1, base_seed=7)
    summary = _run(module, tmp_path / "r", prompts=PROMPTS[:1], num_samples=1, base_seed=7, overwrite=True)
    assert summary["num_videos"] == 1 and summary["videos"][0]["seed"] == video_seed(PROMPTS[0], 0, 7)


def test_extended_prompts_generate_but_the_original_names_seeds_and_scores(module, tmp_path):
    ext = ["a big red circle moving left, smooth motion"]
    summary = _run(module, tmp_path / "x", prompts=PROMPTS[:1], num_samples=1, extended_prompts=ext)
    rec = summary["videos"][0]
    assert rec["file"] == f"{PROMPTS[0]}-0.mp4" and rec["generated_from"] == ext[0]
    assert rec["seed"] == video_seed(PROMPTS[0], 0)
    from_ext = _by_hand(module, ext[0], rec["seed"])
    got = read_video(str(tmp_path / "x" / "videos" / rec["file"]))
    assert (got - _encoded(from_ext, tmp_path)).abs().max() < 0.02


def test_bad_arguments_are_refused(module, tmp_path):
    with pytest.raises(ValueError, match="suite is empty"):
        _run(module, tmp_path / "e", prompts=[])
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        _run(module, tmp_path / "e", num_samples=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        _run(module, tmp_path / "e", dtype="fp8")
    with pytest.raises(ModuleNotFoundError, match="vbench"):
        _run(module, tmp_path / "e", vbench=True)
    assert not os.path.exists(tmp_path / "e")


def test_clip_score_equals_torchmetrics_clipscore_on_the_same_frames():
    from torchmetrics.multimodal import CLIPScore

    torch.manual_seed(1)
    video = torch.rand(2, 3, 3, 40, 48) * 2 - 1
    prompts = ["a red circle", "a blue square"]
    model, proc = open_clip_for_torchmetrics(model_config=copy.deepcopy(TINY_CLIP))
    ours = VideoCLIPScore(model, proc)
    ours.update(ours.frame_scores(video, prompts))
    reference = CLIPScore(model_name_or_path=lambda: (model, proc))
    frames = ((video + 1) * 127.5).round().flatten(0, 1)
    reference.update(list(frames), [p for p in prompts for _ in range(3)])
    assert float(ours.compute()) == pytest.approx(float(reference.compute()), abs=1e-4)


def test_toy_world_oracle_metrics_are_reported(tmp_path):
    """The quickstart recipe's evaluator (ToyOracleMetrics) scores the written files like any evaluator."""
    from streamr1.toy.metrics import METRIC_NAMES, ToyOracleMetrics
    from streamr1.toy.world import ToyWorld

    world = ToyWorld(num_videos=96, seed=5)
    module = tiny_module(frames=8, size=32)
    module.evaluator = ToyOracleMetrics(world=world)
    prompts = ToyWorld.cell_prompts()[:2]
    summary = evaluate(module, str(tmp_path / "toy"), prompts, num_samples=1, batch_size=2)
    assert summary["evaluator"]["name"] == "ToyOracleMetrics"
    assert set(summary["evaluator"]) - {"name"} == set(METRIC_NAMES)
    files = [r["file"] for r in summary["videos"]]
    video = torch.stack([read_video(str(tmp_path / "toy" / "videos" / f)) for f in files])
    reference = ToyOracleMetrics(world=world)
    reference.update(video, [r["prompt"] for r in summary["videos"]])
    for k, v in reference.compute().items():
        assert summary["evaluator"][k] == pytest.approx(float(v), abs=1e-5), k


def test_fps_counts_generated_frames_over_timed_wall_seconds_without_the_warm_up(module, tmp_path, monkeypatch):
    """A fake clock: the warm-up batch 'takes' 100 s, every timed batch 0.5 s a video; 6 videos of 4 frames in 3
    timed batches of 2 -> 24 frames / 3 s = 8 frames/s."""
    from types import SimpleNamespace

    import streamr1.evaluation.runner as runner

    clock = {"now": 0.0, "calls": 0}
    real = runner.sample_items

    def timed(mod, items):
        clock["now"] += 100.0 if clock["calls"] == 0 else 0.5 * len(items)
        clock["calls"] += 1
        return real(mod, items)

    monkeypatch.setattr(runner, "sample_items", timed)
    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    summary = evaluate(module, str(tmp_path / "fps"), PROMPTS, num_samples=2, batch_size=2, warmup_batches=1)
    assert clock["calls"] == 4  # 1 warm-up + 3 timed batches
    rank = summary["speed"]["per_rank"][0]
    assert (rank["frames"], rank["seconds"]) == (24, 3.0)
    assert summary["speed"]["frames_per_second"] == 8.0


def test_vbench_runs_on_the_videos_folder_when_installed(module, tmp_path, monkeypatch):
    """A stand-in ``vbench`` package with VBench's API: evaluate calls its standard mode on videos/ and folds the
    dimension scores and VBench's total into the summary."""
    import importlib.machinery
    import sys
    import types

    from streamr1.evaluation.vbench import NORMALIZE

    calls = []

    class FakeVBench:
        def __init__(self, device, full_info_dir, output_path):
            self.output_path = output_path
            os.makedirs(output_path, exist_ok=True)
            calls.append({"device": device, "full_info": full_info_dir})

        def evaluate(self, videos_path, name, dimension_list=None, mode="vbench_standard", **kwargs):
            calls[-1].update(videos=sorted(os.listdir(videos_path)), mode=mode, dims=list(dimension_list))
            with open(os.path.join(self.output_path, f"{name}_eval_results.json"), "w") as fh:
                json.dump({d: [hi, [{"video_path": "x", "video_results": hi}]]
                           for d, (_, hi) in NORMALIZE.items() if d in dimension_list}, fh)

    fake = types.ModuleType("vbench")
    fake.VBench = FakeVBench
    fake.__spec__ = importlib.machinery.ModuleSpec("vbench", None)
    monkeypatch.setitem(sys.modules, "vbench", fake)
    info = tmp_path / "VBench_full_info.json"
    info.write_text("[]")
    summary = evaluate(module, str(tmp_path / "vb"), PROMPTS[:2], num_samples=1, vbench_full_info=str(info))
    (call,) = calls
    assert call["mode"] == "vbench_standard" and call["full_info"] == str(info) and call["device"] == "cpu"
    assert call["videos"] == [f"{p}-0.mp4" for p in sorted(PROMPTS[:2])]  # the folder holds the videos only
    assert len(call["dims"]) == 16
    assert summary["vbench"]["total"] == pytest.approx(1.0)  # every dimension at its normalisation maximum
    assert summary["vbench"]["dimensions"]["dynamic_degree"] == 1.0
    assert "VBench total score | 1.0000" in (tmp_path / "vb" / "summary.md").read_text()
