"""Shared timing helpers and the result row of the benchmark table.

Every figure of the table is a distribution, not a single number: the functions compared are
timed interleaved (:func:`interleaved_times` returns every sample), the ratio is formed per
repeat from the two samples of that repeat (:func:`ratios`), and a row shows the median of those
per-repeat ratios with its 10th and 90th percentiles (:func:`spread`). A machine that slows down
during a run slows both samples of a repeat alike, so the per-repeat ratio is steadier than the
ratio of two medians; the p10–p90 band shows what is left of the noise. A target is checked
against the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

THREADS = 2


@dataclass(frozen=True)
class Result:
    """One row of the table.

    ``ratio`` is the figure shown (the median of its samples): a time ratio against a baseline
    measured in the same run, or a throughput given as information. ``p10`` and ``p90`` are the
    10th and 90th percentiles of the same samples (``None`` for a single figure). ``target`` is a
    predicate's text such as ``"<= 1.05"``, checked on the median; ``ok`` says whether it held
    (``None`` when the row only reports a figure).
    """

    name: str
    ratio: float
    baseline: str
    target: str = ""
    ok: bool | None = None
    note: str = ""
    p10: float | None = None
    p90: float | None = None

    @classmethod
    def from_samples(cls, name: str, samples: Sequence[float], baseline: str,
                     target: str = "", note: str = "") -> Result:
        """A row whose figure is the median of ``samples``, with their p10–p90."""
        median, p10, p90 = spread(samples)
        return cls(name=name, ratio=median, baseline=baseline, target=target,
                   ok=check(median, target), note=note, p10=p10, p90=p90)


def check(ratio: float, target: str) -> bool | None:
    """Evaluate a target written as ``"<= x"``, ``">= x"``, ``"< x"`` or ``"> x"``."""
    if not target:
        return None
    op, value = target.split()
    value = float(value)
    return {"<=": ratio <= value, ">=": ratio >= value, "<": ratio < value, ">": ratio > value}[op]


def spread(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of ``samples`` (percentiles linearly interpolated between samples)."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("samples must not be empty")
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return float(median), float(p10), float(p90)


def ratios(samples: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-repeat ratios ``samples[numerator][i] / samples[denominator][i]``.

    The two samples of repeat i were taken one right after the other (see
    :func:`interleaved_times`), so each ratio compares the two under the same load.
    """
    return [a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)]


def median_ms(values: Sequence[float]) -> str:
    """The median of a list of times in seconds, as text in milliseconds."""
    return f"{statistics.median(values) * 1e3:.1f} ms"


def interleaved_times(fns: dict[str, Callable[[], object]], repeat: int = 9, warmup: int = 2,
                      threads: int = THREADS) -> dict[str, list[float]]:
    """Wall times in seconds of several functions, ``repeat`` samples each, measured interleaved.

    Every repeat calls each function once; the order rotates by one from a repeat to the next,
    so that no function always runs right after the same neighbour (a cold cache, a freed
    buffer). ``threads`` is PyTorch's intra-op thread count during the measurement (the count
    set before is restored afterwards). Each function is first called ``warmup`` times.
    Returns ``{key: [seconds of repeat 0, repeat 1, ...]}``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        keys = list(fns)
        samples: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(repeat):
            shift = i % len(keys)
            for key in keys[shift:] + keys[:shift]:
                fn = fns[key]
                start = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return samples
