"""The speed benchmark (``python -m streamr1.bench``, ``make bench``): measured numbers, never pass/fail.

One file a concern: :mod:`~streamr1.bench.specs` (what is built: a recipe of ``configs/`` through the ``streamr1``
CLI), :mod:`~streamr1.bench.measure` (interleaved repeats, median and range, per-pair ratios, peak memory, the
table), one module a section (:mod:`~streamr1.bench.turns`, :mod:`~streamr1.bench.kv_cache`,
:mod:`~streamr1.bench.throughput`, :mod:`~streamr1.bench.streaming`) and :mod:`~streamr1.bench.run` (the command
line). :mod:`~streamr1.bench.reward` benchmarks the reward scorer on its own.
"""
