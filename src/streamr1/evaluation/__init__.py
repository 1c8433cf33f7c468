"""Evaluation as the field reports it: VBench's video layout, reproducible seeds, reward / CLIP / oracle scores, FPS.

- :mod:`streamr1.evaluation.suite`: file names, seeds, the split across ranks, the output folder's manifest;
- :mod:`streamr1.evaluation.runner`: the run (:func:`~streamr1.evaluation.runner.evaluate`);
- :mod:`streamr1.evaluation.clip`: CLIP score with a local open_clip model through torchmetrics;
- :mod:`streamr1.evaluation.vbench`: VBench (optional package) and its total score.

``streamr1 evaluate`` (:func:`evaluate_command`) wires them to the CLI::

    streamr1 evaluate --config configs/quickstart.yaml --ckpt_path last.ckpt --output_dir runs/eval --num_samples 5
    torchrun --nproc_per_node 8 -m streamr1.cli evaluate --config configs/wan2.1_t2v.yaml --trainer.devices 8 \\
        --ckpt_path last.ckpt --prompts_file VBench/prompts/all_dimension.txt \\
        --extended_prompts_file VBench/prompts/augmented_prompts/Wan2.1-T2V-1.3B/all_dimension_aug_wanx.txt \\
        --output_dir eval/
"""

from __future__ import annotations

from typing import Any

from streamr1.evaluation.runner import evaluate, model_fps
from streamr1.evaluation.suite import build_items, rank_batches, video_name, video_seed, video_stem

__all__ = ["evaluate", "evaluate_command", "model_fps", "build_items", "rank_batches", "video_name", "video_seed",
           "video_stem"]


def _suite(datamodule: Any, prompts_file: str | None, prompts: list[str] | None) -> tuple[list[str], str]:
    from streamr1.data.prompts import read_prompts

    if prompts_file is not None and prompts:
        raise ValueError("Give the suite as `prompts_file` or `prompts`, not both.")
    if prompts_file is not None:
        return read_prompts(prompts_file), prompts_file
    if prompts is not None:
        return list(prompts), "prompts (inline)"
    for attr in ("predict_prompts", "val_prompts"):
        found = list(getattr(datamodule, attr, None) or [])
        if found:
            return found, f"the datamodule's {attr}"
    raise ValueError("No prompt suite: give `--prompts_file` (one prompt a line, e.g. VBench's all_dimension.txt) or "
                     "`--prompts`, or a datamodule with predict/val prompts.")


def evaluate_command(trainer: Any, model: Any, datamodule: Any = None, *, output_dir: str,
                     ckpt_path: str | None = None, use_ema: bool = True, prompts_file: str | None = None,
                     prompts: list[str] | None = None, extended_prompts_file: str | None = None,
                     clip: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``streamr1 evaluate``: set up the process group (under torchrun), load the weights, run :func:`evaluate`.

    The reward model is the recipe's :class:`~streamr1.rewards.service.RewardService` (its ``trainer.callbacks``),
    when there is one. Remaining keyword arguments go to :func:`~streamr1.evaluation.runner.evaluate`.
    """
    import torch

    from streamr1.data.prompts import read_prompts
    from streamr1.export import load_student
    from streamr1.rewards.service import RewardService

    if trainer.world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        if not trainer.strategy.cluster_environment.creates_processes_externally:
            raise ValueError(f"evaluate with {trainer.world_size} processes must be launched by torchrun or SLURM "
                             "(one process a device), e.g. `torchrun --nproc_per_node N -m streamr1.cli evaluate ...`.")
        trainer.strategy.setup_environment()
    suite, source = _suite(datamodule, prompts_file, prompts)
    extended = read_prompts(extended_prompts_file) if extended_prompts_file is not None else None
    info = load_student(model, ckpt_path, use_ema)
    from streamr1.models.wan_deferred import materialize_pending

    materialize_pending(model, trainer.strategy.root_device)  # defer_load models: meta tensors cannot be .to()-moved
    model.to(trainer.strategy.root_device)
    services = [cb for cb in trainer.callbacks if isinstance(cb, RewardService)]
    summary = evaluate(model, output_dir, suite, extended_prompts=extended, reward_service=services[0] if services
                       else None, clip=clip, run_info={**info, "suite_source": source}, **kwargs)
    if trainer.global_rank == 0:
        fps = summary["speed"]["frames_per_second"]
        print(f"[streamr1] evaluated {summary['num_videos']} videos in {output_dir}: "
              + (f"{fps:.2f} frames/s ({summary['speed']['device']}, {summary['speed']['dtype']}, video "
                 f"{summary['speed']['video_shape']})" if fps is not None else "all videos were already there")
              + f"; summary in {output_dir}/summary.md")
    return summary
