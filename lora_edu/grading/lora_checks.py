"""Checkers for chapters 1 and 2: the best rank-r approximation and LoRA's initialisation,
forward pass and merge (source §2.1, §2.2).

Notation of the book: W0 ∈ ℝ^{d×k}, B ∈ ℝ^{d×r}, A ∈ ℝ^{r×k}, s = α/r. For a batch x of shape
(n, k) (one input per row, as ``nn.Linear`` takes it) the LoRA layer computes
h = x·W0ᵀ + s·x·Aᵀ·Bᵀ — the row form of source §2.1's h = W0·x + s·B·A·x — and merging gives
W = W0 + s·B·A. Floating-point cases are drawn in float64 from a ``torch.Generator`` seeded with
``seed``; results are compared with the library (:class:`lora_edu.lora.LoRALinear`,
:func:`lora_edu.lowrank.best_rank_r`) to a relative tolerance of 1e-9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lora_edu.grading.core import (
    HINT_DTYPE,
    HINT_RETURN_TYPE,
    HINT_SHAPE,
    Report,
    _call,
    _check_unchanged,
    _close,
    _close_mask,
    _fail_error,
    _first_difference,
    _fmt_object,
    _fmt_tensor,
    _got_tensor,
    _Grader,
    _match,
    _max_diff,
    _snapshot,
    _start,
)
from lora_edu.lora import LoRALinear
from lora_edu.lowrank import best_rank_r, truncation_error

__all__ = [
    "check_lora_forward",
    "check_lora_merge",
    "check_lora_init",
    "check_rank_r_truncation",
    "HINT_SCALE_MISSING",
    "HINT_SCALE_ALPHA",
    "HINT_SCALE_INVERTED",
    "HINT_FORWARD_NO_BASE",
    "HINT_FORWARD_ORDER",
    "HINT_MERGE_ORDER",
    "HINT_MERGE_DELTA_ONLY",
    "HINT_MERGE_IN_PLACE",
    "HINT_INIT_SWAPPED",
    "HINT_INIT_BOTH_ZERO",
    "HINT_INIT_B_NOT_ZERO",
    "HINT_INIT_A_CONSTANT",
    "HINT_INIT_SHAPES",
    "HINT_INIT_ORDER",
    "HINT_INIT_GENERATOR",
    "HINT_RANK_SMALLEST",
    "HINT_RANK_OFF_BY_ONE",
    "HINT_RANK_FACTORS",
    "HINT_RANK_TOO_HIGH",
    "HINT_RANK_NOT_BEST",
]

#: A hint of the report; its text is the value.
HINT_SCALE_MISSING = ("the bypass is not scaled by s = α/r: multiply B·A (or the bypass output) "
                      "by alpha / r")
#: A hint of the report; its text is the value.
HINT_SCALE_ALPHA = "the bypass is scaled by α instead of s = α/r: divide alpha by r"
#: A hint of the report; its text is the value.
HINT_SCALE_INVERTED = "the scale is inverted: r/α instead of s = α/r"
#: A hint of the report; its text is the value.
HINT_FORWARD_NO_BASE = ("the frozen main path x·W0ᵀ is missing: h = x·W0ᵀ + s·x·Aᵀ·Bᵀ adds the "
                        "bypass to the base layer's output")
#: A hint of the report; its text is the value.
HINT_FORWARD_ORDER = ("A and B (or a transpose) are in the wrong order: for x of shape (n, k), "
                      "h = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ; A (r, k) first reduces k to r, then B (d, r) "
                      "maps back up to d, and h has shape (n, d)")
#: A hint of the report; its text is the value.
HINT_MERGE_ORDER = ("the update is not B·A (or is transposed): B (d, r) times A (r, k) is d×k "
                    "like W0, while A·B is r×r, or undefined when k ≠ d; W = W0 + s·B·A")
#: A hint of the report; its text is the value.
HINT_MERGE_DELTA_ONLY = ("the result is only the update s·B·A: the merged weight is "
                         "W0 + s·B·A")
#: A hint of the report; its text is the value.
HINT_MERGE_IN_PLACE = ("W0 was modified in place (W0 += … or W0.add_(…)): the caller's frozen W0 "
                       "must stay unchanged; return W0 + s·B·A as a new tensor")
#: A hint of the report; its text is the value.
HINT_INIT_SWAPPED = ("the roles of A and B are swapped: A is random and B is zero (source §2.1 "
                     "(2): A高斯随机初始化，B全零初始化), so the bypass starts at 0 but still "
                     "gets a gradient")
#: A hint of the report; its text is the value.
HINT_INIT_BOTH_ZERO = ("A and B are both zero: then both get zero gradients (∂ℒ/∂B needs A·x ≠ 0, "
                       "∂ℒ/∂A needs B ≠ 0) and the bypass never trains; draw A at random")
#: A hint of the report; its text is the value.
HINT_INIT_B_NOT_ZERO = ("B is not zero: the adapted layer must start equal to the base layer "
                        "(source §2.1 (2): 训练初期旁路输出为0), so B starts at exactly 0")
#: A hint of the report; its text is the value.
HINT_INIT_A_CONSTANT = ("A is constant, not random: with all its rows equal, B·A can only have "
                        "rank 1; draw A at random")
#: A hint of the report; its text is the value.
HINT_INIT_SHAPES = ("the shapes are wrong or transposed: A is (r, k) and B is (d, r) "
                    "(nn.Linear's out × in layout), so that B·A is (d, k) like W0")
#: A hint of the report; its text is the value.
HINT_INIT_ORDER = "the pair is returned as (B, A): return (A, B)"
#: A hint of the report; its text is the value.
HINT_INIT_GENERATOR = ("A does not come from the generator passed in: draw it with "
                       "torch.randn(..., generator=generator), so that a seed reproduces it")
#: A hint of the report; its text is the value.
HINT_RANK_SMALLEST = ("the r smallest singular values are kept: keep the r largest "
                      "(torch.linalg.svd returns them in descending order: take the first r)")
#: A hint of the report; its text is the value.
HINT_RANK_OFF_BY_ONE = ("off by one: the result keeps r − 1 or r + 1 singular values instead of "
                        "r (S[:r] holds exactly r of them)")
#: A hint of the report; its text is the value.
HINT_RANK_FACTORS = ("U, S and Vᵀ do not match: torch.linalg.svd returns Vh = Vᵀ, so "
                     "W_r = U[:, :r] · diag(S[:r]) · Vh[:r, :] (the first r columns of U and "
                     "the first r rows of Vh)")
#: A hint of the report; its text is the value.
HINT_RANK_TOO_HIGH = ("the result has rank greater than r: zero all but the r largest singular "
                      "values")
#: A hint of the report; its text is the value.
HINT_RANK_NOT_BEST = ("the result has rank ≤ r but is not the best approximation: its error "
                      "‖W − W_r‖_F exceeds the Eckart–Young minimum sqrt(Σ_{i>r} σ_i²)")

_RTOL = 1e-9
_ATOL = 1e-10


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _small_ints(gen: torch.Generator, *shape: int) -> Tensor:
    """Integers in [−3, 3] as float64: their products and sums are exact in any order."""
    return torch.randint(-3, 4, shape, generator=gen).to(torch.float64)


def _lora_layer(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> LoRALinear:
    """The library's layer with these weights and bias 0 (no draw from the global generator)."""
    d, k = W0.shape
    base = torch.nn.utils.skip_init(nn.Linear, k, d, dtype=W0.dtype)
    layer = LoRALinear(base, r, alpha, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base.weight.copy_(W0)
        base.bias.zero_()
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer


def _check_tensor_result(grader: _Grader, case: str, expected: Tensor, got: object,
                         shape_hint: str = HINT_SHAPE) -> bool:
    """Type, shape and dtype of a tensor result; one failure and False if any is wrong."""
    if not isinstance(got, Tensor):
        grader.fail(case, _fmt_tensor(expected), _fmt_object(got), HINT_RETURN_TYPE)
        return False
    if got.shape != expected.shape:
        grader.fail(case, _fmt_tensor(expected), _fmt_tensor(got), shape_hint)
        return False
    if got.dtype != expected.dtype:
        grader.fail(case, _fmt_tensor(expected), _fmt_tensor(got), HINT_DTYPE)
        return False
    return True


# --------------------------------------------------------------------------- forward

def check_lora_forward(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(x, W0, A, B, alpha, r) -> h``, the LoRA forward pass (source §2.1 (1)).

    The student's function receives x (n, k), W0 (d, k), A (r, k), B (d, r) as float64 tensors
    and ``alpha`` (float), ``r`` (int), and must return h = x·W0ᵀ + (α/r)·x·Aᵀ·Bᵀ of shape
    (n, d) — the row form of h = W0·x + s·B·A·x with s = α/r — compared with
    :meth:`lora_edu.lora.LoRALinear.reference_forward` of a layer holding these weights (bias 0).

    Cases: random shapes with d ≠ k and a square one (d = k, where a transposed product is
    defined but wrong), r = 1, n = 1, and B = 0 (with small-integer x and W0, so h must equal
    x·W0ᵀ exactly). Mistakes recognised: scale forgotten (:data:`HINT_SCALE_MISSING`), α
    instead of α/r (:data:`HINT_SCALE_ALPHA`), r/α (:data:`HINT_SCALE_INVERTED`), base term
    dropped (:data:`HINT_FORWARD_NO_BASE`), A/B order or transposes, as a wrong product or a
    shape error (:data:`HINT_FORWARD_ORDER`). An input changed in place is a failure too.
    """
    grader, gen = _start("check_lora_forward", seed, student_fn=student_fn)
    #        kind      n  d  k  r  alpha
    specs = [("random", 5, 6, 4, 2, 6.0),
             ("random", 3, 3, 7, 3, 1.5),
             ("square d = k", 4, 5, 5, 2, 8.0),
             ("r = 1", 4, 5, 3, 1, 2.0),
             ("n = 1", 1, 4, 6, 3, 12.0),
             ("B = 0", 3, 5, 4, 2, 4.0)]
    for kind, n, d, k, r, alpha in specs:
        grader.start_case()
        if kind == "B = 0":
            x, W0 = _small_ints(gen, n, k), _small_ints(gen, d, k)
            A, B = _randn(gen, r, k), torch.zeros(d, r, dtype=torch.float64)
        else:
            x, W0, A, B = _randn(gen, n, k), _randn(gen, d, k), _randn(gen, r, k), _randn(gen, d, r)
        s = alpha / r
        case = (f"{kind}: n={n}, d={d}, k={k}, r={r}, alpha={alpha:g} (s = alpha/r = {s:g}); "
                f"x {(n, k)}, W0 {(d, k)}, A {(r, k)}, B {(d, r)}, float64")
        with torch.no_grad():
            expected = _lora_layer(W0, A, B, alpha, r).reference_forward(x)
        inputs = {"x": x.clone(), "W0": W0.clone(), "A": A.clone(), "B": B.clone()}
        originals = _snapshot(**inputs)
        outcome = _call(student_fn, *inputs.values(), alpha, r)
        if outcome.error is not None:
            _fail_error(grader, case, _fmt_tensor(expected), outcome.error, HINT_FORWARD_ORDER)
        elif _check_tensor_result(grader, case, expected, outcome.value, HINT_FORWARD_ORDER):
            got = outcome.value
            exact = kind == "B = 0"
            ok = torch.equal(got, x @ W0.T) if exact else _close(got, expected, _RTOL, _ATOL)
            if not ok:
                base, bypass = x @ W0.T, x @ A.T @ B.T
                variants = [(HINT_SCALE_MISSING, base + bypass),
                            (HINT_SCALE_ALPHA, base + alpha * bypass),
                            (HINT_SCALE_INVERTED, base + (r / alpha) * bypass),
                            (HINT_FORWARD_NO_BASE, s * bypass)]
                if n == d:
                    variants.append((HINT_FORWARD_ORDER, expected.T))
                if d == k:
                    wrong = x @ (B @ A)
                    variants += [(HINT_FORWARD_ORDER, base + s * wrong),
                                 (HINT_FORWARD_ORDER, x @ W0 + s * bypass),
                                 (HINT_FORWARD_ORDER, x @ W0 + s * wrong)]
                hint = _match(got, variants, _RTOL, _ATOL) or _first_difference(
                    "h", expected, got, _close_mask(got, expected, 0.0 if exact else _RTOL,
                                                    0.0 if exact else _ATOL))
                expected_text = _fmt_tensor(expected) + (" (exactly x·W0ᵀ)" if exact else "")
                grader.fail(case, expected_text, _got_tensor(expected, got), hint)
        _check_unchanged(grader, case, inputs, originals)
    return grader.report()


# --------------------------------------------------------------------------- merge

def check_lora_merge(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(W0, A, B, alpha, r) -> W``, the merged weight (source §2.2, 2).

    W = W0 + (α/r)·B·A, shape (d, k), compared with the weight of
    :meth:`lora_edu.lora.LoRALinear.merge`. The function receives a copy of W0 (d, k), A (r, k)
    and B (d, r) in float64 and must leave them unchanged: merging into the caller's W0 in place
    is a failure (:data:`HINT_MERGE_IN_PLACE`) even when the returned weight is right.

    Cases: d ≠ k both ways (A·B undefined), a full-rank square case d = k = r (A·B defined, but
    r×r), a square case d = k > r (A·B is r×r: a shape error when added to W0), r = 1, and B = 0
    (W must equal W0 exactly). Mistakes recognised: scale forgotten, α, r/α
    (:data:`HINT_SCALE_MISSING`, …), A·B instead of B·A or a transposed update
    (:data:`HINT_MERGE_ORDER`), only ΔW returned (:data:`HINT_MERGE_DELTA_ONLY`), W0 modified.
    """
    grader, gen = _start("check_lora_merge", seed, student_fn=student_fn)
    #        kind                   d  k  r  alpha
    specs = [("random", 6, 4, 2, 6.0),
             ("random", 3, 7, 3, 1.5),
             ("full rank d = k = r", 3, 3, 3, 6.0),
             ("square d = k > r", 5, 5, 2, 8.0),
             ("r = 1", 4, 5, 1, 3.0),
             ("B = 0", 4, 3, 2, 4.0)]
    for kind, d, k, r, alpha in specs:
        grader.start_case()
        if kind == "B = 0":
            W0, A, B = _small_ints(gen, d, k), _randn(gen, r, k), torch.zeros(d, r,
                                                                               dtype=torch.float64)
        else:
            W0, A, B = _randn(gen, d, k), _randn(gen, r, k), _randn(gen, d, r)
        s = alpha / r
        case = (f"{kind}: d={d}, k={k}, r={r}, alpha={alpha:g} (s = alpha/r = {s:g}); "
                f"W0 {(d, k)}, A {(r, k)}, B {(d, r)}, float64")
        layer = _lora_layer(W0, A, B, alpha, r)
        layer.merge()
        expected = layer.base.weight.detach().clone()
        inputs = {"W0": W0.clone(), "A": A.clone(), "B": B.clone()}
        originals = _snapshot(**inputs)
        outcome = _call(student_fn, *inputs.values(), alpha, r)
        if outcome.error is not None:
            _fail_error(grader, case, _fmt_tensor(expected), outcome.error, HINT_MERGE_ORDER)
        elif _check_tensor_result(grader, case, expected, outcome.value, HINT_MERGE_ORDER):
            got = outcome.value
            exact = kind == "B = 0"
            ok = torch.equal(got, W0) if exact else _close(got, expected, _RTOL, _ATOL)
            if not ok:
                delta = B @ A
                variants = [(HINT_SCALE_MISSING, W0 + delta),
                            (HINT_SCALE_ALPHA, W0 + alpha * delta),
                            (HINT_SCALE_INVERTED, W0 + (r / alpha) * delta),
                            (HINT_MERGE_DELTA_ONLY, s * delta)]
                if d == k:
                    variants.append((HINT_MERGE_ORDER, W0 + s * delta.T))
                if d == k == r:
                    variants.append((HINT_MERGE_ORDER, W0 + s * (A @ B)))
                hint = _match(got, variants, _RTOL, _ATOL) or _first_difference(
                    "W", expected, got, _close_mask(got, expected, _RTOL, _ATOL))
                expected_text = _fmt_tensor(expected) + (" (exactly W0)" if exact else "")
                grader.fail(case, expected_text, _got_tensor(expected, got), hint)
        passed_w0 = {"W0": inputs["W0"]}
        _check_unchanged(grader, case, passed_w0, {"W0": originals["W0"]}, HINT_MERGE_IN_PLACE)
        others = {name: inputs[name] for name in ("A", "B")}
        _check_unchanged(grader, case, others, {n: originals[n] for n in others})
    return grader.report()


# --------------------------------------------------------------------------- init

def check_lora_init(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(d, k, r, generator) -> (A, B)``, LoRA's initialisation (source §2.1 (2)).

    A must have shape (r, k), be random and drawn from ``generator`` (a ``torch.Generator``:
    the same seed gives the same A, another seed another A) and not constant; B must have shape
    (d, r) and be exactly zero, so that the adapted layer starts equal to the base layer
    ("训练初期旁路输出为0"). Any distribution for A is accepted (the library draws
    N(0, 1/r²) or U(−1/√k, 1/√k)).

    Cases: (d, k, r) = (6, 4, 2), (3, 8, 3), (5, 5, 1), (16, 12, 4), (1, 3, 1). Mistakes
    recognised: B random and A zero (:data:`HINT_INIT_SWAPPED`), both zero
    (:data:`HINT_INIT_BOTH_ZERO`), B not zero (:data:`HINT_INIT_B_NOT_ZERO`), A constant
    (:data:`HINT_INIT_A_CONSTANT`), transposed shapes (:data:`HINT_INIT_SHAPES`), (B, A)
    returned (:data:`HINT_INIT_ORDER`), the generator ignored (:data:`HINT_INIT_GENERATOR`).
    """
    grader, gen = _start("check_lora_init", seed, student_fn=student_fn)
    base_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    for i, (d, k, r) in enumerate([(6, 4, 2), (3, 8, 3), (5, 5, 1), (16, 12, 4), (1, 3, 1)]):
        grader.start_case()
        draw_seed = base_seed + 2 * i
        case = f"d={d}, k={k}, r={r}, generator seeded with {draw_seed}"
        expected = f"(A, B): A random of shape {(r, k)}, B zeros of shape {(d, r)}"
        outcome = _call(student_fn, d, k, r, torch.Generator().manual_seed(draw_seed))
        if outcome.error is not None:
            _fail_error(grader, case, expected, outcome.error, HINT_INIT_SHAPES)
            continue
        pair = outcome.value
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(t, Tensor) and t.is_floating_point() for t in pair)):
            grader.fail(case, expected, _fmt_object(pair), HINT_RETURN_TYPE)
            continue
        first, second = pair
        got = f"A: {_fmt_tensor(first)}; B: {_fmt_tensor(second)}"
        if first.shape != (r, k) or second.shape != (d, r):
            backwards = (first.shape == (d, r) and second.shape == (r, k)
                         and not bool(first.any()))
            grader.fail(case, expected, got, HINT_INIT_ORDER if backwards else HINT_INIT_SHAPES)
            continue
        A, B = first, second
        a_zero, b_zero = not bool(A.any()), not bool(B.any())
        if a_zero:
            grader.fail(case, expected, got, HINT_INIT_BOTH_ZERO if b_zero else HINT_INIT_SWAPPED)
            continue
        if not b_zero:
            grader.fail(case, expected, got, HINT_INIT_B_NOT_ZERO)
            continue
        if A.numel() > 1 and bool((A == A.reshape(-1)[0]).all()):
            grader.fail(case, expected, got, HINT_INIT_A_CONSTANT)
            continue
        again = _call(student_fn, d, k, r, torch.Generator().manual_seed(draw_seed))
        other = _call(student_fn, d, k, r, torch.Generator().manual_seed(draw_seed + 1))
        same_seed_same = (again.error is None and isinstance(again.value, (tuple, list))
                          and len(again.value) == 2 and isinstance(again.value[0], Tensor)
                          and again.value[0].shape == A.shape and torch.equal(again.value[0], A))
        other_seed_other = (other.error is None and isinstance(other.value, (tuple, list))
                            and len(other.value) == 2 and isinstance(other.value[0], Tensor)
                            and not (other.value[0].shape == A.shape
                                     and torch.equal(other.value[0], A)))
        if not (same_seed_same and other_seed_other):
            what = ("the same seed gave a different A" if not same_seed_same
                    else f"seed {draw_seed + 1} gave the same A as seed {draw_seed}")
            grader.fail(case, "the same A for the same seed, another A for another seed",
                        what, HINT_INIT_GENERATOR)
    return grader.report()


# --------------------------------------------------------------------------- rank-r truncation

def _components(U: Tensor, S: Tensor, Vh: Tensor, idx: list[int]) -> Tensor:
    """Σ_{i ∈ idx} σ_i u_i v_iᵀ (zeros for an empty idx)."""
    if not idx:
        return torch.zeros(U.shape[0], Vh.shape[1], dtype=U.dtype)
    return U[:, idx] @ torch.diag(S[idx]) @ Vh[idx, :]


def check_rank_r_truncation(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(W, r) -> W_r``, the best rank-r approximation (Eckart–Young; source §2.1).

    W is a float64 (d, k) tensor and r an int with 1 ≤ r ≤ min(d, k) (r = 0 is not asked: the
    library's :func:`lora_edu.lowrank.best_rank_r` takes r ≥ 1). W_r = U_r·diag(σ_r)·V_rᵀ, of
    shape (d, k), is compared with :func:`lora_edu.lowrank.best_rank_r`; a result that differs is
    also measured: rank and error ‖W − W_r‖_F against sqrt(Σ_{i>r} σ_i²)
    (:func:`lora_edu.lowrank.truncation_error`).

    Cases: tall, wide and square W, r = 1, and r = min(d, k) (W itself comes back). Mistakes
    recognised: the r smallest singular values (:data:`HINT_RANK_SMALLEST`), r − 1 or r + 1
    components (:data:`HINT_RANK_OFF_BY_ONE`), Vh used as V or factors that do not fit
    (:data:`HINT_RANK_FACTORS`), rank > r (:data:`HINT_RANK_TOO_HIGH`), rank ≤ r but a larger
    error than the optimum (:data:`HINT_RANK_NOT_BEST`).
    """
    grader, gen = _start("check_rank_r_truncation", seed, student_fn=student_fn)
    specs = [("tall", 6, 4, 2), ("wide", 4, 7, 2), ("square", 5, 5, 3), ("r = 1", 3, 8, 1),
             ("r = min(d, k): W itself", 6, 4, 4), ("r = min(d, k), wide", 3, 5, 3)]
    for kind, d, k, r in specs:
        grader.start_case()
        W = _randn(gen, d, k)
        m = min(d, k)
        case = f"{kind}: W {(d, k)} float64 (random normal), r={r}"
        expected = best_rank_r(W, r)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        best_error = truncation_error(S, r)
        passed = {"W": W.clone()}
        originals = _snapshot(**passed)
        outcome = _call(student_fn, passed["W"], r)
        if outcome.error is not None:
            _fail_error(grader, case, _fmt_tensor(expected), outcome.error, HINT_RANK_FACTORS)
        elif _check_tensor_result(grader, case, expected, outcome.value, HINT_RANK_FACTORS):
            got = outcome.value
            scale = float(S[0])
            if not _close(got, expected, _RTOL, _ATOL * scale):
                variants = [(HINT_RANK_SMALLEST, _components(U, S, Vh, list(range(m - r, m)))),
                            (HINT_RANK_OFF_BY_ONE, _components(U, S, Vh, list(range(r - 1))))]
                if r < m:
                    variants.append((HINT_RANK_OFF_BY_ONE,
                                     _components(U, S, Vh, list(range(r + 1)))))
                Uf, Sf, Vhf = torch.linalg.svd(W, full_matrices=True)
                variants.append((HINT_RANK_FACTORS, Uf[:, :r] @ torch.diag(Sf[:r])
                                 @ Vhf[:, :r].T))
                hint = _match(got, variants, _RTOL, _ATOL * scale)
                error = float(torch.linalg.matrix_norm(W - got.double()))
                sv = torch.linalg.svdvals(got.double())
                rank = int((sv > 1e-9 * scale).sum())
                if hint is None and rank > r:
                    hint = HINT_RANK_TOO_HIGH
                elif hint is None and error > best_error * (1 + 1e-9) + 1e-12 * scale:
                    hint = HINT_RANK_NOT_BEST
                elif hint is None:
                    hint = _first_difference("W_r", expected, got,
                                             _close_mask(got, expected, _RTOL, _ATOL * scale))
                grader.fail(case, f"{_fmt_tensor(expected)}; rank {r}, error ‖W − W_r‖_F = "
                                  f"{best_error:.6g}",
                            f"{_fmt_tensor(got)}; {_max_diff(expected, got)}; rank {rank}, "
                            f"error {error:.6g}", hint)
        _check_unchanged(grader, case, passed, originals)
    return grader.report()
