"""Independent runs in worker processes: the chapters' multi-seed sweeps on two CPU cores.

:func:`parallel_map` is ``[fn(job) for job in jobs]`` computed by forked worker processes, one
job at a time each, results in the order of ``jobs``. A forked worker inherits everything the
parent has loaded (the toy's pre-trained body, the data) instead of loading it again, and the torch
thread count the parent set (``seed_everything`` sets one thread), so two workers keep two cores
busy without their threads competing. Where the platform cannot fork (Windows, and macOS's
default), or with ``processes=1``, the jobs run one after another in this process: the results are
the same, since each job seeds its own run.

Before forking it builds one ``torch.optim.AdamW``: the first optimizer a process builds imports
torch's compiler stack (about 800 modules, 2.4 s measured on the book's 2-core machine), and a
worker forked before that would import it again, in every worker.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type,
``ValueError`` for a wrong value).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

from lora_edu.checks import check_callable, check_int

__all__ = ["parallel_map", "DEFAULT_PROCESSES", "can_fork"]

_Job = TypeVar("_Job")
_Result = TypeVar("_Result")

#: Worker processes by default: the book's machine has two cores.
DEFAULT_PROCESSES = 2


def can_fork() -> bool:
    """Whether this platform starts worker processes by forking (Linux: yes)."""
    return "fork" in mp.get_all_start_methods()


def _warm_up_optimizer() -> None:
    """Build (and drop) one AdamW, so that forked workers inherit torch's optimizer imports."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def parallel_map(fn: Callable[[_Job], _Result], jobs: Iterable[_Job],
                 processes: int = DEFAULT_PROCESSES) -> list[_Result]:
    """``[fn(job) for job in jobs]``, computed by ``processes`` forked workers.

    ``fn`` must be a function the workers can find after a fork (any function defined before the
    call, a notebook's included); its results are sent back by pickling, so return plain numbers,
    lists and dicts rather than models. Jobs are handed out one at a time (the long ones do not
    queue behind each other). Without fork, or with ``processes=1``, the jobs run here in order.
    """
    check_callable("fn", fn)
    jobs = list(jobs)
    processes = check_int("processes", processes, 1)
    if processes == 1 or len(jobs) <= 1 or not can_fork():
        return [fn(job) for job in jobs]
    _warm_up_optimizer()
    with mp.get_context("fork").Pool(min(processes, len(jobs))) as pool:
        return pool.map(fn, jobs, chunksize=1)
