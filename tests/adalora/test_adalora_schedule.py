"""AdaLoRA's cubic budget schedule (lora_edu.adalora)."""

import math

import pytest

from lora_edu.adalora import budget_from_average_rank, budget_schedule, validate_schedule

EXAMPLE = dict(total_steps=100, init_budget=36, target_budget=24, t_init=10, t_final=20)


def test_worked_example():
    got = [budget_schedule(t, **EXAMPLE) for t in (11, 20, 40, 60)]
    assert got == [35, 31, 26, 24]


def test_phases_and_ends():
    b = [budget_schedule(t, **EXAMPLE) for t in range(0, 101)]
    assert b[0] == 36 and all(v == 36 for v in b[:11])          # warm-up: t <= t_init
    assert b[100] == 24 and all(v == 24 for v in b[80:])        # final phase: last t_final steps
    assert all(x >= y for x, y in zip(b, b[1:], strict=False))  # monotone non-increasing
    assert b[40] == 26                                          # still decaying mid-way


@pytest.mark.parametrize("args", [EXAMPLE,
                                  dict(total_steps=1000, init_budget=576, target_budget=384,
                                       t_init=100, t_final=300),
                                  dict(total_steps=7, init_budget=5, target_budget=1, t_init=0,
                                       t_final=0)])
def test_matches_float_formula(args):
    T, b0, bT = args["total_steps"], args["init_budget"], args["target_budget"]
    ti, tf = args["t_init"], args["t_final"]
    for t in range(ti + 1, T - tf):
        exact = bT + (b0 - bT) * (1 - (t - ti) / (T - ti - tf)) ** 3
        if abs(exact - round(exact)) > 1e-9:   # away from integers, float floor is reliable
            assert budget_schedule(t, **args) == math.floor(exact)


def test_t_final_is_a_duration():
    # T - t_final is where the final phase starts, not t_final itself
    args = dict(total_steps=100, init_budget=1000, target_budget=10, t_init=0, t_final=30)
    assert budget_schedule(31, **args) > 10
    assert budget_schedule(50, **args) == 10 + (990 * 20**3) // 70**3 == 33
    assert budget_schedule(70, **args) == 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(t_init=50, t_final=50), "t_init"),
    (dict(t_init=60, t_final=50), "t_init"),
    (dict(target_budget=37), "target_budget"),
    (dict(total_steps=0), "total_steps"),
    (dict(t_final=-1), "t_final"),
    (dict(init_budget=0, target_budget=0), "init_budget"),
])
def test_invalid_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        budget_schedule(5, **{**EXAMPLE, **kwargs})
    with pytest.raises(ValueError, match=match):
        validate_schedule(**{**EXAMPLE, **kwargs})


def test_bad_step():
    with pytest.raises(ValueError, match="step"):
        budget_schedule(101, **EXAMPLE)
    with pytest.raises(ValueError, match="step"):
        budget_schedule(-1, **EXAMPLE)
    with pytest.raises(TypeError, match="step"):
        budget_schedule(1.5, **EXAMPLE)


def test_average_rank_conversion():
    assert budget_from_average_rank(8, 12 * 6) == 576
    with pytest.raises(ValueError, match="average_rank"):
        budget_from_average_rank(0, 3)
