"""What ``streamr1 predict``, ``export`` and ``calibrate`` build: the student, the text encoder and the VAE only.

Sampling runs the student chunk by chunk; the teacher and the critic are never called, and the reward model only
by ``calibrate``. At Wan scale the teacher alone is 28 GB (bf16 14B) and the critic another 1.3B, so the CLI
replaces them with :class:`NotLoaded` before anything is built (:func:`skip_training_models`). Why a stand-in and
not ``teacher: null``: :class:`~streamr1.module.DMDModule` keeps one constructor for every command and checks the
recipe in it; a parameter-free module passes those checks, is left out of FSDP sharding, and fails loudly if
anything ever calls it, so nothing in the module has to know which command is running.

The student's weights come from the checkpoint (:func:`streamr1.export.load_student`: the EMA weights when it holds
them, as ``export`` does), and everything else from the composed config, so ``--model.latent_shape``,
``--model.student.init_args.local_window_frames`` and ``sink_frames`` given on the command line apply.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

NOT_LOADED = "streamr1.sampling.NotLoaded"


class NotLoaded(nn.Module):
    """Stands in for a model a command does not need (the teacher and critic of ``predict``); calling it raises.

    It has no parameters, so it costs nothing and FSDP leaves it alone, and it skips its own entries when a
    checkpoint is loaded into the module (the critic's weights are in every training checkpoint).

    Args:
        role: which model it stands in for (named in the error).
        command: the command that did not build it.
    """

    def __init__(self, role: str = "model", command: str = "predict") -> None:
        super().__init__()
        self.role, self.command = role, command

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:  # the Denoiser protocol the module checks
        raise RuntimeError(f"The {self.role} is not built for `streamr1 {self.command}` (sampling needs only the "
                           "student, the text encoder and the VAE); train with `streamr1 fit`.")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore this model's entries of a checkpoint (``nn.Module``'s would call them unexpected)."""


def skip_training_models(model_config: Any, command: str, drop_evaluator: bool = True) -> list[str]:
    """Replace the teacher and the critic of a parsed ``model`` config with stand-ins, and drop its evaluator, in
    place.

    Args:
        model_config: the ``model`` namespace of the parsed config (jsonargparse ``Namespace``).
        command: the running subcommand (named in :class:`NotLoaded`'s error).
        drop_evaluator: set ``evaluator`` to ``None`` (``predict`` and ``export`` never call it; ``evaluate`` does).

    Returns:
        The keys replaced.
    """
    from jsonargparse import Namespace

    replaced = []
    for role in ("teacher", "critic"):
        if role in model_config and model_config[role] is not None:
            model_config[role] = Namespace(class_path=NOT_LOADED, init_args=Namespace(role=role, command=command))
            replaced.append(role)
    if drop_evaluator and "evaluator" in model_config and model_config["evaluator"] is not None:
        model_config["evaluator"] = None
        replaced.append("evaluator")
    return replaced

