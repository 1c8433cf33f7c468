"""DDP and FSDP2 (``ModelParallelStrategy``) with 2 CPU processes (gloo), and a sharded checkpoint resume.

One ``torch.distributed.run`` launch runs every scenario of ``worker.py`` (each process pays the imports once);
the tests read what each rank recorded. About a minute on 2 cores: marked slow (``make test-slow``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCENARIOS = ["ddp", "fsdp_sgd", "fsdp_full", "fsdp_resume"]
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow star moving down"]  # worker.PROMPTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "worker.py"), str(out), *SCENARIOS]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return {s: [torch.load(out / f"{s}_rank{r}.pt", weights_only=False) for r in (0, 1)] for s in SCENARIOS}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_ddp_ranks_stay_identical(runs):
    r0, r1 = runs["ddp"]
    assert r0["world_size"] == 2
    assert r0["counters"] == r1["counters"] == (3, 6, 6)  # 6 cycles: student at 0, 2, 4
    # the ranks drew different noise (seeded 100 and 101) ...
    assert [v for *_, v in r0["losses"]] != [v for *_, v in r1["losses"]]
    # ... yet their gradients are averaged, so the weights agree bit for bit
    for part in ("student", "critic"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part


def test_exit_steps_broadcast_from_rank_zero_despite_different_seeds(runs):
    for scenario in ("ddp", "fsdp_sgd"):
        r0, r1 = runs[scenario]
        # 6 critic rollouts + 3 student rollouts, each drew one exit step; the control generators were seeded
        # 1000 and 1001, so only the broadcast makes the sequences equal
        assert len(r0["exits"]) == 9
        assert r0["exits"] == r1["exits"]
        assert len(set(r0["exits"])) > 1


def test_fsdp2_shards_every_model_and_matches_ddp(runs):
    f0, f1 = runs["fsdp_sgd"]
    d0, _ = runs["ddp"]
    for r in (f0, f1):
        for name in ("student", "critic", "teacher"):
            facts = r["facts"][name]
            assert facts["params"] > 0 and facts["dtensor"] == facts["params"], name  # all sharded, root included
    # the two ranks hold complementary shards
    assert f0["facts"]["student"]["local_numel"] + f1["facts"]["student"]["local_numel"] >= \
        f0["facts"]["student"]["numel"] > f0["facts"]["student"]["local_numel"]
    # with SGD (not scale-invariant like Adam) the sharded run must train exactly like DDP, up to summation order
    assert [(kind, i) for kind, i, _ in f0["losses"]] == [(kind, i) for kind, i, _ in d0["losses"]]
    assert [v for *_, v in f0["losses"]] == pytest.approx([v for *_, v in d0["losses"]], rel=1e-5, abs=1e-6)
    for part in ("student", "critic"):
        assert _max_diff(f0[part], d0[part]) < 1e-6, part
        assert _max_diff(f0[part], f1[part]) == 0.0


def test_frozen_teacher_has_no_optimizer_state_and_no_gradient(runs):
    for r in runs["fsdp_full"]:
        teacher, student, critic = (r["facts"][n] for n in ("teacher", "student", "critic"))
        assert teacher["in_optimizer"] == teacher["optimizer_state"] == teacher["with_grad"] == 0
        assert teacher["requires_grad"] == 0
        # AdamW holds state for every trained parameter, so the counts above are not vacuous
        assert student["optimizer_state"] == student["params"] and critic["optimizer_state"] == critic["params"]


def test_sharded_checkpoint_resume_reproduces_the_uninterrupted_run(runs):
    for rank in (0, 1):
        full, resumed = runs["fsdp_full"][rank], runs["fsdp_resume"][rank]
        assert resumed["ckpt_is_dir"]  # a sharded checkpoint (a folder of shards + meta.pt)
        # the resumed run redoes cycles 3..5 with the same per-rank noise and the same broadcast exit steps
        assert [e for e in resumed["losses"]] == [e for e in full["losses"] if e[1] >= 3]
        assert resumed["exits"] == full["exits"][-len(resumed["exits"]):]
        # ... on the same prompts: each rank continues its own stride of the shuffled prompt stream
        assert len(full["prompts"]) == 6 and resumed["prompts"] == full["prompts"][3:]
        assert resumed["counters"] == full["counters"] and resumed["global_step"] == full["global_step"] == 9
        assert resumed["lrs"] == full["lrs"] == pytest.approx([1e-3 * 0.5**1, 1e-3 * 0.5**3])  # StepLR(2): 3, 6 steps
        assert resumed["ema_is_dtensor"]  # the EMA went back to the student's sharding after the load
        for part in ("student", "critic", "ema"):
            assert _max_diff(full[part], resumed[part]) == 0.0, (rank, part)
    # per-rank streams: the ranks' losses differ, and each rank resumed its own
    assert runs["fsdp_full"][0]["losses"] != runs["fsdp_full"][1]["losses"]
    # the ranks split every epoch: epoch 0 (cycles 0-3) of 8 stream positions is two passes over the 4 prompts
    epoch0 = [p for r in (0, 1) for b in runs["fsdp_full"][r]["prompts"][:4] for p in b]
    assert sorted(epoch0) == sorted(PROMPTS * 2)


def test_export_reads_the_sharded_checkpoint_on_one_process(runs, tmp_path):
    from diffusers import WanTransformer3DModel

    from streamr1.export import export_student
    from tests.helpers import tiny_module

    full = runs["fsdp_full"][0]
    ckpt = os.path.join(full["ckpt_dir"], "epoch=0-step=5.ckpt")
    meta = torch.load(os.path.join(ckpt, "meta.pt"), weights_only=True)  # rank 0's part: callbacks, counters
    (ema,) = [v["shadow"] for k, v in meta["callbacks"].items() if k.startswith("StudentEMA")]
    assert not any(hasattr(v, "full_tensor") for v in ema.values())  # saved unsharded
    prefix = "causal.transformer."
    for use_ema, expected in ((True, ema), (False, full["student_at_ckpt"])):
        out = str(tmp_path / f"ema_{use_ema}")
        export_student(tiny_module(), out, ckpt_path=ckpt, use_ema=use_ema)
        exported = WanTransformer3DModel.from_pretrained(out, local_files_only=True).state_dict()
        assert exported.keys() == {k[len(prefix):] for k in expected}
        for k, v in expected.items():
            assert torch.equal(exported[k[len(prefix):]], v), (use_ema, k)
    assert any(not torch.equal(ema[k], full["student_at_ckpt"][k]) for k in ema)
