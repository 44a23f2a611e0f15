"""lora_edu.grading: the library's own implementations (and typical correct student solutions)
pass every checker; each typical wrong implementation fails with the hint that names its
mistake; the report reads well; bad arguments are refused."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
import torch
from torch import nn

import lora_edu.grading as G
from lora_edu.adalora import budget_schedule, ema_update, triplet_scores
from lora_edu.grading import (
    Failure,
    Report,
    check_blockwise_quantize,
    check_budget_schedule,
    check_dq_overhead,
    check_importance_ema,
    check_lora_forward,
    check_lora_init,
    check_lora_merge,
    check_nf4_code,
    check_rank_r_truncation,
    check_triplet_score,
)
from lora_edu.lora import LoRALinear
from lora_edu.lowrank import best_rank_r
from lora_edu.quant import (
    QuantizedTensor,
    dequantize_4bit,
    dq_constant_overhead_bits,
    nf4_code,
    pack_nibbles,
    quantize_4bit,
    unpack_nibbles,
)

SEEDS = [0, 1, 7, 2**32 - 1]
DELTA = 0.9677083  # QLoRA's NF4 offset, typed as a student would


# --------------------------------------------------------------------------- the library,
# adapted to the student signatures

def _layer(W0, A, B, alpha, r):
    d, k = W0.shape
    base = nn.Linear(k, d, dtype=W0.dtype)
    layer = LoRALinear(base, r, alpha)
    with torch.no_grad():
        base.weight.copy_(W0)
        base.bias.zero_()
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer


def lib_forward(x, W0, A, B, alpha, r):
    with torch.no_grad():
        return _layer(W0, A, B, alpha, r)(x)


def lib_merge(W0, A, B, alpha, r):
    layer = _layer(W0, A, B, alpha, r)
    layer.merge()
    return layer.base.weight.detach().clone()


def lib_init(d, k, r, generator):
    layer = LoRALinear(nn.Linear(k, d), r, alpha=2 * r, generator=generator)
    return layer.lora_A.detach().clone(), layer.lora_B.detach().clone()


def lib_quantize(x, code, blocksize):
    q = quantize_4bit(x, blocksize, code)
    return unpack_nibbles(q.packed)[: x.numel()].long(), q.absmax


def lib_dequantize(indices, absmax, code, blocksize):
    q = QuantizedTensor(packed=pack_nibbles(indices), absmax=absmax, absmax_dq=None,
                        shape=torch.Size([indices.numel()]), dtype=torch.float32,
                        blocksize=blocksize, code=code)
    return dequantize_4bit(q)


LIBRARY = {
    "forward": (check_lora_forward, (lib_forward,)),
    "merge": (check_lora_merge, (lib_merge,)),
    "init": (check_lora_init, (lib_init,)),
    "rank": (check_rank_r_truncation, (best_rank_r,)),
    "nf4": (check_nf4_code, (nf4_code,)),
    "blockwise": (check_blockwise_quantize, (lib_quantize, lib_dequantize)),
    "dq": (check_dq_overhead, (dq_constant_overhead_bits,)),
    "ema": (check_importance_ema, (ema_update,)),
    "triplet": (check_triplet_score, (triplet_scores,)),
    "budget": (check_budget_schedule, (budget_schedule,)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(LIBRARY))
def test_the_library_passes_every_checker(name, seed):
    checker, fns = LIBRARY[name]
    report = checker(*fns, seed=seed)
    assert report.passed, str(report)
    assert report.failures == [] and report.failure_counts == {} and report.cases_failed == 0
    assert report.cases_run >= 5
    assert str(report).startswith("✓")


# --------------------------------------------------------------------------- typical correct
# student solutions (written from the formulas, not from the library)

def student_forward(x, W0, A, B, alpha, r):
    return x @ W0.T + (alpha / r) * (x @ A.T) @ B.T


def student_merge(W0, A, B, alpha, r):
    return W0 + (alpha / r) * (B @ A)


def student_init(d, k, r, generator):
    return torch.randn(r, k, generator=generator) / r, torch.zeros(d, r)


def student_rank(W, r):
    U, S, Vh = torch.linalg.svd(W)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r, :]


def student_nf4():
    def q(steps):
        return torch.special.ndtri(torch.linspace(DELTA, 0.5, steps, dtype=torch.float64)[:-1])
    levels = torch.cat([-q(8), torch.zeros(1, dtype=torch.float64), q(9)])
    levels = torch.sort(levels).values
    return levels / levels.max()


def student_quantize(x, code, blocksize):
    n = x.numel()
    n_blocks = -(-n // blocksize)
    padded = torch.zeros(n_blocks * blocksize, dtype=x.dtype)
    padded[:n] = x
    blocks = padded.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    v = blocks / absmax.clamp(min=1e-30)[:, None]
    indices = (v.reshape(-1)[:n, None] - code[None, :]).abs().argmin(dim=1)
    return indices, absmax


def student_dequantize(indices, absmax, code, blocksize):
    return code[indices] * absmax.repeat_interleave(blocksize)[: indices.numel()]


def student_dq(blocksize, blocksize2, code_bits, const_bits):
    return Fraction(code_bits, blocksize) + Fraction(const_bits, blocksize * blocksize2)


def student_ema(i_bar, u_bar, sens, beta1, beta2):
    i_new = beta1 * i_bar + (1 - beta1) * sens
    return i_new, beta2 * u_bar + (1 - beta2) * (sens - i_new).abs()


def student_triplet(score_P, score_lambda, score_Q):
    return score_lambda + score_P.mean(dim=0) + score_Q.mean(dim=1)


def student_budget_peft(step, total_steps, init_budget, target_budget, t_init, t_final):
    """PEFT's float arithmetic with int() truncation."""
    if step <= t_init:
        return init_budget
    if step > total_steps - t_final:
        return target_budget
    mul = 1 - (step - t_init) / (total_steps - t_final - t_init)
    return int(target_budget + (init_budget - target_budget) * mul**3)


