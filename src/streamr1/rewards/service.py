"""The one shared reward-model service: scores each rollout once for every weighting callback (SPEC.md §4.1, 4.3, 4.5).

Stream-R1's reliability, balancing and saliency callbacks all read the same :class:`RewardResult`: the service
decodes the rollout once, runs ONE reward forward (with grad only when saliency is needed) and gets every axis'
saliency from ONE batched backward, then caches the result on the rollout context. The reference code runs a
no-grad forward, a second forward with grad and one backward an axis (SPEC §4.5).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from streamr1.context import RolloutContext, reward_source
from streamr1.protocols import AXES, RewardModel, as_device_dtype
from streamr1.rewards.normalization import RewardNormalizer, RewardStatistics, to_unit
from streamr1.rewards.result import RewardResult
from streamr1.rewards.saliency import ResizeMode, channel_norm, saliency_to_latent_grid, scored_frames_of

SaliencySpace = Literal["pixels", "latent"]

PROBE_SHAPE = (1, 2, 3, 32, 32)
"""``[B, T, 3, H, W]`` of the dummy video that probes a reward model without an ``axes`` attribute at setup."""
PROBE_PROMPT = "a test"


def find_reward_service(trainer: pl.Trainer) -> RewardService:
    """The trainer's one :class:`RewardService` (:func:`streamr1.context.reward_source`, typed).

    Raises:
        RuntimeError: there is none, or more than one.
    """
    return reward_source(trainer)  # type: ignore[return-value]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class RewardService(Callback):
    """Scores each student rollout once and shares the result with every weighting callback (SPEC §4.1, §4.3, §4.5).

    What one :meth:`evaluate` does (the first callback to ask pays; the rest read ``ctx.reward``):

    1. Decode the rollout once: ``ctx.decode(ctx.x)`` -> pixels in ``[-1, 1]`` -> ``(p + 1) / 2`` clamped to
       ``[0, 1]`` (SPEC §4.1).
    2. ONE reward forward, with grad only when saliency is needed; raw scores ``{axis: [B]}``.
    3. Saliency (SPEC §4.3.1-2), when needed: ALL axes from ONE batched backward,
       ``autograd.grad(stack_a(sum_b raw_a[b]), inputs, grad_outputs=eye(A), is_grads_batched=True)``; then
       ``S_a = ||d raw_a / d pixels||_2`` over RGB ``[B, T, H, W]``, resized to the latent grid ``[B, F, H, W]``
       (trilinear, ``align_corners=False``). If the batched backward raises (an op without a vmap rule), it falls
       back to ``A`` separate backward passes and counts it in ``batched_grad_fallbacks``.
    4. Normalise ``r_a = (raw_a - mean_a) / std_a`` (SPEC §4.1). A sample with a non-finite raw score on any axis
       is flagged in ``valid`` and counted; non-finite normalised entries become 0 and that sample's saliency is
       all zeros (the weighting callbacks give flagged samples weight 1).
    5. Cache the :class:`RewardResult` on the context and add ``reward/{axis}`` (raw mean), ``reward/{axis}_norm``
       (normalised mean), ``reward/nonfinite`` (samples so far) to ``ctx.logs``; every ``log_every_n_steps``
       student steps also ``reward/{axis}_running_mean`` / ``_running_std`` over the run and all ranks.

    The reward model is frozen (``requires_grad_(False)``, eval mode) and moved at setup to the strategy's root
    device and the LightningModule's dtype (again at train start, after the strategy has moved and cast the
    module). It is held here, never registered as a submodule of the LightningModule, so DDP and FSDP
    never wrap, shard or checkpoint it (its weights come from its own config). ``offload_to_cpu`` keeps it on the
    CPU and moves it to the device only while scoring.

    Setup checks that the model gives every configured axis: from its ``axes`` attribute when it declares one
    (``OpenCLIPVideoReward`` does), else by scoring a dummy video ``[1, 2, 3, 32, 32]`` with the prompt
    ``"a test"`` once (not counted in ``forward_calls``); and that its parameters are on the expected device.

    Outside a trainer (a notebook), call :meth:`score` on pixel videos; it shares :meth:`evaluate`'s code.

    Args:
        model: the reward model (:class:`~streamr1.protocols.RewardModel`): ``(video [B, T, 3, H, W] in [0, 1],
            prompts) -> {axis: [B]}``, differentiable with respect to the video. An ``nn.Module`` to be frozen and
            moved (any callable works, unmoved).
        normalization: per-axis statistics ``{axis: {"mean": m, "std": s}}``, a JSON/YAML file of them (written by
            ``streamr1 calibrate``), or ``None`` (mean 0, std 1: raw scores, with a warning at setup). On resume the
            checkpoint's statistics win.
        axes: the axes scored, normalised and given saliency, in order (SPEC: VQ, MQ, TA).
        offload_to_cpu: keep the model on the CPU between calls (saves device memory, costs two copies a call).
        saliency: compute saliency; ``None`` (auto): on iff some callback in ``trainer.callbacks`` has
            ``needs_saliency = True`` (e.g. ``SaliencyWeighting``).
        saliency_space: ``pixels`` (SPEC): the gradient with respect to the decoded pixels, resized to the latent
            grid; the decoder is run without grad. ``latent``: the gradient with respect to the latent rollout
            (through the decoder), its norm over latent channels, already on the latent grid; more faithful to
            what the loss weights, but it back-propagates through the VAE decoder.
        saliency_resize: ``trilinear`` (SPEC §4.3.2) or ``area`` (average pooling) for pixels -> latent grid.
        batched_backward: take all axes from one batched backward (SPEC §4.5); ``False`` runs one backward an axis
            (the reference's way; identical numbers, for checking).
        keep_pixels: keep the decoded pixels and the pixel-grid saliency in the result (heat maps need them); at
            Wan scale that is a few hundred MB a sample, so turn it off when no one plots.
        log_every_n_steps: period, in student steps, of the running-statistics logs (0: never). They sync across
            ranks, so every rank computes them at the same step.

    Example::

        trainer:
          callbacks:
            - class_path: streamr1.rewards.service.RewardService
              init_args:
                model:
                  class_path: streamr1.rewards.openclip.OpenCLIPVideoReward
                  init_args:
                    model_name: ViT-B-32
                    pretrained: /weights/open_clip_b32.bin
                    heads_path: /weights/reward_heads.pt
                    num_frames: 8
                normalization: stats/reward.json   # from `streamr1 calibrate`
                axes: [VQ, MQ, TA]
            - class_path: streamr1.callbacks.reliability.ReliabilityWeighting
              init_args: {reward_mode: MQ}

    .. code-block:: python

        from streamr1.rewards.openclip import OpenCLIPVideoReward
        from streamr1.rewards.service import RewardService

        service = RewardService(OpenCLIPVideoReward(model_name="ViT-B-32", pretrained="/weights/b32.bin"),
                                normalization="stats/reward.json")
        trainer = Trainer(callbacks=[service, ReliabilityWeighting(reward_mode="MQ")])
        # or, in a notebook, on pixel videos [B, T, 3, H, W] in [-1, 1]:
        result = service.score(video, prompts, saliency=True, latent_shape=(F, H_lat, W_lat))
        result.normalized["TA"], result.saliency["VQ"]

    Extension point: override :meth:`reward_inputs` to change what the reward model sees (crop, resample).
    """

    def __init__(
        self,
        model: RewardModel | nn.Module,
        normalization: dict[str, dict[str, float]] | str | None = None,
        axes: Sequence[str] = AXES,
        offload_to_cpu: bool = False,
        saliency: bool | None = None,
        saliency_space: SaliencySpace = "pixels",
        saliency_resize: ResizeMode = "trilinear",
        batched_backward: bool = True,
        keep_pixels: bool = True,
        log_every_n_steps: int = 50,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a reward model (callable (video, prompts) -> dict), got {type(model)}.")
        axes = tuple(axes)
        if not axes or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be a non-empty list of distinct names, got {list(axes)}.")
        if saliency_space not in ("pixels", "latent"):
            raise ValueError(f"saliency_space must be 'pixels' or 'latent', got {saliency_space!r}.")
        if saliency_resize not in ("trilinear", "area"):
            raise ValueError(f"saliency_resize must be 'trilinear' or 'area', got {saliency_resize!r}.")
        if log_every_n_steps < 0:
            raise ValueError(f"log_every_n_steps must be >= 0 (0: never), got {log_every_n_steps}.")
        self.model = model
        self.axes: tuple[str, ...] = axes
        self.normalizer = RewardNormalizer.from_config(
            os.fspath(normalization) if isinstance(normalization, os.PathLike) else normalization, axes=axes)
        self.statistics = RewardStatistics(axes=axes)
        self.offload_to_cpu = offload_to_cpu
        self.saliency = saliency
        self.saliency_space: SaliencySpace = saliency_space
        self.saliency_resize: ResizeMode = saliency_resize
        self.batched_backward = batched_backward
        self.keep_pixels = keep_pixels
        self.log_every_n_steps = log_every_n_steps
        # Public counters (they survive a resume): reward forwards and backward passes actually run (one batched
        # backward counts 1, the per-axis fallback counts A), samples with a non-finite score, and scorings that
        # needed the per-axis fallback because the batched backward raised.
        self.forward_calls = 0
        self.backward_calls = 0
        self.nonfinite_count = 0
        self.batched_grad_fallbacks = 0
        # Resolved at setup (or by prepare() in a notebook): where the model scores, in which dtype, whether
        # saliency is on. `_batched_ok` turns False after a batched backward raised, so later steps skip the attempt.
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self._saliency_on: bool = bool(saliency)
        self._batched_ok = True
        self._last_running_log = -1
        self._global_rank = 0

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve saliency, freeze and move the model (to the strategy's device, the module's dtype), check it."""
        self._global_rank = int(getattr(trainer, "global_rank", 0))
        needs = [type(cb).__name__ for cb in trainer.callbacks if getattr(cb, "needs_saliency", False) is True]
        if self.saliency is None:
            self._saliency_on = bool(needs)
        elif not self.saliency and needs:
            raise ValueError(f"RewardService(saliency=False), but {needs} in trainer.callbacks need saliency: set "
                             "saliency to null (auto) or true, or remove those callbacks.")
        else:
            self._saliency_on = bool(self.saliency)
        strategy = getattr(trainer, "strategy", None)
        device = getattr(strategy, "root_device", None) or pl_module.device
        self.prepare(device, getattr(pl_module, "dtype", None))
        if not self.normalizer.calibrated and stage == "fit":
            warnings.warn("RewardService has no normalization statistics: rewards are used raw (mean 0, std 1). Run "
                          "`streamr1 calibrate` and set `normalization` to its output (SPEC §4.1).", stacklevel=2)
        self.check_model()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Follow the module if the strategy or precision plugin moved or cast it after setup."""
        self.prepare(pl_module.device, pl_module.dtype)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "normalization": self.normalizer.to_dict() if self.normalizer.calibrated else None,
            "forward_calls": self.forward_calls,
            "backward_calls": self.backward_calls,
            "nonfinite_count": self.nonfinite_count,
            "batched_grad_fallbacks": self.batched_grad_fallbacks,
            # This rank's share of the running statistics (restored on rank 0 only, so the synced sums count
            # every saved sample once).
            "statistics": {k: getattr(self.statistics, k).detach().cpu().clone() for k in ("sum", "sumsq", "count")},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("normalization")
        if saved is not None:
            if self.normalizer.calibrated and self.normalizer.to_dict() != saved:
                warnings.warn("The checkpoint's reward statistics differ from the configured `normalization`; the "
                              "checkpoint's are used so the resumed run weights rollouts as before.", stacklevel=2)
            self.normalizer.set_stats(saved)
        for key in ("forward_calls", "backward_calls", "nonfinite_count", "batched_grad_fallbacks"):
            setattr(self, key, int(state_dict.get(key, 0)))
        stats = state_dict.get("statistics")
        if stats is not None and self._global_rank == 0:
            for key in ("sum", "sumsq", "count"):
                getattr(self.statistics, key).copy_(torch.as_tensor(stats[key], dtype=torch.float64))
            self.statistics.update({a: torch.empty(0) for a in self.axes})  # marks the metric as updated; adds nothing

    # ------------------------------------------------------------------ model placement and checks
    @property
    def device(self) -> torch.device:
        """Where scoring runs (and results live)."""
        if self._device is None:
            self.prepare()
        assert self._device is not None
        return self._device

    @property
    def saliency_enabled(self) -> bool:
        """Whether :meth:`evaluate` computes saliency (resolved at setup when ``saliency`` is ``None``)."""
        return self._saliency_on

    def prepare(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        """Freeze the model, put it in eval mode and move it (and the statistics) to ``device`` / ``dtype``.

        ``None`` keeps the model's current device / dtype. With ``offload_to_cpu`` the model stays on the CPU.
        """
        cur_device, cur_dtype = as_device_dtype(self.model) if isinstance(self.model, nn.Module) else (
            torch.device("cpu"), torch.float32)
        self._device = torch.device(device) if device is not None else cur_device
        self._dtype = dtype if dtype is not None and dtype.is_floating_point else cur_dtype
        if isinstance(self.model, nn.Module):
            self.model.requires_grad_(False)
            self.model.eval()
            home = torch.device("cpu") if self.offload_to_cpu else self._device
            self.model.to(device=home, dtype=self._dtype)
        self.normalizer.to(self._device)
        self.statistics.to(self._device)

    def check_model(self) -> None:
        """Raise ``ValueError`` if the model lacks a configured axis or is not on the expected device."""
        if isinstance(self.model, nn.Module) and any(True for _ in self.model.parameters()):
            expected = torch.device("cpu") if self.offload_to_cpu else self.device
            actual = as_device_dtype(self.model)[0]
            if not _same_device(actual, expected):
                raise ValueError(
                    f"The reward model is on {actual}, expected {expected}: its `.to()` did not move it (keep its "
                    "tensors as registered parameters/buffers), or set offload_to_cpu accordingly."
                )
        declared = getattr(self.model, "axes", None)
        if declared is not None:
            have, how = tuple(declared), f"declares axes {tuple(declared)}"
        else:
            with self._model_on_device(), torch.no_grad():
                probe = torch.full(PROBE_SHAPE, 0.5, device=self.device, dtype=self._dtype)
                try:
                    out = self.model(probe, [PROBE_PROMPT])
                except Exception as err:
                    raise ValueError(
                        f"Probing the reward model with a dummy video {list(PROBE_SHAPE)} failed: {err}. Give the "
                        "model an `axes` attribute (the axes it returns) to skip the probe."
                    ) from err
            if not isinstance(out, Mapping):
                raise ValueError(f"The reward model must return a dict {{axis: [B]}}, got {type(out).__name__}.")
            have, how = tuple(out), f"returned axes {tuple(out)} on a dummy video"
        missing = [a for a in self.axes if a not in have]
        if missing:
            raise ValueError(
                f"The reward model {type(self.model).__name__} {how}, missing the configured axes {missing}. Use a "
                f"reward model that scores them, or set the RewardService's `axes` to a subset of {list(have)} "
                "(and pick a reward_mode that only needs those)."
            )

    @contextlib.contextmanager
    def _model_on_device(self) -> Iterator[None]:
        """With ``offload_to_cpu``: the model on the scoring device for the duration, back on the CPU after."""
        if not (self.offload_to_cpu and isinstance(self.model, nn.Module)):
            yield
            return
        self.model.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")

    # ------------------------------------------------------------------ scoring
    def evaluate(self, ctx: RolloutContext) -> RewardResult:
        """The rollout's :class:`RewardResult`, computed once and kept in ``ctx.reward``.

        Decodes ``ctx.x`` ``[B, F, C, H, W]`` with ``ctx.decode``; saliency (when enabled) lands on the latent grid
        ``[B, F, H, W]``. Also fills ``ctx.logs`` (``reward/...``). Call it on every rank at the same time (the
        running-statistics logs synchronise across ranks).
        """
        if ctx.reward is not None:
            return ctx.reward
        x = ctx.x.detach()
        result = self._score(ctx.prompts, latents=x, decode=ctx.decode, saliency=self._saliency_on,
                             latent_shape=(x.shape[1], x.shape[3], x.shape[4]))
        ctx.reward = result
        ctx.logs.update(self.log_values(result, ctx.student_step))
        return result

    def score(self, video: Tensor, prompts: Sequence[str], saliency: bool = False,
              latent_shape: Sequence[int] | None = None) -> RewardResult:
        """Score pixel videos without a trainer (notebooks, evaluation); same code path as :meth:`evaluate`.

        Args:
            video: ``[B, T, 3, H, W]`` in ``[-1, 1]``.
            prompts: ``B`` captions.
            saliency: also compute per-axis saliency (one batched backward).
            latent_shape: ``(F, H_lat, W_lat)`` to resize the saliency to; ``None`` keeps the pixel grid
                ``[B, T, H, W]``.

        Returns:
            The :class:`RewardResult` (on the service's device).
        """
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W] in [-1, 1], got shape {list(video.shape)}.")
        shape = tuple(int(v) for v in latent_shape) if latent_shape is not None else None
        return self._score(prompts, video=video, saliency=saliency, latent_shape=shape)

    def reward_inputs(self, pixels: Tensor) -> Tensor:
        """The extension point: what the reward model sees, from ``[B, T, 3, H, W]`` pixels in ``[0, 1]``.

        Default: the pixels in the model's dtype. Must stay differentiable (saliency flows through it).
        """
        return pixels.to(self._dtype) if self._dtype is not None else pixels

    def forward_scores(self, pixels: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """THE scoring function every path goes through (training, calibration, evaluation): the configured axes
        of ``model(reward_inputs(pixels), prompts)``, each ``[B]``, in the graph when grad is enabled.

        Args:
            pixels: ``[B, T, 3, H, W]`` in ``[0, 1]`` on the service's device (:func:`to_unit` maps ``[-1, 1]``).
            prompts: ``B`` captions.
        """
        out = self.model(self.reward_inputs(pixels), list(prompts))
        self.forward_calls += 1
        return self._select_axes(out, pixels.shape[0])

    def _score(self, prompts: Sequence[str], *, saliency: bool, latent_shape: tuple[int, int, int] | None,
               latents: Tensor | None = None, decode: Callable[[Tensor], Tensor] | None = None,
               video: Tensor | None = None) -> RewardResult:
        """Decode (or take) the pixels, ONE forward, ONE batched backward; see the class docstring."""
        prompts = [str(p) for p in prompts]
        device = self.device
        latent_mode = saliency and self.saliency_space == "latent" and latents is not None
        with torch.inference_mode(False), self._model_on_device():
            # 1. pixels in [0, 1]; the tensors saliency is taken with respect to.
            inputs: list[Tensor] = []
            if latent_mode:
                assert latents is not None and decode is not None
                with torch.enable_grad():
                    x_leaf = latents.detach().clone().requires_grad_(True)
                    pixels = to_unit(decode(x_leaf).to(device).float())
                inputs.append(x_leaf)
                if self.keep_pixels:
                    inputs.append(pixels)
            else:
                with torch.no_grad():
                    src = decode(latents) if latents is not None and decode is not None else video
                    assert src is not None
                    pixels = to_unit(src.detach().to(device).float())
                if saliency:
                    pixels.requires_grad_(True)
                    inputs.append(pixels)
            b = pixels.shape[0]
            if len(prompts) != b:
                raise ValueError(f"Got {len(prompts)} prompts for {b} videos.")

            # 2. ONE forward.
            with torch.set_grad_enabled(saliency):
                scores = self.forward_scores(pixels, prompts)
            raw = {a: s.detach().float() for a, s in scores.items()}
            valid = torch.stack([torch.isfinite(raw[a]) for a in self.axes]).all(dim=0)

            # 3. ONE batched backward for all axes.
            sal = pix_sal = None
            if saliency:
                grads = self._grads(scores, valid, inputs)
                with torch.no_grad():
                    if latent_mode:
                        sal = channel_norm(grads[0])  # [A, B, F, h, w]: norm over latent channels
                        pix_sal = channel_norm(grads[1]) if self.keep_pixels else None
                    else:
                        pix_sal = channel_norm(grads[0])  # [A, B, T, H, W]: norm over RGB
                        sal = pix_sal
                        if latent_shape is not None:
                            a_, b_ = pix_sal.shape[:2]
                            # A reward that scores only some frames (VideoReward at 2 fps) names them, so every
                            # latent frame still gets saliency (SPEC 4.6; saliency.fill_unscored_frames).
                            scored = scored_frames_of(self.model, pix_sal.shape[2])
                            sal = saliency_to_latent_grid(pix_sal.flatten(0, 1), latent_shape, self.saliency_resize,
                                                          scored_frames=scored).view(a_, b_, *latent_shape)
                    keep = valid.view(1, -1, 1, 1, 1)
                    sal = torch.where(keep, torch.nan_to_num(sal, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
                    if pix_sal is not None:
                        pix_sal = torch.where(keep, torch.nan_to_num(pix_sal, nan=0.0, posinf=0.0, neginf=0.0), 0.0)

        # 4. normalise, flag, count.
        with torch.no_grad():
            normalized = {a: torch.where(torch.isfinite(n), n, torch.zeros_like(n))
                          for a, n in self.normalizer(raw).items()}
            self.nonfinite_count += int((~valid).sum())
            self.statistics.update(raw)
        return RewardResult(
            raw=raw,
            normalized=normalized,
            valid=valid,
            saliency={a: sal[i] for i, a in enumerate(self.axes)} if sal is not None else None,
            pixel_saliency={a: pix_sal[i] for i, a in enumerate(self.axes)}
            if pix_sal is not None and self.keep_pixels else None,
            pixels=pixels.detach() if self.keep_pixels else None,
        )

    def _select_axes(self, out: Mapping[str, Tensor], batch: int) -> dict[str, Tensor]:
        """The configured axes of the model's output, each checked to be ``[B]`` (kept in the graph)."""
        if not isinstance(out, Mapping):
            raise ValueError(f"The reward model must return a dict {{axis: [B]}}, got {type(out).__name__}.")
        missing = [a for a in self.axes if a not in out]
        if missing:
            raise ValueError(f"The reward model returned axes {sorted(out)}, missing the configured {missing}.")
        scores = {}
        for a in self.axes:
            s = torch.as_tensor(out[a])
            if s.numel() != batch:
                raise ValueError(f"The reward model's {a!r} score has shape {list(s.shape)}; expected [B] = [{batch}].")
            scores[a] = s.reshape(batch)
        return scores

    def _grads(self, scores: Mapping[str, Tensor], valid: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
        """``[A, *input.shape]`` gradients of each axis' summed (finite) scores, one per input (SPEC §4.5)."""
        if not any(scores[a].requires_grad for a in self.axes):
            raise ValueError("No reward score depends on the video (no grad_fn): saliency needs a reward model that is "
                             "differentiable with respect to its input, or set saliency=False.")
        # An axis that does not depend on the video (a prompt-only score) simply gets zero saliency.
        with torch.enable_grad():
            total = torch.stack([torch.where(valid, scores[a], torch.zeros_like(scores[a])).sum() for a in self.axes])
        n_axes = len(self.axes)
        grads: Sequence[Tensor | None] | None = None
        if self.batched_backward and self._batched_ok:
            eye = torch.eye(n_axes, device=total.device, dtype=total.dtype)
            try:
                # retain_graph: if the batched pass fails half-way, the per-axis fallback still has the graph.
                grads = torch.autograd.grad(total, inputs, grad_outputs=eye, is_grads_batched=True,
                                            retain_graph=True, allow_unused=True)
                self.backward_calls += 1
            except (RuntimeError, NotImplementedError) as err:
                self._batched_ok = False
                warnings.warn(f"RewardService: the batched saliency backward failed ({err}); falling back to one "
                              f"backward pass an axis ({n_axes} instead of 1) from now on.", stacklevel=2)
        if grads is None:
            if self.batched_backward:
                self.batched_grad_fallbacks += 1
            per_axis = []
            for i in range(n_axes):
                per_axis.append(torch.autograd.grad(total[i], inputs, retain_graph=i < n_axes - 1, allow_unused=True))
                self.backward_calls += 1
            grads = [torch.stack([g[j] if g[j] is not None else torch.zeros_like(inp) for g in per_axis])
                     for j, inp in enumerate(inputs)]
        return [g if g is not None else torch.zeros(n_axes, *inp.shape, device=inp.device, dtype=inp.dtype)
                for g, inp in zip(grads, inputs, strict=True)]

    # ------------------------------------------------------------------ logging
    def log_values(self, result: RewardResult, student_step: int) -> dict[str, Tensor | float]:
        """Scalars for ``ctx.logs``: ``reward/{axis}``, ``reward/{axis}_norm`` (means over valid samples),
        ``reward/nonfinite``; every ``log_every_n_steps`` student steps (once a step, on every rank: it syncs) the
        running ``reward/{axis}_running_mean`` / ``_running_std``."""
        logs: dict[str, Tensor | float] = {}
        valid = result.valid
        if bool(valid.any()):
            for a in self.axes:
                logs[f"reward/{a}"] = result.raw[a][valid].mean()
                logs[f"reward/{a}_norm"] = result.normalized[a][valid].mean()
        logs["reward/nonfinite"] = float(self.nonfinite_count)
        n = self.log_every_n_steps
        if n > 0 and student_step % n == 0 and student_step != self._last_running_log:
            self._last_running_log = student_step
            for a, (mean, std) in self.statistics.compute().items():
                logs[f"reward/{a}_running_mean"] = mean.float()
                logs[f"reward/{a}_running_std"] = std.float()
        return logs
