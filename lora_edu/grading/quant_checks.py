"""Checkers for chapters 4 and 5: the NF4 code, blockwise absmax quantization and the overhead of
double quantization (source §4.2 (1), (2)).

The library's versions are :func:`lora_edu.quant.nf4_code` (QLoRA's table, bit for bit),
:func:`lora_edu.quant.quantize_4bit_reference` / :func:`lora_edu.quant.dequantize_4bit_reference`
(bitsandbytes' bytes, written as the equations) and
:func:`lora_edu.quant.dq_constant_overhead_bits` (an exact ``Fraction``).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from numbers import Real

import torch
from torch import Tensor

from lora_edu.grading.core import (
    HINT_RETURN_TYPE,
    HINT_SHAPE,
    HINT_UNRECOGNISED,
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
    _snapshot,
    _start,
)
from lora_edu.quant import (
    NF4_OFFSET,
    code_thresholds,
    dequantize_4bit_reference,
    dq_constant_overhead_bits,
    eq4_literal_levels,
    nf4_code,
    normal_float_code,
    quantize_4bit_reference,
    unpack_nibbles,
)

__all__ = [
    "check_nf4_code",
    "check_blockwise_quantize",
    "check_dq_overhead",
    "NF4_TOLERANCE",
    "TIE_TOLERANCE",
    "HINT_NF4_NO_OFFSET",
    "HINT_NF4_EQ4_LITERAL",
    "HINT_NF4_SYMMETRIC",
    "HINT_NF4_MIRRORED",
    "HINT_NF4_LEVEL_COUNT",
    "HINT_NF4_NOT_NORMALIZED",
    "HINT_NF4_UNSORTED",
    "HINT_BLOCK_GLOBAL_ABSMAX",
    "HINT_BLOCK_MAX_NOT_ABS",
    "HINT_BLOCK_NEAREST",
    "HINT_BLOCK_PARTIAL",
    "HINT_BLOCK_ZERO_DIVISION",
    "HINT_DEQUANT_SCALE",
    "HINT_DQ_FRACTION",
    "HINT_DQ_WITHOUT_DQ",
    "HINT_DQ_SECOND_LEVEL_MISSING",
    "HINT_DQ_CODE_BITS_MISSING",
    "HINT_DQ_B2_ONLY",
    "HINT_DQ_BYTES",
]

#: How far a student's NF4 level may lie from QLoRA's float32 table: 2⁻²¹ ≈ 4.8e-7, four float32
#: ulps at 1. The table was computed with float32 probabilities and a float32 division; the same
#: formula evaluated in float64 differs from it by up to 1.1e-7, which is no mistake.
NF4_TOLERANCE = 2.0**-21
#: A normalized value closer than this to a midpoint between two levels may take either level:
#: the library (like bitsandbytes) normalizes in float32 and sends an exact tie to the lower
#: level, a student's float64 or ``argmin`` may round the other way.
TIE_TOLERANCE = 1e-6

#: A hint of the report; its text is the value.
HINT_NF4_NO_OFFSET = ("a level is infinite or NaN: the quantile grid reaches p = 0 or p = 1, "
                      "where Φ⁻¹ is ∓∞; NF4 runs its grid from the offset δ = 0.9677083 "
                      "towards ½")
#: A hint of the report; its text is the value.
HINT_NF4_EQ4_LITERAL = ("this is QLoRA's Eq. 4 read literally, q_i = ½(Q(i/17) + Q((i+1)/17)): "
                        "its lowest level is Q(0) = −∞ and it has 8 negative and 7 positive "
                        "levels; the published NF4 starts its quantiles at the offset δ instead "
                        "(lora_edu.quant.eq4_literal_levels shows the problem)")
#: A hint of the report; its text is the value.
HINT_NF4_SYMMETRIC = ("a symmetric code with 8 levels per side and no exact zero: NF4 keeps an "
                      "exact 0 (zeros stay exact) with 7 negative and 8 positive levels")
#: A hint of the report; its text is the value.
HINT_NF4_MIRRORED = ("8 negative and 7 positive levels: NF4 (QLoRA's table, bitsandbytes) has 7 "
                     "negative levels, 0 and 8 positive ones — the positive side from "
                     "linspace(δ, ½, 9)[:-1], the negative side from linspace(δ, ½, 8)[:-1]")
#: A hint of the report; its text is the value.
HINT_NF4_LEVEL_COUNT = ("wrong number of levels: NF4 has 16 = 7 negative + an exact 0 + 8 "
                        "positive (check the linspace lengths and which endpoint is dropped)")
#: A hint of the report; its text is the value.
HINT_NF4_NOT_NORMALIZED = ("not normalized to [−1, 1]: divide every level by the largest one, "
                           "Q(δ), so that the extremes are exactly −1 and 1")
#: A hint of the report; its text is the value.
HINT_NF4_UNSORTED = "the levels are not in ascending order: index 0 must be −1 and index 15 be 1"
#: A hint of the report; its text is the value.
HINT_BLOCK_GLOBAL_ABSMAX = ("one absmax for the whole tensor: blockwise quantization keeps one "
                            "absmax per block of blocksize values, m_b = max |x_j| over block b")
#: A hint of the report; its text is the value.
HINT_BLOCK_MAX_NOT_ABS = ("the block constant is max(x), not max(|x|): a block whose extreme "
                          "value is negative is then scaled wrongly; use x.abs().max()")
#: A hint of the report; its text is the value.
HINT_BLOCK_NEAREST = ("not the nearest level: the index must minimise |v − c_i| (the argmin of "
                      "the distances), not take the level below v (floor, truncation) or "
                      "above it")
#: A hint of the report; its text is the value.
HINT_BLOCK_PARTIAL = ("the last, partial block is dropped or not handled: n values make "
                      "⌈n/blocksize⌉ blocks, the last one with n mod blocksize values and its "
                      "own absmax")
#: A hint of the report; its text is the value.
HINT_BLOCK_ZERO_DIVISION = ("an all-zero block divides 0 by 0: guard the scale (e.g. "
                            "absmax.clamp(min=1e-38) or torch.where) so that its values get the "
                            "index of the level 0")
#: A hint of the report; its text is the value.
HINT_DEQUANT_SCALE = ("dequantization must multiply each level by its own block's absmax: "
                      "x̂_j = c[i_j] · m_b (absmax.repeat_interleave(blocksize), cut to n)")
#: A hint of the report; its text is the value.
HINT_DQ_FRACTION = ("exact arithmetic: return a Fraction (fractions.Fraction(code_bits, "
                    "blocksize) + …), not a float")
#: A hint of the report; its text is the value.
HINT_DQ_WITHOUT_DQ = ("this is the overhead without double quantization, c/b₁ (32/64 = 0.5 bit): "
                      "with DQ each constant is a code_bits code plus a share of one "
                      "second-level constant")
#: A hint of the report; its text is the value.
HINT_DQ_SECOND_LEVEL_MISSING = ("the second-level constants are missing: add const_bits / "
                                "(blocksize · blocksize2), one const_bits scale per blocksize2 "
                                "first-level codes")
#: A hint of the report; its text is the value.
HINT_DQ_CODE_BITS_MISSING = ("the first-level codes are missing: each block's constant is "
                             "still stored, as a code_bits code, code_bits / blocksize per "
                             "parameter")
#: A hint of the report; its text is the value.
HINT_DQ_B2_ONLY = ("the second-level constant is divided by blocksize2 only: it is shared by "
                   "blocksize2 blocks of blocksize parameters each, c/(b₁·b₂)")
#: A hint of the report; its text is the value.
HINT_DQ_BYTES = "the result is in bytes: the overhead is counted in bits per parameter"


# --------------------------------------------------------------------------- NF4

def _nf4_float64(normalize: bool = True) -> Tensor:
    """NF4 by the formula in float64 (Φ⁻¹ = torch.special.ndtri), optionally not normalized."""
    def q(steps: int) -> Tensor:
        return torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, steps,
                                                  dtype=torch.float64)[:-1])
    levels = torch.sort(torch.cat([-q(8), torch.zeros(1, dtype=torch.float64), q(9)])).values
    return levels / levels.max() if normalize else levels


def _nf4_diagnosis(values: Tensor) -> str | None:
    """The hint of the wrong NF4 variant that ``values`` (16 sorted levels) equals, if any."""
    if values.shape != (16,):
        return None
    eq4 = torch.from_numpy(eq4_literal_levels(4))
    eq4 = eq4 / eq4[-1]                                    # normalized by its largest level
    if _close(values[1:], eq4[1:], 0.0, 1e-6):             # level 0 is −∞ (or clipped, or NaN)
        return HINT_NF4_EQ4_LITERAL
    table = nf4_code().double()
    variants = [(HINT_NF4_SYMMETRIC, normal_float_code(4, symmetric=True).double()),
                (HINT_NF4_MIRRORED, -table.flip(0)),
                (HINT_NF4_NOT_NORMALIZED, _nf4_float64(normalize=False))]
    return _match(values, variants, 0.0, 2 * NF4_TOLERANCE)


def _fmt_levels(values: Tensor) -> str:
    v = [f"{float(x):.4g}" for x in values.tolist()]
    return f"{len(v)} levels [{', '.join(v)}]"


def check_nf4_code(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn() -> Tensor``: the 16 NF4 levels in ascending order (source §4.2 (1)).

    The 4-bit NormalFloat of QLoRA (Dettmers et al. 2023, §3): with Q = Φ⁻¹ and δ = 0.9677083,
    the 8 positive levels Q(p) for p = linspace(δ, ½, 9)[:-1], the 7 negative levels −Q(p) for
    p = linspace(δ, ½, 8)[:-1] and an exact 0, all divided by Q(δ). The issue that asked for this
    checker says "8 negative and 7 positive" — that is reversed: QLoRA's table, bitsandbytes'
    and :func:`lora_edu.quant.nf4_code` have 7 negative and 8 positive levels, and that is what
    is checked.

    Checks (each a case): a 1-D tensor of 16 finite levels; ascending; extremes exactly −1 and 1;
    7 negative levels, an exact 0 and 8 positive ones; every level within
    :data:`NF4_TOLERANCE` (2⁻²¹, four float32 ulps at 1) of :func:`lora_edu.quant.nf4_code` —
    a float64 computation differs from the float32 table by up to 1.1e-7, which passes.
    ``seed`` is accepted for a uniform interface (nothing is random here).

    Mistakes recognised: quantiles without the offset (:data:`HINT_NF4_NO_OFFSET`), Eq. 4 read
    literally (:data:`HINT_NF4_EQ4_LITERAL`, compared with
    :func:`lora_edu.quant.eq4_literal_levels` normalized), the symmetric 8/8 code without zero
    (:data:`HINT_NF4_SYMMETRIC`), 8 negative and 7 positive (:data:`HINT_NF4_MIRRORED`), another
    number of levels (:data:`HINT_NF4_LEVEL_COUNT`), not normalized
    (:data:`HINT_NF4_NOT_NORMALIZED`), unsorted (:data:`HINT_NF4_UNSORTED`).
    """
    grader, _ = _start("check_nf4_code", seed, student_fn=student_fn)
    table = nf4_code().double()
    expected = _fmt_levels(table)
    grader.start_case()
    case = "the code: a 1-D tensor of 16 finite levels"
    outcome = _call(student_fn)
    if outcome.error is not None:
        _fail_error(grader, case, expected, outcome.error)
        return grader.report()
    got = outcome.value
    if not isinstance(got, Tensor) or not got.is_floating_point():
        grader.fail(case, "a float tensor of " + expected, _fmt_object(got), HINT_RETURN_TYPE)
        return grader.report()
    values = got.detach().double()
    if values.dim() != 1:
        grader.fail(case, expected, _fmt_tensor(got), HINT_SHAPE)
        return grader.report()
    if values.numel() != 16:
        grader.fail(case, expected, _fmt_levels(values), HINT_NF4_LEVEL_COUNT)
        return grader.report()
    if not bool(torch.isfinite(values).all()):
        grader.fail(case, expected, _fmt_levels(values),
                    _nf4_diagnosis(values) or HINT_NF4_NO_OFFSET)
        return grader.report()

    grader.start_case()
    if bool((values[1:] < values[:-1]).any()):
        grader.fail("the levels are in ascending order", expected, _fmt_levels(values),
                    HINT_NF4_UNSORTED)
        values = torch.sort(values).values                 # check the rest on the sorted levels
    diagnosis = _nf4_diagnosis(values)

    grader.start_case()
    if float(values[0]) != -1.0 or float(values[-1]) != 1.0:
        grader.fail("the extremes are exactly −1 and 1", "min −1, max 1",
                    f"min {float(values[0]):.9g}, max {float(values[-1]):.9g}",
                    diagnosis or HINT_NF4_NOT_NORMALIZED)

    grader.start_case()
    counts = (int((values < 0).sum()), int((values == 0).sum()), int((values > 0).sum()))
    if counts != (7, 1, 8):
        structural = {(8, 0, 8): HINT_NF4_SYMMETRIC, (8, 1, 7): HINT_NF4_MIRRORED}
        grader.fail("7 negative levels, an exact 0, 8 positive levels (QLoRA's NF4)",
                    "7 negative, 1 zero, 8 positive",
                    f"{counts[0]} negative, {counts[1]} zero, {counts[2]} positive",
                    diagnosis or structural.get(counts, HINT_NF4_LEVEL_COUNT))

    grader.start_case()
    ok = _close_mask(values, table, 0.0, NF4_TOLERANCE)
    if not bool(ok.all()):
        worst = float((values - table).abs().max())
        grader.fail(f"every level within {NF4_TOLERANCE:.2g} (2^-21) of QLoRA's table",
                    expected, f"{_fmt_levels(values)}; max |diff| = {worst:.3g}",
                    diagnosis or _first_difference("the code", table, values, ok))
    return grader.report()


