"""The toy world every training chapter uses: a tiny transformer, synthetic tasks generated from
a seed, a deterministic training loop, and the statistics over seeds that the book reports. With
it the chapters run what source §2 describes (freeze W0, train the bypass ΔW = B·A on W_q and W_v,
source §2.1 (1), §2.3 (1)) instead of only describing it.

Everything public is imported from here::

    from lora_edu.toy import TinyTransformer, downstream_task, train, run_seeds

The modules behind it: ``model`` (the 2-layer transformer with named projections), ``data``
(field-lookup tasks, nothing downloaded), ``training`` (AdamW loop, the pre-trained model — its
shipped weights for seeds 0–4, the cache and ``clear_pretrained_cache`` —, and
``run_seeds``/``SeedStats``/``compare_seeds``).

Nothing here changes global state behind the caller's back: seeded draws happen in forks of the
CPU generator, training restores the model's modes and the grad mode, and the only module-level
state is the documented cache of ``pretrained_toy_model``. Arguments are checked with
:mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError`` for a wrong value).
"""

from lora_edu.toy.data import (
    CLS,
    Task,
    downstream_task,
    key_token,
    make_field_task,
    pretrain_task,
    vocab_size_for,
)
from lora_edu.toy.model import MLP, Block, SelfAttention, TinyTransformer, ToyConfig
from lora_edu.toy.training import (
    SHIPPED_PRETRAINED_SEEDS,
    SeedStats,
    TrainHistory,
    batch_order,
    clear_pretrained_cache,
    compare_seeds,
    default_pretraining,
    evaluate,
    pretrained_file,
    pretrained_toy_model,
    run_seeds,
    shipped_pretrained_state,
    train,
)

__all__ = [
    "ToyConfig", "TinyTransformer", "SelfAttention", "MLP", "Block",
    "Task", "CLS", "key_token", "vocab_size_for", "make_field_task", "pretrain_task",
    "downstream_task",
    "TrainHistory", "train", "evaluate", "pretrained_toy_model", "clear_pretrained_cache",
    "SHIPPED_PRETRAINED_SEEDS", "default_pretraining", "pretrained_file",
    "shipped_pretrained_state",
    "batch_order",
    "SeedStats", "run_seeds", "compare_seeds",
]
