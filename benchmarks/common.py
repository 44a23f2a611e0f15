"""Shared timing helpers and the result row of the benchmark table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

THREADS = 2


@dataclass(frozen=True)
class Result:
    """One row of the table. ``ratio`` is the figure shown: a time ratio against a baseline
    measured in the same run, or a throughput whose same-run reference the baseline text gives.

    ``target`` is a predicate's text such as ``"<= 1.05"``; ``ok`` says whether it held
    (``None`` when the row only reports a figure).
    """

    name: str
    ratio: float
    baseline: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


def check(ratio: float, target: str) -> bool | None:
    """Evaluate a target written as ``"<= x"``, ``">= x"``, ``"< x"`` or ``"> x"``."""
    if not target:
        return None
    op, value = target.split()
    value = float(value)
    return {"<=": ratio <= value, ">=": ratio >= value, "<": ratio < value, ">": ratio > value}[op]


def median_time(fn: Callable[[], object], repeat: int = 7, warmup: int = 2,
                inner: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeat`` runs of ``inner`` calls each."""
    torch.set_num_threads(THREADS)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeat: int = 9,
                      warmup: int = 2) -> dict[str, float]:
    """Median times of several functions, measured interleaved so drift hits all alike."""
    torch.set_num_threads(THREADS)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}
