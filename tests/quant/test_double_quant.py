"""Tests of lora_edu.quant's double quantization (§4.2(2)) and its exact storage arithmetic."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest
import torch

from lora_edu.quant import (
    BNB_GRID,
    CODE_NAMES,
    QuantizedConstants,
    bits_per_param,
    constant_overhead_bits,
    dequantize_constants,
    dq_constant_overhead_bits,
    dq_saving_bits,
    dq_saving_bytes,
    dynamic_code,
    fp8_code,
    model_bytes,
    parameter_count,
    quantize_constants,
    quantize_with_code,
    quantized_storage_bits,
    second_level_code,
    storage_bits,
    storage_bits_per_param,
)


def block_absmax(n_blocks: int, blocksize: int = 64, seed: int = 0) -> torch.Tensor:
    """First-level constants of N(0, 1) weights: the absmax of each block of ``blocksize``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_blocks, blocksize, generator=g).abs().amax(dim=1)


def max_half_gap(code: torch.Tensor) -> float:
    finite = torch.sort(code[torch.isfinite(code)]).values
    return float((finite[1:] - finite[:-1]).max()) / 2


# ----------------------------------------------------------------------------- exact arithmetic

def test_document_fractions_exact():
    assert constant_overhead_bits() == Fraction(1, 2)  # the published 0.5 bit
    assert dq_constant_overhead_bits() == Fraction(65, 512)
    assert float(dq_constant_overhead_bits()) == 0.126953125
    assert round(float(dq_constant_overhead_bits()), 3) == 0.127
    assert dq_saving_bits() == Fraction(191, 512)
    assert float(dq_saving_bits()) == 0.373046875
    assert bits_per_param(double_quant=False) == Fraction(9, 2)
    assert bits_per_param() == 4 + Fraction(65, 512)


def test_myth_figures_are_different_numbers():
    """0.375 = 1/2 - 8/64 forgets the second-level scales; the stored scales show what they cost."""
    saving = dq_saving_bits()
    assert Fraction(3, 8) - saving == Fraction(1, 512)
    assert round(float(saving), 3) == 0.373
    w = torch.randn(64 * 256 * 4, generator=torch.Generator().manual_seed(4))
    scales = nf4().quantize_4bit(w, 64, double_quant=True).absmax_dq.scales
    assert Fraction(scales.nbytes * 8, w.numel()) == Fraction(1, 512)  # float32 per 64*256 weights


def test_65b_saving_is_3_03_gb():
    saved = dq_saving_bytes(65 * 10**9)
    assert saved == Fraction(65 * 10**9) * Fraction(191, 512) / 8
    assert round(float(saved) / 1e9, 2) == 3.03
    assert model_bytes(65 * 10**9, 16) == 130 * 10**9


def test_general_functions_vary_with_their_arguments():
    assert constant_overhead_bits(128) == Fraction(1, 4)
    assert constant_overhead_bits(64, const_bits=16) == Fraction(1, 4)
    assert bits_per_param(3, 32, double_quant=False) == 3 + Fraction(1)
    # DQ always saves with 8-bit codes of 32-bit constants and blocksize2 >= 2
    for b1 in (16, 32, 64, 128, 256, 4096):
        for b2 in (2, 16, 256, 1024):
            assert dq_saving_bits(b1, b2) > 0


def test_quantized_storage_bits_formula():
    n = 4096 * 4096  # QLoRA's figures: 4.5 bits per weight, 4.127 (= 4 + 65/512) with DQ
    assert Fraction(quantized_storage_bits(n, double_quant=False), n) == Fraction(9, 2)
    assert Fraction(quantized_storage_bits(n) - 32, n) == 4 + Fraction(65, 512)  # less one offset
    # 100 values: 50 bytes of codes (no padding to whole blocks), 2 blocks (the second partial)
    assert quantized_storage_bits(100, double_quant=False) == 50 * 8 + 2 * 32
    assert quantized_storage_bits(100) == 50 * 8 + 2 * 8 + 32 + 32
    # an odd count leaves one nibble of the last byte unused
    assert quantized_storage_bits(101, double_quant=False) == 51 * 8 + 2 * 32


