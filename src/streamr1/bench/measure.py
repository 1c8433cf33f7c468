"""How the benchmark measures: interleaved repeats, the median and its spread, per-pair ratios, peak memory.

Every timed figure comes from :func:`interleaved`: one untimed warm-up round of every function, then ``repeats``
rounds ``A, B, C, A, B, C, ...``, so that a change of load on a shared machine (another job starting) hits every
function of a round alike instead of one whole series. A figure is reported as the median over the rounds with its
spread, the smallest and the largest value (:class:`Spread`). A ratio ``A / B`` is the median of the per-round
ratios ``A_i / B_i`` (:func:`pair_ratios`): both halves of a pair ran seconds apart, under the same load.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range.

    Attributes:
        median: the median (the mean of the two middle values for an even count).
        low: the smallest value.
        high: the largest value.
        n: how many values.
    """

    median: float
    low: float
    high: float
    n: int

    def scaled(self, factor: float) -> Spread:
        """The same measurements in another unit (``factor > 0``: seconds to milliseconds is 1e3)."""
        if factor <= 0:
            raise ValueError(f"factor must be > 0 (a unit change), got {factor}.")
        return Spread(self.median * factor, self.low * factor, self.high * factor, self.n)


def spread(values: Sequence[float]) -> Spread:
    """The :class:`Spread` of ``values`` (at least one, all finite)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() needs at least one value: run at least one repeat (--repeats >= 1).")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread() got a non-finite value: {values}.")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def pair_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """The :class:`Spread` of the per-round ratios ``numerators[i] / denominators[i]`` (the same round of
    :func:`interleaved`)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"pair_ratios() needs as many numerators as denominators, got {len(numerators)} and "
                         f"{len(denominators)}: pass two series of the same interleaved run.")
    if any(d <= 0 for d in denominators):
        raise ValueError(f"pair_ratios(): denominators must be > 0, got {list(denominators)}.")
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time every function of ``fns`` ``repeats`` times, interleaved: ``warmup`` untimed rounds, then rounds of
    ``A, B, ...`` in ``fns``' order. Returns each function's seconds, round by round."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(timed(fn, device))
    return seconds


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during one call of ``fn`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: ``torch.profiler`` memory events, each operator's own
    allocations and frees in start order (a temporary allocated and freed inside one operator is not seen; the
    allocator's caching and Python objects are not counted).
    """
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


@dataclass
class Row:
    """One line of the benchmark's table: a :class:`Spread` (median and range over repeats) or a single value."""

    section: str
    metric: str
    value: Spread | float | int | str | None
    unit: str = ""
    note: str = ""


def fmt(value: float | int | str | None) -> str:
    """A number with about four significant digits (thousands separated), a string as it is, ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or not math.isfinite(value):
        return str(value)
    digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """Rows as a markdown table: section | metric | median | range (min - max) | n | unit | note."""
    lines = ["| section | metric | median | range (min - max) | n | unit | note |", "|---|---|---:|---|---:|---|---|"]
    for r in rows:
        if isinstance(r.value, Spread):
            value, rng, n = fmt(r.value.median), f"{fmt(r.value.low)} - {fmt(r.value.high)}", str(r.value.n)
        else:
            value, rng, n = fmt(r.value), "-", "1" if r.value is not None else "-"
        lines.append(f"| {r.section} | {r.metric} | {value} | {rng} | {n} | {r.unit} | {r.note} |")
    return "\n".join(lines)
