"""The student's starting point: Self-Forcing's ODE initialisation, on the toy world's exact teacher.

Self-Forcing (arXiv 2506.08009, after CausVid) does not start DMD from random weights: it first fits the causal
few-step student to what the teacher does, by regression on the teacher's deterministic ODE trajectories:

1. Sample the teacher's probability-flow ODE with classifier-free guidance (SPEC.md §3.2, ``g_s = 3``) from Gaussian
   noise with many Euler steps on the shifted schedule (SPEC.md §1, ``k = 5``), and record ``x_t`` at the student's
   warped few-step timesteps (``[1000, 937.5, 833.3, 625]``, SPEC.md §2) and the final ``x0``.
2. Train the causal student to map each recorded ``x_t`` to that ``x0`` (mean squared error on ``x0``).

The student is block-causal, so a chunk's target depends on the chunks before it. Here the student is trained with
*teacher forcing from clean previous chunks*, exactly the context it sees when generating through its KV cache
(SPEC.md §2: finished chunks are re-encoded at ``t = 0``): for chunk ``k`` the input is the clean ODE result for
chunks ``0..k-1`` at ``t = 0`` followed by chunk ``k`` at one recorded noise level, through the full-sequence
block-causal forward with per-frame timesteps; the loss is on chunk ``k``. Frames after chunk ``k`` cannot influence
it (causality), so they are not fed at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from streamr1.flow import NUM_TRAIN_TIMESTEPS, add_noise, shift_timesteps, warped_steps
from streamr1.losses import cfg_x0

ProgressFn = Callable[[int, dict[str, float]], None]
"""``(advance, postfix)``: called after each unit of work (a batch of trajectories, an optimizer step)."""


def ode_grid(record_steps: Sequence[float], num_steps: int, shift: float) -> tuple[Tensor, list[int]]:
    """Euler timesteps of the teacher ODE and where the recorded few-step levels sit on it.

    The grid is ``num_steps`` uniform steps in the un-shifted time ``u = t / 1000`` from 1 to 0, merged with the
    (un-shifted) ``record_steps``, then shifted (SPEC.md §1), so every recorded level is hit exactly.

    Returns:
        ``(grid, index)``: ``grid`` ``[M + 1]`` float64 timesteps from 1000 down to 0, and the position in ``grid``
        of each recorded step (in ``record_steps`` order).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    u = {round(float(v), 9) for v in torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)}
    rec = [round(float(t) / NUM_TRAIN_TIMESTEPS, 9) for t in record_steps]
    if any(not 0.0 < r <= 1.0 for r in rec):
        raise ValueError(f"record_steps must lie in (0, 1000], got {list(record_steps)}.")
    grid_u = sorted(u | set(rec), reverse=True)
    grid = shift_timesteps(torch.tensor(grid_u, dtype=torch.float64) * NUM_TRAIN_TIMESTEPS, shift)
    return grid, [grid_u.index(r) for r in rec]


