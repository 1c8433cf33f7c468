"""The block-causal student: cache rollout == dense-mask forward, checkpointing, rolling window (models/causal.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from streamr1.models.causal import CausalWanStudent, KVCache

CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
    "out_channels": 4, "text_dim": 16, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 64,
}
CHUNK = 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_student(seed: int = 0, **kwargs) -> CausalWanStudent:
    torch.manual_seed(seed)
    return CausalWanStudent(WanTransformer3DModel(**CONFIG), chunk_frames=CHUNK, **kwargs).eval()


def make_inputs(batch: int = 2, frames: int = 9, size: int = 8, device: str = "cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 4, size, size, generator=g)
    x0 = torch.randn(batch, frames, 4, size, size, generator=g)
    cond = torch.randn(batch, 5, 16, generator=g)
    t = torch.tensor([700.0, 250.0, 900.0, 40.0][:batch])
    return x.to(device), x0.to(device), cond.to(device), t.to(device)


@pytest.fixture
def exact_cuda():
    """No TF32 on CUDA: the two paths may pick different conv/matmul kernels."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 2])
def test_chunks_written_at_same_t_match_full_forward(device, batch, exact_cuda):
    student = make_student().to(device)
    x, _, cond, t = make_inputs(batch, device=device)
    with torch.no_grad():
        full = student(x, t, cond)
        cache = student.new_cache()
        chunks = [student.forward_chunk(x[:, s:s + CHUNK], t, cond, cache, write=True) for s in range(0, 9, CHUNK)]
    assert full.shape == x.shape and cache.frames == 9 and cache.cached_frames == list(range(9))
    assert cache.keys[0].shape == (batch, 9 * 16, 2, 8)
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_self_forcing_pattern_matches_full_forward_with_per_frame_t(device, exact_cuda):
    """Earlier chunks written clean at t=0, the current chunk read at t>0 == full forward with t=[0..0, t, t, t]."""
    student = make_student().to(device)
    x, x0, cond, t = make_inputs(device=device)
    with torch.no_grad():
        for k in range(3):
            cache = student.new_cache()
            for j in range(k):
                chunk = slice(j * CHUNK, (j + 1) * CHUNK)
                student.forward_chunk(x0[:, chunk], torch.zeros_like(t), cond, cache, write=True)
            end = (k + 1) * CHUNK
            read = student.forward_chunk(x[:, end - CHUNK:end], t, cond, cache)
            assert cache.frames == k * CHUNK  # a read does not write
            seq = torch.cat([x0[:, :end - CHUNK], x[:, end - CHUNK:end]], dim=1)
            t_frames = torch.cat([torch.zeros(2, end - CHUNK, device=device), t[:, None].expand(2, CHUNK)], dim=1)
            full = student(seq, t_frames, cond)
            assert (read - full[:, -CHUNK:]).abs().max().item() < 1e-5


def test_block_causal_mask_is_effective():
    """Later frames do not change earlier chunks in the causal forward, but do in the bidirectional one."""
    student = make_student()
    x, x0, cond, t = make_inputs()
    y = torch.cat([x[:, :CHUNK], x0[:, CHUNK:]], dim=1)
    with torch.no_grad():
        a, b = student(x, t, cond), student(y, t, cond)
        bi_a = student.transformer(x.transpose(1, 2), t, cond, return_dict=False)[0].transpose(1, 2)
        bi_b = student.transformer(y.transpose(1, 2), t, cond, return_dict=False)[0].transpose(1, 2)
    assert (a[:, :CHUNK] - b[:, :CHUNK]).abs().max().item() < 1e-6
    assert (bi_a[:, :CHUNK] - bi_b[:, :CHUNK]).abs().max().item() > 1e-4


def test_direct_transformer_call_is_stock_bidirectional_wan():
    """``student.transformer(...)`` without a chunk context equals an unwrapped Wan with the same weights."""
    student = make_student()
    stock = WanTransformer3DModel(**CONFIG).eval()
    stock.load_state_dict(student.transformer.state_dict())
    assert set(student.state_dict()) == {f"transformer.{k}" for k in stock.state_dict()}
    x, _, cond, t = make_inputs()
    with torch.no_grad():
        ours = student.transformer(x.transpose(1, 2), t, cond, return_dict=False)[0]
        ref = stock(x.transpose(1, 2), t, cond, return_dict=False)[0]
    assert (ours - ref).abs().max().item() < 1e-5


def _checkpoint_grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    student = make_student()
    if checkpointing:
        student.transformer.enable_gradient_checkpointing()
    calls = []
    student.transformer.blocks[0].attn1.register_forward_pre_hook(lambda *_: calls.append(1))
    x, x0, cond, t = make_inputs()
    cache = student.new_cache()
    with torch.no_grad():
        student.forward_chunk(x0[:, :CHUNK], torch.zeros_like(t), cond, cache, write=True)
    out = student.forward_chunk(x[:, CHUNK:2 * CHUNK], t, cond, cache)
    with torch.no_grad():  # the cache changes between this chunk's forward and its backward
        student.forward_chunk(x0[:, CHUNK:2 * CHUNK], torch.zeros_like(t), cond, cache, write=True)
    before = len(calls)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return grads, len(calls) - before


