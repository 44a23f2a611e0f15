"""Run every ``benchmarks/bench_*.py`` (or those matching a filter) and print one table.

Columns: the median of the row's samples (per-repeat ratios, or a throughput), their p10–p90,
the target (checked on the median) and whether it held. Exits with status 1 when a target is
missed.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import sys
import time

import torch

import benchmarks
from benchmarks.common import THREADS, Result


def discover(filters: list[str]) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    return [n for n in names if not filters or any(f in n for f in filters)]


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if abs(value) < 1e3 else f"{value:.0f}"


def format_table(rows: list[Result]) -> str:
    header = (f"{'benchmark':<60} {'median':>8} {'p10-p90':>15}  {'target':<8} {'ok':<3} "
              "baseline / note")
    lines = [header, "-" * len(header)]
    for r in rows:
        ok = {None: "", True: "yes", False: "NO"}[r.ok]
        band = "" if r.p10 is None else f"{_number(r.p10)}-{_number(r.p90)}"
        extra = r.baseline + (f"; {r.note}" if r.note else "")
        lines.append(f"{r.name:<60} {_number(r.ratio):>8} {band:>15}  {r.target:<8} {ok:<3} "
                     f"{extra}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    torch.set_num_threads(THREADS)
    rows: list[Result] = []
    start = time.perf_counter()
    for name in discover(argv):
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows.extend(module.run())
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{datetime.date.today()}, torch {torch.__version__}, {THREADS} threads unless a row "
          f"says otherwise, load average {load} (1/5/15 min) at the end, "
          f"{time.perf_counter() - start:.0f} s")
    print(format_table(rows))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
