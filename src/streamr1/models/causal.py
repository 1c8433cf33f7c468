"""Block-causal, chunk-wise Wan with a KV cache: the student's network (SPEC.md §1-2).

Self-Forcing (Huang et al., arXiv 2506.08009) rolls a video diffusion transformer out chunk by
chunk: every chunk of ``chunk_frames`` latent frames attends bidirectionally to itself and to
the keys/values of the chunks generated before it, which are kept in a KV cache. This module
turns a stock diffusers ``WanTransformer3DModel`` into such a model without copying its forward:

* every block's self-attention ``attn1`` gets a :class:`CausalWanAttnProcessor`;
* ``transformer.rope`` is wrapped by :class:`OffsetRotaryEmbed`, which offsets the temporal
  rotary positions by the first frame of the chunk and attaches a frozen attention context
  (the cached K/V visible to this call, the dense mask, the K/V sink of a write pass) to the
  ``(cos, sin)`` tuple it returns.

The rotary tuple is an argument of every (possibly checkpointed) block, so a block recomputed
during backward sees exactly the context of its first run, even if later chunks were written to
the cache in between: the processor never reads mutable shared state. Cache updates build new
tensors (``torch.cat``), never write in place, and store detached K/V, so no gradient flows
through the cache into earlier chunks.

Two ways to run the model:

* :meth:`CausalWanStudent.forward_chunk`: one chunk through the cache (rollouts, inference).
* :meth:`CausalWanStudent.forward`: the whole sequence at once with a dense boolean block-causal
  mask (teacher-forced training, reference). Both give the same result (tests/models/test_causal.py).

Rolling window with attention sinks (``local_window_frames = W``, ``sink_frames = S``, chunk ``c``):
a chunk attends to at most ``W`` frames, itself included. The cache therefore holds at most
``W - c`` frames after a write: the first ``S`` frames of the video (sinks, never evicted) and
the ``R = W - c - S`` most recently written frames; older frames are evicted (frame-wise, so
``S`` need not be a multiple of ``c``). Equivalently, a query frame in the chunk starting at frame
``s`` sees key frame ``k`` iff ``chunk(k) <= chunk(q)`` and (``k < S`` or ``k >= s - R``), which is
the dense mask of :meth:`CausalWanStudent.frame_mask`. Rotary positions stay absolute (they are
never re-indexed after eviction), so a video may be at most ``rope_max_seq_len`` frames long.

Calling ``student.transformer`` directly (no chunk context) runs plain bidirectional attention,
identical to the stock Wan processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


class _KVWriter:
    """Collects each layer's detached K/V during one write pass; ignores repeats (checkpoint recomputation)."""

    def __init__(self, num_layers: int) -> None:
        self._kv: list[KV | None] = [None] * num_layers
        self._open = True

    def put(self, layer: int, key: Tensor, value: Tensor) -> None:
        if self._open and self._kv[layer] is None:
            self._kv[layer] = (key.detach(), value.detach())

    def close(self) -> list[KV]:
        """Stop accepting K/V (a later recomputation writes nothing) and return them per layer."""
        self._open = False
        missing = [i for i, kv in enumerate(self._kv) if kv is None]
        if missing:
            raise RuntimeError(
                f"Self-attention of blocks {missing} did not run CausalWanAttnProcessor during a cache write; "
                "was the attention processor replaced (e.g. by set_attn_processor)?"
            )
        return [kv for kv in self._kv if kv is not None]


@dataclass(frozen=True, eq=False)
class _AttnContext:
    """What one forward's self-attention may see; frozen when the forward starts."""

    past: tuple[KV | None, ...]  # per layer: cached (K, V) [B, tokens, heads, head_dim], or None
    mask: Tensor | None  # [1, 1, Tq, Tk] bool (True = attend), full-sequence mode only
    writer: _KVWriter | None  # set in write passes


