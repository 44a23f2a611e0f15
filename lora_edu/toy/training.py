"""A small deterministic training loop for the toy transformer, and the shared pre-trained model.

``train`` runs AdamW on mini-batches drawn in a seeded order and records the loss of every step
and the held-out accuracy every ``eval_every`` steps. Two hooks let composite methods plug in
without a loop of their own: ``extra_loss(model)`` is added to the loss (AdaLoRA's orthogonality
regulariser, source §3.2 (1)) and ``after_backward(step, model)`` runs between ``backward`` and the
optimizer step (AdaLoRA's importance scores and pruning, source §3.2 (2)).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lora_edu.toy.data import Task, pretrain_task, vocab_size_for
from lora_edu.toy.model import TinyTransformer, ToyConfig

__all__ = ["TrainHistory", "train", "evaluate", "pretrained_toy_model", "batch_order",
           "SeedStats", "run_seeds", "compare_seeds"]


@dataclass
class TrainHistory:
    """What :func:`train` measured: ``loss[i]`` of step ``i``; ``test_accuracy[j]`` after step
    ``eval_steps[j]`` (step counts start at 1; step 0 is the accuracy before training).

    ``seconds`` is wall time (not deterministic; never compare it in stored outputs).
    """

    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        """The last recorded held-out accuracy."""
        if not self.test_accuracy:
            raise ValueError("no accuracy was recorded")
        return self.test_accuracy[-1]


def _check_task(task: object) -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    return task


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "test", batch_size: int = 1024) -> float:
    """Accuracy of ``model`` (argmax of the logits) on ``task``'s ``split`` ("test" or "train").

    The model is put in eval mode for the call and its previous mode restored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_task(task)
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]


