"""The toy world every training chapter uses: a tiny transformer, synthetic tasks generated from
a seed, a deterministic training loop, and the statistics over seeds that the book reports.

Everything public is imported from here::

    from lora_edu.toy import TinyTransformer, downstream_task, train, run_seeds

The modules behind it: ``model`` (the 2-layer transformer with named projections), ``data``
(field-lookup tasks, nothing downloaded), ``training`` (AdamW loop, pre-trained model cache,
``run_seeds``/``SeedStats``/``compare_seeds``).
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
    SeedStats,
    TrainHistory,
    batch_order,
    compare_seeds,
    evaluate,
    pretrained_toy_model,
    run_seeds,
    train,
)

__all__ = [
    "ToyConfig", "TinyTransformer", "SelfAttention", "MLP", "Block",
    "Task", "CLS", "key_token", "vocab_size_for", "make_field_task", "pretrain_task",
    "downstream_task",
    "TrainHistory", "train", "evaluate", "pretrained_toy_model", "batch_order",
    "SeedStats", "run_seeds", "compare_seeds",
]
