"""The toy world's text encoder: deterministic structured caption embeddings and their inverse.

The exact teacher (:mod:`streamr1.toy.teacher`) decodes these embeddings back to caption attributes, so the
recipe's text encoder and the teacher must agree on ``dim`` (``text_dim`` of the students).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from streamr1.toy.world import CATEGORIES, VOCAB, ToyAttributes, _caption_words


class ToyTextEncoder(nn.Module):
    """Deterministic structured embeddings ``[B, L=4, D]`` of toy captions, and their inverse.

    Token 0 holds the shape word, 1 the colour, 2 the direction and 3 the sum of the speed and background
    words (each optional). Each of the 15 attribute words has a fixed vector: its one-hot code in ``D``
    dimensions plus ``mix`` times a fixed random Gaussian vector (seeded), so the embeddings are dense but
    linearly independent and exactly invertible (:meth:`decode_indices`). Unknown words are ignored; the
    empty prompt (and any prompt without attribute words) encodes to zeros, the unconditional/negative prompt
    of classifier-free guidance. When a category is named twice the first word counts.

    Args:
        dim: ``D`` (at least 15).
        mix: weight of the random part of each word vector.
        seed: seed of the random part.
    """

    length = 4

    def __init__(self, dim: int = 32, mix: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        if dim < len(VOCAB):
            raise ValueError(f"ToyTextEncoder needs dim >= {len(VOCAB)} (one code per attribute word); got {dim}.")
        self.dim, self.mix, self.seed = int(dim), float(mix), int(seed)
        g = torch.Generator().manual_seed(self.seed)
        table = torch.eye(len(VOCAB), self.dim, dtype=torch.float64)
        table = table + self.mix * torch.randn(len(VOCAB), self.dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
        self.register_buffer("table", table.float(), persistent=False)  # [V, D]
        self.register_buffer("table_pinv", torch.linalg.pinv(table).float(), persistent=False)  # [D, V]
        offsets, start = [], 0
        for _, words in CATEGORIES:
            offsets.append(start)
            start += len(words)
        self._offsets = offsets
        self._slot = (0, 1, 2, 3, 3)  # token of each category

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """``[B, 4, D]`` embeddings of ``B`` prompts (on the encoder's device and dtype)."""
        if isinstance(prompts, str):
            raise TypeError("ToyTextEncoder.encode takes a sequence of prompts, not one string.")
        out = torch.zeros(len(prompts), self.length, self.dim, device=self.table.device, dtype=self.table.dtype)
        for b, p in enumerate(prompts):
            found = _caption_words(p)
            for c, (name, words) in enumerate(CATEGORIES):
                if found[name]:
                    out[b, self._slot[c]] += self.table[self._offsets[c] + words.index(found[name][0])]
        return out

    @torch.no_grad()
    def decode_indices(self, cond: Tensor, threshold: float = 0.5) -> Tensor:
        """``[B, 5]`` long: the index of each category's word in ``cond`` ``[B, 4, D]``, ``-1`` when absent.

        Word coefficients are recovered with the pseudo-inverse of the word table; a category is present when
        its largest coefficient in its token exceeds ``threshold``.
        """
        if cond.ndim != 3 or cond.shape[1] != self.length or cond.shape[2] != self.dim:
            raise ValueError(f"cond must be [B, {self.length}, {self.dim}] from this ToyTextEncoder; got "
                             f"{tuple(cond.shape)}. Use the same `dim` for the text encoder and the teacher.")
        coeff = cond.float() @ self.table_pinv.to(cond.device, torch.float32)  # [B, 4, V]
        out = []
        for c, (_, words) in enumerate(CATEGORIES):
            sub = coeff[:, self._slot[c], self._offsets[c]: self._offsets[c] + len(words)]
            best, idx = sub.max(-1)
            out.append(torch.where(best > threshold, idx, torch.full_like(idx, -1)))
        return torch.stack(out, dim=1)

    def decode_attributes(self, cond: Tensor) -> list[ToyAttributes | None]:
        """The attributes encoded in ``cond`` ``[B, 4, D]``; ``None`` where shape, colour or direction is absent
        (in particular for the empty prompt)."""
        result: list[ToyAttributes | None] = []
        for row in self.decode_indices(cond).tolist():
            if min(row[:3]) < 0:
                result.append(None)
                continue
            vals = [None if i < 0 else words[i] for (_, words), i in zip(CATEGORIES, row, strict=True)]
            result.append(ToyAttributes(*vals))
        return result