STUDENTS = {
    "forward": (check_lora_forward, (student_forward,)),
    "merge": (check_lora_merge, (student_merge,)),
    "init": (check_lora_init, (student_init,)),
    "rank": (check_rank_r_truncation, (student_rank,)),
    "nf4 in float64": (check_nf4_code, (student_nf4,)),
    "blockwise, argmin in float32": (check_blockwise_quantize,
                                     (student_quantize, student_dequantize)),
    "dq": (check_dq_overhead, (student_dq,)),
    "ema": (check_importance_ema, (student_ema,)),
    "triplet": (check_triplet_score, (student_triplet,)),
    "budget, PEFT's float arithmetic": (check_budget_schedule, (student_budget_peft,)),
}


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", list(STUDENTS))
def test_correct_student_solutions_pass(name, seed):
    checker, fns = STUDENTS[name]
    report = checker(*fns, seed=seed)
    assert report.passed, str(report)


# --------------------------------------------------------------------------- typical mistakes

def _s(alpha, r):
    return alpha / r


FORWARD_MISTAKES = {
    "scale forgotten": (lambda x, W0, A, B, a, r: x @ W0.T + x @ A.T @ B.T,
                        G.HINT_SCALE_MISSING),
    "s = alpha": (lambda x, W0, A, B, a, r: x @ W0.T + a * x @ A.T @ B.T, G.HINT_SCALE_ALPHA),
    "s = r/alpha": (lambda x, W0, A, B, a, r: x @ W0.T + (r / a) * x @ A.T @ B.T,
                    G.HINT_SCALE_INVERTED),
    "W0 term dropped": (lambda x, W0, A, B, a, r: _s(a, r) * x @ A.T @ B.T,
                        G.HINT_FORWARD_NO_BASE),
    "x·(B·A) instead of x·(B·A)ᵀ": (lambda x, W0, A, B, a, r: x @ W0.T + _s(a, r) * x @ (B @ A),
                                    G.HINT_FORWARD_ORDER),
    "B before A": (lambda x, W0, A, B, a, r: x @ W0.T + _s(a, r) * (x @ B.T) @ A.T,
                   G.HINT_FORWARD_ORDER),
    "result transposed (d, n)": (lambda x, W0, A, B, a, r: W0 @ x.T + _s(a, r) * B @ (A @ x.T),
                                 G.HINT_FORWARD_ORDER),
    "float32 result": (lambda x, W0, A, B, a, r: student_forward(x, W0, A, B, a, r).float(),
                       G.HINT_DTYPE),
}


def _forward_merging_in_place(x, W0, A, B, alpha, r):
    W0 += (alpha / r) * B @ A
    return x @ W0.T


FORWARD_MISTAKES["W0 merged in place"] = (_forward_merging_in_place, G.HINT_INPUT_MODIFIED)


def _merge_in_place(W0, A, B, alpha, r):
    return W0.add_((alpha / r) * (B @ A))


MERGE_MISTAKES = {
    "scale forgotten": (lambda W0, A, B, a, r: W0 + B @ A, G.HINT_SCALE_MISSING),
    "s = alpha": (lambda W0, A, B, a, r: W0 + a * B @ A, G.HINT_SCALE_ALPHA),
    "s = r/alpha": (lambda W0, A, B, a, r: W0 + (r / a) * B @ A, G.HINT_SCALE_INVERTED),
    "A·B instead of B·A": (lambda W0, A, B, a, r: W0 + _s(a, r) * A @ B, G.HINT_MERGE_ORDER),
    "ΔW transposed": (lambda W0, A, B, a, r: W0 + _s(a, r) * (B @ A).T, G.HINT_MERGE_ORDER),
    "ΔW only": (lambda W0, A, B, a, r: _s(a, r) * B @ A, G.HINT_MERGE_DELTA_ONLY),
    "W0 modified in place": (_merge_in_place, G.HINT_MERGE_IN_PLACE),
}

INIT_MISTAKES = {
    "roles swapped (A zero, B random)": (
        lambda d, k, r, g: (torch.zeros(r, k), torch.randn(d, r, generator=g)),
        G.HINT_INIT_SWAPPED),
    "both zero": (lambda d, k, r, g: (torch.zeros(r, k), torch.zeros(d, r)),
                  G.HINT_INIT_BOTH_ZERO),
    "B random too": (lambda d, k, r, g: (torch.randn(r, k, generator=g),
                                         torch.randn(d, r, generator=g)),
                     G.HINT_INIT_B_NOT_ZERO),
    "A constant": (lambda d, k, r, g: (torch.ones(r, k), torch.zeros(d, r)),
                   G.HINT_INIT_A_CONSTANT),
    "shapes transposed": (lambda d, k, r, g: (torch.randn(k, r, generator=g), torch.zeros(r, d)),
                          G.HINT_INIT_SHAPES),
    "returns (B, A)": (lambda d, k, r, g: (torch.zeros(d, r), torch.randn(r, k, generator=g)),
                       G.HINT_INIT_ORDER),
    "generator ignored": (lambda d, k, r, g: (torch.randn(r, k), torch.zeros(d, r)),
                          G.HINT_INIT_GENERATOR),
}


def _svd_rank(keep):
    def fn(W, r):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        idx = keep(r, S.numel())
        return U[:, idx] @ torch.diag(S[idx]) @ Vh[idx, :]
    return fn


def _v_not_transposed(W, r):
    U, S, V = torch.linalg.svd(W)          # V is really Vh = Vᵀ
    return U[:, :r] @ torch.diag(S[:r]) @ V[:, :r].T


def _tail_shrunk(W, r):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    S = S.clone()
    S[r:] *= 0.5
    return U @ torch.diag(S) @ Vh


RANK_MISTAKES = {
    "r smallest singular values": (_svd_rank(lambda r, m: list(range(m - r, m))),
                                   G.HINT_RANK_SMALLEST),
    "r − 1 components": (_svd_rank(lambda r, m: list(range(r - 1))), G.HINT_RANK_OFF_BY_ONE),
    "r + 1 components": (_svd_rank(lambda r, m: list(range(min(r + 1, m)))),
                         G.HINT_RANK_OFF_BY_ONE),
    "Vh used as V": (_v_not_transposed, G.HINT_RANK_FACTORS),
    "tail shrunk, not cut": (_tail_shrunk, G.HINT_RANK_TOO_HIGH),
    "rank r but not the best": (lambda W, r: 0.9 * best_rank_r(W, r), G.HINT_RANK_NOT_BEST),
}


