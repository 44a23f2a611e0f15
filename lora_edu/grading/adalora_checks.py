"""Checkers for chapter 7: AdaLoRA's importance EMAs, triplet scores and the cubic budget
schedule (source §3.2 (2)).

The library's versions are :func:`lora_edu.adalora.ema_update`,
:func:`lora_edu.adalora.triplet_scores` and :func:`lora_edu.adalora.budget_schedule`. Tensor
cases are drawn in float64 from a ``torch.Generator`` seeded with ``seed`` and compared to a
relative tolerance of 1e-12; budgets are compared exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from numbers import Integral, Real

import torch
from torch import Tensor

from lora_edu.adalora import budget_schedule, ema_update, triplet_scores
from lora_edu.grading.core import (
    HINT_RETURN_TYPE,
    HINT_SHAPE,
    HINT_UNRECOGNISED,
    Report,
    _call,
    _check_unchanged,
    _close,
    _close_mask,
    _describe_error,
    _error_hint,
    _fail_error,
    _first_difference,
    _fmt_object,
    _fmt_tensor,
    _got_tensor,
    _match,
    _snapshot,
    _start,
)

__all__ = [
    "check_importance_ema",
    "check_triplet_score",
    "check_budget_schedule",
    "HINT_EMA_BETA_SWAPPED",
    "HINT_EMA_BETAS_EXCHANGED",
    "HINT_EMA_OLD_IBAR",
    "HINT_EMA_NO_ABS",
    "HINT_EMA_IN_PLACE",
    "HINT_TRIPLET_SUM",
    "HINT_TRIPLET_AXES",
    "HINT_TRIPLET_NO_LAMBDA",
    "HINT_BUDGET_ROUNDING",
    "HINT_BUDGET_LINEAR",
    "HINT_BUDGET_PROGRESS_CUBED",
    "HINT_BUDGET_BOUNDARY",
    "HINT_BUDGET_INT",
]

#: A hint of the report; its text is the value.
HINT_EMA_BETA_SWAPPED = ("β and 1 − β are swapped: Ī ← β₁·Ī + (1 − β₁)·I keeps most of the old "
                         "average (β close to 1) and adds a little of the new value")
#: A hint of the report; its text is the value.
HINT_EMA_BETAS_EXCHANGED = ("β₁ and β₂ are exchanged: β₁ smooths the sensitivity Ī, β₂ the "
                            "uncertainty Ū")
#: A hint of the report; its text is the value.
HINT_EMA_OLD_IBAR = ("Ū uses the old Ī: the uncertainty is |I − Ī_t| with the Ī just updated in "
                     "this step (the AdaLoRA paper, loralib and PEFT)")
#: A hint of the report; its text is the value.
HINT_EMA_NO_ABS = ("the absolute value is missing: Ū averages |I − Ī|, how far the sensitivity "
                   "is from its average in either direction")
#: A hint of the report; its text is the value.
HINT_EMA_IN_PLACE = ("an input was modified in place (mul_, add_, +=): return new tensors "
                     "Ī_t, Ū_t and leave i_bar, u_bar and sens as they were")
#: A hint of the report; its text is the value.
HINT_TRIPLET_SUM = ("sum instead of mean: the triplet score averages the element scores of "
                    "column i of P and of row i of Q (mean_j), so a long column does not outweigh "
                    "the singular value")
#: A hint of the report; its text is the value.
HINT_TRIPLET_AXES = ("P's or Q's axes are swapped: triplet i owns column i of P (d, r), the mean "
                     "over dim 0, and row i of Q (r, k), the mean over dim 1")
#: A hint of the report; its text is the value.
HINT_TRIPLET_NO_LAMBDA = ("the singular value's own score is missing: S_i = S(λ_i) + "
                          "mean_j S(P_ji) + mean_j S(Q_ij)")
#: A hint of the report; its text is the value.
HINT_BUDGET_ROUNDING = ("rounded differently: the schedule takes the floor ⌊·⌋ of the cubic "
                        "formula (loralib and PEFT truncate with int(...)), not round() or ceil()")
#: A hint of the report; its text is the value.
HINT_BUDGET_LINEAR = ("linear instead of cubic: the pruning phase follows "
                      "b(T) + (b(0) − b(T))·(1 − progress)³")
#: A hint of the report; its text is the value.
HINT_BUDGET_PROGRESS_CUBED = ("the cubic runs the wrong way: use (1 − progress)³, which falls "
                              "fast at first and flattens out towards b(T), not progress³")
#: A hint of the report; its text is the value.
HINT_BUDGET_BOUNDARY = ("off by one at a phase boundary: b(0) up to step t_init, then progress = "
                        "(t − t_init)/(T − t_init − t_final), and b(T) from step T − t_final on "
                        "(t_final is a duration, not a step index)")
#: A hint of the report; its text is the value.
HINT_BUDGET_INT = ("return an int, a number of triplets: take the floor and convert "
                   "(int(...) or math.floor), not a float")

_RTOL = 1e-12
_ATOL = 1e-14


# --------------------------------------------------------------------------- EMAs

def _ema(i_bar: Tensor, u_bar: Tensor, sens: Tensor, b1: float, b2: float, *,
         swap_i: bool = False, swap_u: bool = False, old: bool = False,
         no_abs: bool = False) -> tuple[Tensor, Tensor]:
    """The two EMAs with the chosen mistakes (all False: the right formula)."""
    w1, w2 = (1 - b1, b1) if swap_i else (b1, 1 - b1)
    w3, w4 = (1 - b2, b2) if swap_u else (b2, 1 - b2)
    new_i = w1 * i_bar + w2 * sens
    diff = sens - (i_bar if old else new_i)
    return new_i, w3 * u_bar + w4 * (diff if no_abs else diff.abs())


def check_importance_ema(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(i_bar, u_bar, sens, beta1, beta2) -> (i_bar_new, u_bar_new)``
    (source §3.2 (2): smoothed sensitivity and uncertainty).

    ``Ī_t = β₁·Ī_{t−1} + (1 − β₁)·I_t`` and ``Ū_t = β₂·Ū_{t−1} + (1 − β₂)·|I_t − Ī_t|``, with
    the **updated** Ī_t inside the absolute value (the AdaLoRA paper and both public
    implementations, loralib and PEFT), compared with :func:`lora_edu.adalora.ema_update`. The
    tensors are float64 of one shape; the inputs must not be modified.

    Cases: β₁ ≠ β₂ (so that exchanging them shows), the first step (Ī = Ū = 0), β = 0, PEFT's
    defaults β₁ = β₂ = 0.85, 1-D and 2-D tensors. Mistakes recognised: β and 1 − β swapped
    (:data:`HINT_EMA_BETA_SWAPPED`), β₁ and β₂ exchanged (:data:`HINT_EMA_BETAS_EXCHANGED`), Ū
    with the old Ī (:data:`HINT_EMA_OLD_IBAR`), no absolute value (:data:`HINT_EMA_NO_ABS`),
    inputs changed in place (:data:`HINT_EMA_IN_PLACE`).
    """
    grader, gen = _start("check_importance_ema", seed, student_fn=student_fn)
    specs = [("random", (4, 3), 0.85, 0.7, False), ("random", (5,), 0.9, 0.6, False),
             ("first step, Ī = Ū = 0", (3, 4), 0.85, 0.95, True),
             ("β₁ = β₂ = 0", (3, 2), 0.0, 0.0, False),
             ("PEFT's defaults β₁ = β₂ = 0.85", (2, 6), 0.85, 0.85, False)]
    for kind, shape, b1, b2, first in specs:
        grader.start_case()
        draws = [torch.rand(*shape, generator=gen, dtype=torch.float64) for _ in range(3)]
        zero = torch.zeros(shape, dtype=torch.float64)
        i_bar = zero if first else draws[0]
        u_bar = zero.clone() if first else 0.5 * draws[1]
        sens = 2.0 * draws[2]
        case = (f"{kind}: tensors of shape {shape} float64, beta1={b1:g}, beta2={b2:g}")
        exp_i, exp_u = ema_update(i_bar, u_bar, sens, b1, b2)
        expected = f"Ī_t {_fmt_tensor(exp_i)}; Ū_t {_fmt_tensor(exp_u)}"
        inputs = {"i_bar": i_bar.clone(), "u_bar": u_bar.clone(), "sens": sens.clone()}
        originals = _snapshot(**inputs)
        outcome = _call(student_fn, *inputs.values(), b1, b2)
        _check_unchanged(grader, case, inputs, originals, HINT_EMA_IN_PLACE)
        if outcome.error is not None:
            _fail_error(grader, case, expected, outcome.error)
            continue
        pair = outcome.value
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(t, Tensor) for t in pair)):
            grader.fail(case, "a pair (Ī_t, Ū_t) of tensors; " + expected, _fmt_object(pair),
                        HINT_RETURN_TYPE)
            continue
        got_i, got_u = pair
        got = f"Ī_t {_got_tensor(exp_i, got_i)}; Ū_t {_got_tensor(exp_u, got_u)}"
        if got_i.shape != shape or got_u.shape != shape:
            grader.fail(case, expected, got, HINT_SHAPE)
            continue
        ok_i = _close(got_i, exp_i, _RTOL, _ATOL)
        ok_u = _close(got_u, exp_u, _RTOL, _ATOL)
        if ok_i and ok_u:
            continue
        args = (i_bar, u_bar, sens)
        variants = [(HINT_EMA_BETA_SWAPPED, _ema(*args, b1, b2, swap_i=True, swap_u=True)),
                    (HINT_EMA_BETA_SWAPPED, _ema(*args, b1, b2, swap_i=True)),
                    (HINT_EMA_BETA_SWAPPED, _ema(*args, b1, b2, swap_u=True)),
                    (HINT_EMA_BETAS_EXCHANGED, _ema(*args, b2, b1)),
                    (HINT_EMA_OLD_IBAR, _ema(*args, b1, b2, old=True)),
                    (HINT_EMA_NO_ABS, _ema(*args, b1, b2, no_abs=True))]
        hint = next((h for h, (vi, vu) in variants
                     if _close(got_i, vi, _RTOL, _ATOL) and _close(got_u, vu, _RTOL, _ATOL)),
                    None)
        if hint is None:
            name, exp, got_t = ("Ī_t", exp_i, got_i) if not ok_i else ("Ū_t", exp_u, got_u)
            hint = _first_difference(name, exp, got_t, _close_mask(got_t, exp, _RTOL, _ATOL))
        grader.fail(case, expected, got, hint)
    return grader.report()