def batch_order(n: int, steps: int, batch_size: int, seed: int = 0) -> Tensor:
    """Indices (steps, batch_size) of each step's batch: epochs of seeded random permutations."""
    if n < 1 or steps < 0 or batch_size < 1:
        raise ValueError(f"need n >= 1, steps >= 0, batch_size >= 1; got {n}, {steps}, "
                         f"{batch_size}")
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    chunks = [torch.randperm(n, generator=gen) for _ in range(-(-need // n))]
    flat = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    return flat[:need].view(steps, batch_size)


def train(model: nn.Module, task: Task, steps: int, lr: float, batch_size: int = 64,
          seed: int = 0, params: Iterable[nn.Parameter] | None = None,
          extra_loss: Callable[[nn.Module], Tensor] | None = None,
          after_backward: Callable[[int, nn.Module], None] | None = None,
          eval_every: int = 50, progress: bool = False, weight_decay: float = 0.0,
          optimizer: torch.optim.Optimizer | None = None) -> TrainHistory:
    """Train ``model`` on ``task`` with AdamW and cross-entropy; return a :class:`TrainHistory`.

    Deterministic for a given ``seed``: the batch order comes from :func:`batch_order` and the
    torch generator (dropout) is reseeded inside a forked RNG, so the caller's RNG is untouched.

    Parameters
    ----------
    steps, lr, batch_size:
        Number of optimizer steps, AdamW learning rate, examples per step.
    params:
        Parameters to optimise; default: those of ``model`` with ``requires_grad``.
    extra_loss:
        ``extra_loss(model) -> Tensor`` (scalar), added to the loss every step.
    after_backward:
        ``after_backward(step, model)``, called after ``loss.backward()`` and before
        ``optimizer.step()``; ``step`` counts from 1.
    eval_every:
        Test accuracy is recorded before training, every ``eval_every`` steps and after the
        last step (0 disables the periodic evaluations).
    progress:
        Print one line per evaluation.
    optimizer:
        Use this optimizer instead of a new AdamW (then ``params``/``lr``/``weight_decay`` are
        ignored for the update).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_task(task)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0, got {eval_every!r}")
    param_list = [p for p in (model.parameters() if params is None else params)
                  if p.requires_grad]
    if optimizer is None:
        if not param_list:
            raise ValueError("params must contain at least one parameter with requires_grad")
        optimizer = torch.optim.AdamW(param_list, lr=lr, weight_decay=weight_decay)
    batch_size = min(batch_size, task.x_train.shape[0])
    order = batch_order(task.x_train.shape[0], steps, batch_size, seed)
    history = TrainHistory()
    history.eval_steps.append(0)
    history.test_accuracy.append(evaluate(model, task))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for step in range(1, steps + 1):
            idx = order[step - 1]
            logits = model(task.x_train[idx])
            loss = nn.functional.cross_entropy(logits, task.y_train[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(step, model)
            optimizer.step()
            history.loss.append(float(loss.detach()))
            if (eval_every and step % eval_every == 0) or step == steps:
                history.eval_steps.append(step)
                history.test_accuracy.append(evaluate(model, task))
                if progress:
                    print(f"step {step:5d}  loss {history.loss[-1]:.4f}  "
                          f"test acc {history.test_accuracy[-1]:.3f}", flush=True)
    history.seconds = time.perf_counter() - start
    return history


_PRETRAINED: dict[tuple, tuple[dict, Task]] = {}


def pretrained_toy_model(seed: int = 0, config: ToyConfig | None = None, steps: int = 200,
                         lr: float = 3e-3, batch_size: int = 64
                         ) -> tuple[TinyTransformer, Task]:
    """A :class:`TinyTransformer` pre-trained on :func:`~lora_edu.toy.pretrain_task`.

    Deterministic in its arguments. The trained weights are cached per argument set, so later
    calls return a fresh copy in milliseconds; every returned model is independent.

    Returns
    -------
    (model, pretrain_task)
        The model (all parameters trainable, eval-mode-agnostic) and the task it learnt.
    """
    config = ToyConfig(vocab_size=vocab_size_for()) if config is None else config
    if not isinstance(config, ToyConfig):
        raise TypeError(f"config must be a ToyConfig, got {type(config).__name__}")
    key = (seed, config, steps, lr, batch_size)
    if key not in _PRETRAINED:
        task = pretrain_task(seed=seed)
        if config.vocab_size < vocab_size_for():
            raise ValueError(f"config.vocab_size must be >= {vocab_size_for()}, got "
                             f"{config.vocab_size}")
        model = TinyTransformer(config, seed=seed)
        train(model, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed, eval_every=0)
        _PRETRAINED[key] = (copy.deepcopy(model.state_dict()), task)
    state, task = _PRETRAINED[key]
    model = TinyTransformer(config, seed=seed)
    model.load_state_dict(state)
    return model, task


@dataclass(frozen=True)
class SeedStats:
    """One measurement repeated over several seeds: the values and their mean and spread.

    A toy training result depends on the seed (initialisation, batch order) and, in its last
    digits, on the CPU's floating-point kernels. The book therefore reports every training result
    as ``mean ± std`` with the ``[min, max]`` range, and calls one method better than another only
    when the ranges do not overlap (:func:`compare_seeds`).
    """

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.seeds) != len(self.values) or not self.values:
            raise ValueError(f"seeds and values must be non-empty and of equal length, got "
                             f"{len(self.seeds)} and {len(self.values)}")
        if not all(math.isfinite(v) for v in self.values):
            raise ValueError(f"values must be finite, got {self.values}")

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Arithmetic mean over the seeds."""
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof = 1``; 0 for a single seed)."""
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def min(self) -> float:
        """Smallest value over the seeds."""
        return min(self.values)

    @property
    def max(self) -> float:
        """Largest value over the seeds."""
        return max(self.values)

    @property
    def spread(self) -> float:
        """Range ``max − min`` over the seeds."""
        return self.max - self.min

    def fmt(self, decimals: int = 3) -> str:
        """``"mean ± std [min, max]"`` with ``decimals`` digits.

        Example: ``0.982 ± 0.010 [0.971, 0.990]``.
        """
        if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
            raise ValueError(f"decimals must be an int >= 0, got {decimals!r}")
        d = decimals
        return f"{self.mean:.{d}f} ± {self.std:.{d}f} [{self.min:.{d}f}, {self.max:.{d}f}]"

    def __str__(self) -> str:
        return self.fmt()


def run_seeds(fn: Callable[[int], float | Mapping[str, float]],
              seeds: Iterable[int] = (0, 1, 2)) -> SeedStats | dict[str, SeedStats]:
    """Call ``fn(seed)`` for every seed and collect the results as :class:`SeedStats`.

    ``fn`` returns one number (then one :class:`SeedStats` is returned) or a mapping of names to
    numbers with the same keys for every seed (then a dict of :class:`SeedStats`, one per key).
    The seeds are passed to ``fn``; what they seed (data order, adapter initialisation, …) is
    ``fn``'s business.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    seed_list = list(seeds)
    if not seed_list:
        raise ValueError("seeds must contain at least one seed")
    for s in seed_list:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"seeds must hold ints, got {type(s).__name__}")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")
    results = [fn(s) for s in seed_list]
    if all(isinstance(r, Mapping) for r in results):
        keys = list(results[0])
        if any(list(r) != keys for r in results):
            raise ValueError("fn must return the same keys for every seed")
        return {k: SeedStats(tuple(seed_list), tuple(float(r[k]) for r in results))
                for k in keys}
    if any(isinstance(r, Mapping) for r in results):
        raise TypeError("fn must return a number for every seed or a mapping for every seed")
    return SeedStats(tuple(seed_list), tuple(float(r) for r in results))


def compare_seeds(a: SeedStats, b: SeedStats, margin: float = 0.0) -> int:
    """``+1`` if ``a`` is above ``b`` on every seed pair, ``-1`` if below, ``0`` within noise.

    "Above" means the ranges do not overlap by more than ``margin``: ``a.min > b.max + margin``.
    A positive ``margin`` guards a conclusion against the small shifts another CPU's kernels can
    cause. Anything else is reported as within noise: the difference of the means does not exceed
    the spread of the seeds.
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, SeedStats):
            raise TypeError(f"{name} must be a SeedStats, got {type(value).__name__}")
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        raise TypeError(f"margin must be a number, got {type(margin).__name__}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    if a.min > b.max + margin:
        return 1
    if b.min > a.max + margin:
        return -1
    return 0