class CausalRotary(tuple):
    """The rotary ``(cos, sin)`` pair of diffusers' Wan, carrying the frozen attention context of one forward."""

    context: _AttnContext

    def __new__(cls, cos: Tensor, sin: Tensor, context: _AttnContext) -> CausalRotary:
        obj = super().__new__(cls, (cos, sin))
        obj.context = context
        return obj


class OffsetRotaryEmbed(nn.Module):
    """Wraps ``WanRotaryPosEmbed``: temporal positions start at a chosen frame, and the output carries a context.

    Without a pending call (``pending is None``) it is the wrapped module unchanged, so the transformer
    can still be called directly for bidirectional forwards. The wrapped rope has only non-persistent
    buffers: wrapping it leaves the state dict unchanged.
    """

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.inner = rope
        self.pending: tuple[int, _AttnContext] | None = None

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        """``hidden_states`` ``[B, C, F, H, W]`` (only its shape is used) -> ``(cos, sin)``, each ``[1, T, 1, D]``."""
        if self.pending is None:
            return self.inner(hidden_states)
        start, context = self.pending
        _, channels, frames, height, width = hidden_states.shape
        max_len = int(self.inner.max_seq_len)
        if start + frames > max_len:
            raise ValueError(
                f"Frames {start}..{start + frames - 1} exceed the rotary table of {max_len} positions "
                "(`rope_max_seq_len` of the Wan config); generate fewer frames or build the model with a longer table."
            )
        shape_only = torch.empty((1, channels, start + frames, height, width), device="meta")
        cos, sin = self.inner(shape_only)
        first = (cos.shape[1] // (start + frames)) * start
        return CausalRotary(cos[:, first:], sin[:, first:], context)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Wan's interleaved rotary embedding: ``x`` ``[B, T, heads, hd]``, ``cos``/``sin`` ``[1, T, 1, hd]``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class CausalWanAttnProcessor:
    """Self-attention processor for ``WanTransformerBlock.attn1`` with a KV cache and an optional dense mask.

    With a :class:`CausalRotary` it attends to the context's cached K/V of this layer followed by the
    current tokens (chunk mode), or masks with the context's mask (full-sequence mode), and hands
    this call's detached K/V to the context's writer in a write pass. With a plain rotary tuple it is
    the stock bidirectional Wan self-attention.

    Args:
        layer_index: index of the block, i.e. of its entry in the cache.
    """

    _attention_backend = None  # set by diffusers' ``set_attention_backend``; used when no mask is needed
    _parallel_config = None

    def __init__(self, layer_index: int) -> None:
        self.layer_index = layer_index

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``hidden_states`` ``[B, T, dim]`` -> ``[B, T, dim]``."""
        if encoder_hidden_states is not None:
            raise ValueError("CausalWanAttnProcessor is for self-attention (attn1) only.")
        if self._parallel_config is not None:
            raise ValueError("Context parallelism is not supported with the causal KV-cache processor.")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query = _apply_rotary(query, rotary_emb[0], rotary_emb[1])
            key = _apply_rotary(key, rotary_emb[0], rotary_emb[1])

        mask = attention_mask
        context = getattr(rotary_emb, "context", None)
        if context is not None:
            if context.writer is not None:
                context.writer.put(self.layer_index, key, value)
            past = context.past[self.layer_index] if context.past else None
            if past is not None:
                key, value = torch.cat((past[0], key), dim=1), torch.cat((past[1], value), dim=1)
            if context.mask is not None:
                if mask is not None:
                    raise ValueError("Got both an attention_mask and a block-causal mask.")
                mask = context.mask

        if mask is None:
            out = dispatch_attention_fn(query, key, value, backend=self._attention_backend)
        else:
            # Native SDPA: other backends may drop the mask; a 4-D mask is never mistaken for a padding mask.
            out = F.scaled_dot_product_attention(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class KVCache:
    """Per-layer keys/values of the student's self-attention for the frames written so far.

    Keys and values are stored post-norm and post-rotary, ``[B, tokens, heads, head_dim]``, frame after
    frame (``tokens = len(cached_frames) * tokens_per_frame``). Writes concatenate into new tensors,
    never in place, so snapshots taken by earlier forwards stay valid.

    Eviction (``capacity`` not ``None``): after a write, if more than ``capacity`` frames are held, keep
    the first ``sink_frames`` frames of the video and the ``capacity - sink_frames`` most recent ones.

    Args:
        num_layers: transformer blocks.
        sink_frames: first frames never evicted.
        capacity: most frames held after a write (``local_window_frames - chunk_frames``); ``None``: unlimited.

    Attributes:
        frames: absolute index of the frame where the next chunk starts (frames ever written).
        cached_frames: absolute indices of the frames held, ascending.
        tokens_per_frame: tokens of one latent frame (``H/2 * W/2`` for Wan), set by the first write.
    """

    def __init__(self, num_layers: int, sink_frames: int = 0, capacity: int | None = None) -> None:
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}.")
        if capacity is not None and capacity < sink_frames:
            raise ValueError(f"The cache capacity ({capacity} frames) must hold the {sink_frames} sink frames.")
        self.num_layers = num_layers
        self.sink_frames = sink_frames
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next chunk starts at frame 0."""
        self.frames = 0
        self.cached_frames: list[int] = []
        self.tokens_per_frame: int | None = None
        self.batch_size: int | None = None
        self.keys: list[Tensor | None] = [None] * self.num_layers
        self.values: list[Tensor | None] = [None] * self.num_layers

    @property
    def num_tokens(self) -> int:
        """Tokens held per layer."""
        return len(self.cached_frames) * (self.tokens_per_frame or 0)

    def snapshot(self) -> tuple[KV | None, ...]:
        """The per-layer ``(K, V)`` visible now (``None`` for an empty cache); safe to keep across later writes."""
        if not self.cached_frames:
            return ()
        return tuple((k, v) for k, v in zip(self.keys, self.values, strict=True))

    def check(self, batch_size: int, tokens_per_frame: int) -> None:
        """Raise ``ValueError`` if a chunk of this batch size and frame size cannot use this cache."""
        if self.batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"The cache holds a batch of {self.batch_size}, got a chunk with batch {batch_size}.")
        if self.tokens_per_frame is not None and tokens_per_frame != self.tokens_per_frame:
            raise ValueError(
                f"The cache holds frames of {self.tokens_per_frame} tokens, got a chunk with {tokens_per_frame} "
                "tokens per frame (different latent height/width)."
            )

    def append(self, kv: Sequence[KV], num_frames: int) -> None:
        """Append one chunk's per-layer ``(K, V)`` ``[B, num_frames * tokens_per_frame, heads, head_dim]``, then evict.

        Advances :attr:`frames` by ``num_frames``.
        """
        if len(kv) != self.num_layers:
            raise ValueError(f"Expected K/V of {self.num_layers} layers, got {len(kv)}.")
        batch, tokens = kv[0][0].shape[:2]
        if num_frames <= 0 or tokens % num_frames:
            raise ValueError(f"{tokens} tokens do not split into {num_frames} frames.")
        self.check(batch, tokens // num_frames)
        self.batch_size, self.tokens_per_frame = batch, tokens // num_frames
        self.keys = [k.detach() if old is None else torch.cat((old, k.detach()), 1)
                     for old, (k, _) in zip(self.keys, kv, strict=True)]
        self.values = [v.detach() if old is None else torch.cat((old, v.detach()), 1)
                       for old, (_, v) in zip(self.values, kv, strict=True)]
        self.cached_frames = self.cached_frames + list(range(self.frames, self.frames + num_frames))
        self.frames += num_frames
        if self.capacity is not None and len(self.cached_frames) > self.capacity:
            self._evict()

    def _evict(self) -> None:
        # Sinks are never evicted and are the earliest frames, so they are the first `sink_frames` held.
        assert self.capacity is not None and self.tokens_per_frame is not None
        sinks, recent_from = self.sink_frames, len(self.cached_frames) - (self.capacity - self.sink_frames)
        a, b = sinks * self.tokens_per_frame, recent_from * self.tokens_per_frame
        self.keys = [torch.cat((k[:, :a], k[:, b:]), 1) for k in self.keys]
        self.values = [torch.cat((v[:, :a], v[:, b:]), 1) for v in self.values]
        self.cached_frames = self.cached_frames[:sinks] + self.cached_frames[recent_from:]


class CausalWanStudent(nn.Module):
    """A ``WanTransformer3DModel`` made block-causal and chunk-wise with a KV cache (Self-Forcing).

    Args:
        transformer: the Wan model; wrapped in place (processors on every ``attn1``, rope wrapper).
            Gradient checkpointing may be enabled on it before or after.
        chunk_frames: latent frames per chunk (3 at Wan scale).
        local_window_frames: most frames a chunk attends to (cache + itself); ``None``: unlimited. Must be
            ``>= chunk_frames + sink_frames``.
        sink_frames: first frames of the video always attended (attention sinks); only used with a window.

    Raises:
        ValueError: on a bad chunk size, window or sink count, or a temporal patch size other than 1.
    """

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        chunk_frames: int = 3,
        local_window_frames: int | None = None,
        sink_frames: int = 0,
    ) -> None:
        super().__init__()
        if int(chunk_frames) != chunk_frames or chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames}.")
        if int(sink_frames) != sink_frames or sink_frames < 0:
            raise ValueError(f"sink_frames must be a non-negative integer, got {sink_frames}.")
        if local_window_frames is not None and local_window_frames < chunk_frames + sink_frames:
            raise ValueError(
                f"local_window_frames ({local_window_frames}) must be at least chunk_frames + sink_frames "
                f"({chunk_frames} + {sink_frames}): a chunk attends to itself and to the sink frames."
            )
        patch = tuple(transformer.config.patch_size)
        if patch[0] != 1:
            raise ValueError(f"The causal student needs a temporal patch size of 1 (every Wan model), got {patch}.")
        self.transformer = transformer
        self.chunk_frames = int(chunk_frames)
        self.local_window_frames = None if local_window_frames is None else int(local_window_frames)
        self.sink_frames = int(sink_frames)
        if not isinstance(transformer.rope, OffsetRotaryEmbed):
            transformer.rope = OffsetRotaryEmbed(transformer.rope)
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(CausalWanAttnProcessor(i))

    @property
    def num_layers(self) -> int:
        return len(self.transformer.blocks)

    @property
    def cache_capacity(self) -> int | None:
        """Most frames the cache holds after a write: ``local_window_frames - chunk_frames`` (``None``: unlimited)."""
        return None if self.local_window_frames is None else self.local_window_frames - self.chunk_frames

    def new_cache(self) -> KVCache:
        """An empty cache for one batch of videos, with this student's eviction rule."""
        return KVCache(self.num_layers, self.sink_frames if self.cache_capacity is not None else 0, self.cache_capacity)

    def frame_mask(self, num_frames: int, device: torch.device | str | None = None) -> Tensor:
        """``[F, F]`` bool: ``[q, k]`` is True where query frame ``q`` attends to key frame ``k``."""
        frame = torch.arange(num_frames, device=device)
        chunk = frame // self.chunk_frames
        mask = chunk[None, :] <= chunk[:, None]
        if self.cache_capacity is not None:
            recent = self.cache_capacity - self.sink_frames
            key = frame[None, :]
            mask = mask & ((key < self.sink_frames) | (key >= chunk[:, None] * self.chunk_frames - recent))
        return mask

    def token_mask(self, num_frames: int, tokens_per_frame: int, device: torch.device | str | None = None) -> Tensor:
        """:meth:`frame_mask` at token level, ``[1, 1, F*tpf, F*tpf]`` bool (frame-major token order of Wan)."""
        frame = torch.arange(num_frames * tokens_per_frame, device=device) // tokens_per_frame
        return self.frame_mask(num_frames, device)[frame[:, None], frame[None, :]][None, None]

    def _tokens_per_frame(self, x: Tensor) -> int:
        _, p_h, p_w = self.transformer.config.patch_size
        h, w = x.shape[-2:]
        if h % p_h or w % p_w:
            raise ValueError(f"Latent size {h}x{w} is not divisible by the patch size {p_h}x{p_w}.")
        return (h // p_h) * (w // p_w)

    @staticmethod
    def _timesteps(t: Tensor | float, batch: int, frames: int, tokens_per_frame: int, device: torch.device) -> Tensor:
        """``[B]`` (or scalar) -> ``[B]``; per-frame ``[B, F]`` -> per-token ``[B, F * tpf]``; float32."""
        t = torch.as_tensor(t, device=device).to(torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1 and t.shape[0] == batch:
            return t
        if t.ndim == 2 and t.shape == (batch, frames):
            return t.repeat_interleave(tokens_per_frame, dim=1)
        raise ValueError(f"Timesteps must be [B] = [{batch}] or [B, F] = [{batch}, {frames}], got {list(t.shape)}.")

    def _run(self, x: Tensor, t: Tensor, cond: Tensor, start: int, context: _AttnContext) -> Tensor:
        """One transformer call; ``x`` ``[B, F, C, H, W]`` -> flow ``[B, F, C, H, W]`` in ``x``'s dtype."""
        dtype = self.transformer.dtype
        rope = self.transformer.rope
        rope.pending = (start, context)
        try:
            out = self.transformer(x.transpose(1, 2).to(dtype), t, cond.to(dtype), return_dict=False)[0]
        finally:
            rope.pending = None
        return out.transpose(1, 2).to(x.dtype)

    def forward_chunk(self, x_t: Tensor, t: Tensor, cond: Tensor, cache: KVCache, write: bool = False) -> Tensor:
        """Predicted flow of one chunk, attending to the cache and bidirectionally to itself.

        Args:
            x_t: ``[B, f, C, H, W]``, ``1 <= f <= chunk_frames``; placed at frames ``cache.frames ...``.
            t: ``[B]`` timesteps on the 0..1000 scale (a scalar or per-frame ``[B, f]`` also work).
            cond: ``[B, L, D]`` text embeddings.
            cache: read; with ``write`` this chunk's detached K/V are appended (then evicted per window)
                and ``cache.frames`` advances by ``f``.
            write: append to the cache after the forward.

        Returns:
            ``[B, f, C, H, W]`` the flow ``v = eps - x0``.
        """
        batch, frames = x_t.shape[:2]
        if not 1 <= frames <= self.chunk_frames:
            raise ValueError(f"A chunk has 1..{self.chunk_frames} frames, got {frames}.")
        if cache.num_layers != self.num_layers:
            raise ValueError(f"The cache has {cache.num_layers} layers, the transformer {self.num_layers}.")
        tpf = self._tokens_per_frame(x_t)
        cache.check(batch, tpf)
        writer = _KVWriter(self.num_layers) if write else None
        context = _AttnContext(past=cache.snapshot(), mask=None, writer=writer)
        flow = self._run(x_t, self._timesteps(t, batch, frames, tpf, x_t.device), cond, cache.frames, context)
        if writer is not None:
            cache.append(writer.close(), frames)
        return flow

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Full-sequence block-causal forward with a dense mask (same result as chunk-by-chunk through the cache).

        Args:
            x_t: ``[B, F, C, H, W]``; chunks are frames ``[i * chunk_frames, (i + 1) * chunk_frames)``.
            t: ``[B]`` or per-frame ``[B, F]`` timesteps (0..1000).
            cond: ``[B, L, D]`` text embeddings.

        Returns:
            ``[B, F, C, H, W]`` the flow. The mask is ``[T, T]`` bool, ``T = F * H/2 * W/2`` tokens.
        """
        batch, frames = x_t.shape[:2]
        tpf = self._tokens_per_frame(x_t)
        single_chunk = frames <= self.chunk_frames
        mask = None if single_chunk else self.token_mask(frames, tpf, x_t.device)
        context = _AttnContext(past=(), mask=mask, writer=None)
        return self._run(x_t, self._timesteps(t, batch, frames, tpf, x_t.device), cond, 0, context)
