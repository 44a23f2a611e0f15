"""lora_edu: the reference implementations behind the lora-edu book.

One import path per public name — the concept's module or package::

    from lora_edu import seed_everything                       # every chapter
    from lora_edu.lowrank import best_rank_r                    # chapter 1 (and 3)
    from lora_edu.lora import LoRALinear, apply_lora            # chapter 2
    from lora_edu.inject import count_parameters                # shared by all adapters
    from lora_edu.memory import training_memory                 # chapters 2 and 6
    from lora_edu.placement import finetune, budget_ranks       # chapter 3
    from lora_edu.quant import quantize_4bit, nf4_code          # chapters 4 and 5
    from lora_edu.pretrained import minilm_linear_weights       # chapter 4 (real weights)
    from lora_edu.qlora import QLoRALinear, prepare_qlora       # chapter 6
    from lora_edu.paged import PagedAdamW                       # chapter 6
    from lora_edu.adalora import RankAllocator                  # chapter 7
    from lora_edu.adapter import apply_adapters                 # chapter 8 (Houlsby adapters)
    from lora_edu.toy import TinyTransformer, train, run_seeds  # the toy model of every chapter
    from lora_edu.checks import check_int                       # argument checks, check_seed
    from lora_edu.listing import show_source                    # code listings in the chapters
    from lora_edu.report import Table, percent                  # tables and numbers in them
    from lora_edu.parallel import parallel_map                  # multi-seed sweeps on 2 cores
    from lora_edu.timing import fastest_ms                      # latencies, timed interleaved

Data flows one way: basic concepts (``checks``; ``listing``, ``report``, ``parallel``, ``timing``,
``lowrank``, ``quant``, ``inject``, ``memory``, ``paged``, ``pretrained``) never import composite
ones (``lora``, ``toy``, ``adapter``; ``adalora``, ``qlora``, ``placement``).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from lora_edu.checks import check_int, check_seed

__all__ = ["seed_everything", "DEFAULT_SEED", "DEFAULT_THREADS", "__version__"]
#: The version of the library.
__version__ = "0.1.0"

#: The seed :func:`seed_everything` uses when none is given.
DEFAULT_SEED = 0
#: The torch thread count :func:`seed_everything` sets when none is given (one thread).
DEFAULT_THREADS = 1


def seed_everything(seed: int = DEFAULT_SEED, threads: int | None = DEFAULT_THREADS,
                    deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch's, for a reproducible run.

    Every notebook of the book calls it in its first code cell. It changes exactly these global
    settings and nothing else:

    * ``random.seed(seed)``, ``np.random.seed(seed)``, ``torch.manual_seed(seed)``;
    * ``torch.set_num_threads(threads)`` unless ``threads`` is ``None`` (then the thread count is
      left alone): a fixed count makes float reductions run in a fixed order. The default is one
      thread: on a machine whose cores other processes share, a second OpenMP thread spins while
      it waits for a core, and a short training run was measured 14–44 times slower with two
      threads than with one; with one thread a busy machine slows a run only in proportion to
      its load. Chapters that train many runs use worker processes instead, one thread each;
    * ``torch.use_deterministic_algorithms(True, warn_only=True)`` unless
      ``deterministic=False``: torch then picks deterministic kernels where it has them and warns
      where it has none.

    Returns the seed, so a notebook can print what it used. Results are reproducible on one
    machine; another CPU's kernels can still change the last bits (see the README).
    """
    seed = check_seed("seed", seed)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed
