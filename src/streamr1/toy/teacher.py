"""The toy world's teacher: the exact posterior-mean denoiser of a :class:`~streamr1.toy.world.ToyWorld`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from streamr1.flow import NUM_TRAIN_TIMESTEPS
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import SHAPE_RADIUS, ToyWorld


class MixtureTeacher(nn.Module):
    """The exact posterior-mean denoiser ``E[x0 | x_t, prompt]`` of a :class:`ToyWorld` (a Denoiser).

    The world is an empirical distribution: ``p(x0 | prompt)`` is uniform over the ``N_c`` videos whose caption
    matches the prompt. With ``x_t = (1 - s) x0 + s eps``, ``eps ~ N(0, I)``, Bayes gives the exact denoiser

        ``w_i ∝ exp(-||x_t - (1 - s) x_i||^2 / (2 s^2))``,  ``x0_hat = sum_i w_i x_i``

    over the matching videos. Why an exact denoiser rather than a trained teacher: its distribution is known,
    so the questions Stream-R1 (arXiv 2605.03849) asks - does reward-weighted DMD move the student toward the
    teacher's high-quality modes instead of its whole mixture? - have exact answers here: every teacher mode is
    a world video with a known quality label, and :meth:`posterior` tells which mode a sample belongs to. The
    flawed (``"visual"``, ``"motion"``, ``"text"``) videos are genuine modes of this teacher, exactly like the
    failure modes of a real video teacher that plain DMD reproduces.

    Details:
        - matching: each attribute the prompt names (decoded from ``cond`` with ``text_encoder``) must equal the
          caption's; attributes the prompt leaves out are wildcards, so the empty/zero embedding gives the
          unconditional mixture of all videos. If no video matches, the videos matching the most named
          attributes are used (the nearest captions), so the output is always defined;
        - timesteps: ``t`` is ``[B]`` (or ``[B, F]`` per-frame noise levels, as in diffusion forcing, where the
          likelihood is the product over frames), ``s = t / 1000`` clamped to ``[min_sigma, 1]``: as ``s -> 0``
          the posterior concentrates on the nearest matching video, at ``s = 1`` it is uniform (the mean);
        - numerics: squared distances and log-weights in float64, normalised with ``logsumexp``; the bank is
          held in float64, vectorised over videos (one ``einsum``, no loop);
        - regime: in ``8 x 3 x 32 x 32`` dimensions the posterior of a forward-noised world video commits to one
          video early: for a 512-video world and a caption prompt, the effective number of videos
          ``exp(entropy)`` is about 6-8 at ``t = 980``, 1.3 at ``t = 900`` and 1.0 from ``t = 800`` down. So the
          teacher's mixture structure lives at high noise, which is where shifted DMD timesteps concentrate.

    Args:
        world: the world; built from ``num_videos``/``seed``/``mode_probs``/``frames``/``size``/``num_captions``/
            ``videos_per_caption``/``good_per_caption`` (:class:`~streamr1.toy.world.ToyWorld`) when ``None``.
        text_encoder: decodes ``cond``; a ``ToyTextEncoder(dim=text_dim)`` when ``None``.
        min_sigma: smallest ``s`` used.
    """

    def __init__(self, world: ToyWorld | None = None, text_encoder: ToyTextEncoder | None = None, *,
                 num_videos: int | None = None, seed: int = 0, mode_probs: dict[str, float] | None = None,
                 frames: int = 8, size: int = 32, num_captions: int | None = None, videos_per_caption: int = 8,
                 good_per_caption: int = 4, starts_per_caption: int | None = None,
                 shape_radius: float = SHAPE_RADIUS, travel_scale: float = 1.0, text_dim: int = 32,
                 min_sigma: float = 1e-4) -> None:
        super().__init__()
        self.world = world if world is not None else ToyWorld(
            num_videos, seed, mode_probs, frames, size, num_captions=num_captions,
            videos_per_caption=videos_per_caption, good_per_caption=good_per_caption,
            starts_per_caption=starts_per_caption, shape_radius=shape_radius, travel_scale=travel_scale)
        self.text_encoder = text_encoder if text_encoder is not None else ToyTextEncoder(dim=text_dim)
        self.min_sigma = float(min_sigma)
        bank = self.world.videos.to(torch.float64)
        n, t = bank.shape[:2]
        self.register_buffer("bank", bank.reshape(n, t, -1), persistent=False)  # [N, F, Q]
        self.register_buffer("bank_sq", self.bank.pow(2).sum(-1), persistent=False)  # [N, F]
        self.register_buffer("attribute_ids", self.world.attribute_ids.clone(), persistent=False)  # [N, 5]
        self.sample_shape = tuple(self.world.videos.shape[1:])

    def _apply(self, fn: Any, recurse: bool = True) -> MixtureTeacher:
        """Device moves apply to the bank; dtype casts (e.g. a bf16 precision plugin) do not: it stays float64."""
        bank, bank_sq = self.bank, self.bank_sq
        super()._apply(fn, recurse)
        self.bank, self.bank_sq = bank.to(self.bank.device), bank_sq.to(self.bank.device)
        return self

    def match_mask(self, cond: Tensor) -> Tensor:
        """``[B, N]`` bool: the videos each prompt's mixture is restricted to (see the class docstring)."""
        q = self.text_encoder.decode_indices(cond).to(self.attribute_ids.device)  # [B, 5]
        ok = (q.unsqueeze(1) < 0) | (q.unsqueeze(1) == self.attribute_ids.unsqueeze(0))  # [B, N, 5]
        score = ok.sum(-1)
        return score == score.amax(dim=1, keepdim=True)

    def _sigmas(self, t: Tensor, batch: int, frames: int) -> Tensor:
        t = torch.as_tensor(t, device=self.bank.device).to(torch.float64)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            t = t.unsqueeze(1).expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"t must be [B], [B, F] or a scalar; got {tuple(t.shape)} for B={batch}, F={frames}.")
        return (t / NUM_TRAIN_TIMESTEPS).clamp(self.min_sigma, 1.0)

    def log_posterior(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``[B, N]`` float64 normalised log posterior ``log p(x0 = x_i | x_t, prompt)`` (``-inf`` off-prompt)."""
        if tuple(x_t.shape[1:]) != self.sample_shape:
            raise ValueError(f"x_t must be [B, *{self.sample_shape}] (the world's video shape); "
                             f"got {tuple(x_t.shape)}.")
        b, f = x_t.shape[:2]
        s = self._sigmas(t, b, f)  # [B, F]
        a = 1.0 - s
        xt = x_t.detach().to(self.bank.device, torch.float64).reshape(b, f, -1)  # [B, F, Q]
        cross = torch.einsum("bfq,nfq->bnf", xt, self.bank)  # [B, N, F]
        sq = xt.pow(2).sum(-1).unsqueeze(1) - 2 * a.unsqueeze(1) * cross + (a**2).unsqueeze(1) * self.bank_sq
        logits = -(sq.clamp_min(0.0) / (2 * s.unsqueeze(1) ** 2)).sum(-1)  # [B, N]
        logits = logits.masked_fill(~self.match_mask(cond), float("-inf"))
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def posterior(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``[B, N]`` float64 posterior weights ``w_i`` (rows sum to 1)."""
        return self.log_posterior(x_t, t, cond).exp()

    @torch.no_grad()
    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``x_t [B, F, C, H, W]``, ``t [B]`` (0..1000), ``cond [B, L, D]`` -> ``x0_hat [B, F, C, H, W]``."""
        w = self.posterior(x_t, t, cond)
        x0 = torch.einsum("bn,nfq->bfq", w, self.bank)
        return x0.reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)