@pytest.mark.parametrize("kwargs, name", [
    ({"blocksize": 48}, "blocksize"),
    ({"blocksize": 0}, "blocksize"),
    ({"blocksize2": 1}, "blocksize2"),
    ({"blocksize2": 100}, "blocksize2"),
    ({"code_bits": 0}, "code_bits"),
    ({"const_bits": -32}, "const_bits"),
])
def test_arithmetic_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dq_constant_overhead_bits(**kwargs)


def test_parameter_count_must_be_positive():
    for bad in (0, -7):
        with pytest.raises(ValueError, match="n_params"):
            model_bytes(bad, 4)
        with pytest.raises(ValueError, match="n_params"):
            dq_saving_bytes(bad)
        with pytest.raises(ValueError, match="n_params"):
            quantized_storage_bits(bad)
    with pytest.raises(TypeError, match="blocksize"):
        constant_overhead_bits(64.0)


# ----------------------------------------------------------------------------- code tables

def test_dynamic_code_structure():
    code = dynamic_code()
    assert code.dtype == torch.float32 and code.shape == (256,)
    assert bool((code[1:] > code[:-1]).all())  # sorted, all distinct
    assert code.max() == 1.0 and int((code == 0).sum()) == 1
    assert code.min() == pytest.approx(-(1 - 0.9 / 128), abs=1e-7)
    assert int((code > 0).sum()) == 128 and int((code < 0).sum()) == 127
    positive = code[(code > 0) & (code < 1)]
    # decade 10^-e holds 2^(6-e) bin midpoints: 64, 32, ..., 1
    for e in range(7):
        lo, hi = 0.1 * 10.0**-e, 10.0**-e
        assert int(((positive > lo) & (positive < hi)).sum()) == 2 ** (6 - e)
    assert float(positive.min()) == pytest.approx(0.55e-6, rel=1e-6)
    # symmetric apart from +1.0, which takes the place of "-0"
    assert torch.equal(-code[code < 0].flip(0), positive)
    assert dynamic_code(4).shape == (16,)
    with pytest.raises(ValueError, match="bits"):
        dynamic_code(9)


@pytest.mark.parametrize("fmt, dtype, top", [("e4m3", torch.float8_e4m3fn, 448.0),
                                             ("e5m2", torch.float8_e5m2, 57344.0)])
def test_fp8_code_matches_torch_float8(fmt, dtype, top):
    code = fp8_code(fmt)
    reference = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32) / top
    reference[~torch.isfinite(reference)] = math.nan
    assert torch.equal(torch.isnan(code), torch.isnan(reference))
    finite = ~torch.isnan(code)
    assert torch.equal(code[finite], reference[finite])
    assert float(code[finite].max()) == 1.0


def test_second_level_code_validation():
    assert torch.equal(second_level_code("dynamic"), dynamic_code())
    with pytest.raises(ValueError, match="code"):
        second_level_code("int8")
    with pytest.raises(ValueError, match="code"):
        second_level_code(torch.linspace(-2, 2, 256))
    with pytest.raises(TypeError, match="code"):
        second_level_code([0.0] * 256)


# ----------------------------------------------------------------------------- the mechanism

@pytest.mark.parametrize("code", CODE_NAMES)
def test_quantize_constants_storage_types_and_round_trip(code):
    absmax = block_absmax(1000)  # 1000 = 3 full blocks of 256 and a partial one of 232
    qc = quantize_constants(absmax, 256, code)
    assert qc.offset.dtype == torch.float32 and qc.offset.dim() == 0
    assert qc.codes.dtype == torch.uint8 and qc.codes.shape == (1000,)
    assert qc.scales.dtype == torch.float32 and qc.scales.shape == (4,)
    assert qc.code.dtype == torch.float32 and qc.code.shape == (256,)
    assert qc.n == 1000 and qc.blocksize2 == 256
    assert float(qc.offset) == pytest.approx(float(absmax.double().mean()), rel=1e-6)
    rebuilt = dequantize_constants(qc)
    assert rebuilt.dtype == torch.float32 and rebuilt.shape == absmax.shape
    assert bool(torch.isfinite(rebuilt).all())
    # every constant within half the widest gap of the code (plus half a step of the 65,536-point
    # grid the nearest entry is searched through) times its block's scale
    half_step = 1 / (BNB_GRID - 1)
    bound = (max_half_gap(qc.code) + half_step) * qc.scales.repeat_interleave(256)[:1000] + 1e-6
    assert bool(((rebuilt - absmax).abs() <= bound).all())
    exact = quantize_constants(absmax, 256, code, grid=None)  # the exact nearest entry
    bound = max_half_gap(qc.code) * qc.scales.repeat_interleave(256)[:1000] + 1e-6
    assert bool(((dequantize_constants(exact) - absmax).abs() <= bound).all())


