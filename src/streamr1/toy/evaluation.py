"""Before/after evaluation of a toy student: oracle metrics and reward scores on a fixed set of samples.

Every run of the demo and of the quality table is measured the same way: the student generates one video per
prompt from *fixed* noise (seeded, the same for every run), through its KV cache with all few steps (inference,
SPEC.md §2), and the videos are scored by the oracle (:class:`~streamr1.toy.metrics.ToyOracleMetrics`) and,
optionally, by the reward model (raw scores, the mean per axis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from streamr1.toy.metrics import ToyOracleMetrics
from streamr1.toy.world import ToyWorld


@torch.no_grad()
def sample_student(student: Any, text_encoder: Any, prompts: Sequence[str], latent_shape: Sequence[int],
                   steps: Sequence[float], seed: int = 1234, batch_size: int = 64,
                   decode: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``[N, T, 3, H, W]`` in ``[-1, 1]``: one video per prompt from noise seeded with ``seed`` (same for every run; the
    re-noising between levels draws from the same seeded generator, so the samples do not depend on the global RNG).

    Generation is inference (:func:`~streamr1.rollout.generate`): chunk by chunk through the KV cache, every level of
    the warped few-step list ``steps``.

    Args:
        student: the causal student; ``text_encoder``: ``encode(prompts) -> [B, L, D]``.
        prompts: ``N`` captions.
        latent_shape: ``[F, C, H, W]``.
        seed: the noise seed.
        batch_size: videos generated at once.
        decode: latents -> pixels (``None``: the latents are pixels, as in the toy world).
    """
    from streamr1.models.student import denoiser_device
    from streamr1.rollout import generate

    device = denoiser_device(student)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), *latent_shape, generator=g)
    was_training = student.training
    student.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = list(prompts[i:i + batch_size])
        cond = text_encoder.encode(batch).to(device, torch.float32)
        latents = generate(student, noise[i:i + batch_size].to(device), cond, steps, generator=g)
        video = decode(latents) if decode is not None else latents
        out.append(video.clamp(-1, 1).float().cpu())
    student.train(was_training)
    return torch.cat(out)


def sample_videos(module: Any, prompts: Sequence[str], seed: int = 1234, batch_size: int = 64) -> Tensor:
    """:func:`sample_student` with a :class:`~streamr1.module.DMDModule`'s student, text encoder, steps and VAE."""
    return sample_student(module.student, module.text_encoder, prompts, module.latent_shape, module.steps, seed,
                          batch_size, module.decode)


@torch.no_grad()
def evaluate_videos(video: Tensor, prompts: Sequence[str], world: ToyWorld, reward: Any = None,
                    batch_size: int = 64) -> dict[str, float]:
    """Oracle metrics (:class:`~streamr1.toy.metrics.ToyOracleMetrics`) and, with ``reward``, the reward's mean raw
    score per axis (``reward_VQ``, ``reward_MQ``, ``reward_TA``) of ``video`` ``[N, T, 3, H, W]`` in ``[-1, 1]``."""
    metrics = ToyOracleMetrics(world=world)
    for i in range(0, video.shape[0], batch_size):
        metrics.update(video[i:i + batch_size], list(prompts[i:i + batch_size]))
    out = {k: float(v) for k, v in metrics.compute().items()}
    if reward is not None:
        from streamr1.toy.reward import reward_scores

        scores = reward_scores(reward, video, prompts, batch_size)
        out.update({f"reward_{a}": float(s.mean()) for a, s in scores.items()})
    return out


def eval_prompts(repeats: int = 4, world: ToyWorld | None = None) -> list[str]:
    """The evaluation prompt set: the world's prompts (:meth:`~streamr1.toy.world.ToyWorld.train_prompts`; the
    recipe's world, :data:`streamr1.toy.WORLD`, by default), each ``repeats`` times in a row."""
    from streamr1 import toy

    world = world if world is not None else ToyWorld(**toy.WORLD)
    return [p for p in world.train_prompts() for _ in range(repeats)]


def evaluate_folder(root: str, world: ToyWorld | None = None, reward: Any = None, prompts_file: str | None = None,
                    batch_size: int = 64) -> dict[str, float]:
    """:func:`evaluate_videos` on a folder of video files (decord, PyAV where decord fails).

    Videos are read by :class:`~streamr1.data.videos.VideoFolderDataset` (prompts from sidecar ``.txt`` files or
    ``prompts_file``) at the world's video shape ``[T, 3, H, W]`` (the recipe's, :data:`streamr1.toy.LATENT_SHAPE`,
    by default); a video of another frame count or size is resampled to it.

    Example::

        python -m streamr1.toy.evaluation runs/demo/videos      # the mp4s `streamr1 predict` wrote
    """
    from streamr1 import toy
    from streamr1.data.videos import VideoFolderDataset

    world = world if world is not None else ToyWorld(**toy.WORLD)
    frames, _, height, width = world.videos.shape[1:]
    ds = VideoFolderDataset(root, prompts_file=prompts_file, num_frames=frames, size=(height, width))
    items = [ds[i] for i in range(len(ds))]
    video = torch.stack([it["video"] for it in items])
    return evaluate_videos(video, [it["prompt"] for it in items], world, reward, batch_size)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``python -m streamr1.toy.evaluation DIR [--reward]``: print the oracle (and toy reward) numbers as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.evaluation",
                                     description="Oracle metrics of a folder of toy-world videos.")
    parser.add_argument("root", help="folder of videos with sidecar .txt prompts (what `streamr1 predict` writes)")
    parser.add_argument("--prompts-file", default=None, help="prompts instead of sidecars (see VideoFolderDataset)")
    parser.add_argument("--reward", action="store_true", help="also score with the shipped toy reward")
    args = parser.parse_args(argv)
    reward = None
    if args.reward:
        from streamr1.assets import resolve
        from streamr1.toy.reward import toy_reward

        reward = toy_reward(resolve("pkg://streamr1/assets/toy_reward.pt"))
    out = evaluate_folder(args.root, reward=reward, prompts_file=args.prompts_file)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
