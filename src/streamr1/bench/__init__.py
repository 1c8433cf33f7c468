"""Benchmarks: ``python -m streamr1.bench.speed`` (``make bench``) measures turn times, KV cache vs recompute and
throughput; each prints a markdown table of measured numbers, never a pass/fail."""