def test_dynamic_code_absmax_relative_error_is_small():
    absmax = block_absmax(4096)
    rebuilt = dequantize_constants(quantize_constants(absmax))
    rel = ((rebuilt - absmax) / absmax).abs()
    assert float(rel.max()) < 0.02
    assert float(rel.mean()) < 0.005


def test_centering_helps_the_signed_code():
    absmax = block_absmax(4096)
    err = {}
    for center in (True, False):
        qc = quantize_constants(absmax, center=center)
        err[center] = float((dequantize_constants(qc) - absmax).pow(2).mean().sqrt())
        if not center:
            assert float(qc.offset) == 0.0
            assert int(qc.codes.min()) >= 127  # only the non-negative half of the code is used
    assert err[True] < 0.5 * err[False]


@pytest.mark.parametrize("code", CODE_NAMES)
def test_codes_are_the_nearest_entries(code):
    table = second_level_code(code)
    values = torch.cat([torch.linspace(-1, 1, 2001), torch.rand(2000) * 2 - 1])
    chosen = quantize_with_code(values, table)
    assert chosen.dtype == torch.uint8
    finite = table[torch.isfinite(table)].double()
    # float64 differences of float32 numbers in [-1, 1] are exact
    best = (values.double()[:, None] - finite[None, :]).abs().min(dim=1).values
    assert torch.equal((values.double() - table[chosen.long()].double()).abs(), best)


def test_ties_go_to_the_lower_entry():
    table = torch.arange(-128, 128, dtype=torch.float32) / 128  # midpoints exact in float32
    for k in (-100, -1, 0, 5, 126):
        tie = torch.tensor([(2 * k + 1) / 256])
        assert int(quantize_with_code(tie, table)) == k + 128  # the lower of k/128, (k+1)/128
        above = torch.nextafter(tie, torch.tensor([2.0]))
        assert int(quantize_with_code(above, table)) == k + 129
    table = dynamic_code()
    with pytest.raises(ValueError, match="values"):
        quantize_with_code(torch.tensor([0.0, math.nan]), table)


@pytest.mark.parametrize("code", CODE_NAMES)
def test_grid_search_differs_from_the_exact_nearest_only_next_to_midpoints(code):
    """grid=G: v is rounded to one of G points on [-1, 1] and takes that point's nearest entry.
    Farther than a grid step from every midpoint this is the exact nearest entry; nearer, it is
    at most one grid step farther from v than the nearest entry."""
    table = second_level_code(code)
    g = torch.Generator().manual_seed(9)
    values = torch.cat([torch.rand(20_000, generator=g) * 2 - 1,
                        torch.rand(2_000, generator=g) * 2e-3 - 1e-3,  # the dense small entries
                        torch.tensor([-1.0, 0.0, 1.0])])
    on_grid = quantize_with_code(values, table, grid=BNB_GRID)
    exact = quantize_with_code(values, table)
    step = 2 / (BNB_GRID - 1)
    finite = torch.sort(table[torch.isfinite(table)].double()).values
    midpoints = (finite[:-1] + finite[1:]) / 2
    dist = (values.double()[:, None] - midpoints[None, :]).abs().min(dim=1).values
    differ = on_grid != exact
    assert not bool(differ[dist > step].any())
    v = values.double()
    err_grid = (table[on_grid.long()].double() - v).abs()
    err_exact = (table[exact.long()].double() - v).abs()
    assert bool((err_exact <= err_grid).all())
    assert bool((err_grid <= err_exact + step * (1 + 1e-6)).all())
    if code == "dynamic":  # entries closer than the grid step near 0: the grid matters there
        assert int(differ.sum()) > 0


