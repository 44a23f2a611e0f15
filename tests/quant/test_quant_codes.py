"""Tests of lora_edu.quant: the NF4 table and the codes it is compared with."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from lora_edu.quant import (
    NF4_OFFSET,
    check_code,
    code_thresholds,
    eq4_literal_levels,
    fp4_code,
    gaussian_level_probabilities,
    gaussian_quantizer_mse,
    int4_code,
    lloyd_max_code,
    lloyd_max_levels,
    nf4_code,
    normal_float_code,
    normal_float_offset,
)

# The NF4 table published with QLoRA (index 0..15).
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def test_nf4_equals_published_table_bit_for_bit():
    code = nf4_code()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert torch.equal(code, torch.tensor(PUBLISHED_NF4, dtype=torch.float32))
    # why the float32 linspace matters: the same formula in float64 is off by one ulp in places
    p_pos = np.linspace(NF4_OFFSET, 0.5, 9)[:-1]
    p_neg = np.linspace(NF4_OFFSET, 0.5, 8)[:-1]
    f64 = np.sort(np.concatenate([norm.ppf(p_pos), [0.0], -norm.ppf(p_neg)])) / norm.ppf(NF4_OFFSET)
    diff = np.abs(f64 - np.array(PUBLISHED_NF4))
    assert 0 < diff.max() <= 2e-7
    rounded = torch.from_numpy(f64).float()
    assert int((rounded != torch.tensor(PUBLISHED_NF4)).sum()) == 10  # as the docstring says
    # every call returns a fresh copy of the cached table
    code[0] = 5.0
    assert nf4_code()[0].item() == -1.0


def test_nf4_levels_sorted_unique_with_exact_extremes_and_zero():
    code = nf4_code()
    assert bool((code[1:] > code[:-1]).all())
    assert torch.unique(code).numel() == 16
    assert code[0].item() == -1.0 and code[15].item() == 1.0 and code[7].item() == 0.0
    # asymmetric: 7 negative, 8 positive levels
    assert int((code < 0).sum()) == 7 and int((code > 0).sum()) == 8


def test_offset_identity():
    exact = normal_float_offset(4)
    assert exact == pytest.approx(1 - 0.5 * (1 / 32 + 1 / 30), abs=1e-15)
    assert round(exact, 7) == NF4_OFFSET
    # the offset is the mean of the outer quantiles of symmetric 16- and 15-level codes
    assert exact == pytest.approx(0.5 * ((1 - 1 / 32) + (1 - 1 / 30)), abs=1e-15)


def test_normal_float_code_definition_for_other_bits():
    for bits in (2, 3, 5):
        code = normal_float_code(bits)
        assert code.shape == (2**bits,)
        assert bool((code[1:] > code[:-1]).all())
        assert code[0] == -1 and code[-1] == 1 and bool((code == 0).any())
    # the positive half is Q(p)/Q(offset) at the stated grid
    half = norm.ppf(np.linspace(NF4_OFFSET, 0.5, 9)[:-1]) / norm.ppf(NF4_OFFSET)
    assert np.allclose(np.sort(half), nf4_code()[8:].double().numpy(), atol=1e-7)


def test_symmetric_variant_has_no_zero():
    code = normal_float_code(4, symmetric=True)
    assert code.shape == (16,)
    assert not bool((code == 0).any())
    assert torch.allclose(code, -code.flip(0))
    assert code[0] == -1 and code[-1] == 1


def test_eq4_literal_gives_minus_infinity():
    q = eq4_literal_levels(4)
    assert q.shape == (16,)
    assert q[0] == -np.inf
    assert np.all(np.isfinite(q[1:]))
    assert np.all(np.diff(q[1:]) > 0)
    # q_i = ½(Q(i/17) + Q((i+1)/17)) at i = 5
    assert q[5] == pytest.approx(0.5 * (norm.ppf(5 / 17) + norm.ppf(6 / 17)), abs=1e-15)


def test_int4_code():
    code = int4_code()
    assert torch.allclose(code[1:], torch.arange(-7, 8, dtype=torch.float32) / 7)
    assert code[0] == pytest.approx(-8 / 7)
    assert code[-1] == 1.0


@pytest.mark.parametrize("variant, magnitudes", [
    ("e2m1", [0, 0.5, 1, 1.5, 2, 3, 4, 6]),
    ("bnb", [0, 0.0625, 2, 3, 4, 6, 8, 12]),
])
def test_fp4_code(variant, magnitudes):
    code = fp4_code(variant)
    m = torch.tensor(magnitudes, dtype=torch.float64) / max(magnitudes)
    assert torch.allclose(code[8:].double(), m, atol=1e-7)
    assert torch.allclose(code[:8].double(), -m.flip(0), atol=1e-7)
    assert bool((code[1:] >= code[:-1]).all())
    assert torch.unique(code).numel() == 15  # ±0


def test_lloyd_max_is_a_fixed_point_and_optimal():
    levels = lloyd_max_levels(4)
    t = np.concatenate([[-np.inf], 0.5 * (levels[:-1] + levels[1:]), [np.inf]])
    centroids = (norm.pdf(t[:-1]) - norm.pdf(t[1:])) / (norm.cdf(t[1:]) - norm.cdf(t[:-1]))
    assert np.allclose(levels, centroids, atol=1e-10)
    assert levels[-1] == pytest.approx(2.733, abs=1e-3)
    mse = gaussian_quantizer_mse(levels)
    assert 0.0094 < mse < 0.0096
    # no small perturbation of the levels does better
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert gaussian_quantizer_mse(levels + 1e-3 * rng.standard_normal(16)) >= mse
    # entropy of the Lloyd-Max output ≈ 3.765 bits (equal-mass would be 4)
    p = gaussian_level_probabilities(levels)
    assert -(p * np.log2(p)).sum() == pytest.approx(3.765, abs=1e-3)


def test_lloyd_max_beats_nf4_on_gaussian_at_every_scale():
    lm = gaussian_quantizer_mse(lloyd_max_levels(4))
    nf = nf4_code().double().numpy()
    at_offset = gaussian_quantizer_mse(nf * norm.ppf(NF4_OFFSET))
    best = minimize_scalar(lambda s: gaussian_quantizer_mse(s * nf), bounds=(1.0, 4.0),
                           method="bounded").fun
    assert lm <= best <= at_offset
    assert best < 1.1 * lm  # NF4 at its best scale is within 10 % of the optimum
    code = lloyd_max_code(4)
    assert code[0] == -1 and code[-1] == 1 and code.dtype == torch.float32


def test_gaussian_mse_matches_monte_carlo():
    levels = nf4_code().double().numpy() * 2.5
    x = np.random.default_rng(1).standard_normal(400_000)
    t = 0.5 * (levels[:-1] + levels[1:])
    q = levels[np.searchsorted(t, x, side="left")]
    assert np.mean((x - q) ** 2) == pytest.approx(gaussian_quantizer_mse(levels), rel=0.02)
    p = gaussian_level_probabilities(levels)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_equal_mass_at_the_offset_scale():
    # Inside the outer quantiles NF4's thresholds are not the bin edges of equal mass, but the
    # levels themselves are equally spaced in probability on each side.
    code = nf4_code().double().numpy() * norm.ppf(NF4_OFFSET)
    cdf = norm.cdf(code)
    assert np.allclose(np.diff(cdf[7:]), np.diff(cdf[7:])[0], atol=1e-6)
    assert np.allclose(np.diff(cdf[:8]), np.diff(cdf[:8])[0], atol=1e-6)


def test_thresholds():
    t = code_thresholds(nf4_code())
    assert t.shape == (15,)
    assert t[12].item() == pytest.approx(0.50166, abs=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="bits"):
        normal_float_code(1)
    with pytest.raises(TypeError, match="bits"):
        normal_float_code(4.0)
    with pytest.raises(ValueError, match="offset"):
        normal_float_code(4, offset=1.0)
    with pytest.raises(ValueError, match="variant"):
        fp4_code("e3m0")
    with pytest.raises(ValueError, match="code"):
        check_code(torch.linspace(-1, 1, 15))
    with pytest.raises(ValueError, match="code"):
        check_code(torch.linspace(1, -1, 16))
    with pytest.raises(ValueError, match="code"):
        check_code(torch.tensor([math.nan] + [0.0] * 15))
    with pytest.raises(TypeError, match="code"):
        check_code(torch.arange(16))
    with pytest.raises(ValueError, match="levels"):
        gaussian_quantizer_mse([1.0, 0.0])


def test_import_does_not_load_scipy_stats_until_a_code_is_built():
    lazy = "import lora_edu.quant, sys; assert 'scipy.stats' not in sys.modules"
    subprocess.run([sys.executable, "-c", lazy], check=True, timeout=120)
    built = ("import lora_edu.quant as q, sys; q.quantize_4bit(q.nf4_code()); "
             "assert 'scipy.stats' in sys.modules")
    subprocess.run([sys.executable, "-c", built], check=True, timeout=120)
