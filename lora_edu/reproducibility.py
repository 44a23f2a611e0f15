"""Determinism for notebooks, tests and benchmarks: one call seeds every generator.

Every notebook of the book calls :func:`seed_everything` in its first code cell, so that the
stored outputs that nbval compares are the same on every run and on every machine with the
same library versions.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "DEFAULT_SEED", "DEFAULT_THREADS"]

DEFAULT_SEED = 0
DEFAULT_THREADS = 2


def seed_everything(seed: int = DEFAULT_SEED, threads: int | None = DEFAULT_THREADS) -> int:
    """Seed Python's ``random``, NumPy and torch, and fix torch's intra-op thread count.

    Parameters
    ----------
    seed:
        Non-negative integer used for every generator.
    threads:
        Number of torch intra-op threads (``torch.set_num_threads``); ``None`` leaves it alone.
        A fixed count makes float reductions run in a fixed order, hence reproducible results.

    Returns
    -------
    int
        The seed, so a notebook can print what it used.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return seed