def test_fp8_codes_are_genuine_fp8_numbers():
    absmax = block_absmax(512)
    qc = quantize_constants(absmax, 256, "fp8_e4m3")
    as_fp8 = qc.codes.view(torch.float8_e4m3fn).to(torch.float32) / 448
    rebuilt = as_fp8 * qc.scales.repeat_interleave(256) + qc.offset
    assert torch.equal(rebuilt, dequantize_constants(qc))


def test_input_is_not_modified():
    absmax = block_absmax(700)
    copy = absmax.clone()
    for center in (True, False):
        quantize_constants(absmax, 256, center=center)
    assert torch.equal(absmax, copy)


def test_constant_blocks_and_empty_input():
    const = torch.full((300,), 2.5)
    qc = quantize_constants(const)
    assert torch.equal(qc.scales, torch.zeros(2))
    assert bool((qc.codes == 0).all())  # a block equal to the offset stores code 0 (bitsandbytes)
    assert torch.equal(dequantize_constants(qc), const)
    empty = quantize_constants(torch.empty(0))
    assert empty.n == 0 and empty.codes.shape == (0,) and empty.scales.shape == (0,)
    assert dequantize_constants(empty).shape == (0,)


def test_blocksize2_changes_the_number_of_scales():
    absmax = block_absmax(1024)
    for b2 in (2, 64, 256, 1024, 4096):
        qc = quantize_constants(absmax, b2)
        assert qc.scales.shape == (-(-1024 // b2),)
    # smaller second-level blocks, finer scales: error does not grow
    e2 = (dequantize_constants(quantize_constants(absmax, 2)) - absmax).abs().max()
    e1024 = (dequantize_constants(quantize_constants(absmax, 1024)) - absmax).abs().max()
    assert float(e2) <= float(e1024)


@pytest.mark.parametrize("bad", [3, 1, 0, 100, -256])
def test_bad_blocksize2(bad):
    with pytest.raises(ValueError, match="blocksize2"):
        quantize_constants(block_absmax(10), bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_constants(value):
    absmax = block_absmax(10)
    absmax[3] = value
    with pytest.raises(ValueError, match="absmax"):
        quantize_constants(absmax)


def test_quantize_constants_type_errors():
    with pytest.raises(TypeError, match="absmax"):
        quantize_constants([1.0, 2.0])
    with pytest.raises(TypeError, match="absmax"):
        quantize_constants(torch.arange(4))
    with pytest.raises(ValueError, match="absmax"):
        quantize_constants(torch.ones(2, 2))
    with pytest.raises(TypeError, match="qc"):
        dequantize_constants(torch.ones(3))
    qc = quantize_constants(block_absmax(300))
    with pytest.raises(ValueError, match="qc.scales"):
        dequantize_constants(dataclasses.replace(qc, scales=qc.scales[:1]))
    with pytest.raises(ValueError, match="qc.codes"):
        dequantize_constants(dataclasses.replace(qc, codes=qc.codes.long()))
    with pytest.raises(TypeError, match="center"):
        quantize_constants(block_absmax(3), center=1)
    with pytest.raises(TypeError, match="double_quant"):
        bits_per_param(double_quant="yes")


def test_storage_of_constants_alone():
    qc = quantize_constants(block_absmax(1000))
    assert storage_bits(qc) == 1000 * 8 + 4 * 32 + 32
    assert storage_bits(qc, count_code_tables=True) == 1000 * 8 + 4 * 32 + 32 + 256 * 32
    assert parameter_count(qc) == 1000
    assert storage_bits_per_param(qc, exact=True) == Fraction(1000 * 8 + 4 * 32 + 32, 1000)
    assert isinstance(qc, QuantizedConstants)
    with pytest.raises(TypeError, match="q"):
        storage_bits(torch.ones(3))


# ----------------------------------------------------------------------------- with lora_edu.quant

def nf4():
    from lora_edu import quant as module  # NF4 with double quantization wired through it
    return module


def test_measured_storage_4096x4096_equals_formula():
    m = nf4()
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    n = w.numel()
    plain = m.quantize_4bit(w, 64)
    assert storage_bits_per_param(plain, exact=True) == Fraction(9, 2)
    assert storage_bits_per_param(plain) == 4.5
    dq = m.quantize_4bit(w, 64, double_quant=True)
    assert dq.absmax is None and isinstance(dq.absmax_dq, QuantizedConstants)
    measured = storage_bits_per_param(dq, exact=True)
    assert measured == Fraction(quantized_storage_bits(n), n)
    assert measured == 4 + Fraction(65, 512) + Fraction(32, n)  # the last term: one offset
    assert abs(float(measured) - float(4 + Fraction(65, 512))) < 1e-3
    # code tables, if counted: 16 NF4 levels + 256 second-level entries, float32
    assert storage_bits(dq, count_code_tables=True) == storage_bits(dq) + (16 + 256) * 32


@pytest.mark.parametrize("b1, b2", [(64, 256), (128, 512), (32, 64), (256, 2)])
def test_dq_overhead_equals_the_stored_constants(b1, b2):
    """The overhead formulas against the bytes that quantize_4bit actually stores."""
    m = nf4()
    n = b1 * b2 * 3  # whole blocks at both levels, so no padding and no partial scale block
    w = torch.randn(n, generator=torch.Generator().manual_seed(b1 + b2))
    plain = m.quantize_4bit(w, b1)
    qc = m.quantize_4bit(w, b1, double_quant=True, blocksize2=b2).absmax_dq
    assert constant_overhead_bits(b1) == Fraction(plain.absmax.nbytes * 8, n)
    stored = (qc.codes.nbytes + qc.scales.nbytes) * 8  # 8-bit codes and float32 scales
    assert dq_constant_overhead_bits(b1, b2) == Fraction(stored, n)
    # the same constants with 4-bit second-level codes: as many codes, half a byte each
    assert dq_constant_overhead_bits(b1, b2, code_bits=4) == Fraction(
        qc.codes.numel() * 4 + qc.scales.nbytes * 8, n)


@pytest.mark.parametrize("shape", [(100, 37), (64 * 300,), (3, 5, 7), (1,)])
def test_measured_storage_with_partial_blocks(shape):
    m = nf4()
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    n = w.numel()
    for double_quant in (False, True):
        q = m.quantize_4bit(w, 64, double_quant=double_quant)
        assert storage_bits(q) == quantized_storage_bits(n, 64, double_quant=double_quant)
        # ceil(n/2) bytes; an odd count is completed by NF4's exact 0 (index 7) in the last nibble
        indices = m.unpack_nibbles(q.packed)
        assert indices.numel() == n + n % 2
        assert bool((indices[n:] == 7).all())


def test_round_trip_with_dq_within_bounds():
    m = nf4()
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(2))
    q_plain = m.quantize_4bit(w, 64)
    q = m.quantize_4bit(w, 64, double_quant=True)
    assert torch.equal(q.packed, q_plain.packed)  # DQ only touches the constants
    rebuilt = m.dequantize_4bit(q)
    assert rebuilt.shape == w.shape and rebuilt.dtype == w.dtype
    absmax = q_plain.absmax
    absmax_dq = dequantize_constants(q.absmax_dq)
    nf4_half_gap = max_half_gap(q.code)
    bound = nf4_half_gap * absmax + (absmax_dq - absmax).abs() + 1e-6
    err = (rebuilt - w).reshape(-1, 64).abs().amax(dim=1)
    assert bool((err <= bound).all())


@pytest.mark.parametrize("code", CODE_NAMES)
def test_dq_changes_weight_rmse_by_less_than_one_percent(code):
    m = nf4()
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(3))
    q_plain = m.quantize_4bit(w, 64)
    rmse_plain = float((m.dequantize_4bit(q_plain) - w).pow(2).mean().sqrt())
    if code == "dynamic":  # the default, through the one quantization API
        q = m.quantize_4bit(w, 64, double_quant=True)
    else:  # the same tensor with its constants double-quantized through another code
        q = dataclasses.replace(q_plain, absmax=None,
                                absmax_dq=quantize_constants(q_plain.absmax, 256, code))
    rmse_dq = float((m.dequantize_4bit(q) - w).pow(2).mean().sqrt())
    assert abs(rmse_dq / rmse_plain - 1) < 0.01
