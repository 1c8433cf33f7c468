"""The toy world's reward model: a real :class:`~streamr1.rewards.openclip.OpenCLIPVideoReward`, trained here.

Stream-R1 (arXiv 2605.03849) weights the DMD loss with one reward model's per-axis scores and saliency (SPEC.md §4).
In the toy world nothing can be downloaded, so the project makes its own: a tiny open_clip CLIP (ViT on the 32x32
frames, a small text transformer over open_clip's bundled BPE tokenizer) with the three heads of
``OpenCLIPVideoReward``, trained on fresh renders of every quality mode (:func:`~streamr1.toy.world.render`):

- **TA**: the CLIP towers learn a contrastive frames<->captions objective (InfoNCE, the caption of what is actually
  drawn, so a wrong-colour render pairs with its true colour), plus a regression of ``scale * mean_t cos`` on the
  requested caption to the oracle TA. Single frames cannot see direction, so (like a real CLIP score) TA only
  catches wrong colours and shapes, not wrong directions.
- **VQ** / **MQ**: the heads (and the image tower under them) regress the oracle's VQ and MQ
  (:func:`~streamr1.toy.oracle.oracle_scores`, clipped to the range where ranks matter).

Besides clean renders of the four modes, a share of the training videos are "student-like": blends of two renders
of one caption (ghosts, the typical failure of an under-trained student), and renders with mild extra noise, all
labelled by the oracle; so the reward ranks what a student produces, not only what the world renders.

The oracle stays the yardstick: :func:`reward_oracle_spearman` reports the reward's Spearman rank correlation with
the oracle on each axis over held-out renders.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from streamr1.protocols import AXES
from streamr1.rewards.openclip import FORMAT, OpenCLIPVideoReward
from streamr1.toy.oracle import oracle_scores
from streamr1.toy.world import MODES, ToyAttributes, ToyWorld, caption, render_with_info, sample_attributes

TOY_REWARD_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}
"""The toy reward's open_clip architecture: a 2-layer ViT (patch 4 on 32x32 frames, 64 tokens) and a 1-layer text
transformer. The text width is small because the token embedding (49408 rows, the bundled tokenizer's vocabulary)
dominates the file size."""

LABEL_RANGE: dict[str, tuple[float, float]] = {"VQ": (-2.0, 1.2), "MQ": (-4.0, 0.0), "TA": (0.0, 1.0)}
"""Oracle scores are clipped to these ranges before regression: beyond them every video is simply bad."""

ProgressFn = Callable[[int, dict[str, float]], None]


def toy_reward(state_path: str | None = None, seed: int = 0, size: int = 32) -> OpenCLIPVideoReward:
    """The toy reward: weights from ``state_path`` (a file from :func:`save_compact`), else random, for frames of
    ``size`` pixels (the ViT keeps 64 tokens a frame: patch ``size / 8``)."""
    if state_path is not None:
        return OpenCLIPVideoReward(state_path=state_path)
    if size % 8:
        raise ValueError(f"The toy reward needs a frame size divisible by 8 (64 patches a frame); got {size}.")
    config = copy.deepcopy(TOY_REWARD_CONFIG)
    config["vision_cfg"].update(image_size=int(size), patch_size=int(size) // 8)
    return OpenCLIPVideoReward(model_config=config, seed=seed)


@torch.no_grad()
def reward_examples(num: int, seed: int, frames: int = 8, size: int = 32, p_ghost: float = 0.25,
                    p_noise: float = 0.15, augment: bool = True, world: ToyWorld | None = None) -> dict[str, Any]:
    """Fresh labelled toy videos for training or evaluating a reward.

    Captions: with ``world``, uniformly among the world's captions (rendered at the world's ``frames`` and ``size``,
    with fresh seeds: new videos of the same captions), else :func:`~streamr1.toy.world.sample_attributes`. Modes
    are drawn uniformly from :data:`~streamr1.toy.world.MODES`. With ``augment``, a video is with probability
    ``p_ghost`` blended with a second render of the same caption (weight ``a ~ U(0.25, 0.75)``: a ghost) and with
    probability ``p_noise`` gets Gaussian pixel noise of std ``U(0, 0.12)``.

    Returns:
        ``{"video": [N, T, 3, H, W] in [-1, 1], "prompt": N requested captions, "shown": N captions of what is
        drawn (colour and direction as rendered), "oracle": {axis: [N]}, "mode": N mode names, "clip": [N] bool
        (every video takes part in the contrastive loss)}``.
    """
    g = torch.Generator().manual_seed(seed)
    choices = None
    if world is not None:
        frames, size = world.frames, world.size
        choices = list(dict.fromkeys(world.attributes))
    videos, prompts, shown, modes = [], [], [], []
    for _ in range(num):
        attrs = sample_attributes(g) if choices is None else choices[int(torch.randint(len(choices), (), generator=g))]
        mode = MODES[int(torch.randint(len(MODES), (), generator=g))]
        rseed = int(torch.randint(0, 2**31 - 1, (), generator=g))
        video, info = render_with_info(attrs, mode, rseed, frames, size)
        if augment and float(torch.rand((), generator=g)) < p_ghost:
            other = render_with_info(attrs, MODES[int(torch.randint(len(MODES), (), generator=g))],
                                     int(torch.randint(0, 2**31 - 1, (), generator=g)), frames, size)[0]
            a = 0.25 + 0.5 * float(torch.rand((), generator=g))
            video = a * video + (1 - a) * other
        if augment and float(torch.rand((), generator=g)) < p_noise:
            std = 0.12 * float(torch.rand((), generator=g))
            video = (video + std * torch.randn(video.shape, generator=g)).clamp(-1, 1)
        videos.append(video)
        prompts.append(caption(attrs))
        drawn = ToyAttributes(attrs.shape, info["colour"], info["direction"], attrs.speed, attrs.background)
        shown.append(caption(drawn))
        modes.append(mode)
    video = torch.stack(videos)
    return {"video": video, "prompt": prompts, "shown": shown, "oracle": oracle_scores(video, prompts),
            "mode": modes, "clip": torch.ones(num, dtype=torch.bool)}


@torch.no_grad()
def rollout_examples(video: Tensor, prompts: Sequence[str]) -> dict[str, Any]:
    """Labelled examples from generated videos (a student's rollouts): the oracle labels each axis; what is drawn is
    unknown, so they take no part in the contrastive loss (``clip`` False) and ``shown`` is the prompt."""
    from streamr1.toy.oracle import classify_mode

    oracle = oracle_scores(video, list(prompts))
    return {"video": video.float().clamp(-1, 1), "prompt": list(prompts), "shown": list(prompts), "oracle": oracle,
            "mode": classify_mode(oracle), "clip": torch.zeros(video.shape[0], dtype=torch.bool)}


def concat_examples(*parts: dict[str, Any]) -> dict[str, Any]:
    """One pool from several :func:`reward_examples` / :func:`rollout_examples` results."""
    return {"video": torch.cat([p["video"] for p in parts]), "prompt": [x for p in parts for x in p["prompt"]],
            "shown": [x for p in parts for x in p["shown"]], "mode": [x for p in parts for x in p["mode"]],
            "oracle": {a: torch.cat([p["oracle"][a] for p in parts]) for a in AXES},
            "clip": torch.cat([p["clip"] for p in parts])}


def _targets(oracle: dict[str, Tensor]) -> dict[str, Tensor]:
    return {a: oracle[a].clamp(*LABEL_RANGE[a]) for a in AXES}


def reward_loss(reward: OpenCLIPVideoReward, video: Tensor, prompts: Sequence[str], shown: Sequence[str],
                oracle: dict[str, Tensor], clip: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Contrastive frames<->captions loss plus Huber regressions of the three heads to the (clipped) oracle.

    Args:
        video: ``[B, T, 3, H, W]`` in ``[-1, 1]``.
        prompts: requested captions (TA target); ``shown``: captions of what is drawn (contrastive pairs).
        oracle: ``{axis: [B]}`` oracle scores.
        clip: ``[B]`` bool, the videos that take part in the contrastive loss (``None``: all).
    """
    pixels = ((video + 1) * 0.5).clamp(0, 1)
    emb = reward.embed_video(pixels)  # [B, T, D] unit
    text_shown = reward.embed_text(list(shown), emb.device)
    text_req = reward.embed_text(list(prompts), emb.device)
    clip_model: Any = reward.clip
    scale = clip_model.logit_scale.exp().clamp(max=100.0)
    keep = torch.ones(len(shown), dtype=torch.bool) if clip is None else clip.bool().cpu()
    contrastive = emb.new_zeros(())
    if int(keep.sum()) > 1:
        sel = torch.nonzero(keep).squeeze(1).to(emb.device)
        kept = [shown[i] for i in sel.tolist()]
        vid = F.normalize(emb[sel].mean(dim=1), dim=-1)
        logits = scale * vid @ text_shown[sel].T
        same = torch.tensor([[a == b for b in kept] for a in kept], dtype=logits.dtype, device=logits.device)
        target = same / same.sum(dim=1, keepdim=True)  # duplicate captions in a batch are all positives
        contrastive = 0.5 * (torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
                             + torch.sum(-target * logits.log_softmax(dim=0).T, dim=1).mean())
    y = _targets(oracle)
    pred = {"VQ": reward.heads["VQ"](emb), "MQ": reward.heads["MQ"](emb), "TA": reward.heads["TA"](emb, text_req)}
    reg = {a: F.smooth_l1_loss(pred[a], y[a].to(pred[a]), beta=0.5) for a in AXES}
    loss = contrastive + reg["VQ"] + reg["MQ"] + 2.0 * reg["TA"]
    return loss, {"loss": float(loss.detach()), "clip": float(contrastive.detach()),
                  **{f"reg_{a}": float(v.detach()) for a, v in reg.items()}}


def train_toy_reward(reward: OpenCLIPVideoReward, iterations: int, batch_size: int = 32, lr: float = 2e-3,
                     pool_size: int = 4096, refresh_every: int = 0, seed: int = 0,
                     progress: ProgressFn | None = None, world: ToyWorld | None = None,
                     extra: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Train the CLIP towers and heads of ``reward`` on toy renders (module docstring); frozen again at the end.

    Args:
        reward: an :class:`OpenCLIPVideoReward` (e.g. :func:`toy_reward`); trained in place.
        iterations: optimizer steps (AdamW, cosine decay after a short warm-up).
        batch_size: videos a step.
        lr: peak learning rate.
        pool_size: labelled videos rendered up front (:func:`reward_examples`), sampled with replacement.
        refresh_every: render a fresh pool every this many steps (0: never).
        seed: seed of the renders and of the sampling.
        world: render the world's captions at its size (:func:`reward_examples`); ``None``: random attributes.
        extra: more labelled examples always in the pool (e.g. :func:`rollout_examples` of a student's samples).
        progress: called with ``(1, logs)`` after each step.

    Returns:
        The logs of every step.
    """
    g = torch.Generator().manual_seed(seed)
    def make_pool(s: int) -> dict[str, Any]:
        fresh = reward_examples(pool_size, seed=s, world=world)
        return fresh if extra is None else concat_examples(fresh, extra)

    pool = make_pool(seed)
    total = pool["video"].shape[0]
    reward.train()
    reward.requires_grad_(True)
    params = [p for p in reward.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, iterations // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.02 + 0.98 * 0.5 * (
            1 + math.cos(math.pi * (s - warmup) / max(1, iterations - warmup))))
    history: list[dict[str, float]] = []
    for step in range(iterations):
        if refresh_every and step and step % refresh_every == 0:
            pool = make_pool(seed + step)
        idx = torch.randint(0, total, (batch_size,), generator=g)
        loss, logs = reward_loss(reward, pool["video"][idx], [pool["prompt"][i] for i in idx],
                                 [pool["shown"][i] for i in idx], {a: pool["oracle"][a][idx] for a in AXES},
                                 pool["clip"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(logs)
        if progress is not None:
            progress(1, logs)
    reward.requires_grad_(False)
    reward.eval()
    return history


@torch.no_grad()
def reward_scores(reward: OpenCLIPVideoReward, video: Tensor, prompts: Sequence[str],
                  batch_size: int = 64) -> dict[str, Tensor]:
    """Raw reward scores ``{axis: [N]}`` of ``video`` ``[N, T, 3, H, W]`` in ``[-1, 1]``, in batches, through
    :meth:`~streamr1.rewards.service.RewardService.score` (the scoring function training uses)."""
    from streamr1.rewards.calibration import as_service

    service = as_service(reward, AXES)
    out: dict[str, list[Tensor]] = {a: [] for a in AXES}
    for i in range(0, video.shape[0], batch_size):
        raw = service.score(video[i:i + batch_size], list(prompts[i:i + batch_size])).raw
        for a in AXES:
            out[a].append(raw[a].float().cpu())
    return {a: torch.cat(v) for a, v in out.items()}


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two ``[N]`` tensors (``scipy.stats.spearmanr``)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def reward_oracle_spearman(reward: OpenCLIPVideoReward, num: int = 1024, seed: int = 10_000,
                           augment: bool = False, world: ToyWorld | None = None,
                           examples: dict[str, Any] | None = None) -> dict[str, float]:
    """Spearman correlation of the reward with the oracle, per axis, on ``num`` held-out labelled renders.

    The renders use seeds the training never drew (``seed`` far from the training seeds) and, by default, no
    augmentation: clean renders of the four quality modes, uniformly (of ``world``'s captions when given).
    ``examples`` (e.g. :func:`rollout_examples` of held-out student samples) replaces the renders.
    """
    data = examples if examples is not None else reward_examples(num, seed=seed, augment=augment, world=world)
    scores = reward_scores(reward, data["video"], data["prompt"])
    return {a: spearman(scores[a], data["oracle"][a]) for a in AXES}


def save_compact(reward: OpenCLIPVideoReward, path: str | os.PathLike[str]) -> None:
    """Write ``reward`` like :meth:`OpenCLIPVideoReward.save`, with floating tensors stored in float16.

    ``OpenCLIPVideoReward(state_path=path)`` reads it unchanged (``load_state_dict`` casts back to float32); the
    file is half the size, which keeps the shipped assets small (the bundled tokenizer's 49408-row token embedding
    dominates it).
    """
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in reward.state_dict().items()}
    torch.save({"format": FORMAT, "config": reward.config(), "state_dict": state}, os.fspath(path))
