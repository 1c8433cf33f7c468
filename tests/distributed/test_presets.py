"""Trainer presets in configs/: each layers onto a recipe with a second --config and names its launch command."""

from __future__ import annotations

import os
import re
import sys

import pytest
import yaml

from streamr1.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
PRESETS = {"ddp": "torchrun", "fsdp": "torchrun", "multinode_torchrun": "torchrun", "multinode_slurm": "srun"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _header(name: str) -> str:
    with open(os.path.join(CONFIGS, f"{name}.yaml"), encoding="utf-8") as fh:
        return "".join(line for line in fh if line.startswith("#"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_header_names_the_exact_launch_command(name):
    header = _header(name)
    launcher = PRESETS[name]
    commands = [line for line in header.splitlines() if re.match(rf"#\s+{launcher}\b", line)]
    assert commands, f"no `{launcher}` line in the header of {name}.yaml"
    # the command line (with its continuation lines) layers this preset onto a recipe
    block = header[header.index(commands[0]):]
    assert "--config configs/wan2.1_t2v.yaml" in block and f"--config configs/{name}.yaml" in block


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_memory_switches_are_documented_with_what_they_save(name):
    header = _header(name)
    for switch in ("model.memory.offload_teacher: true", "bf16-mixed", "bf16-true", "gradient_checkpointing: true"):
        assert switch in header, (name, switch)


def test_slurm_preset_carries_a_job_script():
    header = _header("multinode_slurm")
    for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=SIGUSR1@90"):
        assert f"#SBATCH {directive}" in header
    cfg = yaml.safe_load(open(os.path.join(CONFIGS, "multinode_slurm.yaml")))["trainer"]
    assert cfg["strategy"]["init_args"]["data_parallel_size"] == cfg["num_nodes"] * cfg["devices"]


@pytest.mark.parametrize("recipe", ["tiny_random", "wan2.1_t2v"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_composes_with_a_recipe(name, recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", os.path.join(CONFIGS, f"{recipe}.yaml"), "--config",
              os.path.join(CONFIGS, f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    trainer = printed["trainer"]
    if name == "ddp":
        assert trainer["strategy"] == "ddp_find_unused_parameters_true"
    else:
        strategy = trainer["strategy"]
        assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
        assert strategy["init_args"]["tensor_parallel_size"] == 1
        nodes = trainer["num_nodes"]
        assert strategy["init_args"]["data_parallel_size"] == nodes * 8
    assert printed["model"]["student"]["class_path"] == "streamr1.models.CausalWanDenoiser"  # the recipe is kept


def test_console_script_returns_none_so_the_process_exits_zero(tmp_path, monkeypatch):
    args = ["fit", "--config", os.path.join(CONFIGS, "tiny_random.yaml"), "--trainer.max_steps", "1",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["streamr1", *args])
    assert main() is None  # the console script does sys.exit(main()): None is status 0