# --------------------------------------------------------------------------- triplet scores

def check_triplet_score(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(score_P, score_lambda, score_Q) -> Tensor (r,)``, the importance of each
    triplet (P_{*i}, λ_i, Q_{i*}) (source §3.2 (2), 三元组重要性).

    S_i = S(λ_i) + mean_j S(P_{ji}) + mean_j S(Q_{ij}), with score_P (d, r), score_lambda (r,)
    and score_Q (r, k) the element importances (float64), compared with
    :func:`lora_edu.adalora.triplet_scores`.

    Cases: d, r, k all different (wrong axes are a shape error there), a square d = r = k case
    (wrong axes give a wrong value), r = 1, and d = k = 1. Mistakes recognised: sum instead of
    mean (:data:`HINT_TRIPLET_SUM`), the axes of P or Q swapped (:data:`HINT_TRIPLET_AXES`), the
    λ term forgotten (:data:`HINT_TRIPLET_NO_LAMBDA`).
    """
    grader, gen = _start("check_triplet_score", seed, student_fn=student_fn)
    for kind, d, r, k in [("random", 6, 3, 4), ("random", 5, 2, 7), ("square d = r = k", 3, 3, 3),
                          ("r = 1", 4, 1, 5), ("d = k = 1", 1, 2, 1)]:
        grader.start_case()
        P = torch.rand(d, r, generator=gen, dtype=torch.float64)
        lam = torch.rand(r, generator=gen, dtype=torch.float64)
        Q = torch.rand(r, k, generator=gen, dtype=torch.float64)
        case = f"{kind}: score_P {(d, r)}, score_lambda {(r,)}, score_Q {(r, k)}, float64"
        expected = triplet_scores(P, lam, Q)
        inputs = {"score_P": P.clone(), "score_lambda": lam.clone(), "score_Q": Q.clone()}
        originals = _snapshot(**inputs)
        outcome = _call(student_fn, *inputs.values())
        _check_unchanged(grader, case, inputs, originals)
        if outcome.error is not None:
            _fail_error(grader, case, _fmt_tensor(expected), outcome.error, HINT_TRIPLET_AXES)
            continue
        got = outcome.value
        if not isinstance(got, Tensor):
            grader.fail(case, _fmt_tensor(expected), _fmt_object(got), HINT_RETURN_TYPE)
            continue
        if got.shape != expected.shape:
            grader.fail(case, _fmt_tensor(expected), _fmt_tensor(got), HINT_TRIPLET_AXES)
            continue
        if _close(got, expected, _RTOL, _ATOL):
            continue
        p_mean, q_mean = P.mean(dim=0), Q.mean(dim=1)
        variants = [(HINT_TRIPLET_SUM, lam + P.sum(dim=0) + Q.sum(dim=1)),
                    (HINT_TRIPLET_SUM, lam + P.sum(dim=0) + q_mean),
                    (HINT_TRIPLET_SUM, lam + p_mean + Q.sum(dim=1)),
                    (HINT_TRIPLET_NO_LAMBDA, p_mean + q_mean)]
        # the wrong axes, where broadcasting lets them through to a result of shape (r,)
        for p_term, q_term in ((P.mean(dim=1), q_mean), (p_mean, Q.mean(dim=0)),
                               (P.mean(dim=1), Q.mean(dim=0))):
            try:
                variants.append((HINT_TRIPLET_AXES, lam + p_term + q_term))
            except RuntimeError:
                pass
        hint = _match(got, variants, _RTOL, _ATOL) or _first_difference(
            "S", expected, got, _close_mask(got, expected, _RTOL, _ATOL))
        grader.fail(case, _fmt_tensor(expected), _got_tensor(expected, got), hint)
    return grader.report()


# --------------------------------------------------------------------------- budget schedule

def _schedule(step: int, T: int, b0: int, bT: int, ti: int, tf: int, *, length: int = 0,
              shift: int = 0, term: Callable[[Fraction], Fraction] | None = None,
              rounding: Callable[[Fraction], int] = math.floor) -> int | Fraction:
    """b(step) with the chosen mistakes: the cubic phase's length changed by ``length``, its
    progress by ``shift`` steps, another ``term(progress)`` than (1 − p)³, another rounding."""
    if step <= ti:
        return b0
    L = T - ti - tf + length
    done = step - ti + shift
    if done >= L:
        return bT
    p = Fraction(done, L)
    value = bT + (b0 - bT) * (term(p) if term is not None else (1 - p) ** 3)
    return rounding(value)


def _same(got: object, value: int | Fraction) -> bool:
    """``got`` (an int, or a float a student returned) equals ``value`` up to float rounding."""
    return isinstance(got, Real) and abs(float(got) - float(value)) <= 1e-9 * max(1.0, abs(value))


def _float_floor(step: int, T: int, b0: int, bT: int, ti: int, tf: int) -> int:
    """⌊·⌋ of the cubic formula evaluated in float64, as a student (and PEFT) computes it."""
    if step <= ti or step >= T - tf:
        return budget_schedule(step, T, b0, bT, ti, tf)
    return math.floor(bT + (b0 - bT) * (1 - (step - ti) / (T - ti - tf)) ** 3)


def check_budget_schedule(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(step, total_steps, init_budget, target_budget, t_init, t_final) -> int``,
    AdaLoRA's cubic budget schedule (source §3.2 (2), 全局预算调度器), at every step 0 … T.

    b(t) = b(0) for t ≤ t_i; ⌊b(T) + (b(0) − b(T))·(1 − (t − t_i)/(T − t_i − t_f))³⌋ for
    t_i < t < T − t_f; b(T) for t ≥ T − t_f — compared with
    :func:`lora_edu.adalora.budget_schedule`, which takes the **floor** in exact integer
    arithmetic (as documented there; loralib and PEFT truncate a float with ``int``). Where the
    exact cubic is an integer, the float64 formula can land just below it: there the floor of
    the float64 value is accepted too. The result must be an ``int`` (any integer type).

    Cases (one per schedule, every step checked): the library's docstring example (T = 100,
    b(0) = 36, b(T) = 24, t_i = 10, t_f = 20), t_init = 0 and t_final = 0, init = target, a
    long schedule. Mistakes recognised: round or ceil instead of floor
    (:data:`HINT_BUDGET_ROUNDING`), linear decay (:data:`HINT_BUDGET_LINEAR`), progress³ instead
    of (1 − progress)³ (:data:`HINT_BUDGET_PROGRESS_CUBED`), off by one at a phase boundary
    (:data:`HINT_BUDGET_BOUNDARY`), a float returned (:data:`HINT_BUDGET_INT`). ``seed`` is
    accepted for a uniform interface (the schedules are fixed).
    """
    grader, _ = _start("check_budget_schedule", seed, student_fn=student_fn)
    schedules = [(100, 36, 24, 10, 20), (60, 144, 48, 0, 0), (40, 30, 30, 5, 10),
                 (250, 576, 96, 25, 50), (24, 9, 2, 0, 6)]
    for T, b0, bT, ti, tf in schedules:
        grader.start_case()
        args = (T, b0, bT, ti, tf)
        case = f"schedule T={T}, b(0)={b0}, b(T)={bT}, t_init={ti}, t_final={tf}"
        got: list[object] = []
        error = None
        for step in range(T + 1):
            outcome = _call(student_fn, step, *args)
            if outcome.error is not None:
                error = (step, outcome.error)
                break
            got.append(outcome.value)
        if error is not None:
            step, err = error
            grader.fail(f"{case}, step {step}", f"b({step}) = {budget_schedule(step, *args)}",
                        _describe_error(err), _error_hint(err))
            continue
        non_int = [(s, v) for s, v in enumerate(got)
                   if isinstance(v, bool) or not isinstance(v, Integral)]
        if non_int:
            s, v = non_int[0]
            hint = HINT_BUDGET_INT if isinstance(v, Real) else HINT_RETURN_TYPE
            grader.fail(f"{case}, step {s}", f"an int, b({s}) = {budget_schedule(s, *args)}",
                        f"{_fmt_object(v)} ({len(non_int)} of {T + 1} steps not an int)", hint)
            if hint == HINT_RETURN_TYPE:
                continue
        expected = [budget_schedule(s, *args) for s in range(T + 1)]
        accepted = [{e, _float_floor(s, *args)} for s, e in enumerate(expected)]
        bad = [s for s, v in enumerate(got) if not any(v == a for a in accepted[s])]
        if not bad:
            continue
        variants = [(HINT_BUDGET_ROUNDING, {"rounding": round}),
                    (HINT_BUDGET_ROUNDING, {"rounding": lambda v: math.floor(v + Fraction(1, 2))}),
                    (HINT_BUDGET_ROUNDING, {"rounding": math.ceil}),
                    (HINT_BUDGET_INT, {"rounding": lambda v: v}),
                    (HINT_BUDGET_LINEAR, {"term": lambda p: 1 - p}),
                    (HINT_BUDGET_PROGRESS_CUBED, {"term": lambda p: p**3}),
                    (HINT_BUDGET_PROGRESS_CUBED, {"term": lambda p: 1 - p**3}),
                    (HINT_BUDGET_BOUNDARY, {"length": 1}),
                    (HINT_BUDGET_BOUNDARY, {"length": -1}),
                    (HINT_BUDGET_BOUNDARY, {"shift": 1}),
                    (HINT_BUDGET_BOUNDARY, {"shift": -1})]
        # the mistake whose whole schedule the student's agrees with best; up to 2 steps may
        # differ (a float computation landing just off an exact integer)
        first = bad[0]
        hint, best = None, 0
        for candidate, mistake in variants:
            wrong = [_schedule(s, *args, **mistake) for s in range(T + 1)]
            agree = sum(_same(g, w) for g, w in zip(got, wrong, strict=True))
            if agree > best and agree >= T + 1 - 2 and _same(got[first], wrong[first]):
                hint, best = candidate, agree
        if hint is None:
            hint = (f"{HINT_UNRECOGNISED} the budget differs first at step {first}: expected "
                    f"{expected[first]}, got {got[first]}; compare your steps with the formula "
                    f"in the docstring")
        grader.fail(f"{case}, step {first} ({len(bad)} of {T + 1} steps differ)",
                    f"b({first}) = {expected[first]}", f"{got[first]!r}", hint)
    return grader.report()
