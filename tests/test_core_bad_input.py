"""Bad input to the core modules (lowrank, memory, inject, toy), as one table.

Every row calls a public function or constructor with one bad argument and states the exception it
must raise: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value (numpy scalars are
*good* input, tested in the modules' own test files). The message must start with the name of the
bad argument (the convention of :mod:`lora_edu.checks`), so a reader sees at once what to fix.

The end of the file checks what importing the library does: it must not import matplotlib (a
plotting dependency of the book, not of the library) nor change torch's global settings.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.inject import count_parameters, find_linear_targets, inject_adapters
from lora_edu.lowrank import (
    best_rank_r,
    effective_rank,
    energy_curve,
    factorization_params,
    low_rank_factors,
    param_fraction,
    singular_values,
    truncation_error,
)
from lora_edu.memory import (
    GPT3_175B,
    TransformerShape,
    adapter_checkpoint_bytes,
    full_checkpoint_bytes,
    implied_bytes_per_param,
    lora_matrix_params,
    lora_trainable_params,
    measure_activation_bytes,
    measure_state_bytes,
    memory_saving,
    reduction_factor,
    throughput_gain,
    time_per_token_saving,
    training_memory,
)
from lora_edu.toy import (
    SeedStats,
    Task,
    TinyTransformer,
    ToyConfig,
    batch_order,
    compare_seeds,
    evaluate,
    key_token,
    make_field_task,
    pretrained_toy_model,
    run_seeds,
    train,
    vocab_size_for,
)

NAN, INF = float("nan"), float("inf")


def W(bad: float | None = None) -> torch.Tensor:
    """A 6×5 float64 matrix, optionally with one bad entry."""
    m = torch.arange(30, dtype=torch.float64).reshape(6, 5).sin()
    if bad is not None:
        m[2, 3] = bad
    return m


SIGMA = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)


def model() -> TinyTransformer:
    return TinyTransformer(ToyConfig(n_layers=1), seed=0)


def task() -> Task:
    return make_field_task(0, n_train=32, n_test=16, seed=0)


def stats() -> SeedStats:
    return SeedStats((0, 1), (0.5, 0.6))


def int_task_with(**bad) -> Task:
    x, y = torch.zeros(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 3])
    args = dict(x_train=x, y_train=y, x_test=x, y_test=y, n_classes=4, name="t") | bad
    return Task(**args)


# (id, call, exception, name the message starts with)
CASES = [
    # --- lowrank ------------------------------------------------------------------------------
    ("best_rank_r r float", lambda: best_rank_r(W(), 2.0), TypeError, "r"),
    ("best_rank_r r bool", lambda: low_rank_factors(W(), True), TypeError, "r"),
    ("best_rank_r r 0", lambda: best_rank_r(W(), 0), ValueError, "r"),
    ("best_rank_r r > min(d,k)", lambda: best_rank_r(W(), 6), ValueError, "r"),
    ("W a list", lambda: singular_values([[1.0, 2.0], [3.0, 4.0]]), TypeError, "W"),
    ("W 3-D", lambda: singular_values(torch.ones(2, 2, 2)), ValueError, "W"),
    ("W empty", lambda: singular_values(torch.ones(0, 3)), ValueError, "W"),
    ("W NaN", lambda: singular_values(W(NAN)), ValueError, "W"),
    ("W inf (numpy)", lambda: best_rank_r(W(INF).numpy(), 1), ValueError, "W"),
    ("W -inf factors", lambda: low_rank_factors(W(-INF), 1), ValueError, "W"),
    ("W strings", lambda: singular_values(np.array([["a", "b"], ["c", "d"]])), TypeError, "W"),
    ("sigma unsorted", lambda: truncation_error(SIGMA.flip(0), 1), ValueError, "sigma"),
    ("sigma negative", lambda: truncation_error([1.0, -1.0], 1), ValueError, "sigma"),
    ("sigma NaN", lambda: truncation_error(torch.tensor([2.0, NAN]), 1), ValueError, "sigma"),
    ("sigma inf list", lambda: energy_curve([INF, 1.0]), ValueError, "sigma"),
    ("sigma a str", lambda: energy_curve("3 2 1"), TypeError, "sigma"),
    ("sigma 2-D", lambda: energy_curve(np.ones((2, 2))), ValueError, "sigma"),
    ("sigma empty", lambda: effective_rank([], 0.9), ValueError, "sigma"),
    ("sigma ascending numpy", lambda: effective_rank(np.array([1.0, 2.0]), 0.5), ValueError,
     "sigma"),
    ("truncation r float", lambda: truncation_error(SIGMA, 1.0), TypeError, "r"),
    ("truncation r > len", lambda: truncation_error(SIGMA, 5), ValueError, "r"),
    ("energy 0", lambda: effective_rank(SIGMA, 0.0), ValueError, "energy"),
    ("energy > 1", lambda: effective_rank(SIGMA, 1.01), ValueError, "energy"),
    ("energy NaN", lambda: effective_rank(SIGMA, NAN), ValueError, "energy"),
    ("energy str", lambda: effective_rank(SIGMA, "0.9"), TypeError, "energy"),
    ("factorization d 0", lambda: factorization_params(0, 5, 1), ValueError, "d"),
    ("factorization k float", lambda: factorization_params(4, 5.0, 1), TypeError, "k"),
    ("param_fraction r > min", lambda: param_fraction(4, 5, 5), ValueError, "r"),
    # --- memory -------------------------------------------------------------------------------
    ("lora_matrix_params d float", lambda: lora_matrix_params(1.5, 3, 2), TypeError, "d"),
    ("lora_matrix_params r 0", lambda: lora_matrix_params(4, 3, 0), ValueError, "r"),
    ("shape a tuple", lambda: lora_trainable_params((12_288, 96), 4), TypeError, "shape"),
    ("matrices_per_layer 0", lambda: lora_trainable_params(GPT3_175B, 4, 0), ValueError,
     "matrices_per_layer"),
    ("reduction trainable 0", lambda: reduction_factor(100, 0), ValueError, "trainable"),
    ("checkpoint bytes < 0", lambda: adapter_checkpoint_bytes(10, -1), ValueError,
     "bytes_per_param"),
    ("checkpoint bytes str", lambda: full_checkpoint_bytes(GPT3_175B, "2"), TypeError,
     "bytes_per_param"),
    ("n_trainable > n_params", lambda: training_memory(10, 11), ValueError, "n_trainable"),
    ("n_params float", lambda: training_memory(10.0, 1), TypeError, "n_params"),
    ("activation_bytes NaN", lambda: training_memory(10, 1, activation_bytes=NAN), ValueError,
     "activation_bytes"),
    ("memory_saving full 0", lambda: memory_saving(0, 1), ValueError, "full"),
    ("throughput new 0", lambda: throughput_gain(32.5, 0), ValueError, "new"),
    ("time_per_token base bool", lambda: time_per_token_saving(True, 43.1), TypeError, "base"),
    ("implied n_params 0", lambda: implied_bytes_per_param(1e12, 0), ValueError, "n_params"),
    ("measure_state model str", lambda: measure_state_bytes("m"), TypeError, "model"),
    ("measure_state optimizer", lambda: measure_state_bytes(nn.Linear(2, 2), "adam"), TypeError,
     "optimizer"),
    ("measure_activation loss_fn", lambda: measure_activation_bytes(nn.Linear(2, 2), 3),
     TypeError, "loss_fn"),
    ("TransformerShape n_layers 0", lambda: TransformerShape("x", 8, 0, 100), ValueError,
     "n_layers"),
    # --- inject -------------------------------------------------------------------------------
    ("targets an int", lambda: inject_adapters(model(), 3, nn.Identity), TypeError,
     "target_modules"),
    ("targets empty", lambda: inject_adapters(model(), [], nn.Identity), ValueError,
     "target_modules"),
    ("targets no match", lambda: inject_adapters(model(), "nope", nn.Identity), ValueError,
     "target_modules"),
    ("targets empty name", lambda: find_linear_targets(model(), ["q_proj", ""]), ValueError,
     "target_modules"),
    ("targets non-str item", lambda: find_linear_targets(model(), ["q_proj", 1]), TypeError,
     "target_modules"),
    ("factory None", lambda: inject_adapters(model(), "q_proj", None), TypeError, "factory"),
    ("factory returns int", lambda: inject_adapters(model(), "q_proj", lambda lin: 1), TypeError,
     "factory"),
    ("inject model str", lambda: inject_adapters("m", "q_proj", nn.Identity), TypeError, "model"),
    ("count_parameters str", lambda: count_parameters("m"), TypeError, "model"),
    # --- toy: model ---------------------------------------------------------------------------
    ("ToyConfig d_model % n_heads", lambda: ToyConfig(d_model=30), ValueError, "d_model"),
    ("ToyConfig n_layers float", lambda: ToyConfig(n_layers=2.0), TypeError, "n_layers"),
    ("ToyConfig n_classes 1", lambda: ToyConfig(n_classes=1), ValueError, "n_classes"),
    ("ToyConfig dropout str", lambda: ToyConfig(dropout="0.1"), TypeError, "dropout"),
    ("ToyConfig dropout 1", lambda: ToyConfig(dropout=1.0), ValueError, "dropout"),
    ("TinyTransformer config dict", lambda: TinyTransformer({"d_model": 8}), TypeError,
     "config"),
    ("TinyTransformer seed float", lambda: TinyTransformer(seed=1.5), TypeError, "seed"),
    ("TinyTransformer seed < 0", lambda: TinyTransformer(seed=-1), ValueError, "seed"),
    ("reset_head n_classes float", lambda: model().reset_head(n_classes=2.5), TypeError,
     "n_classes"),
    ("reset_head n_classes 1", lambda: model().reset_head(n_classes=1), ValueError, "n_classes"),
    ("reset_head seed str", lambda: model().reset_head(seed="0"), TypeError, "seed"),
    ("tokens float", lambda: model()(torch.zeros(1, 4)), TypeError, "tokens"),
    ("tokens 1-D", lambda: model()(torch.zeros(4, dtype=torch.long)), ValueError, "tokens"),
    ("tokens too long", lambda: model()(torch.zeros(1, 33, dtype=torch.long)), ValueError,
     "tokens"),
    ("tokens out of vocab", lambda: model()(torch.full((1, 4), 48)), ValueError, "tokens"),
    ("tokens a list", lambda: model().features([[0, 1]]), TypeError, "tokens"),
    # --- toy: data ----------------------------------------------------------------------------
    ("field >= n_fields", lambda: make_field_task(2), ValueError, "field"),
    ("task seed float", lambda: make_field_task(0, seed=0.5), TypeError, "seed"),
    ("task n_train str", lambda: make_field_task(0, n_train="10"), TypeError, "n_train"),
    ("task seq_len too short", lambda: make_field_task(0, seq_len=2), ValueError, "seq_len"),
    ("key_token cls >= n_classes", lambda: key_token(0, 4), ValueError, "cls"),
    ("key_token copy float", lambda: key_token(0, 1, copy=1.0), TypeError, "copy"),
    ("vocab n_filler 0", lambda: vocab_size_for(n_filler=0), ValueError, "n_filler"),
    ("Task y float", lambda: int_task_with(y_train=torch.zeros(4)), TypeError, "y_train"),
    ("Task y out of range", lambda: int_task_with(y_test=torch.tensor([0, 1, 2, 4])), ValueError,
     "y_test"),
    ("Task x a list", lambda: int_task_with(x_train=[[0, 1]]), TypeError, "x_train"),
    ("Task n_classes float", lambda: int_task_with(n_classes=4.0), TypeError, "n_classes"),
    # --- toy: training ------------------------------------------------------------------------
    ("train model str", lambda: train("m", task(), 1, 1e-3), TypeError, "model"),
    ("train task str", lambda: train(model(), "t", 1, 1e-3), TypeError, "task"),
    ("train steps float", lambda: train(model(), task(), 1.5, 1e-3), TypeError, "steps"),
    ("train steps < 0", lambda: train(model(), task(), -1, 1e-3), ValueError, "steps"),
    ("train lr 0", lambda: train(model(), task(), 1, 0.0), ValueError, "lr"),
    ("train lr str", lambda: train(model(), task(), 1, "0.1"), TypeError, "lr"),
    ("train lr inf", lambda: train(model(), task(), 1, INF), ValueError, "lr"),
    ("train batch_size str", lambda: train(model(), task(), 1, 1e-3, batch_size="64"), TypeError,
     "batch_size"),
    ("train batch_size 0", lambda: train(model(), task(), 1, 1e-3, batch_size=0), ValueError,
     "batch_size"),
    ("train seed < 0", lambda: train(model(), task(), 1, 1e-3, seed=-1), ValueError, "seed"),
    ("train eval_every < 0", lambda: train(model(), task(), 1, 1e-3, eval_every=-1), ValueError,
     "eval_every"),
    ("train eval_every float", lambda: train(model(), task(), 1, 1e-3, eval_every=5.0),
     TypeError, "eval_every"),
    ("train weight_decay < 0", lambda: train(model(), task(), 1, 1e-3, weight_decay=-0.1),
     ValueError, "weight_decay"),
    ("train progress str", lambda: train(model(), task(), 1, 1e-3, progress="yes"), TypeError,
     "progress"),
    ("train extra_loss int", lambda: train(model(), task(), 1, 1e-3, extra_loss=5), TypeError,
     "extra_loss"),
    ("train after_backward str", lambda: train(model(), task(), 1, 1e-3, after_backward="f"),
     TypeError, "after_backward"),
    ("train optimizer str", lambda: train(model(), task(), 1, 1e-3, optimizer="adam"),
     TypeError, "optimizer"),
    ("train params one tensor",
     lambda: (m := model(), train(m, task(), 1, 1e-3, params=m.head.weight)), TypeError,
     "params"),
    ("train params frozen", lambda: train(model().requires_grad_(False), task(), 1, 1e-3),
     ValueError, "params"),
    ("evaluate split", lambda: evaluate(model(), task(), "val"), ValueError, "split"),
    ("evaluate batch_size 0", lambda: evaluate(model(), task(), batch_size=0), ValueError,
     "batch_size"),
    ("batch_order n 0", lambda: batch_order(0, 1, 1), ValueError, "n"),
    ("batch_order batch_size float", lambda: batch_order(10, 1, 2.0), TypeError, "batch_size"),
    ("batch_order seed str", lambda: batch_order(10, 1, 2, seed="0"), TypeError, "seed"),
    ("pretrained vocab too small", lambda: pretrained_toy_model(config=ToyConfig(vocab_size=10)),
     ValueError, "config"),
    ("pretrained max_len too small", lambda: pretrained_toy_model(config=ToyConfig(max_len=8)),
     ValueError, "config"),
    ("pretrained seed float", lambda: pretrained_toy_model(seed=1.0), TypeError, "seed"),
    ("pretrained lr 0", lambda: pretrained_toy_model(lr=0), ValueError, "lr"),
    # --- toy: seed statistics -----------------------------------------------------------------
    ("SeedStats lengths", lambda: SeedStats((0, 1), (0.5,)), ValueError, "seeds"),
    ("SeedStats NaN", lambda: SeedStats((0,), (NAN,)), ValueError, "values"),
    ("SeedStats repeated seed", lambda: SeedStats((0, 0), (1.0, 2.0)), ValueError, "seeds"),
    ("SeedStats seed float", lambda: SeedStats((0.0,), (1.0,)), TypeError, "seeds"),
    ("SeedStats values a str", lambda: SeedStats((0,), "1"), TypeError, "values"),
    ("fmt decimals float", lambda: stats().fmt(1.5), TypeError, "decimals"),
    ("fmt decimals < 0", lambda: stats().fmt(-1), ValueError, "decimals"),
    ("run_seeds fn int", lambda: run_seeds(3), TypeError, "fn"),
    ("run_seeds seeds float", lambda: run_seeds(float, seeds=[1.0]), TypeError, "seeds"),
    ("run_seeds seeds empty", lambda: run_seeds(float, seeds=[]), ValueError, "seeds"),
    ("run_seeds seeds repeated", lambda: run_seeds(float, seeds=[1, 1]), ValueError, "seeds"),
    ("run_seeds seeds an int", lambda: run_seeds(float, seeds=3), TypeError, "seeds"),
    ("run_seeds result str", lambda: run_seeds(lambda s: "x", seeds=[0]), TypeError, "fn"),
    ("run_seeds result NaN", lambda: run_seeds(lambda s: NAN, seeds=[0]), ValueError, "fn"),
    ("run_seeds keys differ", lambda: run_seeds(lambda s: {"a": 1.0} if s else {"b": 1.0},
                                                seeds=[0, 1]), ValueError, "fn"),
    ("compare_seeds a float", lambda: compare_seeds(0.9, stats()), TypeError, "a"),
    ("compare_seeds b None", lambda: compare_seeds(stats(), None), TypeError, "b"),
    ("compare_seeds margin < 0", lambda: compare_seeds(stats(), stats(), -1), ValueError,
     "margin"),
    ("compare_seeds margin str", lambda: compare_seeds(stats(), stats(), "0"), TypeError,
     "margin"),
]


def test_the_table_is_large_and_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    modules = {"lowrank": 0, "memory": 0, "inject": 0, "toy": 0}
    for _, call, _, _ in CASES:
        names = call.__code__.co_names
        if any(n in names for n in ("best_rank_r", "low_rank_factors", "singular_values",
                                    "truncation_error", "energy_curve", "effective_rank",
                                    "factorization_params", "param_fraction")):
            modules["lowrank"] += 1
        elif any(n in names for n in ("inject_adapters", "find_linear_targets",
                                      "count_parameters")):
            modules["inject"] += 1
        elif any(n.startswith(("lora_", "measure_", "training_memory", "memory_saving",
                               "throughput", "time_per", "implied", "reduction", "adapter_",
                               "full_checkpoint", "TransformerShape")) for n in names):
            modules["memory"] += 1
        else:
            modules["toy"] += 1
    assert min(modules.values()) >= 5, modules


@pytest.mark.parametrize("call, exc, name", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_rejected_naming_the_argument(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc  # exactly: not a subclass raised by some deeper layer
    message = str(info.value)
    assert re.match(rf"{re.escape(name)}\b", message), (
        f"message should start with the argument name {name!r}: {message!r}")


# --- importing the library --------------------------------------------------------------------

def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_does_not_load_matplotlib():
    _run("import lora_edu, sys; assert 'matplotlib' not in sys.modules")


def test_importing_every_module_loads_no_matplotlib_and_changes_no_torch_setting():
    _run("""
