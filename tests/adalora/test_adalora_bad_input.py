"""Bad input to every public function of lora_edu.adalora: a wrong TYPE raises TypeError, a wrong
VALUE raises ValueError, and the message starts with the argument's name. numpy scalars are
accepted wherever Python ints, floats and bools are."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.adalora import (
    ImportanceTracker,
    RankAllocator,
    SVDLinear,
    apply_adalora,
    budget_from_average_rank,
    budget_schedule,
    ema_update,
    find_svd_modules,
    orthogonal_penalty,
    orthogonal_regularizer,
    sensitivity,
    triplet_scores,
    validate_schedule,
)


def _lin():
    return nn.Linear(5, 6)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))


def _adapted():
    return apply_adalora(_net(), ["0", "2"], r=2, seed=0)


SCHEDULE = dict(total_steps=100, init_budget=36, target_budget=24, t_init=10, t_final=20)
ALLOC = dict(target_budget=2, total_steps=10, t_init=1, t_final=2)
t3, t23 = torch.zeros(3), torch.zeros(2, 3)


def _alloc():
    return RankAllocator(_adapted(), **ALLOC)


# (case id, call, exception, argument named first in the message)
CASES = [
    # SVDLinear
    ("svd-base-conv", lambda: SVDLinear(nn.Conv1d(3, 3, 1), 2), TypeError, "base"),
    ("svd-r-float", lambda: SVDLinear(_lin(), 2.0), TypeError, "r"),
    ("svd-r-bool", lambda: SVDLinear(_lin(), True), TypeError, "r"),
    ("svd-r-zero", lambda: SVDLinear(_lin(), 0), ValueError, "r"),
    ("svd-r-above-min-dk", lambda: SVDLinear(_lin(), 6), ValueError, "r"),
    ("svd-alpha-str", lambda: SVDLinear(_lin(), 2, alpha="1"), TypeError, "alpha"),
    ("svd-alpha-zero", lambda: SVDLinear(_lin(), 2, alpha=0.0), ValueError, "alpha"),
    ("svd-init-std-bool", lambda: SVDLinear(_lin(), 2, init_std=True), TypeError, "init_std"),
    ("svd-init-std-nan", lambda: SVDLinear(_lin(), 2, init_std=float("nan")), ValueError,
     "init_std"),
    ("svd-generator-int", lambda: SVDLinear(_lin(), 2, generator=3), TypeError, "generator"),
    # apply_adalora
    ("apply-model-str", lambda: apply_adalora("net", ["0"], r=2), TypeError, "model"),
    ("apply-targets-int", lambda: apply_adalora(_net(), 42, r=2), TypeError, "target_modules"),
    ("apply-targets-ints", lambda: apply_adalora(_net(), [0, 2], r=2), TypeError,
     "target_modules"),
    ("apply-targets-empty", lambda: apply_adalora(_net(), [], r=2), ValueError, "target_modules"),
    ("apply-targets-nomatch", lambda: apply_adalora(_net(), ["q_proj"], r=2), ValueError,
     "target_modules"),
    ("apply-r-str", lambda: apply_adalora(_net(), ["0"], r="2"), TypeError, "r"),
    ("apply-r-zero", lambda: apply_adalora(_net(), ["0"], r=0), ValueError, "r"),
    ("apply-alpha-none", lambda: apply_adalora(_net(), ["0"], r=2, alpha=None), TypeError,
     "alpha"),
    ("apply-seed-float", lambda: apply_adalora(_net(), ["0"], r=2, seed=1.5), TypeError, "seed"),
    ("apply-seed-negative", lambda: apply_adalora(_net(), ["0"], r=2, seed=-1), ValueError,
     "seed"),
    # the regulariser and the penalty
    ("reg-P-ndarray", lambda: orthogonal_regularizer(np.zeros((4, 2)), t23), TypeError, "P"),
    ("reg-Q-int-dtype", lambda: orthogonal_regularizer(torch.zeros(4, 2),
                                                        torch.zeros(2, 3, dtype=torch.int64)),
     TypeError, "Q"),
    ("reg-P-1d", lambda: orthogonal_regularizer(torch.zeros(4), t23), ValueError, "P"),
    ("reg-Q-rows", lambda: orthogonal_regularizer(torch.zeros(4, 3), t23), ValueError, "Q"),
    ("penalty-gamma-str", lambda: orthogonal_penalty(_adapted(), "0.1"), TypeError, "gamma"),
    ("penalty-gamma-negative", lambda: orthogonal_penalty(_adapted(), -1.0), ValueError,
     "gamma"),
    ("penalty-model-int", lambda: orthogonal_penalty(42), TypeError, "model"),
    ("penalty-no-adapter", lambda: orthogonal_penalty(_net()), ValueError, "model"),
    ("find-model-str", lambda: find_svd_modules("abc"), TypeError, "model"),
    ("find-model-list-of-linear", lambda: find_svd_modules([_lin()]), TypeError, "model"),
    # importance
    ("sens-weight-list", lambda: sensitivity([1.0, 2.0, 3.0], t3), TypeError, "weight"),
    ("sens-grad-shape", lambda: sensitivity(t3, torch.zeros(2)), ValueError, "grad"),
    ("ema-beta1-str", lambda: ema_update(t3, t3, t3, beta1="0.5"), TypeError, "beta1"),
    ("ema-beta2-one", lambda: ema_update(t3, t3, t3, beta2=1.0), ValueError, "beta2"),
    ("ema-i-bar-list", lambda: ema_update([0.0] * 3, t3, t3), TypeError, "i_bar"),
    ("ema-u-bar-shape", lambda: ema_update(t3, torch.zeros(2), t3), ValueError, "u_bar"),
    ("tracker-beta1-none", lambda: ImportanceTracker(beta1=None), TypeError, "beta1"),
    ("tracker-beta2-negative", lambda: ImportanceTracker(beta2=-0.1), ValueError, "beta2"),
    ("tracker-name-int", lambda: ImportanceTracker().update(3, t3, t3), TypeError, "name"),
    ("tracker-grad-list", lambda: ImportanceTracker().update("w", t3, [0.0] * 3), TypeError,
     "grad"),
    ("tracker-weight-int", lambda: ImportanceTracker().update("w", t3.long(), None), TypeError,
     "weight"),
    ("tracker-items-int", lambda: ImportanceTracker().update_many(42), TypeError, "items"),
    ("tracker-item-pair", lambda: ImportanceTracker().update_many([("w", t3)]), ValueError,
     "items"),
    ("tracker-score-name-int", lambda: ImportanceTracker().score(0), TypeError, "name"),
    ("triplet-lambda-2d", lambda: triplet_scores(t23.t(), t23, t23), ValueError, "score_lambda"),
    ("triplet-P-array", lambda: triplet_scores(np.zeros((2, 3)), t3, t23), TypeError, "score_P"),
    # the schedule
    ("sched-step-float", lambda: budget_schedule(1.5, **SCHEDULE), TypeError, "step"),
    ("sched-step-above-T", lambda: budget_schedule(101, **SCHEDULE), ValueError, "step"),
    ("sched-total-str", lambda: budget_schedule(5, **{**SCHEDULE, "total_steps": "100"}),
     TypeError, "total_steps"),
    ("sched-t-final-negative", lambda: validate_schedule(**{**SCHEDULE, "t_final": -1}),
     ValueError, "t_final"),
    ("sched-phases-too-long", lambda: validate_schedule(**{**SCHEDULE, "t_init": 80}),
     ValueError, "t_init"),
    ("sched-target-above-init", lambda: validate_schedule(**{**SCHEDULE, "target_budget": 37}),
     ValueError, "target_budget"),
    ("avg-rank-float", lambda: budget_from_average_rank(8.0, 3), TypeError, "average_rank"),
    ("avg-rank-n-zero", lambda: budget_from_average_rank(8, 0), ValueError, "n_matrices"),
    # the allocator
    ("alloc-model-int", lambda: RankAllocator(42, **ALLOC), TypeError, "model"),
    ("alloc-delta-t-float", lambda: RankAllocator(_adapted(), **ALLOC, delta_t=1.5), TypeError,
     "delta_t"),
    ("alloc-delta-t-zero", lambda: RankAllocator(_adapted(), **ALLOC, delta_t=0), ValueError,
     "delta_t"),
    ("alloc-init-budget-float", lambda: RankAllocator(_adapted(), **ALLOC, init_budget=2.5),
     TypeError, "init_budget"),
    ("alloc-init-budget-above-n", lambda: RankAllocator(_adapted(), **ALLOC, init_budget=5),
     ValueError, "init_budget"),
    ("alloc-target-none", lambda: RankAllocator(_adapted(), **{**ALLOC, "target_budget": None}),
     TypeError, "target_budget"),
    ("alloc-beta1-one", lambda: RankAllocator(_adapted(), **ALLOC, beta1=1.0), ValueError,
     "beta1"),
    ("alloc-mask-option-str", lambda: RankAllocator(_adapted(), **ALLOC,
                                                    mask_between_steps="yes"),
     TypeError, "mask_between_steps"),
    ("alloc-mask-option-int", lambda: RankAllocator(_adapted(), **ALLOC, mask_between_steps=1),
     TypeError, "mask_between_steps"),
    ("alloc-step-float", lambda: _alloc().step(1.0), TypeError, "step"),
    ("alloc-step-zero", lambda: _alloc().step(0), ValueError, "step"),
    ("alloc-step-above-T", lambda: _alloc().step(11), ValueError, "step"),
    ("alloc-budget-float", lambda: _alloc().mask_to_budget(2.0), TypeError, "budget"),
    ("alloc-budget-above-n", lambda: _alloc().mask_to_budget(5), ValueError, "budget"),
    ("alloc-warn-str", lambda: _alloc().ranks(warn="no"), TypeError, "warn"),
    ("alloc-pattern-warn-int", lambda: _alloc().rank_pattern(warn=0), TypeError, "warn"),
]


def test_the_table_is_large_and_covers_both_exceptions():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 15
    assert {c[2] for c in CASES} == {TypeError, ValueError}


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc        # not a subclass such as KeyError / IndexError
    message = str(info.value)
    assert re.match(rf"{re.escape(name)}\b", message), message


def test_bad_input_leaves_the_model_unchanged():
    net = _net()
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in net.named_parameters()}
    for kwargs in (dict(target_modules=42, r=2), dict(target_modules=["0"], r=0),
                   dict(target_modules=["0"], r=2, seed=-1), dict(target_modules=["0"], r=9)):
        with pytest.raises((TypeError, ValueError)):
            apply_adalora(net, **kwargs)
    after = dict(net.named_parameters())
    assert set(after) == set(before)
    assert all(after[n].requires_grad == g and torch.equal(after[n], v)
               for n, (g, v) in before.items())
    assert not any(isinstance(m, SVDLinear) for m in net.modules())


def test_numpy_scalars_are_accepted():
    layer = SVDLinear(_lin(), np.int64(2), alpha=np.float32(4.0), init_std=np.float64(0.02))
    assert layer.r == 2 and type(layer.r) is int and layer.scaling == 2.0
    net = apply_adalora(_net(), ("0", "2"), r=np.int32(2), alpha=np.float64(2.0),
                        seed=np.uint16(3))
    assert [m.r for m in find_svd_modules(net).values()] == [2, 2]
    penalty = orthogonal_penalty(net, np.float32(0.5))
    torch.testing.assert_close(penalty, 0.5 * orthogonal_penalty(net, 1.0))
    np_schedule = {k: np.int64(v) for k, v in SCHEDULE.items()}
    assert budget_schedule(np.int64(40), **np_schedule) == budget_schedule(40, **SCHEDULE) == 26
    assert validate_schedule(**np_schedule) == (100, 36, 24, 10, 20)
    assert all(type(v) is int for v in validate_schedule(**np_schedule))
    assert budget_from_average_rank(np.int8(8), np.int64(72)) == 576
    tracker = ImportanceTracker(np.float32(0.5), np.float64(0.5))
    assert tracker.beta1 == 0.5 and type(tracker.beta1) is float
    i, u = ema_update(torch.zeros(1), torch.zeros(1), torch.ones(1), np.float64(0.5), 0.5)
    assert i.item() == 0.5 and u.item() == 0.25
    alloc = RankAllocator(net, target_budget=np.int64(2), total_steps=np.int32(10),
                          t_init=np.int64(1), t_final=np.uint8(2), delta_t=np.int64(1),
                          init_budget=np.int64(4), beta1=np.float32(0.85),
                          mask_between_steps=np.bool_(False))
    assert alloc.mask_between_steps is False
    assert all(type(v) is int for v in (alloc.total_steps, alloc.target_budget, alloc.delta_t))
    net(torch.randn(3, 5)).sum().backward()
    assert alloc.step(np.int64(1)) == 4
    assert sum(alloc.mask_to_budget(np.int64(3)).values()) == 3
    assert sum(alloc.ranks(warn=np.bool_(False)).values()) == 3