@torch.no_grad()
def teacher_ode(teacher: nn.Module, cond: Tensor, neg_cond: Tensor, noise: Tensor, guidance_scale: float = 3.0,
                shift: float = 5.0, num_steps: int = 48,
                record_steps: Sequence[float] = (1000, 750, 500, 250)) -> tuple[Tensor, Tensor]:
    """Integrate the guided teacher's probability-flow ODE from ``noise`` with Euler steps.

    With ``x0_hat = cfg_x0(teacher(x, t, c), teacher(x, t, c_neg), g_s)`` (SPEC.md §3.2) and the flow
    ``v = (x - x0_hat) / s``, one step from ``s`` to ``s'`` is ``x <- x0_hat + (s' / s) (x - x0_hat)``.

    Args:
        teacher: an x0 predictor ``(x_t [B, F, C, H, W], t [B], cond) -> x0``.
        cond: ``[B, L, D]`` prompt embeddings; ``neg_cond``: the negative (unconditional) ones, same shape.
        noise: ``[B, F, C, H, W]`` the starting point at ``t = 1000``.
        guidance_scale: ``g_s``.
        shift: timestep shift ``k``.
        num_steps: uniform Euler steps in un-shifted time (the recorded levels are added to the grid).
        record_steps: the student's few-step list *before* the shift (SPEC.md §2).

    Returns:
        ``(xs, x0)``: ``xs`` ``[B, S, F, C, H, W]`` the trajectory at the ``S`` warped recorded timesteps
        (``xs[:, 0]`` is ``noise`` when the list starts at 1000), ``x0`` ``[B, F, C, H, W]`` the ODE's end point.
    """
    grid, index = ode_grid(record_steps, num_steps, shift)
    b = noise.shape[0]
    x = noise.clone()
    recorded: dict[int, Tensor] = {}
    for i in range(len(grid) - 1):
        if i in index:
            recorded[i] = x.clone()
        s, s_next = float(grid[i]) / NUM_TRAIN_TIMESTEPS, float(grid[i + 1]) / NUM_TRAIN_TIMESTEPS
        t = torch.full((b,), float(grid[i]), device=x.device)
        both = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, neg_cond]))
        x0 = cfg_x0(both[:b], both[b:], guidance_scale)
        x = x0 + (s_next / s) * (x - x0) if s_next > 0 else x0
    return torch.stack([recorded[i] for i in index], dim=1), x


def _guided_chunk_x0(teacher: nn.Module, context: Tensor, x: Tensor, frames: int, level: float, cond: Tensor,
                     neg_cond: Tensor, guidance_scale: float) -> Tensor:
    """The guided teacher's ``x0`` (SPEC.md §3.2) of one chunk ``x`` ``[B, c, C, H, W]`` at ``level``, with per-frame
    timesteps: the clean ``context`` frames before it at ``t = 0``, the other ``frames - lo - c`` frames (zeros) at
    ``t = 1000`` (no information)."""
    b, lo = x.shape[0], context.shape[1]
    hi = lo + x.shape[1]
    full = torch.cat([context, x, x.new_zeros(b, frames - hi, *x.shape[2:])], dim=1)
    t = torch.full((b, frames), float(NUM_TRAIN_TIMESTEPS), device=x.device)
    t[:, :lo] = 0.0
    t[:, lo:hi] = level
    both = teacher(torch.cat([full, full]), torch.cat([t, t]), torch.cat([cond, neg_cond]))
    return cfg_x0(both[:b, lo:hi], both[b:, lo:hi], guidance_scale)


@torch.no_grad()
def causal_teacher_ode(teacher: nn.Module, cond: Tensor, neg_cond: Tensor, noise: Tensor, chunk_frames: int,
                       guidance_scale: float = 3.0, shift: float = 5.0, num_steps: int = 48,
                       record_steps: Sequence[float] = (1000, 750, 500, 250),
                       continuation_steps: int | None = None) -> tuple[Tensor, Tensor]:
    """:func:`teacher_ode` run chunk by chunk, each chunk conditioned on the teacher's own clean earlier chunks.

    What the teacher does when it generates the way the student will (SPEC.md §2): chunk ``k`` integrates the guided
    ODE over its own frames with per-frame timesteps ``t = 0`` on the finished chunks ``0..k-1`` (clean context) and
    ``t = 1000`` on the frames after it (pure noise: no information). The teacher must accept per-frame timesteps
    ``[B, F]`` (the toy :class:`~streamr1.toy.teacher.MixtureTeacher` does: its likelihood is a product over frames).
    Each chunk's target is then a deterministic function of its own noise and the clean context, which a causal
    student can learn; with the bidirectional :func:`teacher_ode` the first chunk's end point also depends on the
    noise of frames the causal student never sees.

    Args:
        chunk_frames: frames a chunk.
        continuation_steps: Euler steps for chunks after the first (``None``: ``num_steps``). Clean context that
            pins the mixture to one mode makes the ODE linear in ``s`` there, so few steps are exact.
        Others as in :func:`teacher_ode`.

    Returns:
        ``(xs, x0)`` as :func:`teacher_ode`: ``xs`` ``[B, S, F, C, H, W]`` holds, for every chunk, that chunk's
        ``x_t`` at the recorded levels (the context it was integrated with is ``x0``'s earlier chunks).
    """
    b, f = noise.shape[:2]
    x0_video = torch.zeros_like(noise)
    xs_video = torch.zeros(b, len(record_steps), *noise.shape[1:], dtype=noise.dtype, device=noise.device)
    for k, lo in enumerate(range(0, f, chunk_frames)):
        hi = min(f, lo + chunk_frames)
        steps = num_steps if k == 0 or continuation_steps is None else continuation_steps
        grid, index = ode_grid(record_steps, steps, shift)
        x = noise[:, lo:hi].clone()
        for i in range(len(grid) - 1):
            if i in index:
                xs_video[:, index.index(i), lo:hi] = x
            s, s_next = float(grid[i]) / NUM_TRAIN_TIMESTEPS, float(grid[i + 1]) / NUM_TRAIN_TIMESTEPS
            x0 = _guided_chunk_x0(teacher, x0_video[:, :lo], x, f, float(grid[i]), cond, neg_cond, guidance_scale)
            x = x0 + (s_next / s) * (x - x0) if s_next > 0 else x0
        x0_video[:, lo:hi] = x
    return xs_video, x0_video


