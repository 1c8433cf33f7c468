"""``defer_load`` under FSDP2 with 2 CPU processes (gloo): the models are sharded on the meta device and each rank
fills its own shards from the files (issue 11, "built without a full copy on every rank"); the run must equal the
eagerly loaded one (slow: ``make test-slow``). The single-process version is tests/models/test_defer_load.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.models.test_defer_load import write_checkpoints

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("defer_load_fsdp")
    write_checkpoints(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "defer_load_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {m: [torch.load(out / f"{m}_rank{r}.pt", weights_only=False) for r in (0, 1)]
            for m in ("eager", "deferred")}


def test_deferred_models_are_sharded_from_the_meta_device(ranks):
    d0, d1 = ranks["deferred"]
    e0, _ = ranks["eager"]
    assert d0["pending_before"] and d0["meta_before"] == d0["params"]  # nothing was loaded before configure_model
    assert not e0["pending_before"] and e0["meta_before"] == 0
    for r in (d0, d1):
        assert not r["pending_after"] and r["dtensor"] == r["params"]  # every parameter sharded, none left on meta
    assert d0["local_numel"] + d1["local_numel"] >= d0["numel"] > d0["local_numel"]  # each rank holds a part


def test_the_sharded_deferred_run_equals_the_eager_one(ranks):
    (e0, e1), (d0, d1) = ranks["eager"], ranks["deferred"]
    assert d0["student_steps"] == e0["student_steps"] == 2
    assert d0["exits"] == e0["exits"]
    assert [v for *_, v in d0["losses"]] == [v for *_, v in e0["losses"]]  # same weights, same noise: same losses
    assert [v for *_, v in d1["losses"]] == [v for *_, v in e1["losses"]]
    for part in ("student", "critic", "teacher"):
        assert d0[part].keys() == e0[part].keys()
        assert all(torch.equal(d0[part][k], e0[part][k]) for k in e0[part]), part
    # critic_init_from_student ran after the fill (the critic file holds another model): on both ranks, both runs
    for r in (e0, e1, d0, d1):
        assert r["critic_is_student_at_start"]
