"""``python -m streamr1.bench``: the speed benchmark's command line and its table.

    python -m streamr1.bench --threads 1                                  # CPU, the quickstart recipe (`make bench`)
    python -m streamr1.bench --size tiny --repeats 2                      # configs/tiny_random.yaml: seconds
    python -m streamr1.bench --size wan1.3b --device cuda --sections streaming   # Wan2.1-1.3B shapes on a GPU
    python -m streamr1.bench --size wan-reduced --sections streaming      # the Wan path on a CPU (1 layer)

Prints one markdown table (``--json`` also saves it): each figure the median over ``--repeats`` interleaved rounds
with its range. The numbers are measurements, never pass/fail; where the project states a target the note says
whether the median met it. Sections (one module each, registered in :data:`SECTIONS`):

* ``turns`` (:mod:`streamr1.bench.turns`): student and critic turn time and peak memory; the Stream-R1 student turn
  against the plain DMD one with the reward forward/backward counts;
* ``kv_cache`` (:mod:`streamr1.bench.kv_cache`): generation through the KV cache against recomputing the prefix at
  4, 8 and 16 chunks;
* ``throughput`` (:mod:`streamr1.bench.throughput`): the student's tokens/s and FLOP rate against a matmul's;
* ``streaming`` (:mod:`streamr1.bench.streaming`): one video streamed: frames per second, first-chunk latency.

The reward scorer's own benchmark (the reference's backward scheme against the service's, at VideoReward's width)
is :mod:`streamr1.bench.reward`, run by ``make bench`` after this one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler's C++ logger: keep the table readable
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from streamr1.bench.measure import Row, Spread, markdown_table  # noqa: E402
from streamr1.bench.specs import SIZES, BenchContext  # noqa: E402


def _section(module: str, name: str) -> Callable[[BenchContext], list[Row]]:
    def run(ctx: BenchContext) -> list[Row]:
        import importlib

        return getattr(importlib.import_module(f"streamr1.bench.{module}"), name)(ctx)

    return run


SECTIONS: dict[str, Callable[[BenchContext], list[Row]]] = {
    "turns": _section("turns", "section_turns"),
    "kv_cache": _section("kv_cache", "section_kv_cache"),
    "throughput": _section("throughput", "section_throughput"),
    "streaming": _section("streaming", "section_streaming"),
}
"""Sections by name, in printing order: a ``(BenchContext) -> list[Row]`` function each (imported when run)."""


def run(ctx: BenchContext, sections: Sequence[str]) -> list[Row]:
    """Run the named sections in order and return all their rows."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"Unknown sections {unknown}: choose from {list(SECTIONS)}.")
    rows: list[Row] = []
    for name in sections:
        rows += SECTIONS[name](ctx)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamr1.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", default=next(iter(SIZES)), choices=list(SIZES),
                   help="the recipe and shapes (streamr1.bench.specs.SIZES)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (wan1.3b needs cuda)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS), help="what to run")
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds, after one warm-up round")
    p.add_argument("--configs-dir", default=".",
                   help="the folder holding configs/ and callbacks/ (default: the current directory, the repository "
                        "root)")
    p.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16], help="video lengths of the KV cache section")
    p.add_argument("--window-chunks", type=int, default=3, help="local attention window, in chunks (cache + current)")
    p.add_argument("--max-recompute-mask-gib", type=float, default=8.0,
                   help="skip the recompute baseline where its dense block-causal mask would be larger than this")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a CPU shared with other jobs, 1 avoids the large "
                        "slow-downs of oversubscribed OpenMP threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also save the rows and the run's settings to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.window_chunks < 1 or any(c < 1 for c in args.chunks):
        p.error("--window-chunks and --chunks must be >= 1")
    return args


def _load() -> str:
    """The 1-minute load average and the CPU count, where the OS tells them (other jobs skew CPU timings)."""
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return f"{os.cpu_count()} CPUs"


def _json_value(value: Any) -> Any:
    return asdict(value) if isinstance(value, Spread) else value


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, print the table (and save ``--json``); returns the rows."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here.")
    size = SIZES[args.size]
    ctx = BenchContext(size, configs_dir=args.configs_dir, device=device, repeats=args.repeats,
                       chunks=tuple(args.chunks), window_chunks=args.window_chunks,
                       max_recompute_mask_gib=args.max_recompute_mask_gib, seed=args.seed)
    load_before = _load()
    rows = run(ctx, args.sections)
    meta = {"size": size.name, "description": size.description, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else os.uname().machine,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
            "load_before": load_before, "load_after": _load()}
    print(f"\nstreamr1 speed benchmark: {size.name} ({size.description}); {device} ({meta['device_name']}), "
          f"{meta['threads']} threads, torch {torch.__version__}; {load_before} before, {meta['load_after']} after. "
          f"Each figure: the median of {args.repeats} interleaved rounds after one warm-up round, with its range.\n")
    print(markdown_table(rows))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "rows": [{**asdict(r), "value": _json_value(r.value)} for r in rows]}, fh,
                      indent=2)
    return rows