def _nf4_from(pos_steps, neg_steps, zero=True, normalize=True):
    def fn():
        def q(steps):
            return torch.special.ndtri(torch.linspace(DELTA, 0.5, steps,
                                                      dtype=torch.float64)[:-1])
        parts = [-q(neg_steps), q(pos_steps)] + ([torch.zeros(1, dtype=torch.float64)]
                                                 if zero else [])
        levels = torch.sort(torch.cat(parts)).values
        return levels / levels.max() if normalize else levels
    return fn


def _nf4_without_offset():
    p = torch.linspace(0, 1, 16, dtype=torch.float64)
    levels = torch.special.ndtri(p)
    return levels / levels.max()


def _nf4_eq4_literal():
    q = torch.special.ndtri(torch.arange(17, dtype=torch.float64) / 17)
    levels = (q[:-1] + q[1:]) / 2
    return levels / levels.max()


def _nf4_eq4_clipped():
    return _nf4_eq4_literal().clamp(min=-1)


NF4_MISTAKES = {
    "no offset: p from 0 to 1": (_nf4_without_offset, G.HINT_NF4_NO_OFFSET),
    "Eq. 4 read literally": (_nf4_eq4_literal, G.HINT_NF4_EQ4_LITERAL),
    "Eq. 4 literally, −∞ clipped to −1": (_nf4_eq4_clipped, G.HINT_NF4_EQ4_LITERAL),
    "symmetric 8/8 without zero": (_nf4_from(9, 9, zero=False), G.HINT_NF4_SYMMETRIC),
    "8 negative, 7 positive": (_nf4_from(8, 9), G.HINT_NF4_MIRRORED),
    "8 + 0 + 8 = 17 levels": (_nf4_from(9, 9), G.HINT_NF4_LEVEL_COUNT),
    "7 + 0 + 7 = 15 levels": (_nf4_from(8, 8), G.HINT_NF4_LEVEL_COUNT),
    "not normalized": (_nf4_from(9, 8, normalize=False), G.HINT_NF4_NOT_NORMALIZED),
    "descending": (lambda: student_nf4().flip(0), G.HINT_NF4_UNSORTED),
}