# --------------------------------------------------------------------------- blockwise

def _blocks(gen: torch.Generator, n: int, blocksize: int) -> Tensor:
    """float32 normal values, each block at its own scale, block 0's extreme value negative."""
    n_blocks = -(-n // blocksize)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    scales = 0.25 * 2.0 ** torch.arange(n_blocks, dtype=torch.float64)
    scales = scales[torch.randperm(n_blocks, generator=gen)]
    x = x * scales.repeat_interleave(blocksize)[:n]
    head = x[: min(blocksize, n)]
    if float(head[head.abs().argmax()]) > 0:
        head.neg_()
    return x.to(torch.float32)


def _index_range(x: Tensor, absmax: Tensor, code: Tensor, blocksize: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(v, lo, hi): v = x / m_b in float64 (0 in all-zero blocks) and the acceptable indices
    lo ≤ i ≤ hi: the nearest level, or either neighbour within TIE_TOLERANCE of a midpoint."""
    n = x.numel()
    m = absmax.double().repeat_interleave(blocksize)[:n]
    v = torch.where(m > 1e-37, x.double() / m.clamp(min=1e-37), torch.zeros_like(m))
    c = code.double()
    t = (c[:-1] + c[1:]) / 2
    lo = (t[None, :] < (v - TIE_TOLERANCE)[:, None]).sum(dim=1)
    hi = (t[None, :] <= (v + TIE_TOLERANCE)[:, None]).sum(dim=1)
    return v, lo, hi


def _explains(variant: Tensor, got: Tensor, bad: Tensor) -> bool:
    """A wrong variant explains the failure if it equals the student's value wherever that is
    out of range."""
    return bool((variant[bad] == got[bad]).all())


def _quantize_case(grader: _Grader, quantize_fn: Callable, case: str, x: Tensor, code: Tensor,
                   blocksize: int) -> None:
    n = x.numel()
    n_blocks = -(-n // blocksize)
    n_full = n // blocksize
    partial = n % blocksize != 0
    q = quantize_4bit_reference(x, blocksize, code)
    exp_idx = unpack_nibbles(q.packed)[:n].long()
    exp_absmax = q.absmax
    zero_block = exp_absmax <= 1e-37
    expected = (f"indices {_fmt_tensor(exp_idx)}; absmax {_fmt_tensor(exp_absmax)} "
                f"({n_blocks} blocks)")
    inputs = {"x": x.clone(), "code": code.clone()}
    originals = _snapshot(**inputs)
    outcome = _call(quantize_fn, inputs["x"], inputs["code"], blocksize)
    _check_unchanged(grader, case, inputs, originals)
    if outcome.error is not None:
        _fail_error(grader, case, expected, outcome.error,
                    HINT_BLOCK_PARTIAL if partial else None)
        return
    pair = outcome.value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(t, Tensor) for t in pair)
            or pair[0].is_floating_point() or pair[0].dtype == torch.bool
            or not pair[1].is_floating_point()):
        grader.fail(case, "(indices: integer tensor, absmax: float tensor); " + expected,
                    _fmt_object(pair), HINT_RETURN_TYPE)
        return
    idx, absmax = pair[0].reshape(-1).long(), pair[1].reshape(-1)
    got = f"indices {_fmt_tensor(idx)}; absmax {_fmt_tensor(absmax)}"
    if absmax.numel() != n_blocks or idx.numel() != n:
        if absmax.numel() == 1 and n_blocks > 1:
            hint = HINT_BLOCK_GLOBAL_ABSMAX
        elif partial and (absmax.numel() == n_full or idx.numel() == n_full * blocksize):
            hint = HINT_BLOCK_PARTIAL
        else:
            hint = HINT_SHAPE
        grader.fail(case, expected, got, hint)
        return
    # the constants, block by block (an all-zero block may store any finite m ≥ 0)
    live = ~zero_block
    ok_absmax = _close_mask(absmax, exp_absmax, 1e-6, 0.0) | (zero_block & torch.isfinite(absmax)
                                                              & (absmax >= 0))
    if not bool(ok_absmax.all()):
        blocks = torch.zeros(n_blocks * blocksize, dtype=torch.float64)
        blocks[:n] = x.double()
        blocks = blocks.view(n_blocks, blocksize)
        if partial:                                        # the padding must not win the max
            blocks[-1, n - n_full * blocksize:] = -torch.inf
        if bool(zero_block[~ok_absmax].any()):
            hint = HINT_BLOCK_ZERO_DIVISION
        elif _close(absmax[live], blocks.amax(dim=1)[live], 1e-6, 0.0):
            hint = HINT_BLOCK_MAX_NOT_ABS
        elif bool((absmax == absmax[0]).all()) and _close(
                absmax[:1], exp_absmax.max().reshape(1), 1e-6, 0.0):
            hint = HINT_BLOCK_GLOBAL_ABSMAX
        else:
            hint = _first_difference("absmax", exp_absmax, absmax, ok_absmax)
        got = f"indices {_fmt_tensor(idx)}; absmax {_got_tensor(exp_absmax, absmax)}"
        grader.fail(case, expected, got, hint)
        return
    # the indices: the nearest level (either neighbour on a tie)
    v, lo, hi = _index_range(x, exp_absmax, code, blocksize)
    bad = (idx < lo) | (idx > hi)
    if bool(bad.any()):
        c = code.double()
        in_zero_block = zero_block.repeat_interleave(blocksize)[:n]
        floor = ((c[None, :] <= v[:, None]).sum(dim=1) - 1).clamp(min=0)
        ceil = (c[None, :] < v[:, None]).sum(dim=1).clamp(max=c.numel() - 1)
        if bool(in_zero_block[bad].all()):
            hint = HINT_BLOCK_ZERO_DIVISION
        elif _explains(floor, idx, bad) or _explains(ceil, idx, bad):
            hint = HINT_BLOCK_NEAREST
        else:
            hint = _first_difference("the indices", exp_idx, idx, ~bad)
        first = int(bad.nonzero()[0])
        grader.fail(case, expected,
                    f"{got}; {int(bad.sum())} of {n} indices wrong, first at {first}: v = "
                    f"{float(v[first]):.6g}, expected index {int(exp_idx[first])}, got "
                    f"{int(idx[first])}", hint)


def _dequantize_case(grader: _Grader, dequantize_fn: Callable, case: str, x: Tensor,
                     code: Tensor, blocksize: int) -> None:
    n = x.numel()
    n_blocks = -(-n // blocksize)
    partial = n % blocksize != 0
    q = quantize_4bit_reference(x, blocksize, code)
    idx = unpack_nibbles(q.packed)[:n].long()
    expected = dequantize_4bit_reference(q)
    inputs = {"indices": idx.clone(), "absmax": q.absmax.clone(), "code": code.clone()}
    originals = _snapshot(**inputs)
    outcome = _call(dequantize_fn, inputs["indices"], inputs["absmax"], inputs["code"],
                    blocksize)
    _check_unchanged(grader, case, inputs, originals)
    if outcome.error is not None:
        _fail_error(grader, case, _fmt_tensor(expected), outcome.error,
                    HINT_BLOCK_PARTIAL if partial else None)
        return
    got = outcome.value
    if not isinstance(got, Tensor) or not got.is_floating_point():
        grader.fail(case, "a float tensor " + _fmt_tensor(expected), _fmt_object(got),
                    HINT_RETURN_TYPE)
        return
    got = got.reshape(-1) if got.numel() == n else got
    if got.shape != expected.shape:
        hint = HINT_BLOCK_PARTIAL if partial and got.numel() == n_blocks * blocksize else HINT_SHAPE
        grader.fail(case, _fmt_tensor(expected), _fmt_tensor(got), hint)
        return
    if not _close(got, expected, 1e-6, 1e-7):
        levels = code.double()[idx]
        m = q.absmax.double()
        variants = [(HINT_DEQUANT_SCALE, levels),
                    (HINT_DEQUANT_SCALE, levels / m.repeat_interleave(blocksize)[:n]),
                    (HINT_DEQUANT_SCALE, levels * m.repeat(blocksize)[:n])]
        hint = _match(got, variants, 1e-6, 1e-7) or _first_difference(
            "x_hat", expected, got, _close_mask(got, expected, 1e-6, 1e-7))
        grader.fail(case, _fmt_tensor(expected), _got_tensor(expected, got), hint)


def check_blockwise_quantize(quantize_fn: Callable, dequantize_fn: Callable, *,
                             seed: int = 0) -> Report:
    """Check blockwise absmax 4-bit quantization and its inverse (source §4.2 (1); QLoRA §3).

    ``quantize_fn(x, code, blocksize) -> (indices, absmax)``: x is a 1-D float32 tensor, code
    the 16 sorted levels (float32), blocksize an int. Per block b of ``blocksize`` consecutive
    values (the last block may be partial) ``m_b = max |x_j|``, ``v_j = x_j / m_b``, and i_j
    the index of the level nearest to v_j. ``indices`` is an integer tensor (int64) of n values in
    [0, 15]; ``absmax`` one float per block, ⌈n/blocksize⌉ of them.

    ``dequantize_fn(indices, absmax, code, blocksize) -> x_hat``: x̂_j = c[i_j] · m_b, n values.

    Compared with :func:`lora_edu.quant.quantize_4bit_reference` (its packed bytes unpacked with
    :func:`lora_edu.quant.unpack_nibbles`) and :func:`lora_edu.quant.dequantize_4bit_reference`.
    **Ties:** a v within :data:`TIE_TOLERANCE` of the midpoint of two levels may take either
    level (the library sends an exact tie to the lower one; float32 against float64 rounding can
    move a value across the midpoint); one case holds an exact tie on purpose. An all-zero block
    must get the index of the level nearest 0 (no 0/0) and may store any finite absmax ≥ 0.
    Dequantization is tested on the library's indices and constants, separately.

    Cases: 4 full blocks at different scales (the first block's extreme value negative), a
    partial last block, an all-zero block with an exact tie, an all-zero partial last block, a
    uniform code instead of NF4, and n < blocksize; each for quantize and for dequantize.
    Mistakes recognised: one global absmax (:data:`HINT_BLOCK_GLOBAL_ABSMAX`), max x instead of
    ``max |x|`` (:data:`HINT_BLOCK_MAX_NOT_ABS`), floor/truncation or ceiling instead of the
    nearest level (:data:`HINT_BLOCK_NEAREST`), the partial block dropped or failing
    (:data:`HINT_BLOCK_PARTIAL`), 0/0 in an all-zero block (:data:`HINT_BLOCK_ZERO_DIVISION`),
    dequantization without (or with the wrong) block absmax (:data:`HINT_DEQUANT_SCALE`).
    """
    grader, gen = _start("check_blockwise_quantize", seed, quantize_fn=quantize_fn,
                         dequantize_fn=dequantize_fn)
    nf4 = nf4_code()
    uniform = torch.linspace(-1, 1, 16, dtype=torch.float32)
    tie = _blocks(gen, 96, 32)
    tie[32:64] = 0.0                                       # an all-zero block
    tie[64:96] = tie[64:96] / tie[64:96].abs().max()       # m = 1 exactly: v = x
    tie[70] = code_thresholds(nf4)[12]                     # v exactly on a midpoint
    zero_tail = _blocks(gen, 72, 32)
    zero_tail[64:] = 0.0
    cases = [("4 full blocks at different scales", _blocks(gen, 256, 64), nf4, 64),
             ("partial last block (n = 100, blocksize 32)", _blocks(gen, 100, 32), nf4, 32),
             ("an all-zero block and a value exactly on a midpoint", tie, nf4, 32),
             ("an all-zero partial last block", zero_tail, nf4, 32),
             ("a uniform code linspace(-1, 1, 16) instead of NF4", _blocks(gen, 160, 32),
              uniform, 32),
             ("n = 50 < blocksize = 64: one partial block", _blocks(gen, 50, 64), nf4, 64)]
    for kind, x, code, blocksize in cases:
        grader.start_case()
        name = "NF4" if code is nf4 else "uniform"
        what = f"x {tuple(x.shape)} float32, blocksize {blocksize}, code {name}"
        _quantize_case(grader, quantize_fn, f"quantize, {kind}: {what}", x, code, blocksize)
    for kind, x, code, blocksize in cases:
        grader.start_case()
        name = "NF4" if code is nf4 else "uniform"
        what = (f"indices and absmax of x {tuple(x.shape)} float32, blocksize {blocksize}, "
                f"code {name}")
        _dequantize_case(grader, dequantize_fn, f"dequantize, {kind}: {what}", x, code,
                         blocksize)
    return grader.report()


# --------------------------------------------------------------------------- DQ overhead

def check_dq_overhead(student_fn: Callable, *, seed: int = 0) -> Report:
    """Check ``student_fn(blocksize, blocksize2, code_bits, const_bits) -> Fraction``: the bits
    per parameter spent on quantization constants with double quantization (source §4.2 (2)).

    c₂/b₁ + c/(b₁·b₂): each block of b₁ = ``blocksize`` weights keeps its constant as a
    c₂ = ``code_bits`` code, and each block of b₂ = ``blocksize2`` codes one c = ``const_bits``
    scale; QLoRA's 8/64 + 32/(64·256) = 65/512 ≈ 0.127 bit (from 0.5 bit without DQ). Compared
    exactly with :func:`lora_edu.quant.dq_constant_overhead_bits`; the result must be a
    ``fractions.Fraction`` — a float, even of the right value, fails with
    :data:`HINT_DQ_FRACTION`. ``seed`` is accepted for a uniform interface.

    Mistakes recognised: the overhead without DQ, c/b₁ (:data:`HINT_DQ_WITHOUT_DQ`); the second
    level forgotten, c₂/b₁ (:data:`HINT_DQ_SECOND_LEVEL_MISSING`); the codes forgotten,
    c/(b₁·b₂) (:data:`HINT_DQ_CODE_BITS_MISSING`); b₁·b₂ replaced by b₂
    (:data:`HINT_DQ_B2_ONLY`); bytes instead of bits (:data:`HINT_DQ_BYTES`).
    """
    grader, _ = _start("check_dq_overhead", seed, student_fn=student_fn)
    for b1, b2, c2, c in [(64, 256, 8, 32), (32, 256, 8, 32), (128, 64, 8, 16),
                          (64, 128, 4, 32), (256, 256, 8, 32)]:
        grader.start_case()
        case = f"blocksize={b1}, blocksize2={b2}, code_bits={c2}, const_bits={c}"
        expected = dq_constant_overhead_bits(b1, b2, c2, c)
        expected_text = (f"Fraction({expected.numerator}, {expected.denominator}) = "
                         f"{float(expected):.6g} bit")
        outcome = _call(student_fn, b1, b2, c2, c)
        if outcome.error is not None:
            _fail_error(grader, case, expected_text, outcome.error)
            continue
        got = outcome.value
        if isinstance(got, bool) or not isinstance(got, Real):
            grader.fail(case, expected_text, _fmt_object(got), HINT_RETURN_TYPE)
            continue
        exact = Fraction(got) if isinstance(got, Fraction) else None
        if exact is None:
            grader.fail(case, expected_text + " (a Fraction)", _fmt_object(got), HINT_DQ_FRACTION)
        value = float(got)
        if (exact is not None and exact == expected) or (
                exact is None and abs(value - float(expected)) <= 1e-12 * float(expected)):
            continue
        variants = [(HINT_DQ_WITHOUT_DQ, Fraction(c, b1)),
                    (HINT_DQ_SECOND_LEVEL_MISSING, Fraction(c2, b1)),
                    (HINT_DQ_CODE_BITS_MISSING, Fraction(c, b1 * b2)),
                    (HINT_DQ_B2_ONLY, Fraction(c2, b1) + Fraction(c, b2)),
                    (HINT_DQ_BYTES, expected / 8)]
        hint = next((h for h, v in variants
                     if (exact == v if exact is not None
                         else abs(value - float(v)) <= 1e-12 * float(v))), None)
        if hint is None:
            hint = (f"{HINT_UNRECOGNISED} the value differs: expected {float(expected):.6g}, got "
                    f"{value:.6g}; add the two terms c₂/b₁ and c/(b₁·b₂)")
        grader.fail(case, expected_text, f"{_fmt_object(got)} = {value:.6g} bit", hint)
    return grader.report()