@torch.no_grad()
def causal_teacher_sampler(teacher: nn.Module, cond: Tensor, neg_cond: Tensor, noise: Tensor, chunk_frames: int,
                           steps: Sequence[float], guidance_scale: float = 3.0,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The guided teacher run through the *student's* few-step sampler, recording what it sees and predicts.

    This is :func:`~streamr1.rollout.self_forcing_rollout` with the teacher in the student's place (SPEC.md §2):
    chunk by chunk, on the clean earlier chunks at ``t = 0`` (later frames at ``t = 1000``: no information), the
    chunk walks the warped few-step list; at each level the guided prediction ``cfg_x0`` (SPEC.md §3.2) is recorded
    together with its input, and re-noised with fresh noise to the next level. A student that reproduces these
    predictions on these inputs samples what the teacher samples in the same few steps (on the toy world: 62% good
    modes at ``g_s = 3``, the world itself has 55%): the few-step analogue of Self-Forcing starting the student from
    the teacher's weights.

    Args:
        steps: the student's warped few-step list, noisiest first (e.g. ``[1000, 937.5, 833.3, 625]``).
        generator: draws the re-noising noise.
        Others as in :func:`causal_teacher_ode`.

    Returns:
        ``(xs, targets, x0)``: ``xs`` and ``targets`` ``[B, S, F, C, H, W]`` each chunk's input and the teacher's
        guided ``x0`` prediction at each level; ``x0`` ``[B, F, C, H, W]`` the sample (the last level's prediction).
    """
    b, f = noise.shape[:2]
    x0_video = torch.zeros_like(noise)
    xs = torch.zeros(b, len(steps), *noise.shape[1:], dtype=noise.dtype, device=noise.device)
    targets = torch.zeros_like(xs)
    for lo in range(0, f, chunk_frames):
        hi = min(f, lo + chunk_frames)
        x = noise[:, lo:hi]
        for i, level in enumerate(steps):
            xs[:, i, lo:hi] = x
            x0 = _guided_chunk_x0(teacher, x0_video[:, :lo], x, f, float(level), cond, neg_cond, guidance_scale)
            targets[:, i, lo:hi] = x0
            if i + 1 < len(steps):
                fresh = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
                x = add_noise(x0, fresh, torch.full((b,), float(steps[i + 1]), device=noise.device))
        x0_video[:, lo:hi] = x0
    return xs, targets, x0_video


@dataclass
class ODEPairs:
    """Recorded teacher trajectories: the student's regression data.

    Attributes:
        prompts: ``N`` captions.
        xs: ``[N, S, F, C, H, W]`` ``x_t`` at the warped few-step timesteps ``steps``.
        x0: ``[N, F, C, H, W]`` the trajectories' end points (the clean context of later chunks).
        steps: the ``S`` warped timesteps (e.g. ``[1000, 937.5, 833.3, 625]``).
        targets: ``[N, S, F, C, H, W]`` the regression target at each level (the teacher's prediction, from
            :func:`causal_teacher_sampler`), or ``None``: ``x0`` at every level (the ODE end point).
    """

    prompts: list[str]
    xs: Tensor
    x0: Tensor
    steps: list[float]
    targets: Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@torch.no_grad()
def make_ode_pairs(teacher: nn.Module, text_encoder: nn.Module, prompts: Sequence[str], latent_shape: Sequence[int],
                   guidance_scale: float = 3.0, shift: float = 5.0, num_steps: int = 48,
                   denoising_steps: Sequence[float] = (1000, 750, 500, 250), negative_prompt: str = "",
                   batch_size: int = 64, seed: int = 0, causal_chunk_frames: int | None = None,
                   continuation_steps: int | None = 4, target: str = "ode",
                   progress: ProgressFn | None = None) -> ODEPairs:
    """Run the teacher for every prompt in ``prompts`` (one trajectory each, fresh seeded noise).

    ``target="ode"`` records :func:`teacher_ode` (or :func:`causal_teacher_ode`) trajectories, whose end point is the
    target at every level (Self-Forcing's ODE pairs); ``target="sampler"`` records :func:`causal_teacher_sampler`,
    the teacher's own guided prediction at each level of the student's few-step sampler (``num_steps`` and
    ``continuation_steps`` are then unused; it needs ``causal_chunk_frames``).

    Args:
        teacher: the x0 predictor (the toy world's :class:`~streamr1.toy.teacher.MixtureTeacher`).
        text_encoder: ``encode(prompts) -> [B, L, D]``.
        prompts: one trajectory per entry (repeat prompts for several).
        latent_shape: ``[F, C, H, W]``.
        guidance_scale, shift, num_steps: as in :func:`teacher_ode`.
        denoising_steps: the student's few-step list before the shift.
        negative_prompt: the unconditional branch's prompt.
        batch_size: trajectories integrated at once.
        seed: noise seed.
        causal_chunk_frames: integrate chunk by chunk with this many frames a chunk (:func:`causal_teacher_ode`);
            ``None`` integrates the whole video at once (:func:`teacher_ode`).
        continuation_steps: Euler steps of the chunks after the first in the causal mode.
        target: ``"ode"`` or ``"sampler"`` (above).
        progress: called with ``(trajectories done in this batch, {})``.
    """
    if target not in ("ode", "sampler"):
        raise ValueError(f"target={target!r}: expected 'ode' (ODE end points) or 'sampler' (the teacher's "
                         "predictions along the student's few-step sampler).")
    if target == "sampler" and causal_chunk_frames is None:
        raise ValueError("target='sampler' runs the teacher through the causal student's sampler: set "
                         "causal_chunk_frames to the student's chunk size.")
    g = torch.Generator().manual_seed(seed)
    prompts = [str(p) for p in prompts]
    steps = warped_steps(denoising_steps, shift)
    xs_all, x0_all, targets_all = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        noise = torch.randn(len(chunk), *latent_shape, generator=g)
        cond = text_encoder.encode(chunk).float()
        neg = text_encoder.encode([negative_prompt] * len(chunk)).float()
        if target == "sampler":
            xs, targets, x0 = causal_teacher_sampler(teacher, cond, neg, noise, causal_chunk_frames, steps,
                                                     guidance_scale, g)
            targets_all.append(targets)
        elif causal_chunk_frames is None:
            xs, x0 = teacher_ode(teacher, cond, neg, noise, guidance_scale, shift, num_steps, denoising_steps)
        else:
            xs, x0 = causal_teacher_ode(teacher, cond, neg, noise, causal_chunk_frames, guidance_scale, shift,
                                        num_steps, denoising_steps, continuation_steps)
        xs_all.append(xs)
        x0_all.append(x0)
        if progress is not None:
            progress(len(chunk), {})
    return ODEPairs(prompts, torch.cat(xs_all), torch.cat(x0_all), steps,
                    torch.cat(targets_all) if targets_all else None)


def ode_regression_loss(student: nn.Module, xs: Tensor, x0: Tensor, cond: Tensor, steps: Sequence[float],
                        generator: torch.Generator | None = None, targets: Tensor | None = None) -> Tensor:
    """Self-Forcing's ODE-regression loss with teacher forcing from clean previous chunks (module docstring).

    The batch is split into one group per chunk index ``k`` (sample ``i`` trains chunk ``i mod K``); each sample
    also draws one recorded level ``j``. Group ``k`` runs the student's block-causal full-sequence forward on
    ``[x0[chunks < k] at t = 0, xs[j][chunk k] at t = steps[j]]`` and is scored by ``mean((x0_hat - x0)^2)`` on
    chunk ``k``. Groups are weighted by their size, so the result is the mean over samples. With ``targets``
    (``[B, S, F, C, H, W]``, from :func:`causal_teacher_sampler`) chunk ``k`` at level ``j`` is scored against
    ``targets[:, j]`` instead of ``x0``; the context is still ``x0``'s earlier chunks.

    Args:
        student: a causal student with ``chunk_frames`` and a block-causal ``forward(x_t, t [B, F], cond) -> x0``
            (:class:`~streamr1.models.CausalWanDenoiser`).
        xs: ``[B, S, F, C, H, W]``; ``x0``: ``[B, F, C, H, W]``; ``cond``: ``[B, L, D]``.
        steps: the ``S`` warped timesteps of ``xs``.
        generator: draws the levels ``j``.
    """
    b, s, f = xs.shape[:3]
    c = int(student.chunk_frames)
    num_chunks = math.ceil(f / c)
    level = torch.randint(0, s, (b,), generator=generator).to(xs.device)
    steps_t = torch.tensor([float(v) for v in steps], dtype=torch.float32, device=xs.device)
    chunk_of = torch.arange(b, device=xs.device) % num_chunks
    total = xs.new_zeros(())
    for k in range(num_chunks):
        idx = torch.nonzero(chunk_of == k).squeeze(1)
        if idx.numel() == 0:
            continue
        lo, hi = k * c, min(f, (k + 1) * c)
        noisy = xs[idx, level[idx], lo:hi]  # [b_k, c, C, H, W]
        inp = torch.cat([x0[idx, :lo], noisy], dim=1)
        t = torch.zeros(idx.numel(), hi, device=xs.device)
        t[:, lo:hi] = steps_t[level[idx]].unsqueeze(1)
        pred = student(inp, t, cond[idx])[:, lo:hi]
        goal = x0[idx, lo:hi] if targets is None else targets[idx, level[idx], lo:hi]
        total = total + (pred - goal).pow(2).mean() * idx.numel()
    return total / b


def train_ode_student(student: nn.Module, pairs: ODEPairs, text_encoder: nn.Module, iterations: int,
                      batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 0.0, warmup: int = 50,
                      seed: int = 0, progress: ProgressFn | None = None) -> list[float]:
    """Fit the student to the ODE pairs with AdamW and a cosine schedule (after a linear warm-up).

    Args:
        student: the causal student (trained in place, left in eval mode).
        pairs: from :func:`make_ode_pairs`.
        text_encoder: encodes ``pairs.prompts``.
        iterations: optimizer steps.
        batch_size: samples a step (drawn uniformly with replacement).
        lr, weight_decay: AdamW settings; ``warmup``: linear warm-up steps.
        seed: seed of the sampling of pairs and levels.
        progress: called with ``(1, {"loss": ...})`` after each step.

    Returns:
        The loss of every step.
    """
    g = torch.Generator().manual_seed(seed)
    cond_all = text_encoder.encode(pairs.prompts).float()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99),
                            weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, iterations - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    student.train()
    dev = next(student.parameters()).device  # the pairs stay on the CPU; each batch moves to the student's device
    losses: list[float] = []
    for _ in range(iterations):
        idx = torch.randint(0, len(pairs), (batch_size,), generator=g)
        targets = None if pairs.targets is None else pairs.targets[idx].to(dev)
        loss = ode_regression_loss(student, pairs.xs[idx].to(dev), pairs.x0[idx].to(dev), cond_all[idx].to(dev),
                                   pairs.steps, g, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1, {"loss": losses[-1]})
    student.eval()
    return losses
