"""Run every ``benchmarks/bench_*.py`` (or those matching a filter) and print one table."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import torch

import benchmarks
from benchmarks.common import THREADS, Result


def discover(filters: list[str]) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    return [n for n in names if not filters or any(f in n for f in filters)]


def format_table(rows: list[Result]) -> str:
    header = f"{'benchmark':<52} {'figure':>9}  {'target':<8} {'ok':<4} baseline / note"
    lines = [header, "-" * len(header)]
    for r in rows:
        ok = {None: "", True: "yes", False: "NO"}[r.ok]
        extra = r.baseline + (f"; {r.note}" if r.note else "")
        lines.append(f"{r.name:<52} {r.ratio:>9.3f}  {r.target:<8} {ok:<4} {extra}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    torch.set_num_threads(THREADS)
    rows: list[Result] = []
    for name in discover(argv):
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(format_table(rows))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
