"""The DMD distillation LightningModule (SPEC.md §2-3; DESIGN.md "The shape").

A causal student rolls out a video chunk by chunk (self-forcing), a frozen teacher with
classifier-free guidance and a trained critic give the DMD gradient, and the student and the
critic take turns under manual optimization. The module knows nothing about rewards: on a
student turn it builds a :class:`~streamr1.context.RolloutContext` and lets every
loss-weighting callback in ``trainer.callbacks`` (in list order) set ``W_inter`` / ``W_intra``.
With none, the loss is plain DMD (Self-Forcing), exactly.

Counters (what ``max_steps`` counts): under manual optimization Lightning's ``global_step``
counts every ``optimizer.step()`` of *both* optimizers (Lightning issue #17958): a run of 10
optimizer cycles with ``student_every=5`` takes 10 critic steps and 2 student steps, so
``global_step`` is 12. ``Trainer(max_steps=N)`` therefore bounds critic + student steps. The
module keeps explicit ``critic_steps`` and ``student_steps`` counters; schedules (EMA start,
heat-map period) use ``student_steps``.

This file is the algorithm; FSDP2 sharding, parameter offload and per-rank RNG states live in
:mod:`streamr1.distributed`, the grouped arguments in :mod:`streamr1.args`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from streamr1.args import DMDArgs, MemoryArgs, SamplingArgs, as_dict, coerce
from streamr1.context import RolloutContext, weighting_callbacks
from streamr1.distributed import collect_rng_state, gather_rng_states, move_parameters, set_rng_state, shard_models
from streamr1.flow import add_noise, sample_dmd_timestep, warped_steps
from streamr1.losses import cfg_x0, critic_flow_loss, dmd_gradient, dmd_loss
from streamr1.models.lora import load_plain_state_dict, plain_state_dict, trainable_parameters
from streamr1.protocols import VAE, CausalStudent, Denoiser, TextEncoder, check_models_fit
from streamr1.rollout import generate, self_forcing_rollout

FROZEN_PREFIXES = ("teacher.", "text_encoder.", "vae.", "evaluator.")
"""Submodules that never train: left out of checkpoints (they reload from their own weights)."""


def _drop_frozen_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` post-hook: remove the frozen submodules' entries (see :data:`FROZEN_PREFIXES`)."""
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].startswith(FROZEN_PREFIXES)]:
        del state_dict[key]


def _ignore_missing_frozen_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: frozen weights are never in a checkpoint, so they are not "missing"."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]


