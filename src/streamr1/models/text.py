"""Text encoders behind the :class:`~streamr1.protocols.TextEncoder` protocol.

- :class:`UMT5TextEncoder`: Wan's encoder (UMT5-XXL through ``transformers``), from a local folder.
- :class:`HashTextEncoder`: a tiny deterministic encoder for tests and quick runs (no weights).
- :class:`CachedTextEncoder`: wraps any encoder and memoises embeddings of a fixed prompt list.
"""

from __future__ import annotations

import hashlib
import os
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

    Args:
        pretrained: the pipeline folder (or a folder holding the encoder directly).
        max_length: tokens per prompt (512 for Wan); padding positions are zeroed as Wan does.
        dtype: ``"bfloat16"`` (default, as Wan) or ``"float32"``.
    """

    def __init__(self, pretrained: str, max_length: int = 512, dtype: str = "bfloat16") -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        if not os.path.isdir(pretrained):
            raise FileNotFoundError(
                f"UMT5 text encoder folder not found at {pretrained!r}: set `text_encoder.init_args.pretrained` to a "
                "local Wan diffusers folder (with `text_encoder/` and `tokenizer/`)."
            )
        enc_dir = os.path.join(pretrained, "text_encoder")
        tok_dir = os.path.join(pretrained, "tokenizer")
        enc_dir = enc_dir if os.path.isdir(enc_dir) else pretrained
        tok_dir = tok_dir if os.path.isdir(tok_dir) else pretrained
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(enc_dir, torch_dtype=getattr(torch, dtype), local_files_only=True)
        self.model.requires_grad_(False).eval()
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``[B, max_length, 4096]`` embeddings, zero past each prompt's length."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(ids, mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


class CachedTextEncoder(nn.Module):
    """Memoise another encoder's embeddings per prompt (on the CPU): a fixed prompt list is encoded once.

    Args:
        encoder: the encoder to wrap.
        max_entries: entries kept; the oldest are dropped past it.
    """

    def __init__(self, encoder: nn.Module, max_entries: int = 100_000) -> None:
        super().__init__()
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: dict[str, Tensor] = {}  # not a buffer: never checkpointed, rebuilt on demand

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            emb = self.encoder.encode(missing)
            for p, e in zip(missing, emb, strict=True):
                self._cache[p] = e.detach().cpu()
            while len(self._cache) > self.max_entries:
                self._cache.pop(next(iter(self._cache)))
        return torch.stack([self._cache[p] for p in prompts])

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)
