"""Wall-clock comparisons that a busy machine cannot tilt: the functions timed in turn.

Timing one function for a while and then the next lets any change in the machine's speed (another
process, a frequency step, a cache warmed by the first function) land on one of them only. The
chapters' latency tables therefore time the functions *interleaved*: after one warm-up call each,
every round calls each function once, in a fresh random order, and the per-function times are
kept. The **fastest** round of each is the figure least disturbed by other work; the rounds
themselves show the spread. Times are shown, never asserted (the benchmarks hold speed targets).

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type,
``ValueError`` for a wrong value).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from lora_edu.checks import check_callable, check_instance, check_int, check_seed

__all__ = ["interleaved_times", "fastest_ms"]


def interleaved_times(fns: Mapping[str, Callable[[], object]], repeat: int, *, warmup: int = 1,
                      seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function: ``repeat`` rounds, each calling every function once.

    ``warmup`` calls of each function come first and are not recorded; each round's order is a
    fresh permutation from ``numpy.random.default_rng(seed)``, so that drift and whatever one call
    leaves behind for the next (caches, freed memory) hit all functions alike. Returns, for each
    name of ``fns``, the ``repeat`` times in the order of the rounds.
    """
    check_instance("fns", fns, Mapping)
    if not fns:
        raise ValueError("fns must hold at least one function")
    for name, fn in fns.items():
        check_instance("fns key", name, str)
        check_callable(f"fns[{name!r}]", fn)
    repeat = check_int("repeat", repeat, 1)
    warmup = check_int("warmup", warmup, 0)
    order = np.random.default_rng(check_seed("seed", seed))
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeat):
        for i in order.permutation(len(names)):
            start = time.perf_counter()
            fns[names[i]]()
            times[names[i]].append(time.perf_counter() - start)
    return times


def fastest_ms(fns: Mapping[str, Callable[[], object]], repeat: int, *, warmup: int = 1,
               seed: int = 0) -> dict[str, float]:
    """The fastest of :func:`interleaved_times`' rounds of each function, in milliseconds."""
    return {name: 1e3 * min(t)
            for name, t in interleaved_times(fns, repeat, warmup=warmup, seed=seed).items()}
