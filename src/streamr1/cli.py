"""``streamr1`` command line: LightningCLI over :class:`~streamr1.module.DMDModule` and a datamodule.

    streamr1 fit --config configs/quickstart.yaml [--config callbacks/stream_r1.yaml] [--trainer.max_steps 20]
    streamr1 predict --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    streamr1 export --config configs/quickstart.yaml --ckpt_path last.ckpt --output_dir student_diffusers
    streamr1 calibrate --config configs/quickstart.yaml --output reward_stats.json

Every argument is documented from its docstring: ``streamr1 fit --help``; ``--print_config``
shows the composed configuration. Several ``--config`` files compose left to right (a recipe,
then a callback stack from ``callbacks/``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from streamr1.module import DMDModule


class StreamR1Trainer(Trainer):
    """Lightning's Trainer plus streamr1's own subcommands (``export``, ``calibrate``)."""

    def export(self, model: LightningModule, output_dir: str, ckpt_path: str | None = None, use_ema: bool = True,
               datamodule: LightningDataModule | None = None) -> str:
        """Write the student as a diffusers folder that ``WanTransformer3DModel.from_pretrained`` loads.

        Args:
            model: the module (built from the config).
            output_dir: folder to write (created; an existing folder is replaced atomically).
            ckpt_path: checkpoint to export; ``None`` exports the configured (initial) student.
            use_ema: export the EMA weights when the checkpoint holds them.
        """
        from streamr1.export import export_student

        path = export_student(model, output_dir, ckpt_path=ckpt_path, use_ema=use_ema)
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


class StreamR1CLI(LightningCLI):
    """LightningCLI with the settings streamr1 needs (NOTES.md, "Lightning").

    Checkpoint files are written atomically (:class:`~streamr1.checkpoint.AtomicCheckpointIO`) unless
    ``trainer.plugins`` names another ``CheckpointIO``.
    """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with :class:`~streamr1.checkpoint.AtomicCheckpointIO` added when no
        ``CheckpointIO`` plugin is configured."""
        from lightning.fabric.plugins import CheckpointIO

        from streamr1.checkpoint import AtomicCheckpointIO

        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "export": {"model", "datamodule"},
            "calibrate": {"model", "datamodule"},
        }


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
    main(sys.argv[1:])
