"""The text-embedding cache is bounded: LRU by entries and by bytes, off with ``max_bytes=0``, exact (issue 11)."""

from __future__ import annotations

import pytest
import torch

from streamr1.models import CachedTextEncoder, HashTextEncoder


class Counting(HashTextEncoder):
    """A HashTextEncoder that records which prompts it was asked to encode."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[str] = []

    def encode(self, prompts):
        self.calls += list(prompts)
        return super().encode(prompts)


def test_output_is_the_encoders_bit_for_bit_and_padding_is_not_stored():
    enc = Counting(dim=4, length=6)
    cache = CachedTextEncoder(enc, max_bytes=None)
    prompts = ["a b", "c d e", "", "a b"]
    first = cache.encode(prompts)
    again = cache.encode(prompts)
    assert torch.equal(first, enc.encode(prompts)) and torch.equal(again, first)
    assert enc.calls[:3] == ["a b", "c d e", ""]  # each distinct prompt once, then served from the cache
    assert len(cache) == 3 and (cache.hits, cache.misses) == (4, 3)  # the repeat in one call: one encoding
    # stored: 2 + 3 + 0 non-zero rows of 4 float32 (the 6-row padding is put back on the way out)
    assert cache.nbytes == (2 + 3 + 0) * 4 * 4


def test_lru_eviction_by_entries():
    enc = Counting(dim=4, length=6)
    cache = CachedTextEncoder(enc, max_entries=2, max_bytes=None)
    cache.encode(["a", "b"])
    cache.encode(["a"])  # "a" used last: "b" is the least recently used
    cache.encode(["c"])
    assert list(cache._cache) == ["a", "c"]
    enc.calls.clear()
    cache.encode(["b", "a"])
    assert enc.calls == ["b"]  # evicted, encoded again; "a" still cached
    assert set(cache._cache) == {"a", "b"}  # and "c" went


def test_lru_eviction_by_bytes():
    enc = Counting(dim=4, length=6)
    cache = CachedTextEncoder(enc, max_bytes=100)  # 2 words = 32 bytes, 3 words = 48 bytes
    cache.encode(["a b", "c d e"])
    assert cache.nbytes == 80
    cache.encode(["a b"])
    cache.encode(["f g"])  # 112 > 100: drop the least recently used, "c d e"
    assert list(cache._cache) == ["a b", "f g"] and cache.nbytes == 64
    cache.encode(["h i j k l m"])  # 96 bytes: everything else goes
    assert list(cache._cache) == ["h i j k l m"] and cache.nbytes == 96
    out = cache.encode(["one two three four five six seven"])  # 96 bytes (length 6) fits; bigger would be skipped
    assert out.shape == (1, 6, 4)
    small = CachedTextEncoder(Counting(dim=4, length=6), max_bytes=40)
    small.encode(["a b c"])  # 48 bytes > 40: passed through, never stored
    assert len(small) == 0 and small.nbytes == 0


def test_off_and_defaults():
    enc = Counting(dim=4, length=6)
    off = CachedTextEncoder(enc, max_bytes=0)
    assert torch.equal(off.encode(["a", "a"]), enc.encode(["a", "a"]))
    off.encode(["a"])
    assert len(off) == 0 and enc.calls.count("a") == 4  # nothing kept: the encoder sees every call
    default = CachedTextEncoder(enc)
    assert default.max_bytes == 256 * 2**20 and default.max_entries is None
    with pytest.raises(ValueError, match="max_entries and max_bytes must be >= 0"):
        CachedTextEncoder(enc, max_entries=-1)
