"""Deferred Wan loading (meta device, then filled on the device, or shard by shard after FSDP2 ``fully_shard``):
no rank holds the whole model in host memory (issue 11, "built without a full copy on every rank")."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from streamr1.models.wan_deferred import deferred_wan_transformer, has_pending_weights, materialize_pending
from tests.models.test_wan_weights import CONFIG, inputs, source, to_original

pytestmark = pytest.mark.usefixtures("one_thread")


def _flow(model, x, t, cond):
    with torch.no_grad():
        return model(x.permute(0, 2, 1, 3, 4), t, cond, return_dict=False)[0]


def _shard(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def test_deferred_model_is_empty_until_filled_then_equals_the_source(tmp_path):
    model = source()
    path = tmp_path / "ode_init.pt"
    torch.save({"generator": to_original(model.state_dict(), "model.")}, path)
    deferred = deferred_wan_transformer(str(path), CONFIG, torch_dtype="bfloat16")
    assert has_pending_weights(deferred) and all(p.is_meta for p in deferred.parameters())
    assert deferred.patch_embedding.weight.dtype == torch.bfloat16  # final dtypes already, on meta
    assert deferred.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # kept, as diffusers
    assert materialize_pending(deferred, "cpu") == 1 and not has_pending_weights(deferred)
    assert materialize_pending(deferred, "cpu") == 0  # idempotent
    want = model.to(torch.bfloat16).state_dict()
    got = deferred.state_dict()
    assert all(torch.equal(got[k].to(torch.bfloat16), v) for k, v in want.items())
    fp32 = deferred_wan_transformer(str(path), CONFIG)
    materialize_pending(fp32, "cpu")
    x, t, cond = inputs()
    assert torch.equal(_flow(fp32, x, t, cond), _flow(source(), x, t, cond))


def test_deferred_diffusers_folder_and_shape_check(tmp_path):
    model = source()
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    deferred = deferred_wan_transformer(str(tmp_path / "pipe"))  # config.json read, transformer/ found
    materialize_pending(deferred, "cpu")
    x, t, cond = inputs()
    assert torch.equal(_flow(deferred, x, t, cond), _flow(model, x, t, cond))
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"w.safetensors \(diffusers keys\) does not fit the architecture"):
        deferred_wan_transformer(str(tmp_path / "w.safetensors"), {**CONFIG, "ffn_dim": 48})


def _fsdp_worker(rank: int, world: int, init_file: str, path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        mesh = init_device_mesh("cpu", (world,))
        model = deferred_wan_transformer(path, CONFIG)
        _shard(model, mesh)
        materialize_pending(model, "cpu")
        weight = model.blocks[0].ffn.net[0].proj.weight
        assert isinstance(weight, DTensor) and weight.to_local().shape[0] == 32 // world  # only this rank's rows
        x, t, cond = inputs()
        flow = _flow(model, x, t, cond)
        if rank == 0:
            torch.save(flow, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_fsdp2_shards_are_filled_from_the_file(tmp_path, world):
    """``fully_shard`` the meta model, then fill: each rank keeps its shard, and the sharded model's forward equals
    the source's (world 1 in the fast suite, 2 gloo processes in ``make test-slow``)."""
    model = source()
    path = str(tmp_path / "self_forcing_dmd.pt")
    torch.save({"generator": to_original(model.state_dict(), "model."),
                "generator_ema": to_original(model.state_dict(), "model.")}, path)
    out = str(tmp_path / "flow.pt")
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    try:
        if world == 1:
            _fsdp_worker(0, 1, str(tmp_path / "init"), path, out)
        else:
            mp.spawn(_fsdp_worker, args=(world, str(tmp_path / "init"), path, out), nprocs=world, join=True)
    finally:
        os.environ.update(env)
    x, t, cond = inputs()
    assert torch.allclose(torch.load(out), _flow(model, x, t, cond), atol=1e-6)
