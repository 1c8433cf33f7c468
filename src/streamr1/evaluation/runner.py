"""``streamr1 evaluate``: sample the student over a prompt suite, write VBench's layout, score, summarise.

One protocol (the rules are in :mod:`streamr1.evaluation.suite`): ``num_samples`` videos a prompt named
``{prompt}-{i}.mp4`` in ``<output_dir>/videos/`` at the model's frame rate, each from noise seeded by a hash of
``(prompt, i)``; optionally generated from an extended prompt but always named (and seeded, and scored) by the
original one, as the Self-Forcing evaluation does. Ranks split the suite without duplicates or gaps.

Then, on the files as written (read back, so every number is about the videos VBench sees):

- the reward model's raw and normalised per-axis scores (the :class:`~streamr1.rewards.service.RewardService` of the
  recipe's callbacks, when there is one);
- a CLIP score (:class:`~streamr1.evaluation.clip.VideoCLIPScore`, torchmetrics aggregation) with a local
  open_clip model, when one is configured;
- the module's ``evaluator`` metrics (the toy world's oracle metrics, :class:`~streamr1.toy.metrics.ToyOracleMetrics`);
- VBench's dimension scores and total, when the ``vbench`` package is installed (:mod:`streamr1.evaluation.vbench`).

``summary.json`` and ``summary.md`` (next to ``videos/``) hold every number, the protocol, the speed and one record
per video; ``manifest.json`` says which run the folder belongs to (an output folder holding another run's videos is
refused; the same run resumes, generating only the missing videos).

Speed is measured as users measure it: wall time per generated pixel frame, for text encoding + the whole chunk-by-chunk
sampling + VAE decode (device synchronised), after ``warmup_batches`` untimed batches; writing files and scoring are
excluded. The summary states the device, the dtype, the batch size and the video shape.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from streamr1.evaluation.suite import (
    MANIFEST,
    MANIFEST_FORMAT,
    VIDEOS_DIR,
    VideoItem,
    build_items,
    check_output_dir,
    digest,
    rank_batches,
)
from streamr1.io import atomic_output

SUMMARY_FORMAT = "streamr1-evaluation-summary/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- distributed helpers
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def _gather(obj: Any) -> list[Any]:
    if _dist()[1] == 1:
        return [obj]
    out: list[Any] = [None] * _dist()[1]
    torch.distributed.all_gather_object(out, obj)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_json(path: str, payload: Any) -> None:
    import json

    with atomic_output(path, fsync=False) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- model facts
def model_fps(module: Any, fps: int | None = None) -> int:
    """The frame rate videos are written at: ``fps`` when given, else the module's or its VAE's ``fps`` attribute,
    else 16 for a Wan VAE (Wan2.1 generates 16 frames/s) and 8 for pixel-space models (the toy world)."""
    if fps is not None:
        if fps < 1:
            raise ValueError(f"fps must be >= 1, got {fps}.")
        return int(fps)
    for owner in (module, getattr(module, "vae", None)):
        value = getattr(owner, "fps", None)
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return 16 if int(getattr(getattr(module, "vae", None), "temporal_compression", 1)) == 4 else 8


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes (name order): which weights made the videos (part of the manifest)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------- the run
@torch.no_grad()
def sample_items(module: Any, items: Sequence[VideoItem]) -> Tensor:
    """Pixels ``[B, T, 3, H, W]`` in ``[-1, 1]`` of ``items``: text encoding, sampling, VAE decode.

    All of a video's randomness comes from its own seed: a CPU ``torch.Generator`` seeded with ``item.seed`` draws
    the initial noise ``[F, C, H, W]`` and then, in order, every re-noising draw of the few-step sampler (one a chunk
    and step; :func:`~streamr1.rollout.generate` with one generator a sample). So a video does not depend on the
    batch it is in, the rank that makes it, or the device.
    """
    from streamr1.rollout import generate

    gens = [torch.Generator().manual_seed(it.seed) for it in items]
    noise = torch.stack([torch.randn(*module.latent_shape, generator=g) for g in gens]).to(module.device)
    cond = module.encode_prompts([it.generate_from for it in items])
    latents = generate(module.student, noise, cond, module.steps, generator=gens)
    return module.decode(latents).clamp(-1, 1)


def evaluate(
    module: Any,
    output_dir: str,
    prompts: Sequence[str],
    num_samples: int = 5,
    extended_prompts: Sequence[str] | None = None,
    base_seed: int = 0,
    batch_size: int = 1,
    fps: int | None = None,
    dtype: str = "float32",
    warmup_batches: int = 1,
    reward_service: Any = None,
    clip: dict[str, Any] | None = None,
    clip_frames: int | None = None,
    vbench: bool | None = None,
    vbench_dimensions: Sequence[str] | None = None,
    vbench_full_info: str | None = None,
    overwrite: bool = False,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``module``'s student as the module docstring describes; returns the summary (on every rank).

    Args:
        module: a :class:`~streamr1.module.DMDModule` with the weights to evaluate loaded (EMA already swapped in),
            on its device.
        output_dir: the run's folder: ``videos/``, ``manifest.json``, ``summary.json``, ``summary.md``.
        prompts: the suite (each prompt names its videos).
        num_samples: videos a prompt (VBench standard: 5).
        extended_prompts: text to generate each prompt's videos from (aligned with ``prompts``), or ``None``.
        base_seed: mixed into every video's seed.
        batch_size: videos generated at once (the same batch size gives the same files, whatever the world size).
        fps: frame rate of the files (default :func:`model_fps`).
        dtype: the student's dtype while sampling (``float32``, ``bfloat16``, ``float16``).
        warmup_batches: untimed generations of the first batch before timing (compilation, allocator, caches).
        reward_service: a :class:`~streamr1.rewards.service.RewardService` to score with, or ``None``.
        clip: :func:`~streamr1.evaluation.clip.open_clip_for_torchmetrics` arguments (``model_name``, ``pretrained``,
            ``model_config``), or ``None`` to skip the CLIP score.
        clip_frames: frames a video the CLIP score reads (evenly spaced; ``None``: all).
        vbench: run VBench: ``None`` when installed, ``True`` always (an error if it is not), ``False`` never.
        vbench_dimensions: VBench dimensions (default all 16).
        vbench_full_info: VBench's ``VBench_full_info.json`` (default: the installed package's).
        overwrite: delete the videos of another run found in ``output_dir`` instead of refusing.
        run_info: where the weights came from (checkpoint path, EMA or not), copied into the summary. The manifest
            identifies the weights by their digest, so the same weights reached by another path resume the run.

    Raises:
        ValueError: bad suite or arguments (:func:`~streamr1.evaluation.suite.build_items`), or an output folder
            holding another run's videos.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if warmup_batches < 0:
        raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}.")
    if vbench and not _vbench_available():
        raise ModuleNotFoundError("vbench: true, but the `vbench` package is not installed (`pip install vbench`; "
                                  "weights under $VBENCH_CACHE_DIR, default ~/.cache/vbench).")
    items = build_items(prompts, num_samples, extended_prompts, base_seed)
    rank, world = _dist()
    device = module.device
    fps = model_fps(module, fps)
    module.eval()
    module.student.to(DTYPES[dtype])
    latent_shape = [int(v) for v in module.latent_shape]
    fingerprint = {
        "suite": digest([it.prompt for it in items[::num_samples]]),
        "extended": digest(list(extended_prompts)) if extended_prompts is not None else None,
        "num_samples": num_samples, "base_seed": int(base_seed), "latent_shape": latent_shape,
        "steps": [round(float(s), 6) for s in module.steps], "fps": fps, "dtype": dtype,
        "weights": weights_digest(module.student),
    }
    names = [it.name for it in items]
    order = {n: k for k, n in enumerate(names)}
    stale = check_output_dir(output_dir, fingerprint, names, overwrite)
    videos_dir = os.path.join(output_dir, VIDEOS_DIR)
    _barrier()
    if rank == 0:
        for path in stale:
            os.remove(path)
        os.makedirs(videos_dir, exist_ok=True)
        _write_json(os.path.join(output_dir, MANIFEST), _manifest(fingerprint, items, complete=False))
    _barrier()

    # ---- generate this rank's batches
    mine = rank_batches(len(items), batch_size, rank, world)
    todo = [b for b in mine if not all(os.path.isfile(os.path.join(videos_dir, items[i].name)) for i in b)]
    timing: list[tuple[int, float]] = []
    shape: list[int] | None = None
    if todo:
        for _ in range(warmup_batches):
            sample_items(module, [items[i] for i in todo[0]])
        for b in todo:
            batch = [items[i] for i in b]
            _sync(device)
            start = time.perf_counter()
            video = sample_items(module, batch)
            _sync(device)
            timing.append((video.shape[0] * video.shape[1], time.perf_counter() - start))
            shape = list(video.shape[1:])
            _write_videos(videos_dir, batch, video, fps)
    _barrier()

    # ---- score the files this rank wrote
    scores = _score(module, [[items[i] for i in b] for b in mine], videos_dir, reward_service, clip, clip_frames)
    records = [r for part in _gather(scores.pop("records")) for r in part]
    speed_parts = _gather({"rank": rank, "device": device_name(device), "timing": timing, "shape": shape,
                           "generated": sum(len(b) for b in todo), "kept": sum(len(b) for b in mine if b not in todo)})
    summary = {
        "format": SUMMARY_FORMAT,
        "videos_dir": VIDEOS_DIR,
        "run": dict(run_info or {}),
        "num_prompts": len(items) // num_samples, "num_samples": num_samples, "num_videos": len(items),
        "protocol": {
            "names": "{prompt}-{i}.mp4 (VBench standard mode; unsafe or over-long prompts renamed, see suite.py)",
            "seed": f"sha256(base_seed, prompt, i), base_seed {base_seed}",
            "extended_prompts": extended_prompts is not None, "fps": fps, "dtype": dtype,
            "latent_shape": latent_shape, "steps": fingerprint["steps"], "batch_size": batch_size,
            "world_size": world, "scored": "the mp4 files as written (read back)",
        },
        "renamed": [{"file": it.name, "prompt": it.prompt} for it in items if it.renamed],
        "speed": _speed(speed_parts, dtype, batch_size, warmup_batches),
        **{k: v for k, v in scores.items()},
        "videos": sorted(records, key=lambda r: order[r["file"]]),
    }
    if rank == 0:
        summary["vbench"] = _maybe_vbench(vbench, videos_dir, output_dir, vbench_dimensions, vbench_full_info, device)
        _write_json(os.path.join(output_dir, "summary.json"), summary)
        with atomic_output(os.path.join(output_dir, "summary.md"), fsync=False) as tmp, \
                open(tmp, "w", encoding="utf-8") as fh:
            fh.write(summary_markdown(summary))
        _write_json(os.path.join(output_dir, MANIFEST), _manifest(fingerprint, items, complete=True))
    _barrier()
    return summary


def _vbench_available() -> bool:
    from streamr1.evaluation.vbench import vbench_available

    return vbench_available()


def _manifest(fingerprint: dict[str, Any], items: Sequence[VideoItem], complete: bool) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "fingerprint": fingerprint, "complete": complete,
            "videos": {it.name: {"prompt": it.prompt, "generated_from": it.generate_from, "index": it.index,
                                 "seed": it.seed} for it in items}}


def _write_videos(videos_dir: str, batch: Sequence[VideoItem], video: Tensor, fps: int) -> None:
    from streamr1.data.videos import write_video

    for it, v in zip(batch, video, strict=True):
        path = os.path.join(videos_dir, it.name)
        if not os.path.isfile(path):  # a resumed batch: keep what is there (the same bytes, by construction)
            write_video(path, v.float().cpu(), fps=fps)


def _score(module: Any, batches: Sequence[Sequence[VideoItem]], videos_dir: str, reward_service: Any,
           clip: dict[str, Any] | None, clip_frames: int | None) -> dict[str, Any]:
    """Score this rank's files; every metric's ``compute`` syncs over ranks (all ranks call it)."""
    from torchmetrics import MeanMetric

    from streamr1.data.videos import read_video

    device = module.device
    records: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    axes: tuple[str, ...] = tuple(getattr(reward_service, "axes", ())) if reward_service is not None else ()
    raw = {a: MeanMetric().to(device) for a in axes}
    norm = {a: MeanMetric().to(device) for a in axes}
    clip_metric = None
    if reward_service is not None:
        reward_service.prepare(device)
    if clip is not None:
        from streamr1.evaluation.clip import VideoCLIPScore, open_clip_for_torchmetrics

        model, processor = open_clip_for_torchmetrics(**clip)
        clip_metric = VideoCLIPScore(model.to(device), processor, frames=clip_frames).to(device)
    evaluator = getattr(module, "evaluator", None)
    if evaluator is not None:
        evaluator.reset()
    for batch in batches:
        video = torch.stack([read_video(os.path.join(videos_dir, it.name)) for it in batch]).to(device)
        prompts = [it.prompt for it in batch]
        recs = [{"file": it.name, "prompt": it.prompt, "generated_from": it.generate_from, "index": it.index,
                 "seed": it.seed} for it in batch]
        if reward_service is not None:
            result = reward_service.score(video, prompts)
            for a in axes:
                raw[a].update(result.raw[a].float().to(device))
                norm[a].update(result.normalized[a].float().to(device))
                for r, v, n in zip(recs, result.raw[a].tolist(), result.normalized[a].tolist(), strict=True):
                    r.setdefault("reward", {})[a] = v
                    r.setdefault("reward_normalized", {})[a] = n
        if clip_metric is not None:
            frame_scores = clip_metric.frame_scores(video, prompts)
            clip_metric.update(frame_scores)
            for r, v in zip(recs, frame_scores.mean(dim=1).tolist(), strict=True):
                r["clip_score"] = v
        if evaluator is not None:
            evaluator.update(video, prompts)
        records.extend(recs)
    if reward_service is not None:
        model = getattr(reward_service, "model", None)
        out["reward"] = {"model": type(model).__name__,
                         "calibrated": bool(getattr(getattr(reward_service, "normalizer", None), "calibrated", False)),
                         "raw": {a: float(raw[a].compute()) for a in axes},
                         "normalized": {a: float(norm[a].compute()) for a in axes}}
    else:
        out["reward"] = {"skipped": "no reward model (add a reward fragment, e.g. --config configs/rewards/toy.yaml)"}
    if clip_metric is not None:
        out["clip_score"] = {"value": float(clip_metric.compute()), "frames": clip_frames or "all",
                             "model": {k: v for k, v in clip.items() if k != "model_config"} or "model_config"}
    else:
        out["clip_score"] = {"skipped": "no `clip` model configured (a local open_clip model: model_name + pretrained)"}
    if evaluator is not None:
        values = evaluator.compute()
        values = values if isinstance(values, dict) else {"value": values}
        out["evaluator"] = {"name": type(evaluator).__name__, **{k: float(v) for k, v in values.items()}}
        evaluator.reset()
    else:
        out["evaluator"] = {"skipped": "the module has no `evaluator` (the toy world's oracle metrics are one)"}
    out["records"] = records
    return out


def _speed(parts: Sequence[dict[str, Any]], dtype: str, batch_size: int, warmup: int) -> dict[str, Any]:
    per_rank = []
    for p in parts:
        frames = sum(f for f, _ in p["timing"])
        seconds = sum(s for _, s in p["timing"])
        per_rank.append({"rank": p["rank"], "device": p["device"], "frames": frames, "seconds": seconds,
                         "frames_per_second": frames / seconds if seconds > 0 else None,
                         "generated_videos": p["generated"], "kept_videos": p["kept"]})
    timed = [r for r in per_rank if r["frames_per_second"] is not None]
    shape = next((p["shape"] for p in parts if p["shape"] is not None), None)
    return {
        "frames_per_second": (sum(r["frames_per_second"] for r in timed) / len(timed)) if timed else None,
        "measured": "pixel frames / wall seconds of text encoding + chunk-by-chunk sampling + VAE decode, per device "
                    f"(mean over ranks), after {warmup} untimed warm-up batch(es); file writing and scoring excluded",
        "device": per_rank[0]["device"] if per_rank else None, "dtype": dtype, "batch_size": batch_size,
        "video_shape": shape, "per_rank": per_rank,
    }


def _maybe_vbench(vbench: bool | None, videos_dir: str, output_dir: str, dimensions: Sequence[str] | None,
                  full_info: str | None, device: torch.device) -> dict[str, Any]:
    if vbench is False:
        return {"skipped": "vbench: false"}
    if not _vbench_available():
        return {"skipped": "the `vbench` package is not installed (pip install vbench; weights in $VBENCH_CACHE_DIR)"}
    from streamr1.evaluation.vbench import run_vbench

    return run_vbench(videos_dir, os.path.join(output_dir, "vbench"), dimensions, full_info,
                      device="cuda" if device.type == "cuda" else "cpu")


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a short markdown report (numbers, protocol, speed)."""
    p, s = summary["protocol"], summary["speed"]
    lines = [
        "# streamr1 evaluation", "",
        f"{summary['num_videos']} videos: {summary['num_prompts']} prompts x {summary['num_samples']} seeds, in "
        f"`{summary['videos_dir']}/` as `{{prompt}}-{{i}}.mp4` at {p['fps']} frames/s"
        + (" (generated from extended prompts, named by the original ones)" if p["extended_prompts"] else "") + ".",
        f"Seeds: {p['seed']}. Scored: {p['scored']}.", "",
        "| metric | value |", "|---|---|",
    ]
    rw = summary.get("reward", {})
    for a, v in rw.get("raw", {}).items():
        lines.append(f"| reward {a} (raw / normalised) | {_fmt(v)} / {_fmt(rw['normalized'][a])} |")
    if "value" in summary.get("clip_score", {}):
        lines.append(f"| CLIP score | {_fmt(summary['clip_score']['value'])} |")
    for k, v in summary.get("evaluator", {}).items():
        if k != "name" and k != "skipped":
            lines.append(f"| {summary['evaluator']['name']} {k} | {_fmt(v)} |")
    vb = summary.get("vbench", {})
    for k, v in vb.get("dimensions", {}).items():
        lines.append(f"| VBench {k} | {_fmt(v)} |")
    for k in ("quality", "semantic", "total"):
        if k in vb:
            lines.append(f"| VBench {k} score | {_fmt(vb[k])} |")
    skipped = [f"{k}: {summary[k]['skipped']}" for k in ("reward", "clip_score", "evaluator", "vbench")
               if isinstance(summary.get(k), dict) and "skipped" in summary[k]]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    fps = s["frames_per_second"]
    lines += ["", "## Speed", "",
              (f"{fps:.2f} frames/s" if fps is not None else "not measured (every video was already there)")
              + f" on {s['device']}, {s['dtype']}, batch {s['batch_size']}, video [T, 3, H, W] = {s['video_shape']}.",
              f"Measured: {s['measured']}."]
    if summary["renamed"]:
        lines += ["", f"{len(summary['renamed'])} videos have renamed files (unsafe or over-long prompts; VBench "
                  "standard mode cannot find them): see `summary.json`."]
    return "\n".join(lines) + "\n"
