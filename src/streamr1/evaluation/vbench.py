"""VBench on an evaluation folder, when the optional ``vbench`` package and its weights are installed.

Install: ``pip install vbench`` (its own dependencies: detectron2 for some dimensions, see VBench's README). Weights:
VBench loads its metric models (RAFT, AMT-S, MUSIQ, the LAION aesthetic head, CLIP/ViCLIP, GRiT, UMT, ...) from
``$VBENCH_CACHE_DIR`` (default ``~/.cache/vbench``) and downloads them there on first use; on a machine without
internet put them there beforehand. Nothing in streamr1's tests needs it.

The videos must be named as VBench's standard mode expects (``{prompt}-{i}.mp4``, the prompts of
``VBench_full_info.json``, 5 a prompt; :mod:`streamr1.evaluation.suite` writes exactly that) in a folder that holds
nothing else (VBench takes the file extension from the first file it lists).

Total score (:func:`vbench_totals`): VBench's ``scripts/cal_final_score.py``: each dimension ``d`` normalised
``(s_d - min_d) / (max_d - min_d)`` and weighted (dynamic degree 0.5, others 1); the quality score is the weighted
mean of the 7 quality dimensions, the semantic score of the 9 semantic ones, and the total
``(4 * quality + 1 * semantic) / 5``. A total is given only when every dimension it needs was evaluated.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

QUALITY_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                      "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC_DIMENSIONS = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
                       "appearance_style", "temporal_style", "overall_consistency")
DIMENSION_WEIGHT = {d: 1.0 for d in QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS} | {"dynamic_degree": 0.5}
NORMALIZE = {  # (min, max) of VBench's scripts/constant.py
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975), "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0), "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0), "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222), "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364), "overall_consistency": (0.0, 0.364),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0


def vbench_available() -> bool:
    """Whether the ``vbench`` package can be imported (its weights are checked only when it runs)."""
    return importlib.util.find_spec("vbench") is not None


def vbench_totals(scores: dict[str, float]) -> dict[str, float]:
    """``quality``, ``semantic`` and ``total`` from raw dimension scores (see module doc); each only when complete."""
    out: dict[str, float] = {}
    norm = {d: (float(s) - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0]) * DIMENSION_WEIGHT[d]
            for d, s in scores.items() if d in NORMALIZE}
    for name, dims in (("quality", QUALITY_DIMENSIONS), ("semantic", SEMANTIC_DIMENSIONS)):
        if all(d in norm for d in dims):
            out[name] = sum(norm[d] for d in dims) / sum(DIMENSION_WEIGHT[d] for d in dims)
    if "quality" in out and "semantic" in out:
        out["total"] = (QUALITY_WEIGHT * out["quality"] + SEMANTIC_WEIGHT * out["semantic"]) / (
            QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return out


def _default_full_info() -> str | None:
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "VBench_full_info.json")
    return path if os.path.isfile(path) else None


def run_vbench(videos_dir: str, output_dir: str, dimensions: Sequence[str] | None = None,
               full_info: str | None = None, device: str = "cuda", name: str = "streamr1") -> dict[str, Any]:
    """Run VBench (standard mode) on ``videos_dir``; returns ``{"dimensions": {d: score}, **vbench_totals}``.

    Args:
        videos_dir: the folder of ``{prompt}-{i}.mp4`` videos (and nothing else).
        output_dir: where VBench writes its own result files.
        dimensions: VBench dimensions (default: all 16).
        full_info: ``VBench_full_info.json`` (default: the one inside the installed ``vbench`` package).
        device: where VBench's models run.

    Raises:
        ModuleNotFoundError: ``vbench`` is not installed.
        FileNotFoundError: no ``VBench_full_info.json``.
    """
    if not vbench_available():
        raise ModuleNotFoundError("VBench is not installed: `pip install vbench` (see streamr1.evaluation.vbench).")
    from vbench import VBench

    full_info = full_info or _default_full_info()
    if full_info is None or not os.path.isfile(full_info):
        raise FileNotFoundError(f"VBench_full_info.json not found ({full_info!r}): pass `vbench_full_info`.")
    dims = list(dimensions) if dimensions else list(QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS)
    bench = VBench(device, full_info, output_dir)
    bench.evaluate(videos_path=videos_dir, name=name, dimension_list=dims, mode="vbench_standard")
    import json

    with open(os.path.join(output_dir, f"{name}_eval_results.json"), encoding="utf-8") as fh:
        raw = json.load(fh)
    scores = {d: float(v[0] if isinstance(v, (list, tuple)) else v) for d, v in raw.items()}
    return {"dimensions": scores, **vbench_totals(scores)}
