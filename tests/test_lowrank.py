"""Tests of lora_edu.lowrank: Eckart–Young, parameter counts, effective rank, bad input."""

import math

import numpy as np
import pytest
import torch

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


@pytest.fixture
def W() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 25, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("r", [1, 3, 10, 25])
def test_frobenius_error_equals_tail_of_singular_values(W, r):
    s = singular_values(W)
    err = torch.linalg.norm(W - best_rank_r(W, r)).item()
    assert err == pytest.approx(truncation_error(s, r), rel=1e-10, abs=1e-10)


def test_full_rank_reconstructs_exactly(W):
    assert torch.allclose(best_rank_r(W, 25), W, atol=1e-12)


def test_factors_have_document_shapes_and_product(W):
    B, A = low_rank_factors(W, 4)
    assert B.shape == (40, 4) and A.shape == (4, 25)
    assert torch.allclose(B @ A, best_rank_r(W, 4), atol=1e-12)
    assert torch.linalg.matrix_rank(B @ A).item() == 4


def test_eckart_young_beats_other_rank_r_matrices(W):
    """No random rank-r product (nor a perturbation of the optimum) is closer to W."""
    r = 3
    best = torch.linalg.norm(W - best_rank_r(W, r))
    g = torch.Generator().manual_seed(1)
    B, A = low_rank_factors(W, r)
    for _ in range(50):
        B2 = B + 0.05 * torch.randn(B.shape, generator=g, dtype=W.dtype)
        A2 = A + 0.05 * torch.randn(A.shape, generator=g, dtype=W.dtype)
        assert torch.linalg.norm(W - B2 @ A2) > best


def test_low_rank_matrix_is_recovered():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(30, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 20, generator=g,
                                                                              dtype=torch.float64)
    assert torch.allclose(best_rank_r(M, 3), M, atol=1e-10)
    assert effective_rank(singular_values(M), 1.0) == 3


def test_numpy_in_numpy_out(W):
    out = best_rank_r(W.numpy(), 2)
    assert isinstance(out, np.ndarray)
    assert np.allclose(out, best_rank_r(W, 2).numpy())


def test_float16_input_keeps_dtype():
    M = torch.randn(8, 6).half()
    assert best_rank_r(M, 2).dtype == torch.float16


@pytest.mark.parametrize("r, expected", [(8, 65_536), (16, 131_072), (64, 524_288)])
def test_parameter_counts_of_document_ranks(r, expected):
    assert factorization_params(4096, 4096, r) == expected
    assert param_fraction(4096, 4096, r) == pytest.approx(expected / 4096**2)


def test_param_fraction_r8_is_1_over_256():
    assert param_fraction(4096, 4096, 8) == 1 / 256


def test_effective_rank_on_known_spectrum():
    sigma = np.sqrt(np.array([50.0, 30.0, 10.0, 9.0, 1.0]))  # energies sum to 100
    assert effective_rank(sigma, 0.5) == 1
    assert effective_rank(sigma, 0.8) == 2
    assert effective_rank(sigma, 0.9) == 3
    assert effective_rank(sigma, 0.99) == 4
    assert effective_rank(sigma, 1.0) == 5
    assert np.allclose(energy_curve(sigma), [0.5, 0.8, 0.9, 0.99, 1.0])


@pytest.mark.parametrize("bad_r", [0, -1, 26])
def test_rank_out_of_range_rejected(W, bad_r):
    with pytest.raises(ValueError, match=r"r must be an int >= 1 and <= 25"):
        best_rank_r(W, bad_r)


def test_rank_wrong_type_rejected(W):
    with pytest.raises(TypeError, match="r must be an int"):
        best_rank_r(W, 2.0)
    with pytest.raises(TypeError, match="r must be an int"):
        best_rank_r(W, True)


def test_numpy_scalars_accepted(W):
    assert torch.equal(best_rank_r(W, np.int64(3)), best_rank_r(W, 3))
    assert factorization_params(np.int32(10), np.int64(5), np.uint8(2)) == 30
    sigma = singular_values(W)
    assert truncation_error(sigma, np.int16(4)) == truncation_error(sigma, 4)
    assert effective_rank(sigma, np.float32(0.5)) == effective_rank(sigma, 0.5)


