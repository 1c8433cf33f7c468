"""``streamr1`` command line: LightningCLI over :class:`~streamr1.module.DMDModule` and a datamodule.

    streamr1 fit --config configs/quickstart.yaml [--config callbacks/stream_r1.yaml --config configs/rewards/toy.yaml]
    streamr1 fit --config configs/quickstart.yaml --ckpt_path last          # resume after a crash
    streamr1 predict --config configs/quickstart.yaml --ckpt_path last --video.output_dir videos
    streamr1 export --config configs/quickstart.yaml --ckpt_path last.ckpt --output_dir student_diffusers
    streamr1 calibrate --config configs/quickstart.yaml --config configs/rewards/toy.yaml --output reward_stats.json

Every argument is documented from its docstring: ``streamr1 fit --help``; ``--print_config``
shows the composed configuration. Several ``--config`` files compose left to right: a recipe
(``configs/``), a callback stack (``callbacks/``), a reward (``configs/rewards/``), presets.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from streamr1.module import DMDModule

SAMPLING_COMMANDS = ("predict", "export", "calibrate", "evaluate")
"""Subcommands that run only the student (plus the reward model for ``calibrate``): no teacher, no critic."""


class StreamR1Trainer(Trainer):
    """Lightning's Trainer plus streamr1's own subcommands (``export``, ``calibrate``)."""

    def export(self, model: LightningModule, output_dir: str, ckpt_path: str | None = None, use_ema: bool = True,
               datamodule: LightningDataModule | None = None, adapter_only: bool = False) -> str:
        """Write the student as a diffusers folder that ``WanTransformer3DModel.from_pretrained`` loads.

        Args:
            model: the module (built from the config).
            output_dir: folder to write (created; an existing folder is replaced atomically).
            ckpt_path: checkpoint to export; ``None`` exports the configured (initial) student.
            use_ema: export the EMA weights when the checkpoint holds them.
            adapter_only: a LoRA student's adapter alone (peft layout) instead of the merged model.
        """
        from streamr1.export import export_student

        path = export_student(model, output_dir, ckpt_path=ckpt_path, use_ema=use_ema, adapter_only=adapter_only)
        print(f"[streamr1] student written to {path}")
        return path

    def calibrate(self, model: LightningModule, output: str, datamodule: LightningDataModule | None = None,
                  video_dir: str | None = None, num_samples: int = 64, batch_size: int = 4) -> dict[str, Any]:
        """Estimate the reward's per-axis mean and std (SPEC §4.1) and save them to ``output`` (JSON).

        Args:
            model: the module (its student generates the rollouts when ``video_dir`` is unset).
            output: JSON file to write: ``{"VQ": {"mean": .., "std": ..}, ...}``.
            video_dir: a folder of videos (with captions) to score instead of student rollouts.
            num_samples: rollouts to score (ignored with ``video_dir``).
            batch_size: videos scored at once.
        """
        from streamr1.calibrate import calibrate

        stats = calibrate(self, model, datamodule, output, video_dir=video_dir, num_samples=num_samples,
                          batch_size=batch_size)
        print(f"[streamr1] reward statistics written to {output}: {stats}")
        return stats

    def evaluate(self, model: LightningModule, output_dir: str, datamodule: LightningDataModule | None = None,
                 ckpt_path: str | None = None, use_ema: bool = True, prompts_file: str | None = None,
                 prompts: list[str] | None = None, extended_prompts_file: str | None = None, num_samples: int = 5,
                 seed: int = 0, batch_size: int = 1, fps: int | None = None, dtype: str = "float32",
                 warmup_batches: int = 1, clip_model_name: str | None = None, clip_pretrained: str | None = None,
                 clip_model_config: dict[str, Any] | None = None, clip_frames: int | None = None,
                 vbench: bool | None = None, vbench_dimensions: list[str] | None = None,
                 vbench_full_info: str | None = None, overwrite: bool = False) -> dict[str, Any]:
        """Sample the student over a prompt suite in VBench's layout and score it (streamr1.evaluation).

        Args:
            model: the module (built from the config).
            output_dir: the evaluation folder: videos/{prompt}-{i}.mp4, manifest.json, summary.json, summary.md.
            ckpt_path: checkpoint to evaluate (a .ckpt file or an FSDP2 sharded folder); None: the configured student.
            use_ema: sample with the StudentEMA weights when the checkpoint holds them.
            prompts_file: the suite, one prompt a line (e.g. VBench's prompts/all_dimension.txt); default: the
                datamodule's predict or validation prompts.
            prompts: the suite inline (instead of prompts_file).
            extended_prompts_file: one extended prompt per suite line, same order: videos are generated from these
                and named, seeded and scored by the original prompts.
            num_samples: videos a prompt (VBench standard mode: 5).
            seed: base seed; each video's noise seed is sha256(seed, prompt, i).
            batch_size: videos generated at once (same batch size, same files, for any number of processes).
            fps: frame rate of the files; default: the model's (16 for Wan, 8 for the toy world).
            dtype: the student's dtype while sampling: float32, bfloat16 or float16.
            warmup_batches: untimed batches before the FPS measurement.
            clip_model_name: open_clip architecture for the CLIP score (e.g. ViT-B-32); unset: no CLIP score.
            clip_pretrained: local CLIP weights file, or local-dir:/folder.
            clip_model_config: an open_clip config dict instead of clip_model_name.
            clip_frames: frames a video the CLIP score reads (evenly spaced); unset: all.
            vbench: run VBench on the folder: unset = when the vbench package is installed; true/false.
            vbench_dimensions: VBench dimensions (default all 16).
            vbench_full_info: VBench_full_info.json (default: the installed vbench package's).
            overwrite: delete another run's videos found in output_dir instead of refusing.
        """
        from streamr1.evaluation import evaluate_command

        clip = None
        if clip_model_name is not None or clip_model_config is not None or clip_pretrained is not None:
            clip = {"model_name": clip_model_name, "pretrained": clip_pretrained, "model_config": clip_model_config}
        return evaluate_command(
            self, model, datamodule, output_dir=output_dir, ckpt_path=ckpt_path, use_ema=use_ema,
            prompts_file=prompts_file, prompts=prompts, extended_prompts_file=extended_prompts_file, clip=clip,
            num_samples=num_samples, base_seed=seed, batch_size=batch_size, fps=fps, dtype=dtype,
            warmup_batches=warmup_batches, clip_frames=clip_frames, vbench=vbench,
            vbench_dimensions=vbench_dimensions, vbench_full_info=vbench_full_info, overwrite=overwrite)


class StreamR1CLI(LightningCLI):
    """LightningCLI with the settings and the fragments streamr1 needs (NOTES.md, "Lightning"; DESIGN.md, "Fragments").

    Top-level keys besides Lightning's (each owned by one kind of fragment, none dropped by another):

    - ``reward:`` the :class:`~streamr1.rewards.service.RewardService` (``model`` + ``normalization``), from a reward
      fragment (``configs/rewards/*.yaml``) or the recipe; ``null`` (default) is plain DMD. Appended to the
      trainer's callbacks, so a stack's ``trainer.callbacks`` list cannot drop it. Not built by ``predict`` or
      ``export``.
    - ``checkpoint:`` the :class:`~streamr1.callbacks.run_checkpoint.RunCheckpoint` every ``fit`` appends
      (``last.ckpt`` and a periodic checkpoint every ``every_n_train_steps``); off only with
      ``trainer.enable_checkpointing: false``.
    - ``video:`` the :class:`~streamr1.callbacks.video_writer.VideoWriter` of ``predict`` (``fps`` set by the recipe;
      ``output_dir`` unset writes nothing).

    ``fit`` also gets a :class:`~streamr1.callbacks.run_check.RunCheck` (refuses a missing or ill-fitting reward at
    setup, prints what is active at fit start). ``predict``, ``export``, ``calibrate`` and ``evaluate`` build no
    teacher and no critic (:mod:`streamr1.sampling`), and apply the composed config over the checkpoint's saved
    hyperparameters. Checkpoint files are written atomically (:class:`~streamr1.checkpoint.AtomicCheckpointIO`)
    unless ``trainer.plugins`` names another ``CheckpointIO``.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from streamr1.callbacks.run_checkpoint import RunCheckpoint
        from streamr1.callbacks.video_writer import VideoWriter
        from streamr1.rewards.service import RewardService

        parser.add_argument(
            "--reward", type=RewardService | None, default=None,
            help="The reward model and its statistics (a RewardService: model, normalization, ...), from a reward "
                 "fragment: --config configs/rewards/toy.yaml (toy world) or configs/rewards/videoreward.yaml "
                 "(Wan). null: no reward (plain DMD).")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(VideoWriter, "video")

    @override
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # an argument of StreamR1CLI.predict, which Lightning's Trainer.predict lacks
            parser.add_argument("--use_ema", type=bool, default=True,
                                help="Sample with the StudentEMA weights when the checkpoint holds them (as export).")
            self._subcommand_method_arguments[subcommand].append("use_ema")
        return parser

    @override
    def _parse_ckpt_path(self) -> None:
        # Lightning parses the checkpoint's saved hyperparameters OVER the command line. Sampling commands take
        # only the student's weights from the checkpoint: the composed config (shape, window, sinks) applies.
        if self.config.get("subcommand") in SAMPLING_COMMANDS:
            return
        super()._parse_ckpt_path()

    @override
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        if sub in SAMPLING_COMMANDS:
            from streamr1.sampling import skip_training_models

            skip_training_models(cfg["model"], sub, drop_evaluator=sub in ("predict", "export"))
            if sub in ("predict", "export"):  # calibrate and evaluate score with the reward
                cfg["reward"] = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer plus the fragments' callbacks (``reward``; for ``fit`` the ``checkpoint`` and a
        :class:`~streamr1.callbacks.run_check.RunCheck`; for ``predict`` the ``video`` writer when it has an
        ``output_dir``), with :class:`~streamr1.checkpoint.AtomicCheckpointIO` when no ``CheckpointIO`` plugin is
        configured."""
        from lightning.fabric.plugins import CheckpointIO

        from streamr1.callbacks.run_check import RunCheck
        from streamr1.checkpoint import AtomicCheckpointIO

        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        plugins = trainer_config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            trainer_config["plugins"] = [*plugins, AtomicCheckpointIO()]
        sub = self.subcommand
        extra: list[Any] = []
        reward = self._get(self.config_init, "reward")
        if reward is not None:
            extra.append(reward)
        if sub in (None, "fit"):
            if trainer_config.get("enable_checkpointing") is not False:
                extra.append(self._get(self.config_init, "checkpoint"))
            extra.append(RunCheck(stacks=self._stack_files(), reward_statistics=self._reward_statistics()))
        if sub == "predict":
            writer = self._get(self.config_init, "video")
            if writer is not None and writer.output_dir is not None:
                extra.append(writer)
        return self._instantiate_trainer(trainer_config, extra)

    def _stack_files(self) -> list[str]:
        """The ``--config`` files of this run that are callback stacks (in a ``callbacks/`` folder)."""
        files = self._get(self.config, "config") or []
        paths = [os.fspath(getattr(p, "relative", p)) if not isinstance(p, str) else p for p in files]
        return [os.path.basename(p) for p in paths if os.path.basename(os.path.dirname(os.path.abspath(p)))
                == "callbacks"]

    def _reward_statistics(self) -> str | None:
        """The configured ``reward.normalization``, for the fit-start summary (``inline`` for a dict)."""
        reward = self._get(self.config, "reward")
        if reward is None:
            return None
        stats = reward.get("init_args", reward).get("normalization")
        return None if stats is None else "inline" if not isinstance(stats, (str, os.PathLike)) else os.fspath(stats)

    def predict(self, model: LightningModule, datamodule: LightningDataModule | None = None,
                ckpt_path: str | None = None, return_predictions: bool | None = None, use_ema: bool = True,
                **kwargs: Any) -> Any:
        """``streamr1 predict``: load the student (EMA weights when the checkpoint holds them and ``use_ema``) from
        ``ckpt_path``, then sample every predict prompt, streaming each batch's videos to the ``video`` writer as
        they are made (``return_predictions`` is false unless set: nothing is kept in memory). Where the composed
        config's sampling settings differ from those the checkpoint was trained with, a line says so."""
        from lightning.pytorch.callbacks import BasePredictionWriter
        from lightning.pytorch.utilities import rank_zero_warn

        from streamr1.export import load_student

        if ckpt_path == "last":
            ckpt_path = self._require_last()
        if ckpt_path is None:
            rank_zero_warn("`streamr1 predict` has no --ckpt_path: sampling with the recipe's initial student weights "
                           "(pass --ckpt_path <file>.ckpt, a sharded checkpoint folder, or `last`).")
        else:
            which = "EMA" if load_student(model, str(ckpt_path), use_ema=use_ema)["ema"] else "trained"
            if self.trainer.is_global_zero:
                print(f"[streamr1] sampling with the {which} student weights of {ckpt_path}; latent_shape "
                      f"{list(getattr(model, 'latent_shape', []))}", flush=True)
                for line in _trained_differently(str(ckpt_path), model):
                    print(f"[streamr1] {line}", flush=True)
        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            rank_zero_warn("`streamr1 predict` writes nothing: no video writer is configured. Pass "
                           "--video.output_dir <folder> (mp4 files at --video.fps, a prompt .txt beside each).")
        return self.trainer.predict(model, datamodule=datamodule, return_predictions=bool(return_predictions))

    def _last_checkpoint(self) -> str | None:
        """The newest ``last.ckpt`` of this run's checkpoint folders (``--ckpt_path last``), or ``None``."""
        ckpt = self._get(self.config_init, "checkpoint")
        found = [p for p in ckpt._find_last_checkpoints(self.trainer) if os.path.exists(p)] if ckpt else []
        return max(found, key=os.path.getmtime) if found else None

    def _require_last(self) -> str:
        """:meth:`_last_checkpoint`, or a ``FileNotFoundError`` naming the folders searched (sampling commands need
        weights; only ``fit`` may start from scratch)."""
        found = self._last_checkpoint()
        if found is None:
            ckpt = self._get(self.config_init, "checkpoint")
            raise FileNotFoundError(
                f"--ckpt_path last: no last.ckpt in this run's checkpoint folders ({ckpt.run_folders(self.trainer)}); "
                "pass a checkpoint path, or the same trainer.logger / checkpoint.dirpath as the fit that wrote it.")
        return found

    def _resolve_last(self) -> None:
        """``--ckpt_path last`` for ``export`` and ``evaluate``: the newest ``last.ckpt`` of the run, as for fit."""
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") == "last":
            cfg["ckpt_path"] = self._require_last()

    def before_export(self) -> None:
        self._resolve_last()

    def before_evaluate(self) -> None:
        self._resolve_last()
        cfg = self.config_init[self.subcommand]
        video = self._get(self.config_init, "video")
        if cfg.get("fps") is None and video is not None:
            cfg["fps"] = video.fps  # the recipe's frame rate (video.fps), the one predict writes at

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "export": {"model", "datamodule"},
            "calibrate": {"model", "datamodule"},
            "evaluate": {"model", "datamodule"},
        }


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, all the way down (to compare saved and configured values)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _trained_differently(ckpt_path: str, model: LightningModule) -> list[str]:
    """One line per sampling hyperparameter (``latent_shape``, ``sampling``) whose value in the composed config differs
    from the one saved in the checkpoint (a ``.ckpt`` file, read memory-mapped; nothing for a sharded folder)."""
    import torch

    if not os.path.isfile(ckpt_path):
        return []
    try:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    except Exception:  # an unreadable header is load_student's to report, not this note's
        return []
    lines = []
    for key in ("latent_shape", "sampling"):
        if key in saved and key in model.hparams:
            then, now = _plain(saved[key]), _plain(model.hparams[key])
            if then != now:
                lines.append(f"{key}: {now} from the config (the checkpoint was trained with {then})")
    return lines


def main(args: list[str] | None = None, run: bool = True) -> StreamR1CLI | None:
    """Entry point of the ``streamr1`` console script.

    Returns the CLI (its ``trainer``, ``model``, ``datamodule``) when called with ``args``, and ``None`` when it reads
    ``sys.argv``: the console script hands the return value to ``sys.exit``, which would print any other object and
    exit with status 1, and torchrun and SLURM take that for a failed worker. With ``run=False`` nothing runs:
    ``args`` hold no subcommand, only the ``fit`` arguments (``--config ...``), and the CLI comes back with the
    trainer, model and datamodule built as ``fit`` would build them (the benchmark, ``streamr1.bench``, uses this).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub at run time
    cli = StreamR1CLI(
        DMDModule,
        LightningDataModule,
        subclass_mode_data=True,
        trainer_class=StreamR1Trainer,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
    return cli if args is not None else None


if __name__ == "__main__":  # pragma: no cover
    main()  # LightningCLI reads sys.argv itself (``python -m streamr1.launcher`` adds the friendly errors)
