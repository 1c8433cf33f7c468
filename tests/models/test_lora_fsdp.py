"""LoRA under FSDP2 with 2 CPU processes (gloo): the adapters shard with their blocks (slow: ``make test-slow``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from diffusers import WanTransformer3DModel

from streamr1.models.lora import merged_copy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFIX = "causal.transformer."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_fsdp")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "lora_fsdp_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_adapters_are_sharded_with_their_blocks(ranks):
    _, (r0, r1) = ranks
    assert len(r0["adapters"]) == 32
    # every adapter is a DTensor sharded on dim 0 over the 2 ranks, each rank holding half its rows
    assert set(r0["adapter_placements"]) == set(r0["adapters"])
    assert all(p == ["S(0)"] for p in r0["adapter_placements"].values())  # Shard(0)
    for n in r0["adapters"]:
        rows = r0["adapter_rows"][n]
        assert r0["adapter_local_rows"][n] + r1["adapter_local_rows"][n] == rows
        assert r0["adapter_local_rows"][n] == (rows + 1) // 2


def test_only_adapters_are_optimized_and_averaged_and_the_base_stays(ranks):
    _, (r0, r1) = ranks
    assert r0["student_steps"] == 2  # 6 optimizer steps: 4 critic + 2 student (student_every 2)
    assert r0["optimizer"] == r0["optimizer_state"] == r0["adapters"] == r0["ema"]
    assert r0["ema_dtensor"]
    for k in r0["after"]:
        assert torch.equal(r0["after"][k], r1["after"][k]), k  # one model, not two
        if ".lora_" not in k:
            assert torch.equal(r0["after"][k], r0["before"][k]), k  # the frozen base never moved
    assert any(not torch.equal(r0["after"][k], r0["before"][k]) for k in r0["adapters"])


def test_the_sharded_checkpoint_exports_merged_with_the_ema(ranks):
    out, (r0, _) = ranks
    assert r0["ckpt_is_dir"]
    from tests.models.test_lora import _module

    reference = _module()
    sd = {k[len(PREFIX):]: v for k, v in r0["after"].items()}
    reference.student.transformer.load_state_dict(sd)
    ema = {k[len(PREFIX):]: v for k, v in r0["ema_full"].items()}
    reference.student.transformer.load_state_dict(ema, strict=False)
    expected = merged_copy(reference.student.transformer).state_dict()
    loaded = WanTransformer3DModel.from_pretrained(str(out / "export"), local_files_only=True).state_dict()
    assert loaded.keys() == expected.keys()
    assert max(float((loaded[k] - expected[k]).abs().max()) for k in loaded) < 1e-6
