"""The shared argument checks: types raise TypeError, values ValueError, the name comes first."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_edu.checks import (
    check_float,
    check_instance,
    check_int,
    check_one_of,
    check_power_of_two,
    check_probability,
    check_sorted_descending,
    check_tensor,
)


def test_accepts_python_and_numpy_scalars_and_returns_plain_types():
    for v in (3, np.int64(3), np.int32(3), np.uint8(3)):
        out = check_int("r", v, 1)
        assert out == 3 and type(out) is int
    for v in (0.5, np.float32(0.5), np.float64(0.5), 1, np.int64(1)):
        out = check_float("alpha", v)
        assert out == float(v) and type(out) is float
    assert check_probability("beta", np.float64(0.85)) == 0.85
    assert check_power_of_two("blocksize", np.int64(64)) == 64
    assert check_one_of("init", "kaiming", ("gaussian", "kaiming")) == "kaiming"


@pytest.mark.parametrize("call, exc", [
    (lambda: check_int("r", True, 1), TypeError),
    (lambda: check_int("r", 2.0, 1), TypeError),
    (lambda: check_int("r", "2", 1), TypeError),
    (lambda: check_int("r", 0, 1), ValueError),
    (lambda: check_int("r", 9, 1, 8), ValueError),
    (lambda: check_float("alpha", "1.0"), TypeError),
    (lambda: check_float("alpha", False), TypeError),
    (lambda: check_float("alpha", torch.tensor(1.0)), TypeError),
    (lambda: check_float("alpha", math.inf), ValueError),
    (lambda: check_float("alpha", math.nan), ValueError),
    (lambda: check_float("alpha", 0.0, 0.0, min_inclusive=False), ValueError),
    (lambda: check_float("alpha", 2.0, maximum=1.0), ValueError),
    (lambda: check_probability("beta", 1.0), ValueError),
    (lambda: check_probability("beta", -0.1), ValueError),
    (lambda: check_power_of_two("blocksize", 48), ValueError),
    (lambda: check_power_of_two("blocksize", 0), ValueError),
    (lambda: check_tensor("x", [1.0, 2.0]), TypeError),
    (lambda: check_tensor("x", torch.zeros(2, 2), 1), ValueError),
    (lambda: check_tensor("x", torch.zeros(2, dtype=torch.int64), floating=True), TypeError),
    (lambda: check_tensor("x", torch.tensor([1.0, math.inf]), finite=True), ValueError),
    (lambda: check_one_of("init", 3, ("a", "b")), TypeError),
    (lambda: check_one_of("init", "c", ("a", "b")), ValueError),
    (lambda: check_instance("model", 3, torch.nn.Module), TypeError),
    (lambda: check_sorted_descending("sigma", torch.tensor([1.0, 2.0])), ValueError),
])
def test_rejects_with_the_argument_name(call, exc):
    with pytest.raises(exc) as info:
        call()
    name = str(info.value).split()[0]
    assert name in {"r", "alpha", "beta", "blocksize", "x", "init", "model", "sigma"}


def test_infinite_allowed_only_when_asked():
    assert check_float("bound", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match="bound"):
        check_float("bound", math.nan, finite=False)


def test_tensor_checks_pass_good_tensors_through_unchanged():
    t = torch.randn(3, 4)
    assert check_tensor("w", t, (1, 2), floating=True, finite=True) is t
    s = torch.tensor([3.0, 2.0, 2.0, 0.0])
    assert check_sorted_descending("sigma", s) is s


# ------------------------------------------------------------------ one seed range everywhere

def _seed_takers():
    """Every public function that takes a seed, called with only the seed varying."""
    from torch import nn

    from lora_edu import seed_everything
    from lora_edu.adalora import apply_adalora
    from lora_edu.adapter import apply_adapters
    from lora_edu.lora import apply_lora
    from lora_edu.qlora import prepare_qlora
    from lora_edu.toy import TinyTransformer, batch_order, make_field_task

    def small():
        return nn.Sequential(nn.Linear(8, 8))

    return {
        "seed_everything": lambda s: seed_everything(s, threads=None),
        "apply_lora": lambda s: apply_lora(small(), "0", r=2, alpha=4, seed=s),
        "apply_adalora": lambda s: apply_adalora(small(), "0", r=2, seed=s),
        "apply_adapters": lambda s: apply_adapters(small(), "0", bottleneck=2, seed=s),
        "prepare_qlora": lambda s: prepare_qlora(nn.Sequential(nn.Linear(64, 8)), "0", r=2,
                                                 alpha=4, seed=s),
        "TinyTransformer": lambda s: TinyTransformer(seed=s),
        "batch_order": lambda s: batch_order(10, 2, 4, seed=s),
        "make_field_task": lambda s: make_field_task(0, seed=s, n_train=8, n_test=8),
    }


@pytest.mark.parametrize("name", sorted(_seed_takers()))
def test_every_seed_has_one_range(name):
    """check_seed's one range, [0, 2**32 − 1] (numpy's legacy seed is the narrowest generator
    seeded), for every function that takes a seed: the ends pass, one past them is a ValueError
    with the same message."""
    import torch

    from lora_edu.checks import MAX_SEED

    assert MAX_SEED == 4_294_967_295
    call = _seed_takers()[name]
    state = torch.random.get_rng_state()
    try:
        call(0)
        call(MAX_SEED)
        for bad in (-1, MAX_SEED + 1):
            with pytest.raises(ValueError, match=r"seed must be an int >= 0 and <= 4294967295"):
                call(bad)
        with pytest.raises(TypeError, match=r"seed must be an int, got float"):
            call(1.0)
    finally:
        torch.random.set_rng_state(state)
