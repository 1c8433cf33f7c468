"""Distributed and RNG plumbing of the DMD module: FSDP2 sharding, parameter offload, per-rank RNG states.

Kept apart from :mod:`streamr1.module` so that the module reads as the algorithm (SPEC.md §2-4). Everything here is
called from the module's Lightning hooks: :func:`shard_models` from ``configure_model``, :func:`move_parameters` around
the teacher's forward when it is offloaded, :func:`gather_rng_states` / :func:`set_rng_state` when a checkpoint is
written and resumed (each rank resumes its own noise stream).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn


def move_parameters(module: nn.Module, device: torch.device) -> None:
    """Move ``module``'s parameters (not its buffers) to ``device`` in place, keeping the Parameter objects.

    Buffers stay where they are: they are small (Wan's rotary tables) and DDP broadcasts them every forward, which
    NCCL cannot do from host memory.
    """
    for p in module.parameters():
        if p.device != device:
            p.data = p.data.to(device)


def collect_rng_state() -> dict[str, Any]:
    """This process' global RNG states (torch CPU and CUDA, numpy, python) in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])


def mesh_device(mesh: Any) -> torch.device:
    """This rank's device on ``mesh`` (the current CUDA device on a CUDA mesh)."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def broadcast_from_first(model: nn.Module, mesh: Any) -> None:
    """Give every rank of ``mesh`` the parameters and buffers of its first rank (before sharding them).

    ``fully_shard`` keeps each rank's own slice of its own copy, so ranks whose copies differ (a random init under
    per-rank seeds) would otherwise train a patchwork of several models. DDP does the same broadcast when it wraps
    a model. One tensor at a time through the mesh's device (NCCL cannot send host memory): a single extra copy of
    the largest tensor, and a model-sized broadcast once per fit.
    """
    import torch.distributed as dist

    group = mesh.get_group()
    src = dist.get_global_rank(group, 0)
    device = mesh_device(mesh)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "meta":
                continue
            buf = t.detach().to(device)
            dist.broadcast(buf, src=src, group=group)
            t.copy_(buf)


def fsdp_shard(model: nn.Module, mesh: Any, offload: bool = False) -> None:
    """``fully_shard`` each transformer block of ``model``, then its transformer (idempotent).

    ``model`` is a denoiser with a ``transformer`` (Wan) or any module; one without parameters (the toy teacher) is
    left alone. The transformer is the FSDP root: every call (``forward``, the student's ``chunk_x0``) goes through
    its ``forward``, so FSDP's hooks run; wrappers around it must own no parameters. The root reshards after every
    forward too (FSDP2 keeps a root's parameters gathered until backward by default, and the teacher has none).
    A model built with ``defer_load`` (still on the meta device) is sharded first, then each rank reads its own
    shards from the checkpoint (:func:`streamr1.models.wan_deferred.materialize_pending`).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    from streamr1.models.wan_deferred import has_pending_weights, materialize_pending

    root = getattr(model, "transformer", model)
    if isinstance(root, FSDPModule) or not any(True for _ in model.parameters()):
        return
    inside = {id(p) for p in root.parameters()}
    outside = [n for n, p in model.named_parameters() if id(p) not in inside]
    if outside:
        raise ValueError(f"Cannot shard {type(model).__name__}: parameters outside its transformer ({outside[:3]}).")
    # defer_load (streamr1.models.wan_deferred): the model is still on the meta device. Every rank reads the same
    # file, so there is nothing to broadcast; it is filled after sharding, each rank keeping only its own shard.
    pending = has_pending_weights(model)
    if not pending:
        broadcast_from_first(model, mesh)
    policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    for block in getattr(root, "blocks", []):
        fully_shard(block, mesh=mesh, reshard_after_forward=True, offload_policy=policy)
    fully_shard(root, mesh=mesh, reshard_after_forward=True, offload_policy=policy)
    if pending:  # CPUOffloadPolicy keeps the shards in host memory: fill them there
        materialize_pending(model, torch.device("cpu") if offload else mesh_device(mesh))


def fill_deferred(module: nn.Module, device: torch.device) -> int:
    """Fill the ``defer_load`` models inside ``module`` (built on the meta device, :mod:`streamr1.models.wan_deferred`)
    whole on ``device``: the no-mesh case (single device, DDP); under FSDP2 :func:`fsdp_shard` fills them after
    sharding. Called from ``configure_model``, which Lightning runs before the strategy's ``model.to(device)`` (meta
    tensors cannot be copied) and before ``on_fit_start`` (``critic_init_from_student``, the teacher's offload to the
    CPU). Returns how many models were filled (0 when none is pending: idempotent).
    """
    from streamr1.models.wan_deferred import materialize_pending

    return materialize_pending(module, device)


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's global RNG state, in rank order (a collective when ``world_size > 1``: call it on every rank)."""
    state = collect_rng_state()
    if world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [state]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def shard_models(mesh: Any, models: dict[str, nn.Module], offload: frozenset[str] = frozenset()) -> None:
    """``fully_shard`` each model of ``models`` over the mesh's ``data_parallel`` dimension (FSDP2; idempotent).

    Args:
        mesh: the strategy's device mesh (Lightning's ``ModelParallelStrategy``).
        models: name -> model (student, critic, teacher).
        offload: names whose shards live on the CPU (``CPUOffloadPolicy``; ignored on a CPU mesh).

    Raises:
        ValueError: the mesh asks for tensor parallelism, which streamr1 does not have.
    """
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "streamr1 shards with FSDP2 only (no tensor parallelism), but the device mesh is "
            f"{dict(zip(names, mesh.shape, strict=True))}: "
            "set the strategy's `data_parallel_size` to the number of processes (nodes x devices) and "
            "`tensor_parallel_size: 1` (see configs/fsdp.yaml)."
        )
    dp = mesh["data_parallel"] if "data_parallel" in names else mesh
    for name, model in models.items():
        fsdp_shard(model, dp, offload=name in offload and dp.device_type != "cpu")
