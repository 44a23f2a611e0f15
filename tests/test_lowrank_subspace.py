"""Tests of the subspace measures of lora_edu.lowrank: subspace similarity φ (LoRA paper §7.2),
the projected norm and the amplification factor (§7.3), the numerical rank; bad input."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import assert_rejected

from lora_edu.lowrank import (
    amplification_factor,
    numerical_rank,
    projected_norm,
    subspace_similarity,
    subspace_similarity_grid,
)


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def right_basis(A, count):
    """Top-``count`` right singular vectors of A as columns (numpy), for the scipy reference."""
    return np.linalg.svd(np.asarray(A, dtype=np.float64))[2][:count].T


# --- subspace similarity ---------------------------------------------------------------------

def test_hand_example():
    """Rows e1 (σ=2), e2 (σ=1) against e1 (σ=3), e3 (σ=1) in ℝ⁴: the top directions coincide,
    the second ones are orthogonal."""
    A1 = np.array([[2.0, 0, 0, 0], [0, 1.0, 0, 0]])
    A2 = np.array([[3.0, 0, 0, 0], [0, 0, 1.0, 0]])
    assert subspace_similarity(A1, A2, 1, 1) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(A1, A2, 2, 2) == pytest.approx(0.5, abs=1e-12)
    assert subspace_similarity(A1, A2, 1, 2) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(A1, A2, 2, 1) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("r", [1, 3, 8])
def test_same_subspace_gives_one(r):
    """A2 = M·A1 with M invertible has the same row space: φ(r, r) = 1."""
    A1 = gaussian(r, 32, seed=1)
    A2 = gaussian(r, r, seed=2) @ A1
    assert subspace_similarity(A1, A2, r, r) == pytest.approx(1.0, abs=1e-10)
    assert subspace_similarity(A1, A1, r, r) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_give_zero():
    Q = torch.linalg.qr(gaussian(20, 20, seed=3))[0]
    A1 = gaussian(4, 4, seed=4) @ Q[:, :4].T       # rows in span(q1..q4)
    A2 = gaussian(6, 6, seed=5) @ Q[:, 4:10].T     # rows in span(q5..q10)
    for i in (1, 4):
        for j in (1, 3, 6):
            assert subspace_similarity(A1, A2, i, j) == pytest.approx(0.0, abs=1e-12)


def test_nested_subspace_gives_one_for_the_smaller_dimension():
    """A 2-dimensional subspace inside a 5-dimensional one: φ(2, 5) = 1 (normalised by min)."""
    Q = torch.linalg.qr(gaussian(12, 12, seed=6))[0]
    small = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ Q[:, :2].T
    large = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ Q[:, :5].T
    assert subspace_similarity(small, large, 2, 5) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(large, small, 5, 2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_symmetry_and_range_on_random_inputs(seed):
    A1, A2 = gaussian(8, 24, seed=10 + seed), gaussian(5, 24, seed=20 + seed)
    for i in range(1, 9):
        for j in range(1, 6):
            phi = subspace_similarity(A1, A2, i, j)
            assert 0.0 <= phi <= 1.0
            assert subspace_similarity(A2, A1, j, i) == pytest.approx(phi, abs=1e-12)
            if i == j:
                assert phi == pytest.approx(subspace_similarity(A2, A1, i, i), abs=1e-12)


@pytest.mark.parametrize("i, j", [(1, 1), (3, 3), (5, 5), (2, 5), (5, 2), (4, 1)])
def test_matches_principal_angles_from_scipy(i, j):
    """Independent reference: φ is the mean over the min(i, j) principal angles θ of cos²θ
    (scipy.linalg.subspace_angles works on column spans, from its own SVD-based algorithm)."""
    A1, A2 = gaussian(6, 15, seed=30).numpy(), gaussian(7, 15, seed=31).numpy()
    theta = scipy.linalg.subspace_angles(right_basis(A1, i), right_basis(A2, j))
    assert len(theta) == min(i, j)
    assert subspace_similarity(A1, A2, i, j) == pytest.approx(np.mean(np.cos(theta) ** 2),
                                                               abs=1e-10)


def test_random_subspaces_share_max_ij_over_k_on_average():
    """For independent random subspaces of ℝ^k, E‖U_iᵀU_j‖² = i·j/k, so E φ = max(i, j)/k."""
    k, i, j = 16, 2, 4
    values = [subspace_similarity(gaussian(i, k, seed=100 + n), gaussian(j, k, seed=500 + n),
                                  i, j) for n in range(300)]
    # the spread of one value is below 0.2, so the mean of 300 is within ±0.035 (3 s.e.)
    assert np.mean(values) == pytest.approx(max(i, j) / k, abs=0.035)


def test_grid_equals_the_plain_formula_entry_by_entry():
    A1, A2 = gaussian(8, 20, seed=40), gaussian(12, 20, seed=41)
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (8, 12) and grid.dtype == np.float64
    for i in range(1, 9):
        for j in range(1, 13):
            assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(A1, A2, i, j),
                                                       abs=1e-12)
    small = subspace_similarity_grid(A1, A2, 3, 5)
    assert np.allclose(small, grid[:3, :5], rtol=0, atol=1e-12)


def test_numpy_float32_and_tensor_inputs_agree():
    A1, A2 = gaussian(4, 10, seed=50), gaussian(6, 10, seed=51)
    ref = subspace_similarity(A1, A2, 3, 4)
    assert isinstance(ref, float)
    assert subspace_similarity(A1.numpy(), A2.numpy(), np.int64(3), np.int32(4)) == ref
    assert subspace_similarity(A1.float(), A2.float(), 3, 4) == pytest.approx(ref, abs=1e-5)


def test_directions_beyond_the_rank_are_refused():
    """A 4×10 matrix of rank 2 has only two meaningful right singular vectors."""
    A = gaussian(4, 2, seed=60) @ gaussian(2, 10, seed=61)
    assert numerical_rank(A) == 2
    assert subspace_similarity(A, gaussian(3, 10, seed=62), 2, 3) <= 1.0
    with pytest.raises(ValueError, match=r"i must be an int with 1 <= i <= rank\(A1\) = 2"):
        subspace_similarity(A, gaussian(3, 10, seed=62), 3, 1)


def test_numerical_rank_judged_at_the_input_precision():
    """A float32 outer product is rank 1 up to float32 rounding; in float64 the same rounded
    numbers have full rank."""
    g = np.random.default_rng(0)
    outer = g.standard_normal((32, 1)).astype(np.float32) @ g.standard_normal((1, 32)).astype(
        np.float32)
    assert numerical_rank(outer) == 1
    assert numerical_rank(torch.from_numpy(outer)) == 1
    assert numerical_rank(gaussian(5, 9, seed=63)) == 5


# --- projected norm and amplification factor ----------------------------------------------------

def test_amplification_hand_examples():
    """W = diag(10, 1, 0.1): an update along the weakest direction is amplified 20×, one along the
    strongest is half of what W already has there."""
    W = np.diag([10.0, 1.0, 0.1])
    weak = np.diag([0.0, 0.0, 2.0])
    strong = np.diag([5.0, 0.0, 0.0])
    assert projected_norm(W, weak, 1) == pytest.approx(0.1, abs=1e-12)
    assert amplification_factor(weak, W, 1) == pytest.approx(20.0, rel=1e-12)
    assert amplification_factor(strong, W, 1) == pytest.approx(0.5, rel=1e-12)


def test_projected_norm_on_own_directions_is_the_top_singular_energy():
    W = gaussian(12, 9, seed=70)
    sigma = torch.linalg.svdvals(W)
    for r in (1, 4, 9):
        assert projected_norm(W, W, r) == pytest.approx(float(sigma[:r].norm()), rel=1e-12)


def test_projected_norm_of_random_directions_on_average():
    """Random orthonormal r-frames: E‖UᵀWV‖_F² = r²·‖W‖_F²/(d·k) (the paper's "random" column)."""
    d, k, r = 10, 8, 3
    W = gaussian(d, k, seed=71)
    squares = [projected_norm(W, gaussian(d, k, seed=1000 + n), r) ** 2 for n in range(400)]
    expected = r**2 * float(W.norm()) ** 2 / (d * k)
    assert np.mean(squares) == pytest.approx(expected, rel=0.12)


def test_amplification_is_the_ratio_of_two_norms():
    W, D = gaussian(16, 12, seed=72), gaussian(16, 3, seed=73) @ gaussian(3, 12, seed=74)
    for r in (1, 2, 3):
        assert amplification_factor(D, W, r) == pytest.approx(
            float(D.norm()) / projected_norm(W, D, r), rel=1e-12)


def test_amplification_scales_and_is_rotation_invariant():
    W, D = gaussian(10, 10, seed=75), gaussian(10, 2, seed=76) @ gaussian(2, 10, seed=77)
    f = amplification_factor(D, W, 2)
    assert amplification_factor(3.0 * D, W, 2) == pytest.approx(3.0 * f, rel=1e-10)
    assert amplification_factor(D, 4.0 * W, 2) == pytest.approx(f / 4.0, rel=1e-10)
    P = torch.linalg.qr(gaussian(10, 10, seed=78))[0]
    Q = torch.linalg.qr(gaussian(10, 10, seed=79))[0]
    assert amplification_factor(P @ D @ Q, P @ W @ Q, 2) == pytest.approx(f, rel=1e-9)


def test_complete_directions_give_the_norm_ratio():
    """r = d = k: U and V are complete, UᵀWV keeps all of W."""
    W, D = gaussian(6, 6, seed=80), gaussian(6, 6, seed=81)
    assert amplification_factor(D, W, 6) == pytest.approx(float(D.norm() / W.norm()), rel=1e-12)


def test_no_component_gives_infinity():
    W = np.diag([1.0, 2.0, 0.0])
    assert amplification_factor(np.diag([0.0, 0.0, 5.0]), W, 1) == math.inf


# --- bad input ----------------------------------------------------------------------------------

A = gaussian(4, 10, seed=90)
B = gaussian(3, 10, seed=91)
W10 = gaussian(6, 10, seed=92)
D10 = gaussian(6, 2, seed=93) @ gaussian(2, 10, seed=94)
NAN_A = A.clone()
NAN_A[1, 2] = float("nan")
INF_W = W10.clone()
INF_W[0, 0] = float("inf")

CASES = [
    ("phi A1 a list", lambda: subspace_similarity(A.tolist(), B, 1, 1), TypeError, "A1"),
    ("phi A2 a float", lambda: subspace_similarity(A, 2.0, 1, 1), TypeError, "A2"),
    ("phi A1 complex", lambda: subspace_similarity(A.to(torch.complex128), B, 1, 1), TypeError,
     "A1"),
    ("phi A1 1-D", lambda: subspace_similarity(A[0], B, 1, 1), ValueError, "A1"),
    ("phi A2 empty", lambda: subspace_similarity(A, torch.ones(0, 10), 1, 1), ValueError, "A2"),
    ("phi A1 NaN", lambda: subspace_similarity(NAN_A, B, 1, 1), ValueError, "A1"),
    ("phi A2 inf", lambda: subspace_similarity(A, B.masked_fill(B > 1, float("inf")), 1, 1),
     ValueError, "A2"),
    ("phi A1 zero", lambda: subspace_similarity(torch.zeros(4, 10), B, 1, 1), ValueError, "A1"),
    ("phi columns differ", lambda: subspace_similarity(A, gaussian(3, 9), 1, 1), ValueError,
     "A2"),
    ("phi i = 0", lambda: subspace_similarity(A, B, 0, 1), ValueError, "i"),
    ("phi i > rank", lambda: subspace_similarity(A, B, 5, 1), ValueError, "i"),
    ("phi j > rank", lambda: subspace_similarity(A, B, 1, 4), ValueError, "j"),
    ("phi j negative", lambda: subspace_similarity(A, B, 1, -2), ValueError, "j"),
    ("phi i a float", lambda: subspace_similarity(A, B, 1.0, 1), TypeError, "i"),
    ("phi j a bool", lambda: subspace_similarity(A, B, 1, True), TypeError, "j"),
    ("grid i_max > rank", lambda: subspace_similarity_grid(A, B, 5), ValueError, "i_max"),
    ("grid j_max = 0", lambda: subspace_similarity_grid(A, B, 2, 0), ValueError, "j_max"),
    ("grid j_max a str", lambda: subspace_similarity_grid(A, B, 2, "3"), TypeError, "j_max"),
    ("grid columns differ", lambda: subspace_similarity_grid(A, W10[:, :8]), ValueError, "A2"),
    ("grid A2 NaN", lambda: subspace_similarity_grid(A, NAN_A), ValueError, "A2"),
    ("amp w shape", lambda: amplification_factor(D10, W10[:, :9], 1), ValueError, "w"),
    ("amp w transposed", lambda: amplification_factor(D10, W10.T, 1), ValueError, "w"),
    ("amp r = 0", lambda: amplification_factor(D10, W10, 0), ValueError, "r"),
    ("amp r > rank", lambda: amplification_factor(D10, W10, 3), ValueError, "r"),
    ("amp r a float", lambda: amplification_factor(D10, W10, 2.0), TypeError, "r"),
    ("amp delta_w zero", lambda: amplification_factor(torch.zeros(6, 10), W10, 1), ValueError,
     "delta_w"),
    ("amp delta_w NaN", lambda: amplification_factor(D10 * float("nan"), W10, 1), ValueError,
     "delta_w"),
    ("amp w inf", lambda: amplification_factor(D10, INF_W, 1), ValueError, "w"),
    ("amp w a list", lambda: amplification_factor(D10, W10.tolist(), 1), TypeError, "w"),
    ("amp delta_w None", lambda: amplification_factor(None, W10, 1), TypeError, "delta_w"),
    ("amp delta_w 3-D", lambda: amplification_factor(D10[None], W10, 1), ValueError, "delta_w"),
    ("proj directions shape", lambda: projected_norm(W10, D10[:5], 1), ValueError,
     "directions"),
    ("proj r > rank", lambda: projected_norm(W10, D10, 3), ValueError, "r"),
    ("proj w NaN", lambda: projected_norm(W10 * float("nan"), D10, 1), ValueError, "w"),
    ("proj directions zero", lambda: projected_norm(W10, np.zeros((6, 10)), 1), ValueError,
     "directions"),
    ("rank W a list", lambda: numerical_rank([[1.0]]), TypeError, "W"),
    ("rank W inf", lambda: numerical_rank(INF_W), ValueError, "W"),
]


@pytest.mark.parametrize("call, exc, name", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_rejected_naming_the_argument(call, exc, name):
    assert_rejected(call, exc, name)