class DMDModule(pl.LightningModule):
    """DMD distillation of a causal streaming student (Self-Forcing / Reward Forcing / Stream-R1).

    Args:
        student: the causal student (:class:`~streamr1.protocols.CausalStudent`, e.g.
            ``streamr1.models.CausalWanDenoiser``).
        teacher: frozen x0 predictor (:class:`~streamr1.protocols.Denoiser`: a ``WanDenoiser`` or the toy
            ``MixtureTeacher``).
        critic: trained bidirectional x0 predictor, the "fake score" (a :class:`~streamr1.protocols.Denoiser`
            ``nn.Module``, e.g. ``WanDenoiser``).
        text_encoder: ``encode(prompts) -> [B, L, D]`` (:class:`~streamr1.protocols.TextEncoder`); frozen.
        vae: ``encode``/``decode`` between pixels and latents (:class:`~streamr1.protocols.VAE`); frozen. Decode must
            be differentiable (saliency).
        latent_shape: ``[F, C, H, W]`` of the generated latent video (F a multiple of the student's chunk size).
        sampling: how the student generates: few-step list and shift (:class:`~streamr1.args.SamplingArgs`).
        dmd: the DMD objective and turn schedule: guidance, timestep range, student_every, accumulation, clipping,
            critic initialisation (:class:`~streamr1.args.DMDArgs`).
        student_optimizer: optimizer for the student (default AdamW lr 2e-6, betas (0, 0.999), weight decay 0.01).
        critic_optimizer: optimizer for the critic (default AdamW lr 4e-7, betas (0, 0.999), weight decay 0.01).
        student_scheduler: optional LR scheduler, stepped once per student optimizer step.
        critic_scheduler: optional LR scheduler, stepped once per critic optimizer step.
        memory: where weights live (:class:`~streamr1.args.MemoryArgs`: teacher offload).
        evaluator: optional metric over generated videos (a torchmetrics ``Metric``/``MetricCollection`` with
            ``update(video [B, T, 3, H, W] in [-1, 1], prompts)`` and ``compute() -> dict``), logged as ``val/...``;
            e.g. the toy world's oracle metrics. Never used in training.
        log_val_videos: validation samples logged as animated GIFs to every logger (TensorBoard, wandb, CSV; first
            batch; 0 = none).
        seed: seed of the module's control-flow generator (exit steps), broadcast from rank 0.

    Distributed: under Lightning's ``ModelParallelStrategy`` (FSDP2), :meth:`configure_model` shards student, critic
    and teacher with ``fully_shard`` per transformer block, then the transformer. Frozen submodules (teacher, text
    encoder, VAE, evaluator) are left out of :meth:`state_dict` and therefore out of every checkpoint, sharded or not.

    Example::

        streamr1 fit --config configs/quickstart.yaml --config callbacks/stream_r1.yaml
    """

    def __init__(
        self,
        student: CausalStudent,
        teacher: Denoiser,
        critic: Denoiser,
        text_encoder: TextEncoder,
        vae: VAE,
        latent_shape: Sequence[int] = (21, 16, 60, 104),
        sampling: SamplingArgs = SamplingArgs(),
        dmd: DMDArgs = DMDArgs(),
        student_optimizer: OptimizerCallable | None = None,
        critic_optimizer: OptimizerCallable | None = None,
        student_scheduler: LRSchedulerCallable | None = None,
        critic_scheduler: LRSchedulerCallable | None = None,
        memory: MemoryArgs = MemoryArgs(),
        evaluator: nn.Module | None = None,
        log_val_videos: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[
            "student", "teacher", "critic", "text_encoder", "vae",
            "student_optimizer", "critic_optimizer", "student_scheduler", "critic_scheduler", "evaluator",
        ])
        self.automatic_optimization = False
        # The groups as dataclasses here, as plain dicts in hparams (a dataclass in a checkpoint would make it
        # unloadable with weights_only=True; DMDModule(**hparams) coerces them back).
        self.sampling, self.dmd, self.memory = coerce(SamplingArgs, sampling), coerce(DMDArgs, dmd), \
            coerce(MemoryArgs, memory)
        for name in ("sampling", "dmd", "memory"):
            self._hparams[name] = self._hparams_initial[name] = as_dict(getattr(self, name))
        self.student, self.teacher, self.critic = student, teacher, critic
        self.text_encoder, self.vae = text_encoder, vae
        self.evaluator = evaluator
        for frozen in (self.teacher, self.text_encoder, self.vae):
            frozen.requires_grad_(False)
            frozen.eval()
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.steps = warped_steps(self.sampling.denoising_steps, self.sampling.shift)
        self._student_opt_fn, self._critic_opt_fn = student_optimizer, critic_optimizer
        self._student_sched_fn, self._critic_sched_fn = student_scheduler, critic_scheduler
        # Explicit step counters: Lightning's global_step counts both optimizers (see module docstring).
        self.student_steps = 0
        self.critic_steps = 0
        self.micro_batches = 0
        # Control-flow randomness (the exit step) comes from its own generator, drawn on rank 0 and broadcast,
        # and saved in checkpoints so a resumed run draws the same sequence.
        self._control_rng = torch.Generator().manual_seed(seed)
        self._neg_cond: Tensor | None = None
        # Per-rank global RNG states read from a checkpoint, applied right before the first training batch after a
        # resume (later than on_load_checkpoint: Lightning draws from the global RNG while it sets up the loops).
        self._pending_rng: dict[str, Any] | None = None
        # Frozen weights reload from their own files: keep them out of state_dict() (and so out of checkpoints,
        # sharded ones included) and let load_state_dict(strict=True) accept their absence.
        self.register_state_dict_post_hook(_drop_frozen_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_frozen_keys)
        check_models_fit(self.student, self.teacher, self.critic, self.text_encoder, self.vae, self.latent_shape)

    # ------------------------------------------------------------------ helpers
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """``[B, L, D]`` text embeddings on the module's device."""
        emb = self.text_encoder.encode(list(prompts))
        return emb.to(self.device, torch.float32)

    def negative_cond(self, batch: int) -> Tensor:
        if self._neg_cond is None or self._neg_cond.device != self.device:
            self._neg_cond = self.encode_prompts([self.dmd.negative_prompt])
        return self._neg_cond.expand(batch, *self._neg_cond.shape[1:])

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, C, H, W]`` -> pixels ``[B, T, 3, H, W]`` in ``[-1, 1]`` (differentiable)."""
        return self.vae.decode(latents)

    def draw_exit_index(self) -> int:
        """The rollout's exit step ``e ~ U{0..S-1}``, drawn on rank 0 and broadcast (SPEC §2)."""
        e = int(torch.randint(0, len(self.steps), (1,), generator=self._control_rng))
        if self._trainer is not None and self.trainer.world_size > 1:
            e = int(self.trainer.strategy.broadcast(e, src=0))
        return e

    def sample_noise(self, batch: int) -> Tensor:
        return torch.randn(batch, *self.latent_shape, device=self.device)

    def rollout(self, cond: Tensor, grad: bool, exit_index: int | None = None) -> Tensor:
        """A self-forcing rollout ``[B, F, C, H, W]`` (SPEC §2)."""
        e = self.draw_exit_index() if exit_index is None else exit_index
        return self_forcing_rollout(self.student, self.sample_noise(cond.shape[0]), cond, self.steps, e, grad=grad)

    def _dmd_timestep(self, batch: int) -> Tensor:
        d = self.dmd
        return sample_dmd_timestep(batch, self.sampling.shift, d.min_timestep, d.max_timestep, device=self.device)

    @torch.no_grad()
    def teacher_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Guided ``x0_real`` (SPEC §3.2): conditional and unconditional branches in one batched call."""
        b = x_t.shape[0]
        offload = self._offloads_teacher()
        if offload:
            move_parameters(self.teacher, x_t.device)
        try:
            both = self.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, self.negative_cond(b)]))
        finally:
            if offload:
                move_parameters(self.teacher, torch.device("cpu"))
        return cfg_x0(both[:b], both[b:], self.dmd.guidance_scale)

    def _offloads_teacher(self) -> bool:
        """Whether :meth:`teacher_x0` moves an unsharded teacher in and out (``offload_teacher``, not FSDP)."""
        return self.memory.offload_teacher and self._device_mesh is None

    # ------------------------------------------------------------------ the two turns
    def student_loss(self, prompts: Sequence[str], cond: Tensor, exit_index: int | None = None,
                     weighting: bool = True) -> tuple[Tensor, RolloutContext]:
        """One student micro-batch: rollout with grad, DMD gradient, weighting callbacks, weighted loss (SPEC §3-4).

        Args:
            exit_index: the rollout's exit step; ``None`` draws it (on rank 0, broadcast). Fixed by benchmarks.
            weighting: run the trainer's loss-weighting callbacks; ``False`` gives the plain DMD loss of the rollout.
        """
        x = self.rollout(cond, grad=True, exit_index=exit_index)
        t = self._dmd_timestep(x.shape[0])
        with torch.no_grad():
            x_t = add_noise(x.detach(), torch.randn_like(x), t)
            x0_fake = self.critic(x_t, t, cond)
            x0_real = self.teacher_x0(x_t, t, cond)
            g = dmd_gradient(x, x0_fake, x0_real)
        ctx = RolloutContext(x=x.detach(), dmd_grad=g, prompts=list(prompts), cond=cond, decode=self.decode,
                             student_step=self.student_steps)
        if weighting and self._trainer is not None:
            for cb in weighting_callbacks(self.trainer):
                cb.weight_rollout(self.trainer, self, ctx)
        loss = dmd_loss(x, g, ctx.rollout_weight, ctx.element_weight)
        ctx.logs["train/dmd_grad_norm"] = g.flatten(1).norm(dim=1).mean()
        ctx.logs["train/dmd_timestep"] = t.mean()
        return loss, ctx

    def critic_loss(self, cond: Tensor, exit_index: int | None = None) -> Tensor:
        """One critic micro-batch: a no-grad rollout, then the critic's flow-matching loss (SPEC §3.5)."""
        with torch.no_grad():
            x = self.rollout(cond, grad=False, exit_index=exit_index)
        t = self._dmd_timestep(x.shape[0])
        noise = torch.randn_like(x)
        x_t = add_noise(x, noise, t)
        return critic_flow_loss(x_t, self.critic(x_t, t, cond), x, noise, t)

    def is_student_cycle(self, cycle: int | None = None) -> bool:
        cycle = self.micro_batches // self.dmd.accumulate if cycle is None else cycle
        return cycle % self.dmd.student_every == 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prompts = batch["prompt"]
        cond = self.encode_prompts(prompts)
        opt_s, opt_c = self.optimizers()
        sched_s, sched_c = self._schedulers()
        acc = self.dmd.accumulate
        cycle_end = (self.micro_batches + 1) % acc == 0
        bs = len(prompts)

        if self.is_student_cycle():
            loss_s, ctx = self.student_loss(prompts, cond)
            self.manual_backward(loss_s / acc)
            self._log_context(ctx, bs)
            self.log("train/student_loss", loss_s.detach(), prog_bar=True, batch_size=bs)
            if cycle_end:
                self.log("train/student_grad_norm", self.optimizer_step(opt_s, sched_s), batch_size=bs)
                self.student_steps += 1
        # The critic never sees the student's gradients: the student's graph is freed above and the critic's
        # rollout runs without grad.
        loss_c = self.critic_loss(cond)
        self.manual_backward(loss_c / acc)
        self.log("critic/loss", loss_c.detach(), prog_bar=True, batch_size=bs)
        if cycle_end:
            self.log("critic/grad_norm", self.optimizer_step(opt_c, sched_c), batch_size=bs)
            self.critic_steps += 1
        self.micro_batches += 1
        self.log("train/student_steps", float(self.student_steps), prog_bar=True, batch_size=bs)
        self.log("train/critic_steps", float(self.critic_steps), batch_size=bs)

    def optimizer_step(self, opt: Any, scheduler: Any = None) -> Tensor:
        """One optimizer step of either turn: clip by the global norm, step, zero the grads, step the scheduler.

        Returns the global grad norm before clipping (``clip_grad_norm_`` works on FSDP2's DTensors and gives the true
        global norm). ``dmd.grad_clip = 0`` measures the norm without clipping.
        """
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            norm = torch.zeros((), device=self.device)
        elif self.dmd.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.dmd.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _schedulers(self) -> tuple[Any, Any]:
        scheds = self.lr_schedulers()
        if scheds is None:
            return None, None
        scheds = scheds if isinstance(scheds, list) else [scheds]
        names = [self._student_sched_fn is not None, self._critic_sched_fn is not None]
        it = iter(scheds)
        return (next(it) if names[0] else None), (next(it) if names[1] else None)

    def _log_context(self, ctx: RolloutContext, batch_size: int) -> None:
        for key, value in ctx.logs.items():
            if isinstance(value, Tensor) and value.numel() > 1:
                self._log_histogram(key, value)
            else:
                self.log(key, value if isinstance(value, Tensor) else float(value), batch_size=batch_size)

    def _log_histogram(self, key: str, value: Tensor) -> None:
        """To every logger (TensorBoard, wandb, CSV statistics; others skip with a one-time warning), on rank 0."""
        from streamr1.logging import log_histogram

        log_histogram(self.trainer, key, value, self.student_steps)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        def default(lr: float):
            return lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.0, 0.999), weight_decay=0.01)

        # Only what trains: a LoRA model's adapters (streamr1.models.lora), every parameter of a full one.
        opt_s = (self._student_opt_fn or default(2e-6))(trainable_parameters(self.student))
        opt_c = (self._critic_opt_fn or default(4e-7))(trainable_parameters(self.critic))
        scheds = []
        if self._student_sched_fn is not None:
            scheds.append({"scheduler": self._student_sched_fn(opt_s), "interval": "step"})
        if self._critic_sched_fn is not None:
            scheds.append({"scheduler": self._critic_sched_fn(opt_c), "interval": "step"})
        return [opt_s, opt_c], scheds

    # ------------------------------------------------------------------ lifecycle
    def configure_model(self) -> None:
        """Shard student, critic and teacher with FSDP2 under ``ModelParallelStrategy``; a no-op otherwise.

        Each transformer block gets its own ``fully_shard`` group, then the transformer (the FSDP root). Idempotent:
        Lightning may call this hook more than once (fit, then validate). Sharding runs over the mesh's
        ``data_parallel`` dimension: set ``data_parallel_size`` to the world size and ``tensor_parallel_size: 1``
        (configs/fsdp.yaml); streamr1 has no tensor parallelism. The teacher is sharded like the others (it holds no
        optimizer state and gets no gradient: it is frozen and not in any optimizer); with ``offload_teacher`` its
        shards live on the CPU (FSDP2 ``CPUOffloadPolicy``, GPU only).
        ``defer_load`` models are filled here, after sharding or whole (:func:`~streamr1.distributed.fill_deferred`).
        """
        if self._device_mesh is None:
            from streamr1.distributed import fill_deferred
            fill_deferred(self, self.device)  # the strategy's root device (Lightning sets it before this hook)
            return
        shard_models(self._device_mesh, {"student": self.student, "critic": self.critic, "teacher": self.teacher},
                     offload=frozenset({"teacher"}) if self.memory.offload_teacher else frozenset())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_validation_start(self) -> None:
        # Validation during fit samples from the global RNG. A checkpoint is written at a batch end, before the
        # validation that follows it, and a run resumed from it does not redo that validation: so that it draws the
        # same training noise as the uninterrupted run, validation hands the RNG streams back as it found them.
        self._rng_before_validation = collect_rng_state() if self.trainer.state.fn == "fit" else None

    def on_validation_end(self) -> None:
        if getattr(self, "_rng_before_validation", None) is not None:
            set_rng_state(self._rng_before_validation)
            self._rng_before_validation = None

    def on_fit_start(self) -> None:
        if self._offloads_teacher():
            move_parameters(self.teacher, torch.device("cpu"))  # the strategy moved the whole module to the device
        if self.dmd.critic_init_from_student and self.student_steps == 0 and self.critic_steps == 0:
            # plain (adapter-free) names and merged weights, so a LoRA student or critic initialises like a full one
            src = plain_state_dict(self.student.transformer)
            dst = self.critic.transformer
            if {k: v.shape for k, v in src.items()} == {k: v.shape for k, v in plain_state_dict(dst).items()}:
                load_plain_state_dict(dst, src)
            else:
                raise ValueError("critic_init_from_student is set but the student and critic architectures differ.")
        dm = self.trainer.datamodule
        micro = getattr(dm, "batch_size", None) if dm is not None else None
        if micro is not None and self.trainer.is_global_zero:
            eff = micro * self.trainer.world_size * self.dmd.accumulate
            print(f"[streamr1] effective batch = {micro} (micro-batch) x {self.trainer.world_size} (devices) x "
                  f"{self.dmd.accumulate} (accumulation) = {eff}; student step every {self.dmd.student_every} cycles")
            if self.logger is not None:
                self.logger.log_hyperparams({"effective_batch": eff})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith(FROZEN_PREFIXES)]:
            del sd[k]
        checkpoint["streamr1"] = {
            "student_steps": self.student_steps,
            "critic_steps": self.critic_steps,
            "micro_batches": self.micro_batches,
            "control_rng": self._control_rng.get_state(),
            "latent_shape": list(self.latent_shape),
            # one entry per rank, in rank order: each rank resumes its own noise stream
            "global_rng": gather_rng_states(self.trainer.world_size if self._trainer is not None else 1),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("streamr1")
        if state is None:
            raise ValueError("This checkpoint was not written by streamr1's DMDModule (no 'streamr1' section).")
        if list(state["latent_shape"]) != list(self.latent_shape):
            raise ValueError(
                f"Checkpoint is from a recipe with latent_shape {state['latent_shape']}, this run has "
                f"{list(self.latent_shape)}: resume with the recipe that wrote it."
            )
        sd = checkpoint.get("state_dict")
        if sd is not None:
            own = self.state_dict()
            mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
            missing = [k for k in own if k not in sd and not k.startswith(FROZEN_PREFIXES)]
            if mismatched or missing:
                raise ValueError(
                    "Checkpoint does not match this recipe's models: "
                    f"{len(mismatched)} tensors of another shape (e.g. {mismatched[:3]}), {len(missing)} missing "
                    f"(e.g. {missing[:3]}). Resume with the recipe (model sizes) that wrote it."
                )
            # Frozen weights come from their own files, not the checkpoint: state_dict() leaves them out and
            # load_state_dict(strict=True) does not count them as missing (hooks registered in __init__).
        self.student_steps = int(state["student_steps"])
        self.critic_steps = int(state["critic_steps"])
        self.micro_batches = int(state["micro_batches"])
        self._control_rng.set_state(state["control_rng"])
        rng = state.get("global_rng")
        if rng:
            world = self.trainer.world_size if self._trainer is not None else 1
            rank = self.trainer.global_rank if self._trainer is not None else 0
            if len(rng) == world:
                self._pending_rng = rng[rank]
            else:
                warnings.warn(
                    f"The checkpoint holds RNG states of {len(rng)} processes, this run has {world}: the resumed run "
                    "draws different noise than an uninterrupted one would.", stacklevel=2,
                )

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompts: Sequence[str], noise: Tensor | None = None, on_chunk: Any = None) -> Tensor:
        """Generate latents ``[B, F, C, H, W]`` chunk by chunk through the KV cache (all few steps)."""
        cond = self.encode_prompts(prompts)
        noise = self.sample_noise(len(prompts)) if noise is None else noise.to(self.device)
        return generate(self.student, noise, cond, self.steps, on_chunk=on_chunk)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        prompts = list(batch["prompt"])
        latents = self.sample(prompts)
        video = self.decode(latents).clamp(-1, 1)
        if self.evaluator is not None:
            self.evaluator.update(video, prompts)
        if batch_idx == 0 and self.hparams.log_val_videos > 0 and self.trainer.is_global_zero:
            from streamr1.evaluation.runner import model_fps
            from streamr1.logging import log_video

            for i in range(min(self.hparams.log_val_videos, video.shape[0])):  # every logger: TensorBoard, wandb, CSV
                log_video(self.trainer, f"val/sample_{i}", video[i], self.student_steps, fps=model_fps(self))
        return {"video": video, "prompts": prompts, "latents": latents}

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is not None:
            values = self.evaluator.compute()
            self.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=False)
            self.evaluator.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        latents = self.sample(batch["prompt"])
        video = self.decode(latents).clamp(-1, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        frames = video.shape[0] * video.shape[1]
        return {"video": video.cpu(), "prompts": list(batch["prompt"]), "seconds": seconds,
                "fps": frames / max(seconds, 1e-9), "index": batch.get("index")}
