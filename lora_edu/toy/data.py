"""Synthetic sequence-classification tasks, generated in code from a seed (nothing is downloaded).

The vocabulary has a classification token ``CLS`` (id 0), several *fields* — small sets of
"key" tokens, each key carrying a class ``c ∈ {0, …, n_classes-1}`` — and filler tokens. Every
sequence is ``CLS`` followed by one key token of each field at random positions and filler
elsewhere; the label of a task is the class carried by the key token of *its* field.

* The **pre-training** task (``field=0``) asks for the class of the field-0 key; a model trained
  on it learns to look for field-0 keys and to copy their class into the CLS position.
* The **downstream** task (``field=1``) asks, on sequences of the same form, for the class of the
  field-1 key. The information is in the input, but the pre-trained features carry the field-0
  class (independent of the label), so a frozen body with a new classifier stays near chance.
  Changing *where the CLS token looks* (W_q) and *what it copies* (W_v) is a small, low-rank
  change — the "hidden feature not emphasised in pre-training" of source §2.3 (3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lora_edu.checks import check_int

__all__ = ["Task", "CLS", "key_token", "vocab_size_for", "make_field_task", "pretrain_task",
           "downstream_task"]

CLS = 0


@dataclass(frozen=True)
class Task:
    """A classification task: inputs ``x_*`` (n, m) and labels ``y_*`` (n,).

    For the toy transformer ``x_*`` holds integer token ids (m = sequence length); any model that
    maps an (n, m) batch to logits works with :func:`lora_edu.toy.train` (chapter 1 uses
    float feature vectors).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} must be (n, seq) and y_{split} (n,), got "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise ValueError(f"y_{split} must lie in [0, n_classes={self.n_classes})")

    @property
    def seq_len(self) -> int:
        """Length of every sequence (CLS included)."""
        return int(self.x_train.shape[1])


def key_token(field: int, cls: int, copy: int = 0, n_classes: int = 4,
              keys_per_class: int = 2) -> int:
    """Token id of the ``copy``-th key of ``field`` that carries class ``cls``.

    Layout: ids ``1 + field·n_classes·keys_per_class + copy·n_classes + cls``.
    """
    return 1 + field * n_classes * keys_per_class + copy * n_classes + cls


def vocab_size_for(n_fields: int = 2, n_classes: int = 4, keys_per_class: int = 2,
                   n_filler: int = 31) -> int:
    """Vocabulary size: CLS + key tokens of every field + filler tokens."""
    return 1 + n_fields * n_classes * keys_per_class + n_filler


def make_field_task(field: int, *, n_fields: int = 2, n_classes: int = 4, keys_per_class: int = 2,
                    n_filler: int = 31, seq_len: int = 16, n_train: int = 2048,
                    n_test: int = 1024, seed: int = 0, name: str | None = None) -> Task:
    """Sequences holding one key of each field; the label is the class of field ``field``'s key.

    Parameters
    ----------
    field:
        Which field's class is the label, in ``[0, n_fields)``.
    n_fields, n_classes, keys_per_class, n_filler:
        Vocabulary layout (see :func:`key_token`, :func:`vocab_size_for`).
    seq_len:
        Sequence length including the CLS token at position 0; needs ``seq_len > n_fields``.
    n_train, n_test:
        Number of examples per split.
    seed:
        The data are a deterministic function of the arguments (``torch.Generator`` seeded here).
    """
    check_int("n_fields", n_fields, 1)
    check_int("field", field, 0)
    if field >= n_fields:
        raise ValueError(f"field must be < n_fields={n_fields}, got {field}")
    check_int("n_classes", n_classes, 2)
    check_int("keys_per_class", keys_per_class, 1)
    check_int("n_filler", n_filler, 1)
    check_int("seq_len", seq_len, n_fields + 1)
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    check_int("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    filler0 = vocab_size_for(n_fields, n_classes, keys_per_class, 0)
    x = torch.randint(filler0, filler0 + n_filler, (n, seq_len), generator=gen)
    x[:, 0] = CLS
    classes = torch.randint(0, n_classes, (n, n_fields), generator=gen)
    copies = torch.randint(0, keys_per_class, (n, n_fields), generator=gen)
    # distinct random positions in 1..seq_len-1 for the n_fields keys
    positions = torch.rand(n, seq_len - 1, generator=gen).argsort(dim=1)[:, :n_fields] + 1
    rows = torch.arange(n)
    for f in range(n_fields):
        ids = 1 + f * n_classes * keys_per_class + copies[:, f] * n_classes + classes[:, f]
        x[rows, positions[:, f]] = ids
    y = classes[:, field].clone()
    return Task(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:],
                n_classes=n_classes, name=name or f"field-{field}")


def pretrain_task(seed: int = 0, **kwargs) -> Task:
    """The pre-training task: label = class of the field-0 key (see module docstring)."""
    return make_field_task(0, seed=seed, name="pretrain (field 0)", **kwargs)


def downstream_task(seed: int = 1, **kwargs) -> Task:
    """The downstream task: same kind of sequences, label = class of the field-1 key."""
    return make_field_task(1, seed=seed, name="downstream (field 1)", **kwargs)