import importlib, pkgutil, sys
import torch
before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
          torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_rng_state())
import lora_edu
names = [info.name for info in pkgutil.walk_packages(lora_edu.__path__, "lora_edu.")]
for name in names:
    importlib.import_module(name)
assert {"lora_edu.lowrank", "lora_edu.memory", "lora_edu.inject", "lora_edu.toy.training"} <= set(
    names), names
loaded = sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib."))
assert not loaded, loaded
after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
         torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_rng_state())
assert before[:4] == after[:4], (before[:4], after[:4])
assert torch.equal(before[4], after[4])
""")


def test_every_exported_callable_is_documented():
    """Each public function, class and public method of the core modules has a docstring, and
    each module's docstring cites the source document's sections."""
    import importlib
    import inspect
    for name in ("lora_edu.lowrank", "lora_edu.memory", "lora_edu.inject", "lora_edu.toy",
                 "lora_edu.toy.model", "lora_edu.toy.data", "lora_edu.toy.training"):
        module = importlib.import_module(name)
        assert "source §" in (module.__doc__ or "").lower(), name
        for export in module.__all__:
            obj = getattr(module, export)
            if not callable(obj):
                continue
            assert (obj.__doc__ or "").strip(), f"{name}.{export}"
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    func = value.fget if isinstance(value, property) else value
                    if not attr.startswith("_") and callable(func):
                        assert (func.__doc__ or "").strip(), f"{name}.{export}.{attr}"


def test_frozen_linear_wrapper_freezes_base_and_keeps_its_widths():
    from lora_edu.adalora import SVDLinear
    from lora_edu.inject import FrozenLinearWrapper
    from lora_edu.lora import LoRALinear
    for make in (lambda b: LoRALinear(b, r=2, alpha=4), lambda b: SVDLinear(b, r=2)):
        base = nn.Linear(7, 5)
        layer = make(base)
        assert isinstance(layer, FrozenLinearWrapper)
        assert (layer.in_features, layer.out_features) == (7, 5)
        assert not any(p.requires_grad for p in base.parameters())
        assert all(p.requires_grad for n, p in layer.named_parameters()
                   if not n.startswith("base."))
    with pytest.raises(TypeError, match="base must be a Linear, got Conv1d"):
        FrozenLinearWrapper(nn.Conv1d(1, 1, 1))


def test_type_messages_use_the_right_article():
    from lora_edu.checks import check_callable, check_instance
    with pytest.raises(TypeError, match="opt must be an Optimizer"):
        check_instance("opt", 3, torch.optim.Optimizer)
    with pytest.raises(TypeError, match="base must be a Linear"):
        check_instance("base", 3, nn.Linear)
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        check_callable("fn", 3)
