"""A small deterministic training loop for the toy transformer, and the shared pre-trained model.

``train`` runs AdamW on mini-batches drawn in a seeded order and records the loss of every step
and the held-out accuracy every ``eval_every`` steps. Two hooks let composite methods plug in
without a loop of their own: ``extra_loss(model)`` is added to the loss (AdaLoRA's orthogonality
regulariser, source §3.2 (1)) and ``after_backward(step, model)`` runs between ``backward`` and the
optimizer step (AdaLoRA's importance scores and pruning, source §3.2 (2)).

No hidden global state. :func:`train` and :func:`evaluate` change nothing outside the model and
optimizer they are given (and what the hooks do): random draws happen in a fork of torch's CPU
generator (plus, for a model on CUDA, of those devices' generators), seeded without
``torch.manual_seed`` (which would reseed every accelerator's generator for good); each module's
train/eval flag and the grad mode are restored on return, also after an error; the thread count
and the deterministic-algorithms setting are never touched. The module state is the cache of
:func:`pretrained_toy_model`, emptied by :func:`clear_pretrained_cache`, and the shipped weights
file, read once on first use.

**Shipped pre-trained weights.** The package ships the result of :func:`pretrained_toy_model`'s
training for seeds 0–4 at its default settings (``lora_edu/data/toy_pretrained.npz``, written by
``scripts/make_toy_pretrained.py`` with this module's :func:`train`, one thread), as a model hub
ships a checkpoint. Two hundred steps of AdamW amplify floating-point round-off: training the same
model again with another CPU's kernels, or with another thread count, moved its weights by up to
1.6 % of a tensor's largest value (measured), and every result built on them with it. Loading
the shipped weights gives every reader the same pre-trained body; ``retrain=True`` trains it
instead.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lora_edu.checks import (
    check_callable,
    check_float,
    check_instance,
    check_int,
    check_one_of,
    check_seed,
)
from lora_edu.toy.data import Task, pretrain_task, vocab_size_for
from lora_edu.toy.model import TinyTransformer, ToyConfig

__all__ = ["TrainHistory", "train", "evaluate", "pretrained_toy_model", "clear_pretrained_cache",
           "SHIPPED_PRETRAINED_SEEDS", "default_pretraining", "pretrained_file",
           "shipped_pretrained_state", "batch_order", "SeedStats", "run_seeds", "compare_seeds"]



@dataclass
class TrainHistory:
    """What :func:`train` measured: ``loss[i]`` of step ``i``; ``test_accuracy[j]`` after step
    ``eval_steps[j]`` (step counts start at 1; step 0 is the accuracy before training).

    ``loss`` is the mean cross-entropy −log softmax(logits)[y] of the step's batch (plus
    ``extra_loss``). ``seconds`` is wall time (not deterministic; never compare it in stored
    outputs).
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
    return check_instance("task", task, Task)


@contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag on exit (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _seeded_rng(seed: int, model: nn.Module) -> Iterator[None]:
    """Fork the CPU generator (and that of each CUDA device holding the model) and seed the forks.

    ``torch.default_generator.manual_seed`` seeds the CPU generator exactly as ``torch.manual_seed``
    does, without also (lazily) reseeding every accelerator's generator outside the fork.
    """
    cuda = sorted({t.device.index for t in (*model.parameters(), *model.buffers())
                   if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "test", batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``task``'s ``split``: mean of [argmax logits = y].

    ``split`` is "test" or "train", ``batch_size`` an int ≥ 1 (examples per forward pass). The
    model is put in eval mode for the call (no dropout) and every submodule's previous mode is
    restored; gradients are off inside the call only.
    """
    check_instance("model", model, nn.Module)
    _check_task(task)
    split = check_one_of("split", split, ("test", "train"))
    batch_size = check_int("batch_size", batch_size, 1)
    x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    with _modes_restored(model):
        model.eval()
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    return correct / x.shape[0]


def batch_order(n: int, steps: int, batch_size: int, seed: int = 0) -> Tensor:
    """Indices (steps, batch_size) of each step's batch: epochs of seeded random permutations.

    Step i uses examples ``order[i]``; consecutive epochs are independent permutations of
    ``range(n)`` from a private ``torch.Generator`` seeded with ``seed`` (the global generator is
    not used). ``n`` ≥ 1, ``steps`` ≥ 0 and ``batch_size`` ≥ 1 are ints, ``seed`` an int in
    ``[0, 2**32 - 1]``.
    """
    n = check_int("n", n, 1)
    steps = check_int("steps", steps, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    chunks = [torch.randperm(n, generator=gen) for _ in range(-(-need // n))]
    flat = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
    return flat[:need].view(steps, batch_size)


def _param_list(model: nn.Module, params: object) -> list[Tensor]:
    if params is None:
        return [p for p in model.parameters() if p.requires_grad]
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of parameters (e.g. model.parameters()), "
                        f"got {type(params).__name__}")
    found = [check_instance(f"params[{i}]", p, Tensor) for i, p in enumerate(params)]
    return [p for p in found if p.requires_grad]


def train(model: nn.Module, task: Task, steps: int, lr: float, batch_size: int = 64,
          seed: int = 0, params: Iterable[nn.Parameter] | None = None,
          extra_loss: Callable[[nn.Module], Tensor] | None = None,
          after_backward: Callable[[int, nn.Module], None] | None = None,
          eval_every: int = 50, progress: bool = False, weight_decay: float = 0.0,
          optimizer: torch.optim.Optimizer | None = None) -> TrainHistory:
    """Train ``model`` on ``task`` with AdamW and cross-entropy; return a :class:`TrainHistory`.

    Each step minimises L = mean_batch(−log softmax(model(x))[y]) (+ ``extra_loss(model)``) with
    one AdamW update θ ← θ − lr·(m̂/(√v̂ + ε) + weight_decay·θ) of the trainable parameters — with
    the body frozen and an adapter injected, the update ΔW = B·A of source §2.1 (1).

    Deterministic for a given ``seed``: the batch order comes from :func:`batch_order` and random
    draws inside the model (dropout) come from a fork of the CPU generator seeded with ``seed``.

    Changes no global setting: torch's global random state (CPU and CUDA), the thread count, the
    deterministic-algorithms flag and the grad mode are as before on return (gradients are
    enabled inside the call, so it also works under ``torch.no_grad()``), and every submodule's
    train/eval flag is restored, also when an error interrupts training. What it does change: the
    parameters it trains, their ``.grad`` (the last step's gradients stay) and the optimizer.

    Parameters
    ----------
    model, task:
        An ``nn.Module`` mapping ``task.x_*`` batches to logits, and a :class:`Task`.
    steps, lr, batch_size:
        Number of optimizer steps (int ≥ 0), AdamW learning rate (> 0), examples per step
        (int ≥ 1; at most the training set).
    seed:
        Int in ``[0, 2**32 - 1]``: batch order and dropout.
    params:
        Parameters to optimise (an iterable of tensors); default: those of ``model`` with
        ``requires_grad``.
    extra_loss:
        ``extra_loss(model) -> Tensor`` (scalar), added to the loss every step.
    after_backward:
        ``after_backward(step, model)``, called after ``loss.backward()`` and before
        ``optimizer.step()``; ``step`` counts from 1.
    eval_every:
        Test accuracy is recorded before training, every ``eval_every`` steps and after the
        last step (0 disables the periodic evaluations).
    progress:
        Print one line per evaluation (a bool).
    weight_decay:
        AdamW's decoupled weight decay (≥ 0).
    optimizer:
        Use this ``torch.optim.Optimizer`` instead of a new AdamW (then ``params``/``lr``/
        ``weight_decay`` are ignored for the update).
    """
    check_instance("model", model, nn.Module)
    _check_task(task)
    steps = check_int("steps", steps, 0)
    lr = check_float("lr", lr, 0.0, min_inclusive=False)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_seed("seed", seed)
    eval_every = check_int("eval_every", eval_every, 0)
    check_instance("progress", progress, bool)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    if extra_loss is not None:
        check_callable("extra_loss", extra_loss)
    if after_backward is not None:
        check_callable("after_backward", after_backward)
    if optimizer is not None:
        check_instance("optimizer", optimizer, torch.optim.Optimizer)
    param_list = _param_list(model, params)
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
    with _modes_restored(model), _seeded_rng(seed, model), torch.enable_grad():
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


#: Module-level cache of :func:`pretrained_toy_model`: argument tuple -> (state_dict, task).
_PRETRAINED: dict[tuple, tuple[dict[str, Tensor], Task]] = {}


def _copy_task(task: Task) -> Task:
    return Task(task.x_train.clone(), task.y_train.clone(), task.x_test.clone(),
                task.y_test.clone(), task.n_classes, task.name)


#: The file of pre-trained weights shipped with the package (see the module docstring).
_PRETRAINED_FILE_NAME = "toy_pretrained.npz"
#: Seeds whose default pre-training ships with the package.
SHIPPED_PRETRAINED_SEEDS = (0, 1, 2, 3, 4)
_SHIPPED: dict[str, dict] = {}


def pretrained_file() -> Path:
    """Path of the shipped pre-trained weights (``lora_edu/data/toy_pretrained.npz``)."""
    return Path(str(importlib.resources.files("lora_edu").joinpath("data", _PRETRAINED_FILE_NAME)))


def default_pretraining(seed: int) -> dict:
    """The settings under which :func:`pretrained_toy_model` ships weights: a plain dict with
    ``seed``, ``config`` (the default :class:`ToyConfig` as a dict), ``steps``, ``lr`` and
    ``batch_size`` — those of ``pretrained_toy_model(seed)`` called with its defaults."""
    seed = check_seed("seed", seed)
    return dict(seed=seed, config=ToyConfig(vocab_size=vocab_size_for()).to_dict(), steps=200,
                lr=3e-3, batch_size=64)


def shipped_pretrained_state(seed: int) -> dict[str, Tensor] | None:
    """The shipped pre-trained state dict for ``seed`` (fresh tensors), or None if none ships.

    The file holds, per seed, every tensor of the state dict (``seed{s}/{name}``) and the
    settings it was trained under (``seed{s}/settings``, JSON); a seed is shipped only with
    settings equal to :func:`default_pretraining`.
    """
    seed = check_seed("seed", seed)
    if not _SHIPPED:
        with np.load(pretrained_file(), allow_pickle=False) as data:
            for key in data.files:
                prefix, _, name = key.partition("/")
                _SHIPPED.setdefault(prefix, {})[name] = data[key]
    entry = _SHIPPED.get(f"seed{seed}")
    if entry is None or json.loads(str(entry["settings"])) != default_pretraining(seed):
        return None
    return {name: torch.from_numpy(array.copy()) for name, array in entry.items()
            if name != "settings"}


def pretrained_toy_model(seed: int = 0, config: ToyConfig | None = None, steps: int = 200,
                         lr: float = 3e-3, batch_size: int = 64, *, retrain: bool = False
                         ) -> tuple[TinyTransformer, Task]:
    """A :class:`TinyTransformer` pre-trained on :func:`~lora_edu.toy.pretrain_task`.

    The frozen W0 of source §2.1 (1): ``train(TinyTransformer(config, seed), pretrain_task(seed),
    steps, lr, batch_size, seed)``. Deterministic in its arguments on a given CPU and thread count.

    **Shipped weights.** For seeds 0–4 at the default ``config``, ``steps``, ``lr`` and
    ``batch_size`` the result of that training ships with the package (one thread, see the module
    docstring) and is loaded instead of trained, so every machine starts from the same
    pre-trained body; ``retrain=True`` trains it here (about 8 s on one core).

    **Cache.** The weights are kept in a module-level dict keyed by the arguments, so a later call
    with the same arguments returns a fresh copy in milliseconds. Every returned model and task is
    an independent copy (changing one does not change the cache). Weights trained here are those
    of the first call in the process: they do not follow later changes of the thread count or of
    the deterministic-algorithms setting (which can move the last bits of a training).
    :func:`clear_pretrained_cache` empties it. ``retrain=True`` neither reads nor fills the cache.

    Parameters
    ----------
    seed:
        Int in ``[0, 2**32 - 1]``: initialisation, pre-training data and batch order.
    config:
        A :class:`ToyConfig` with ``vocab_size`` ≥ :func:`~lora_edu.toy.vocab_size_for` ``()``,
        ``max_len`` ≥ 16 and ``n_classes`` ≥ 4 (default: the default config with that
        vocabulary).
    steps, lr, batch_size:
        As in :func:`train` (int ≥ 0, > 0, int ≥ 1).
    retrain:
        A bool: train even where the package ships the weights, and bypass the cache.

    Returns
    -------
    (model, pretrain_task)
        The model (all parameters trainable, in training mode) and the task it learnt.
    """
    seed = check_seed("seed", seed)
    config = ToyConfig(vocab_size=vocab_size_for()) if config is None else config
    check_instance("config", config, ToyConfig)
    steps = check_int("steps", steps, 0)
    lr = check_float("lr", lr, 0.0, min_inclusive=False)
    batch_size = check_int("batch_size", batch_size, 1)
    check_instance("retrain", retrain, bool)
    key = (seed, config, steps, lr, batch_size)
    if retrain or key not in _PRETRAINED:
        task = pretrain_task(seed=seed)
        for attr, need in (("vocab_size", vocab_size_for()), ("max_len", task.seq_len),
                           ("n_classes", task.n_classes)):
            if getattr(config, attr) < need:
                raise ValueError(f"config.{attr} must be >= {need} for the pre-training task, "
                                 f"got {getattr(config, attr)}")
        settings = dict(seed=seed, config=config.to_dict(), steps=steps, lr=lr,
                        batch_size=batch_size)
        state = None
        if not retrain and settings == default_pretraining(seed):
            state = shipped_pretrained_state(seed)
        if state is None:
            model = TinyTransformer(config, seed=seed)
            train(model, task, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                  eval_every=0)
            state = copy.deepcopy(model.state_dict())
        if retrain:
            model = TinyTransformer(config, seed=seed)
            model.load_state_dict(state)
            return model, task
        _PRETRAINED[key] = (state, task)
    state, task = _PRETRAINED[key]
    model = TinyTransformer(config, seed=seed)
    model.load_state_dict(state)
    return model, _copy_task(task)


def clear_pretrained_cache() -> int:
    """Empty the cache of :func:`pretrained_toy_model`; return how many entries it held.

    The next call then trains again (under the current thread count and settings).
    """
    n = len(_PRETRAINED)
    _PRETRAINED.clear()
    return n


@dataclass(frozen=True)
class SeedStats:
    """One measurement repeated over several seeds: the values and their mean and spread.

    A toy training result depends on the seed (initialisation, batch order) and, in its last
    digits, on the CPU's floating-point kernels. The book therefore reports every training result
    as ``mean ± std`` with the ``[min, max]`` range, and calls one method better than another only
    when the ranges do not overlap (:func:`compare_seeds`).

    ``seeds`` is a sequence of distinct ints and ``values`` a sequence of as many finite real
    numbers (Python or numpy); both are stored as tuples of Python ints and floats.
    """

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("seeds", "values"):
            seq = getattr(self, name)
            if isinstance(seq, str | bytes) or not isinstance(seq, Sequence | np.ndarray):
                raise TypeError(f"{name} must be a sequence, got {type(seq).__name__}")
        seeds = tuple(check_int(f"seeds[{i}]", s) for i, s in enumerate(self.seeds))
        values = tuple(check_float(f"values[{i}]", v) for i, v in enumerate(self.values))
        if len(seeds) != len(values) or not values:
            raise ValueError(f"seeds and values must be non-empty and of equal length, got "
                             f"{len(seeds)} and {len(values)}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "values", values)

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Arithmetic mean Σ v_i / n over the seeds."""
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float:
        """Sample standard deviation sqrt(Σ(v − mean)² / (n − 1)) (``ddof = 1``; 0 for one seed)."""
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

        Example: ``0.982 ± 0.010 [0.971, 0.990]``. ``decimals`` is an int ≥ 0.
        """
        d = check_int("decimals", decimals, 0)
        return f"{self.mean:.{d}f} ± {self.std:.{d}f} [{self.min:.{d}f}, {self.max:.{d}f}]"

    def __str__(self) -> str:
        return self.fmt()


def run_seeds(fn: Callable[[int], float | Mapping[str, float]],
              seeds: Iterable[int] = (0, 1, 2)) -> SeedStats | dict[str, SeedStats]:
    """Call ``fn(seed)`` for every seed and collect the results as :class:`SeedStats`.

    ``fn`` returns one number (then one :class:`SeedStats` is returned) or a mapping of names to
    numbers with the same keys for every seed (then a dict of :class:`SeedStats`, one per key).
    The seeds are passed to ``fn``; what they seed (data order, adapter initialisation, …) is
    ``fn``'s business. ``seeds`` is a non-empty iterable of distinct ints (Python or numpy; passed
    to ``fn`` as Python ints). A result may be a real number or a one-element tensor/array; it must
    be finite.
    """
    check_callable("fn", fn)
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be an iterable of ints, got {type(seeds).__name__}")
    seed_list = [check_int(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    if not seed_list:
        raise ValueError("seeds must contain at least one seed")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")
    results = [fn(s) for s in seed_list]
    if all(isinstance(r, Mapping) for r in results):
        keys = list(results[0])
        if any(list(r) != keys for r in results):
            raise ValueError("fn must return the same keys for every seed")
        return {k: SeedStats(tuple(seed_list),
                             tuple(_result(f"fn({s})[{k!r}]", r[k])
                                   for s, r in zip(seed_list, results, strict=True)))
                for k in keys}
    if any(isinstance(r, Mapping) for r in results):
        raise TypeError("fn must return a number for every seed or a mapping for every seed")
    return SeedStats(tuple(seed_list),
                     tuple(_result(f"fn({s})", r) for s, r in zip(seed_list, results, strict=True)))


def _result(name: str, value: object) -> float:
    """One result of ``fn`` as a finite float (a one-element tensor/array is unwrapped)."""
    if (isinstance(value, Tensor) and value.numel() == 1) or (
            isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    return check_float(name, value)


def compare_seeds(a: SeedStats, b: SeedStats, margin: float = 0.0) -> int:
    """``+1`` if ``a`` is above ``b`` on every seed pair, ``-1`` if below, ``0`` within noise.

    "Above" means the ranges do not overlap by more than ``margin``: ``a.min > b.max + margin``.
    A positive ``margin`` guards a conclusion against the small shifts another CPU's kernels can
    cause. Anything else is reported as within noise: the difference of the means does not exceed
    the spread of the seeds. ``a`` and ``b`` are :class:`SeedStats`, ``margin`` a finite real
    number ≥ 0 (Python or numpy).
    """
    check_instance("a", a, SeedStats)
    check_instance("b", b, SeedStats)
    margin = check_float("margin", margin, 0.0)
    if a.min > b.max + margin:
        return 1
    if b.min > a.max + margin:
        return -1
    return 0