def test_gradient_checkpointing_sees_the_cache_of_the_forward():
    plain, recomputed_plain = _checkpoint_grads(False)
    ckpt, recomputed_ckpt = _checkpoint_grads(True)
    assert recomputed_plain == 0 and recomputed_ckpt > 0  # blocks really were recomputed after the write
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name, g in plain.items():
        assert torch.allclose(g, ckpt[name], rtol=1e-5, atol=1e-7), name


def test_no_gradient_through_the_cache_and_no_double_write():
    student = make_student()
    student.transformer.enable_gradient_checkpointing()
    x, x0, cond, t = make_inputs()
    clean = x0[:, :CHUNK].clone().requires_grad_(True)
    cache = student.new_cache()
    written = student.forward_chunk(clean, torch.zeros_like(t), cond, cache, write=True)  # grad on
    assert not any(k.requires_grad for k in cache.keys + cache.values)
    written.sum().backward()  # recomputes the checkpointed blocks of the write pass
    assert cache.frames == CHUNK and cache.keys[0].shape[1] == CHUNK * 16
    clean.grad = None
    out = student.forward_chunk(x[:, CHUNK:2 * CHUNK], t, cond, cache)
    out.square().mean().backward()
    assert clean.grad is None  # nothing flows into the cached chunk
    assert student.transformer.proj_out.weight.grad is not None


@pytest.mark.parametrize(("window", "sinks"), [(7, 1), (6, 0), (8, 2)])
def test_rolling_window_with_sinks_matches_dense_mask(window, sinks):
    student = make_student(local_window_frames=window, sink_frames=sinks)
    frames, capacity = 14, window - CHUNK  # 5 chunks, the last one partial (2 frames)
    recent = capacity - sinks
    x, _, cond, t = make_inputs(frames=frames, size=4)
    mask = student.frame_mask(frames)
    with torch.no_grad():
        full = student(x, t, cond)
        cache = student.new_cache()
        chunks = []
        for start in range(0, frames, CHUNK):
            end = min(start + CHUNK, frames)
            visible = mask[start].nonzero().flatten().tolist()
            assert cache.cached_frames + list(range(start, end)) == visible  # cache == what the mask shows
            chunks.append(student.forward_chunk(x[:, start:end], t, cond, cache, write=True))
            expected = list(range(end)) if end <= capacity else list(range(sinks)) + list(range(end - recent, end))
            assert cache.cached_frames == expected
        unlimited = make_student()(x, t, cond)
    assert cache.frames == frames and len(cache.cached_frames) == sinks + window - sinks - CHUNK
    assert cache.keys[1].shape[1] == cache.values[1].shape[1] == capacity * 4
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() < 1e-5
    assert (unlimited[:, -2:] - full[:, -2:]).abs().max().item() > 1e-4  # the window does change the output


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_frames": 0}, "chunk_frames"),
        ({"chunk_frames": -3}, "chunk_frames"),
        ({"sink_frames": -1}, "sink_frames"),
        ({"local_window_frames": 2}, "local_window_frames"),
        ({"local_window_frames": 4, "sink_frames": 2}, "chunk_frames \\+ sink_frames"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"chunk_frames": CHUNK, **kwargs}
    with pytest.raises(ValueError, match=match):
        CausalWanStudent(WanTransformer3DModel(**CONFIG), **kwargs)


def test_bad_calls_raise():
    student = make_student()
    x, _, cond, t = make_inputs()
    cache = student.new_cache()
    with pytest.raises(ValueError, match="1..3 frames"):
        student.forward_chunk(x[:, :4], t, cond, cache)
    with torch.no_grad():
        student.forward_chunk(x[:, :3], t, cond, cache, write=True)
    with pytest.raises(ValueError, match="batch"):
        student.forward_chunk(x[:1, 3:6], t[:1], cond[:1], cache)
    with pytest.raises(ValueError, match="Timesteps"):
        student(x, t[:, None].expand(2, 4), cond)
    cache.frames = 62
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        student.forward_chunk(x[:, 3:6], t, cond, cache)
    with pytest.raises(ValueError, match="capacity"):
        KVCache(2, sink_frames=3, capacity=2)


def test_bfloat16_chunks_match_full_forward():
    student = make_student().to(torch.bfloat16)
    x, _, cond, t = make_inputs()
    with torch.no_grad():
        full = student(x, t, cond)
        cache = student.new_cache()
        chunks = [student.forward_chunk(x[:, s:s + CHUNK], t, cond, cache, write=True) for s in range(0, 9, CHUNK)]
    out = torch.cat(chunks, dim=1)
    assert out.dtype == x.dtype and cache.keys[0].dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert (out - full).abs().max().item() < 0.05 * full.abs().max().item()
