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

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument). Data come from a private ``torch.Generator``: generating
a task never touches the global random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lora_edu.checks import check_instance, check_int, check_seed, check_tensor

__all__ = ["Task", "CLS", "key_token", "vocab_size_for", "make_field_task", "pretrain_task",
           "downstream_task"]

#: Token id of the classification token, the first token of every sequence.
CLS = 0


@dataclass(frozen=True)
class Task:
    """A classification task: inputs ``x_*`` (n, m) and labels ``y_*`` (n,).

    For the toy transformer ``x_*`` holds integer token ids (m = sequence length); any model that
    maps an (n, m) batch to logits works with :func:`lora_edu.toy.train` (chapter 1 uses
    float feature vectors). The labels are integer class ids in ``[0, n_classes)``, the targets
    of the cross-entropy loss −log softmax(logits)[y] that :func:`~lora_edu.toy.train` minimises.

    Checked on construction: ``x_*`` 2-D tensors with at least one row and the same number of
    columns, ``y_*`` 1-D integer tensors of matching length, ``n_classes`` an int ≥ 2 (numpy ints
    are stored as Python ints), ``name`` a str.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_classes", check_int("n_classes", self.n_classes, 2))
        check_instance("name", self.name, str)
        for split in ("train", "test"):
            x = check_tensor(f"x_{split}", getattr(self, f"x_{split}"), 2)
            y = check_tensor(f"y_{split}", getattr(self, f"y_{split}"), 1)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"y_{split} must hold integer class ids, got dtype {y.dtype}")
            if x.shape[0] < 1:
                raise ValueError(f"x_{split} must hold at least one example, got shape "
                                 f"{tuple(x.shape)}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"y_{split} must have one label per row of x_{split}, got "
                                 f"{y.shape[0]} labels for {x.shape[0]} rows")
            if int(y.min()) < 0 or int(y.max()) >= self.n_classes:
                raise ValueError(f"y_{split} must lie in [0, n_classes={self.n_classes}), got "
                                 f"[{int(y.min())}, {int(y.max())}]")
        if self.x_test.shape[1] != self.x_train.shape[1]:
            raise ValueError(f"x_test must have as many columns as x_train "
                             f"({self.x_train.shape[1]}), got {self.x_test.shape[1]}")

    @property
    def seq_len(self) -> int:
        """Length of every sequence (CLS included)."""
        return int(self.x_train.shape[1])


def key_token(field: int, cls: int, copy: int = 0, n_classes: int = 4,
              keys_per_class: int = 2) -> int:
    """Token id of the ``copy``-th key of ``field`` that carries class ``cls``.

    Layout: id = 1 + field·n_classes·keys_per_class + copy·n_classes + cls (id 0 is ``CLS``).
    ``n_classes`` is an int ≥ 2, ``keys_per_class`` ≥ 1, ``field`` ≥ 0, ``cls`` in
    ``[0, n_classes)`` and ``copy`` in ``[0, keys_per_class)``.
    """
    n_classes = check_int("n_classes", n_classes, 2)
    keys_per_class = check_int("keys_per_class", keys_per_class, 1)
    field = check_int("field", field, 0)
    cls = check_int("cls", cls, 0, n_classes - 1)
    copy = check_int("copy", copy, 0, keys_per_class - 1)
    return 1 + field * n_classes * keys_per_class + copy * n_classes + cls


def vocab_size_for(n_fields: int = 2, n_classes: int = 4, keys_per_class: int = 2,
                   n_filler: int = 31) -> int:
    """Vocabulary size: 1 (CLS) + n_fields·n_classes·keys_per_class (keys) + n_filler.

    ``n_fields`` ≥ 1, ``n_classes`` ≥ 2, ``keys_per_class`` ≥ 1 and ``n_filler`` ≥ 1 are ints.
    """
    n_filler = check_int("n_filler", n_filler, 1)
    return _first_filler(n_fields, n_classes, keys_per_class) + n_filler


def _first_filler(n_fields: object, n_classes: object, keys_per_class: object) -> int:
    """Id of the first filler token: 1 + the number of key tokens."""
    n_fields = check_int("n_fields", n_fields, 1)
    n_classes = check_int("n_classes", n_classes, 2)
    keys_per_class = check_int("keys_per_class", keys_per_class, 1)
    return 1 + n_fields * n_classes * keys_per_class


def make_field_task(field: int, *, n_fields: int = 2, n_classes: int = 4, keys_per_class: int = 2,
                    n_filler: int = 31, seq_len: int = 16, n_train: int = 2048,
                    n_test: int = 1024, seed: int = 0, name: str | None = None) -> Task:
    """Sequences holding one key of each field; the label is the class of field ``field``'s key.

    The downstream label needs a change of what the CLS position attends to and copies — a small,
    low-rank ΔW on W_q and W_v (source §2.3 (1), (3)); see the module docstring.

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
        The data are a deterministic function of the arguments (``torch.Generator`` seeded here;
        the global random state is not used). An int in ``[0, 2**32 - 1]``.
    name:
        The task's name (a str); default ``"field-<field>"``.

    Notes
    -----
    All counts are ints (Python or numpy): ``TypeError`` otherwise, ``ValueError`` out of range.
    """
    n_fields = check_int("n_fields", n_fields, 1)
    field = check_int("field", field, 0, n_fields - 1)
    n_classes = check_int("n_classes", n_classes, 2)
    keys_per_class = check_int("keys_per_class", keys_per_class, 1)
    n_filler = check_int("n_filler", n_filler, 1)
    seq_len = check_int("seq_len", seq_len, n_fields + 1)
    n_train = check_int("n_train", n_train, 1)
    n_test = check_int("n_test", n_test, 1)
    seed = check_seed("seed", seed)
    if name is not None:
        check_instance("name", name, str)
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    filler0 = _first_filler(n_fields, n_classes, keys_per_class)
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
    """The pre-training task: label = class of the field-0 key (see module docstring).

    ``make_field_task(0, seed=seed, **kwargs)`` named "pretrain (field 0)"; the model trained on it
    plays the pre-trained W0 of source §2.1 (1).
    """
    return make_field_task(0, seed=seed, name="pretrain (field 0)", **kwargs)


def downstream_task(seed: int = 1, **kwargs) -> Task:
    """The downstream task: same kind of sequences, label = class of the field-1 key.

    ``make_field_task(1, seed=seed, **kwargs)`` named "downstream (field 1)": the task the update
    ΔW must learn, a feature the pre-training did not emphasise (source §2.3 (3)).
    """
    return make_field_task(1, seed=seed, name="downstream (field 1)", **kwargs)