def _quantize_with(absmax_of, nearest):
    """A student quantizer with a chosen block constant and level search."""
    def fn(x, code, blocksize):
        n = x.numel()
        n_blocks = -(-n // blocksize)
        padded = torch.zeros(n_blocks * blocksize, dtype=x.dtype)
        padded[:n] = x
        blocks = padded.view(n_blocks, blocksize)
        absmax = absmax_of(blocks, x, n)
        v = (blocks / absmax.clamp(min=1e-30)[:, None]).reshape(-1)[:n]
        return nearest(v, code), absmax
    return fn


def _nearest(v, code):
    return (v[:, None] - code[None, :]).abs().argmin(dim=1)


def _floor(v, code):
    return ((code[None, :] <= v[:, None]).sum(dim=1) - 1).clamp(min=0)


def _signed_max(blocks, x, n):
    m = blocks.amax(dim=1)
    if n % blocks.shape[1]:   # the padding zeros must not count
        m[-1] = x[(blocks.shape[0] - 1) * blocks.shape[1]:].max()
    return m


def _global_quantize(x, code, blocksize):
    m = x.abs().max()
    v = x / m
    return _nearest(v, code), m.reshape(1)


def _global_repeated(x, code, blocksize):
    n_blocks = -(-x.numel() // blocksize)
    idx, m = _global_quantize(x, code, blocksize)
    return idx, m.repeat(n_blocks)


def _partial_dropped(x, code, blocksize):
    n_full = x.numel() // blocksize
    return student_quantize(x[: n_full * blocksize], code, blocksize)


def _partial_view(x, code, blocksize):
    blocks = x.view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    return _nearest((blocks / absmax.clamp(min=1e-30)[:, None]).reshape(-1), code), absmax


def _unguarded(x, code, blocksize):
    n = x.numel()
    n_blocks = -(-n // blocksize)
    padded = torch.zeros(n_blocks * blocksize, dtype=x.dtype)
    padded[:n] = x
    blocks = padded.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    return _nearest((blocks / absmax[:, None]).reshape(-1)[:n], code), absmax


QUANTIZE_MISTAKES = {
    "one global absmax": (_global_quantize, G.HINT_BLOCK_GLOBAL_ABSMAX),
    "global absmax repeated per block": (_global_repeated, G.HINT_BLOCK_GLOBAL_ABSMAX),
    "max instead of max |x|": (_quantize_with(_signed_max, _nearest), G.HINT_BLOCK_MAX_NOT_ABS),
    "floor: the level below": (_quantize_with(lambda b, x, n: b.abs().amax(dim=1), _floor),
                               G.HINT_BLOCK_NEAREST),
    "bucketize: the level above": (
        _quantize_with(lambda b, x, n: b.abs().amax(dim=1),
                       lambda v, code: torch.bucketize(v, code).clamp(max=15)),
        G.HINT_BLOCK_NEAREST),
    "partial block dropped": (_partial_dropped, G.HINT_BLOCK_PARTIAL),
    "view(-1, blocksize) on a partial block": (_partial_view, G.HINT_BLOCK_PARTIAL),
    "0/0 in an all-zero block": (_unguarded, G.HINT_BLOCK_ZERO_DIVISION),
}

DEQUANTIZE_MISTAKES = {
    "no absmax": (lambda i, m, code, bs: code[i], G.HINT_DEQUANT_SCALE),
    "divides by absmax": (lambda i, m, code, bs: code[i] / m.repeat_interleave(bs)[: i.numel()],
                          G.HINT_DEQUANT_SCALE),
    "repeat instead of repeat_interleave": (
        lambda i, m, code, bs: code[i] * m.repeat(bs)[: i.numel()], G.HINT_DEQUANT_SCALE),
    "padding of the partial block kept": (
        lambda i, m, code, bs: torch.cat([code[i], code.new_zeros(-i.numel() % bs)])
        * m.repeat_interleave(bs), G.HINT_BLOCK_PARTIAL),
}

DQ_MISTAKES = {
    "float": (lambda b1, b2, c2, c: c2 / b1 + c / (b1 * b2), G.HINT_DQ_FRACTION),
    "without DQ": (lambda b1, b2, c2, c: Fraction(c, b1), G.HINT_DQ_WITHOUT_DQ),
    "second level forgotten": (lambda b1, b2, c2, c: Fraction(c2, b1),
                               G.HINT_DQ_SECOND_LEVEL_MISSING),
    "codes forgotten": (lambda b1, b2, c2, c: Fraction(c, b1 * b2), G.HINT_DQ_CODE_BITS_MISSING),
    "b₁·b₂ replaced by b₂": (lambda b1, b2, c2, c: Fraction(c2, b1) + Fraction(c, b2),
                             G.HINT_DQ_B2_ONLY),
    "bytes": (lambda b1, b2, c2, c: (Fraction(c2, b1) + Fraction(c, b1 * b2)) / 8,
              G.HINT_DQ_BYTES),
}


def _ema_in_place(i_bar, u_bar, sens, beta1, beta2):
    i_bar.mul_(beta1).add_((1 - beta1) * sens)
    u_bar.mul_(beta2).add_((1 - beta2) * (sens - i_bar).abs())
    return i_bar, u_bar


EMA_MISTAKES = {
    "β and 1 − β swapped": (
        lambda i, u, s, b1, b2: student_ema(i, u, s, 1 - b1, 1 - b2), G.HINT_EMA_BETA_SWAPPED),
    "β₁ and β₂ exchanged": (
        lambda i, u, s, b1, b2: student_ema(i, u, s, b2, b1), G.HINT_EMA_BETAS_EXCHANGED),
    "Ū with the old Ī": (
        lambda i, u, s, b1, b2: (b1 * i + (1 - b1) * s, b2 * u + (1 - b2) * (s - i).abs()),
        G.HINT_EMA_OLD_IBAR),
    "no absolute value": (
        lambda i, u, s, b1, b2: (b1 * i + (1 - b1) * s,
                                 b2 * u + (1 - b2) * (s - (b1 * i + (1 - b1) * s))),
        G.HINT_EMA_NO_ABS),
    "inputs modified in place": (_ema_in_place, G.HINT_EMA_IN_PLACE),
}

TRIPLET_MISTAKES = {
    "sum instead of mean": (lambda P, lam, Q: lam + P.sum(dim=0) + Q.sum(dim=1),
                            G.HINT_TRIPLET_SUM),
    "axes swapped": (lambda P, lam, Q: lam + P.mean(dim=1) + Q.mean(dim=0), G.HINT_TRIPLET_AXES),
    "λ forgotten": (lambda P, lam, Q: P.mean(dim=0) + Q.mean(dim=1), G.HINT_TRIPLET_NO_LAMBDA),
}


def _budget(rounding=math.floor, term=lambda p: (1 - p) ** 3, length=0, shift=0):
    def fn(step, total_steps, init_budget, target_budget, t_init, t_final):
        if step <= t_init:
            return init_budget
        L = total_steps - t_init - t_final + length
        done = step - t_init + shift
        if done >= L:
            return target_budget
        p = Fraction(done, L)
        return rounding(target_budget + (init_budget - target_budget) * term(p))
    return fn


BUDGET_MISTAKES = {
    "round": (_budget(rounding=round), G.HINT_BUDGET_ROUNDING),
    "ceil": (_budget(rounding=math.ceil), G.HINT_BUDGET_ROUNDING),
    "linear": (_budget(term=lambda p: 1 - p), G.HINT_BUDGET_LINEAR),
    "progress³": (_budget(term=lambda p: p**3), G.HINT_BUDGET_PROGRESS_CUBED),
    "1 − progress³": (_budget(term=lambda p: 1 - p**3), G.HINT_BUDGET_PROGRESS_CUBED),
    "phase one step too long": (_budget(length=1), G.HINT_BUDGET_BOUNDARY),
    "progress one step late": (_budget(shift=-1), G.HINT_BUDGET_BOUNDARY),
    "returns a float": (_budget(rounding=lambda v: float(math.floor(v))), G.HINT_BUDGET_INT),
    "no floor at all": (_budget(rounding=float), G.HINT_BUDGET_INT),
}


def _cases(checker, mistakes, wrap=None):
    return [pytest.param(checker, wrap(fn) if wrap else (fn,), hint,
                         id=f"{checker.__name__}: {name}")
            for name, (fn, hint) in mistakes.items()]


MISTAKES = (
    _cases(check_lora_forward, FORWARD_MISTAKES)
    + _cases(check_lora_merge, MERGE_MISTAKES)
    + _cases(check_lora_init, INIT_MISTAKES)
    + _cases(check_rank_r_truncation, RANK_MISTAKES)
    + _cases(check_nf4_code, NF4_MISTAKES)
    + _cases(check_blockwise_quantize, QUANTIZE_MISTAKES, lambda fn: (fn, student_dequantize))
    + _cases(check_blockwise_quantize, DEQUANTIZE_MISTAKES, lambda fn: (student_quantize, fn))
    + _cases(check_dq_overhead, DQ_MISTAKES)
    + _cases(check_importance_ema, EMA_MISTAKES)
    + _cases(check_triplet_score, TRIPLET_MISTAKES)
    + _cases(check_budget_schedule, BUDGET_MISTAKES)
)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize(("checker", "fns", "hint"), MISTAKES)
def test_each_typical_mistake_fails_with_its_own_hint(checker, fns, hint, seed):
    """Every failure of the wrong implementation carries the hint of its mistake, and only it."""
    report = checker(*fns, seed=seed)
    assert not report.passed
    assert report.hints == [hint], str(report)
    assert hint in str(report)
    assert report.failures and all(f.hint == hint for f in report.failures)


def test_every_hint_constant_is_recognised_by_some_test():
    """Each checker-specific hint is the expected hint of at least one wrong implementation."""
    expected = {param.values[2] for param in MISTAKES}
    generic = {G.HINT_NOT_IMPLEMENTED, G.HINT_RAISED, G.HINT_RETURN_TYPE, G.HINT_SHAPE,
               G.HINT_UNRECOGNISED, G.HINT_INPUT_MODIFIED}
    hints = {getattr(G, n) for n in G.__all__ if n.startswith("HINT_")}
    assert hints - generic - expected == set()


def test_hints_are_distinct_plain_sentences():
    hints = [getattr(G, n) for n in G.__all__ if n.startswith("HINT_")]
    assert len(set(hints)) == len(hints)
    assert all(isinstance(h, str) and len(h) > 20 for h in hints)


def test_qlora_numbers_give_exactly_65_512():
    """Source §4.2 (2): 8/64 + 32/(64·256) = 65/512 ≈ 0.127 bit (0.5 bit without DQ)."""
    qlora_case = "blocksize=64, blocksize2=256, code_bits=8, const_bits=32"
    report = check_dq_overhead(lambda b1, b2, c2, c: Fraction(65, 512))
    assert not report.passed and report.cases_run == 5
    assert all(f.case != qlora_case for f in report.failures)
    report = check_dq_overhead(lambda b1, b2, c2, c: 0.126953125)   # = 65/512, but a float
    assert [f.hint for f in report.failures if f.case == qlora_case] == [G.HINT_DQ_FRACTION]


# --------------------------------------------------------------------------- generic failures

def test_a_function_that_raises_is_reported_not_crashed():
    def broken(x, W0, A, B, alpha, r):
        raise ValueError("something is off")
    report = check_lora_forward(broken)
    assert not report.passed
    assert report.hints == [G.HINT_RAISED]
    assert report.failures[0].got == "ValueError: something is off"
    assert "ValueError: something is off" in str(report)


def test_not_implemented_gets_its_own_hint():
    def todo(*args):
        raise NotImplementedError
    for checker in (check_lora_forward, check_nf4_code, check_dq_overhead,
                    check_budget_schedule):
        report = checker(todo)
        assert report.hints == [G.HINT_NOT_IMPLEMENTED], str(report)
    report = check_blockwise_quantize(todo, todo)
    assert report.hints == [G.HINT_NOT_IMPLEMENTED]


def test_an_unknown_mistake_gets_the_generic_hint_naming_the_first_difference():
    def odd(x, W0, A, B, alpha, r):
        h = student_forward(x, W0, A, B, alpha, r)
        h[0, 1] += 1.0
        return h
    report = check_lora_forward(odd)
    assert not report.passed
    assert all(h.startswith(G.HINT_UNRECOGNISED) for h in report.hints)
    assert "index (0, 1)" in report.failures[0].hint


def test_a_wrong_return_type_is_a_failure():
    report = check_lora_forward(lambda x, W0, A, B, alpha, r: (x @ W0.T).tolist())
    assert report.hints == [G.HINT_RETURN_TYPE]
    report = check_importance_ema(lambda i, u, s, b1, b2: i)
    assert report.hints == [G.HINT_RETURN_TYPE]


def test_failures_are_listed_at_most_a_few_per_hint_but_all_are_counted():
    report = check_budget_schedule(lambda *args: 0.5)
    assert report.failure_counts[G.HINT_BUDGET_INT] >= 5
    assert len(report.failures) <= G.MAX_LISTED_PER_HINT * len(report.hints)
    text = str(report)
    assert "more failure" in text and "in all)" in text


# --------------------------------------------------------------------------- the report

def test_report_text_holds_case_expected_got_and_hint():
    report = check_lora_forward(FORWARD_MISTAKES["scale forgotten"][0])
    text = str(report)
    first = report.failures[0]
    assert text.startswith("✗ check_lora_forward(<lambda>): ")
    for part in (first.case, first.expected, first.got, first.hint):
        assert part in text
    assert "case:" in text and "expected:" in text and "got:" in text and "hint:" in text
    assert "x (5, 4)" in first.case and "alpha=6" in first.case
    assert "max |diff|" in first.got and "tensor (5, 6) float64" in first.expected


def test_report_renders_as_markdown():
    report = check_lora_merge(MERGE_MISTAKES["ΔW only"][0])
    md = report._repr_markdown_()
    assert md.startswith("**✗ check\\_lora\\_merge")
    assert "<code>" in md and "**hint**" in md and "**expected**" in md
    passed = check_lora_merge(student_merge)._repr_markdown_()
    assert passed.startswith("**✓") and "<code>" not in passed
    # what a notebook shows: one numbered item per listed failure
    from markdown_it import MarkdownIt  # installed with jupyter-book (myst-parser)

    html = MarkdownIt("commonmark").render(md)
    assert html.count("<li>") == len(report.failures)
    assert "<strong>hint</strong> the result is only the update" in html


def test_raise_if_failed():
    check_lora_merge(student_merge).raise_if_failed()
    report = check_lora_merge(MERGE_MISTAKES["ΔW only"][0])
    with pytest.raises(AssertionError) as info:
        report.raise_if_failed()
    assert str(info.value) == str(report)


def test_report_fields():
    report = Report(name="x", passed=False, cases_run=2,
                    failures=[Failure("c", "e", "g", "h"), Failure("c2", "e", "g", "h")])
    assert report.failure_counts == {"h": 2} and report.n_failures == 2
    assert report.hints == ["h"] and report.cases_failed == 2
    assert "2 of 2 cases failed (2 failures)" in str(report)
    with pytest.raises(ValueError, match="passed"):
        Report(name="x", passed=True, cases_run=1, failures=[Failure("c", "e", "g", "h")])
    with pytest.raises(TypeError, match="failures"):
        Report(name="x", passed=True, cases_run=1, failures=["not a Failure"])
    with pytest.raises(ValueError, match="cases_run"):
        Report(name="x", passed=True, cases_run=-1)


# --------------------------------------------------------------------------- arguments,
# determinism, speed

CHECKERS = [check_lora_forward, check_lora_merge, check_lora_init, check_rank_r_truncation,
            check_nf4_code, check_dq_overhead, check_importance_ema, check_triplet_score,
            check_budget_schedule]


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_bad_arguments_are_refused(checker):
    with pytest.raises(TypeError, match="student_fn"):
        checker("not a function")
    with pytest.raises(ValueError, match="seed"):
        checker(print, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        checker(print, seed=1.5)
    with pytest.raises(TypeError):
        checker(print, 0)  # seed is keyword-only


def test_blockwise_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="quantize_fn"):
        check_blockwise_quantize(None, student_dequantize)
    with pytest.raises(TypeError, match="dequantize_fn"):
        check_blockwise_quantize(student_quantize, 3)
    with pytest.raises(ValueError, match="seed"):
        check_blockwise_quantize(student_quantize, student_dequantize, seed=2**32)


def test_checkers_are_deterministic_and_leave_the_global_generator_alone():
    state = torch.get_rng_state()
    a = str(check_lora_forward(FORWARD_MISTAKES["scale forgotten"][0], seed=3))
    b = str(check_lora_forward(FORWARD_MISTAKES["scale forgotten"][0], seed=3))
    c = str(check_lora_forward(FORWARD_MISTAKES["scale forgotten"][0], seed=4))
    assert a == b and a != c
    q = str(check_blockwise_quantize(_global_quantize, student_dequantize, seed=5))
    assert q == str(check_blockwise_quantize(_global_quantize, student_dequantize, seed=5))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", list(STUDENTS))
def test_each_checker_runs_in_well_under_a_second(name):
    checker, fns = STUDENTS[name]
    checker(*fns)  # warm-up (SciPy import, code tables)
    start = time.perf_counter()
    checker(*fns)
    assert time.perf_counter() - start < 0.5
