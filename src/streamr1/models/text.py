"""Text encoders behind the :class:`~streamr1.protocols.TextEncoder` protocol.

- :class:`UMT5TextEncoder`: Wan's encoder (UMT5-XXL through ``transformers``), from a local folder.
- :class:`HashTextEncoder`: a tiny deterministic encoder for tests and quick runs (no weights).
- :class:`CachedTextEncoder`: wraps any encoder and memoises embeddings, bounded (LRU by entries and bytes).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class HashTextEncoder(nn.Module):
    """Each word hashes (md5, stable across runs and machines) to a fixed random vector; pads to ``length``.

    Args:
        dim: embedding size (the denoisers' ``text_dim``).
        length: tokens per prompt (padded with zeros, truncated).
        seed: seed of the word vectors.

    The empty prompt encodes to all zeros, which makes it a natural negative prompt.
    """

    def __init__(self, dim: int = 16, length: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.dim, self.length, self.seed = dim, length, seed

    def _word(self, word: str) -> Tensor:
        h = int.from_bytes(hashlib.md5(f"{self.seed}:{word}".encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(h % (2**63))
        return torch.randn(self.dim, generator=g)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``[B, length, dim]`` embeddings."""
        out = torch.zeros(len(prompts), self.length, self.dim)
        for i, p in enumerate(prompts):
            for j, w in enumerate(p.lower().split()[: self.length]):
                out[i, j] = self._word(w)
        return out


class UMT5TextEncoder(nn.Module):
    """Wan's UMT5 text encoder from a local folder (``text_encoder`` + ``tokenizer`` of a Wan diffusers pipeline).

    Encoding is diffusers' ``WanPipeline.encode_prompt`` (and Wan's own ``T5EncoderModel``): the prompt cleaned with
    diffusers' ``prompt_clean`` (ftfy when installed, HTML unescaped, whitespace collapsed), tokens padded to
    ``max_length`` with special tokens, the encoder's last hidden state, zero past each prompt's length.

    Args:
        pretrained: the pipeline folder (with ``text_encoder/`` and ``tokenizer/``), or one folder holding both.
        max_length: tokens per prompt (512 for Wan).
        torch_dtype: parameter dtype, ``bfloat16`` (default, as Wan ships it: UMT5-XXL's 5.7 B parameters are
            11.4 GB in bf16) or ``float32``. Loaded straight into that dtype (transformers builds on the meta device).
    """

    def __init__(self, pretrained: str, max_length: int = 512, torch_dtype: str = "bfloat16") -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        from streamr1.models.wan_weights import parse_dtype

        if not os.path.isdir(pretrained):
            raise FileNotFoundError(
                f"UMT5 text encoder folder not found at {pretrained!r}: set `text_encoder.init_args.pretrained` to a "
                "local Wan diffusers folder (with `text_encoder/` and `tokenizer/`)."
            )
        enc_dir = os.path.join(pretrained, "text_encoder")
        tok_dir = os.path.join(pretrained, "tokenizer")
        enc_dir = enc_dir if os.path.isdir(enc_dir) else pretrained
        tok_dir = tok_dir if os.path.isdir(tok_dir) else pretrained
        for d, what in ((enc_dir, "config.json"), (tok_dir, "tokenizer_config.json")):
            if not os.path.isfile(os.path.join(d, what)):
                raise FileNotFoundError(
                    f"{d} has no {what}: `pretrained` must be a Wan diffusers folder (text_encoder/, tokenizer/) or a "
                    "folder saved with save_pretrained holding the UMT5 encoder and its tokenizer."
                )
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(enc_dir, dtype=parse_dtype(torch_dtype), local_files_only=True)
        self.model.requires_grad_(False).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``[B, max_length, d_model]`` embeddings (4096 for UMT5-XXL), zero past each prompt's length."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        prompts = [prompt_clean(p) for p in prompts]
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(ids, mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


class CachedTextEncoder(nn.Module):
    """Memoise another encoder's embeddings per prompt on the CPU, least recently used dropped first.

    The cache is bounded by entries and by bytes, whichever binds first (a UMT5 embedding is 512 x 4096 values:
    4 MiB in bf16). All-zero trailing rows (padding, which UMT5TextEncoder zeroes) are not stored and are put back on
    the way out, so a prompt of ~80 tokens costs ~0.6 MiB, and what comes out is bit-identical to the encoder's
    output. With a prompt list of thousands, the default (256 MiB) keeps the prompts that repeat (the negative
    prompt on every guided step, the validation prompts) and lets the rest pass through.

    Args:
        encoder: the encoder to wrap.
        max_entries: prompts kept at most (``None``: no count limit).
        max_bytes: bytes kept at most (``None``: no byte limit; ``0`` turns the cache off).
    """

    def __init__(self, encoder: nn.Module, max_entries: int | None = None, max_bytes: int | None = 256 * 2**20) -> None:
        super().__init__()
        if (max_entries is not None and max_entries < 0) or (max_bytes is not None and max_bytes < 0):
            raise ValueError(f"max_entries and max_bytes must be >= 0 or None, got {max_entries}, {max_bytes}.")
        self.encoder = encoder
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, tuple[Tensor, int]] = OrderedDict()  # not a buffer: never checkpointed
        self.nbytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _trim(e: Tensor) -> Tensor:
        """Drop trailing rows of ``e`` ``[L, D]`` that are all zero."""
        if e.ndim < 2:
            return e
        nonzero = e.flatten(1).ne(0).any(dim=1).nonzero()
        keep = int(nonzero[-1]) + 1 if len(nonzero) else 0
        return e[:keep].clone()

    def _get(self, prompt: str) -> Tensor:
        stored, length = self._cache[prompt]
        self._cache.move_to_end(prompt)
        if stored.shape[0] == length:
            return stored
        return torch.cat([stored, stored.new_zeros(length - stored.shape[0], *stored.shape[1:])])

    def _put(self, prompt: str, e: Tensor) -> None:
        if self.max_bytes == 0 or self.max_entries == 0:
            return
        stored = self._trim(e.detach().cpu())
        size = stored.numel() * stored.element_size()
        if self.max_bytes is not None and size > self.max_bytes:
            return
        self._cache[prompt] = (stored, e.shape[0])
        self.nbytes += size
        while (self.max_entries is not None and len(self._cache) > self.max_entries) or (
            self.max_bytes is not None and self.nbytes > self.max_bytes
        ):
            _, (old, _) = self._cache.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        fresh: dict[str, Tensor] = {}
        if missing:
            emb = self.encoder.encode(missing)
            fresh = {p: e.detach().cpu() for p, e in zip(missing, emb, strict=True)}
        self.misses += len(missing)
        self.hits += len(prompts) - sum(prompts.count(p) for p in missing)
        out = [fresh[p] if p in fresh else self._get(p) for p in prompts]
        for p, e in fresh.items():
            self._put(p, e)
        return torch.stack(out)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)