def test_non_2d_rejected():
    with pytest.raises(ValueError, match="W must have 2 dimension"):
        best_rank_r(torch.ones(3, 3, 3), 1)
    with pytest.raises(ValueError, match="W must have 2 dimension"):
        singular_values(torch.ones(4))
    with pytest.raises(ValueError, match="W must not be empty"):
        singular_values(torch.ones(0, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_matrix_rejected(W, bad):
    W = W.clone()
    W[3, 7] = bad
    for call in (lambda: best_rank_r(W, 2), lambda: low_rank_factors(W, 2),
                 lambda: singular_values(W), lambda: singular_values(W.numpy())):
        with pytest.raises(ValueError, match="W must hold only finite values"):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_spectrum_rejected(bad):
    sigma = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    sigma[1] = bad
    for call in (lambda: truncation_error(sigma, 1), lambda: energy_curve(sigma),
                 lambda: effective_rank(sigma, 0.9), lambda: truncation_error([3.0, bad], 1)):
        with pytest.raises(ValueError, match=r"sigma(\[1\])? must (hold only finite values|"
                                             r"be a finite number)"):
            call()


def test_non_array_rejected():
    with pytest.raises(TypeError, match="W must be a Tensor or ndarray"):
        best_rank_r([[1.0, 2.0], [3.0, 4.0]], 1)
    with pytest.raises(TypeError, match="W must hold numbers"):
        singular_values(np.array([["a", "b"], ["c", "d"]]))


def test_integer_and_strided_numpy_input():
    """Integer matrices are computed in float64; a reversed (negative-stride) view works."""
    M = np.arange(12).reshape(4, 3)
    assert np.allclose(best_rank_r(M, 2), M, atol=1e-10)  # rank 2: rows are affine in i
    W = np.random.default_rng(0).standard_normal((6, 5))
    assert np.allclose(singular_values(W[::-1]), singular_values(W))


def test_factorization_params_validation():
    with pytest.raises(ValueError, match="d must be an int >= 1"):
        factorization_params(0, 10, 1)
    with pytest.raises(ValueError, match=r"r must be an int >= 1 and <= 5"):
        factorization_params(10, 5, 6)
    with pytest.raises(TypeError, match="k must be an int"):
        param_fraction(10, 5.0, 1)


def test_effective_rank_validation():
    with pytest.raises(ValueError, match="energy must be > 0"):
        effective_rank([1.0, 0.5], 0.0)
    with pytest.raises(ValueError, match="energy must be <= 1"):
        effective_rank([1.0, 0.5], 1.5)
    with pytest.raises(TypeError, match="energy must be a real number"):
        effective_rank([1.0, 0.5], "0.9")
    with pytest.raises(ValueError, match="all zeros"):
        effective_rank([0.0, 0.0], 0.9)
    with pytest.raises(ValueError, match=r"r must be an int >= 0 and <= 2"):
        truncation_error([1.0, 0.5], 3)


def test_truncation_error_rejects_unsorted_spectrum():
    """Σ_{i>r} σ_i² is read by position: ascending σ (as eigvalsh returns) would silently give the
    sum over the r *smallest* values' complement — wrong — so it is rejected, not sorted."""
    W = torch.randn(12, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = singular_values(W)
    ascending = sigma.flip(0)
    right = torch.linalg.norm(W - best_rank_r(W, 2)).item()
    assert truncation_error(sigma, 2) == pytest.approx(right, rel=1e-12)
    # what an unsorted input would have given: the wrong tail
    assert math.sqrt(float((ascending[2:] ** 2).sum())) != pytest.approx(right, rel=1e-3)
    for call in (lambda: truncation_error(ascending, 2), lambda: energy_curve(ascending),
                 lambda: effective_rank(ascending.numpy(), 0.9),
                 lambda: truncation_error([1.0, 2.0, 0.5], 1)):
        with pytest.raises(ValueError, match="sigma must be sorted in descending order"):
            call()


def test_spectrum_bad_values():
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        truncation_error([1.0, -0.5], 1)
    with pytest.raises(ValueError, match="sigma must not be empty"):
        energy_curve([])
    with pytest.raises(ValueError, match="sigma must have 1 dimension"):
        energy_curve(np.ones((2, 2)))
    with pytest.raises(TypeError, match="sigma must be a torch.Tensor, numpy.ndarray or sequence"):
        truncation_error("1.0", 0)
    with pytest.raises(TypeError, match=r"sigma\[1\] must be a real number"):
        truncation_error([1.0, "x"], 0)
    with pytest.raises(TypeError, match="sigma must be real"):
        energy_curve(torch.tensor([1.0 + 1j]))


def test_energy_curve_consistent_with_truncation_error(W):
    """1 − E(r) = truncation_error(σ, r)² / ‖W‖_F² for every r."""
    sigma = singular_values(W)
    curve = energy_curve(sigma)
    total = float(torch.linalg.norm(W)) ** 2
    for r in range(1, len(curve) + 1):
        assert 1 - curve[r - 1] == pytest.approx(truncation_error(sigma, r) ** 2 / total,
                                                 abs=1e-12)
