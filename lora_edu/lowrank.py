"""Low-rank approximation: the idea LoRA stands on (source §2.1 "低秩近似思想").

A matrix W ∈ ℝ^{d×k} with singular value decomposition W = U·diag(σ)·Vᵀ (σ₁ ≥ σ₂ ≥ … ≥ 0) has, by
the Eckart–Young theorem, the best rank-r approximation in the Frobenius (and spectral) norm

    W_r = U[:, :r] · diag(σ[:r]) · V[:, :r]ᵀ,     ‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²).

Written as a product W_r = B·A with B ∈ ℝ^{d×r} and A ∈ ℝ^{r×k}, it needs r·(d + k) numbers instead
of d·k: the parameter count of a LoRA bypass (source §2.1 (3)).

Matrix functions accept a finite, non-empty 2-D ``torch.Tensor`` or ``numpy.ndarray`` and return
the same kind. Spectrum functions (:func:`truncation_error`, :func:`energy_curve`,
:func:`effective_rank`) take singular values σ as a non-empty 1-D tensor, array or sequence of
finite, non-negative numbers **sorted in descending order**, as :func:`singular_values` (or
``torch.linalg.svdvals``) returns them. Unsorted σ is rejected with ``ValueError``, not sorted
silently: the formulas index σ by position (Σ_{i>r} means "all but the r largest"), and an
unsorted input usually means the numbers are not singular values — e.g. eigenvalues from
``eigvalsh``, which come in ascending order.

Where LoRA's update lives (source §2.3 (2), (3); LoRA paper §7.2–7.3): for trained adapters,
:func:`subspace_similarity` (and :func:`subspace_similarity_grid`) measure how much two matrices A
(r×k) share the directions of the input space they read, and :func:`amplification_factor` (with
:func:`projected_norm`) how strongly an update ΔW enlarges directions that the frozen W0 already
has. These take real matrices only.

Every function checks its arguments with :mod:`lora_edu.checks`: a wrong type raises
``TypeError``, a wrong value ``ValueError``, both naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lora_edu.checks import (
    check_float,
    check_instance,
    check_int,
    check_sorted_descending,
    check_tensor,
)

__all__ = [
    "singular_values",
    "best_rank_r",
    "low_rank_factors",
    "truncation_error",
    "factorization_params",
    "param_fraction",
    "effective_rank",
    "energy_curve",
    "numerical_rank",
    "subspace_similarity",
    "subspace_similarity_grid",
    "projected_norm",
    "amplification_factor",
]

ArrayLike = torch.Tensor | np.ndarray


def _from_numpy(name: str, value: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor (copied only when torch cannot share its memory)."""
    if value.dtype.kind not in "biufc":
        raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {value.dtype}")
    return torch.from_numpy(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")))


def _as_matrix(W: object, name: str = "W") -> torch.Tensor:
    """Validate a finite, non-empty 2-D matrix and return it as a torch tensor."""
    check_instance(name, W, (torch.Tensor, np.ndarray))
    M = _from_numpy(name, W) if isinstance(W, np.ndarray) else W
    check_tensor(name, M, 2)
    if M.numel() == 0:  # (no shared check for non-empty tensors)
        raise ValueError(f"{name} must not be empty, got shape {tuple(M.shape)}")
    if not (M.is_floating_point() or M.is_complex()):
        M = M.to(torch.float64)
    if not bool(torch.isfinite(M).all()):  # check_tensor(finite=True) covers real dtypes only
        raise ValueError(f"{name} must hold only finite values (no NaN or inf)")
    return M


def _as_spectrum(sigma: object, name: str = "sigma") -> torch.Tensor:
    """Validate singular values: non-empty, 1-D, real, finite, ≥ 0, descending; as float64."""
    if isinstance(sigma, np.ndarray):
        s = _from_numpy(name, sigma)
    elif isinstance(sigma, torch.Tensor):
        s = sigma.detach().cpu()
    elif isinstance(sigma, Sequence) and not isinstance(sigma, str | bytes):
        for i, v in enumerate(sigma):
            check_float(f"{name}[{i}]", v, finite=False)
        s = torch.tensor([float(v) for v in sigma], dtype=torch.float64)
    else:
        raise TypeError(f"{name} must be a torch.Tensor, numpy.ndarray or sequence of numbers, "
                        f"got {type(sigma).__name__}")
    if s.is_complex():
        raise TypeError(f"{name} must be real (singular values), got dtype {s.dtype}")
    s = check_tensor(name, s.to(torch.float64), 1, finite=True)
    if s.numel() == 0:  # (no shared check for non-empty tensors)
        raise ValueError(f"{name} must not be empty")
    if bool((s < 0).any()):  # (no shared check for non-negative entries)
        raise ValueError(f"{name} must be >= 0 (singular values), got min {float(s.min())}")
    return check_sorted_descending(name, s)


def _like(result: torch.Tensor, template: ArrayLike) -> ArrayLike:
    return result.numpy() if isinstance(template, np.ndarray) else result


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    # SVD in half precision is not supported on CPU: compute half/bfloat16 inputs in float32.
    return torch.float32 if W.dtype in (torch.float16, torch.bfloat16) else W.dtype


def singular_values(W: ArrayLike) -> ArrayLike:
    """Singular values σ₁ ≥ … ≥ σ_min(d,k) ≥ 0 of a 2-D matrix W = U·diag(σ)·Vᵀ (source §2.1).

    Returned in descending order, as the spectrum functions of this module expect, and of the same
    kind (tensor or array) as ``W``; integer input is computed in float64, half precision in
    float32.

    Raises ``TypeError`` if ``W`` is not a tensor/array of numbers, ``ValueError`` if it is not
    2-D, is empty or holds NaN/inf.
    """
    M = _as_matrix(W)
    return _like(torch.linalg.svdvals(M.to(_compute_dtype(M))), W)


def low_rank_factors(W: ArrayLike, r: int) -> tuple[ArrayLike, ArrayLike]:
    """Factors B ∈ ℝ^{d×r}, A ∈ ℝ^{r×k} with B·A the best rank-r approximation of W (source §2.1).

    The singular values are split evenly: B = U_r·diag(√σ_r), A = diag(√σ_r)·V_rᵀ, so both
    factors have the same scale (the "balanced" factorisation). Eckart–Young: no other pair of
    d×r and r×k matrices gets closer to W in Frobenius norm; together they hold r·(d + k)
    numbers (source §2.1 (3)).

    ``r`` is an int (Python or numpy) with 1 ≤ r ≤ min(d, k): ``TypeError``/``ValueError``
    otherwise. ``W`` is checked as in :func:`singular_values`.
    """
    M = _as_matrix(W)
    d, k = M.shape
    r = check_int("r", r, 1, min(d, k))
    U, S, Vh = torch.linalg.svd(M.to(_compute_dtype(M)), full_matrices=False)
    root = S[:r].sqrt()
    B = (U[:, :r] * root).to(M.dtype)
    A = (root[:, None] * Vh[:r]).to(M.dtype)
    return _like(B, W), _like(A, W)


def best_rank_r(W: ArrayLike, r: int) -> ArrayLike:
    """Best rank-r approximation W_r = U_r·diag(σ_r)·V_rᵀ of W (Eckart–Young, 1936; source §2.1).

    ‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²) is the smallest Frobenius error of any matrix of rank ≤ r
    (see :func:`truncation_error`). Arguments are checked as in :func:`low_rank_factors`.
    """
    B, A = low_rank_factors(W, r)
    return B @ A


def truncation_error(sigma: ArrayLike | Sequence[float], r: int) -> float:
    """Frobenius error of the best rank-r approximation: ‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²).

    The Eckart–Young error of source §2.1's low-rank approximation, from the singular values
    alone. ``sigma`` must be sorted in descending order (see the module docstring: unsorted input
    raises ``ValueError``, because "the tail after the r largest" is read by position); ``r`` is an
    int with 0 ≤ r ≤ len(sigma) (r = 0 gives ‖W‖_F, r = len(sigma) gives 0).
    """
    s = _as_spectrum(sigma)
    r = check_int("r", r, 0, s.numel())
    tail = s[r:]
    return math.sqrt(float((tail**2).sum()))


def factorization_params(d: int, k: int, r: int) -> int:
    """Number of parameters of B ∈ ℝ^{d×r} and A ∈ ℝ^{r×k}: r·(d + k) (source §2.1 (3)).

    ``d``, ``k`` are ints ≥ 1 and ``r`` an int with 1 ≤ r ≤ min(d, k).
    """
    d = check_int("d", d, 1)
    k = check_int("k", k, 1)
    r = check_int("r", r, 1, min(d, k))
    return r * (d + k)


def param_fraction(d: int, k: int, r: int) -> float:
    """Fraction r·(d + k) / (d·k) of the full matrix's parameters that a rank-r factorisation needs.

    Source §2.1 (3): trainable parameters drop from d×k to d×r + r×k (e.g. 1/256 for d = k = 4096,
    r = 8). Arguments are checked as in :func:`factorization_params`.
    """
    n = factorization_params(d, k, r)
    return n / (check_int("d", d) * check_int("k", k))


def energy_curve(sigma: ArrayLike | Sequence[float]) -> np.ndarray:
    """Cumulative energy E(r) = Σ_{i≤r} σ_i² / Σ_i σ_i² for r = 1 … len(σ) (a float64 array).

    How much of ‖W‖_F² = Σσ² the best rank-r approximation keeps (source §2.1), so
    1 − E(r) = truncation_error(σ, r)² / ‖W‖_F². ``sigma`` as in :func:`truncation_error`
    (descending); all zeros raise ``ValueError`` (a zero matrix has no energy to share).
    """
    energy = _as_spectrum(sigma).numpy() ** 2
    total = float(energy.sum())
    if total == 0.0:
        raise ValueError("sigma must not be all zeros (the matrix has no energy)")
    return np.cumsum(energy) / total


def effective_rank(sigma: ArrayLike | Sequence[float], energy: float = 0.9) -> int:
    """Smallest r with E(r) = Σ_{i≤r} σ_i² / Σ_i σ_i² ≥ ``energy`` (0 < energy ≤ 1).

    The "intrinsic rank" of an update ΔW at a given energy threshold: source §2.1 says ΔW has a low
    intrinsic rank (低内在秩). ``sigma`` as in :func:`energy_curve`; ``energy`` a real number
    (Python or numpy) in (0, 1].
    """
    energy = check_float("energy", energy, 0.0, 1.0, min_inclusive=False)
    curve = energy_curve(sigma)
    # A tiny slack absorbs rounding when energy is exactly reached (e.g. energy=1.0).
    return int(np.searchsorted(curve, energy - 1e-12) + 1)


# --- where the update lives: subspaces of A, and ΔW against W0 (source §2.3 (2), (3)) ---------


def _as_real_float64(M: object, name: str) -> tuple[torch.Tensor, float]:
    """A finite, non-empty, real 2-D matrix in float64, and the machine epsilon of its own dtype
    (the precision its rank can be judged at: float32 input has float32's epsilon)."""
    X = _as_matrix(M, name)
    if X.is_complex():
        raise TypeError(f"{name} must be real, got dtype {X.dtype}")
    eps = torch.finfo(_compute_dtype(X)).eps
    return X.detach().cpu().to(torch.float64), eps


def _rank_of(S: torch.Tensor, shape: tuple[int, int], eps: float) -> int:
    """Number of singular values above max(d, k)·eps·σ₁ (``torch.linalg.matrix_rank``'s rule)."""
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    return int((S > max(shape) * eps * S[0]).sum())


def numerical_rank(W: ArrayLike) -> int:
    """Rank of W: the number of σ_i > max(d, k)·ε·σ₁, with ε the machine epsilon of W's dtype.

    The rule of ``torch.linalg.matrix_rank`` (and NumPy's ``matrix_rank``): singular values below
    the rounding level of the matrix count as zero. It bounds the number of meaningful singular
    directions that :func:`subspace_similarity` and :func:`amplification_factor` may use: beyond
    the rank, singular vectors are an arbitrary basis of a null space (source §2.1: ΔW = B·A has
    rank ≤ r). ``W`` is a finite, non-empty, real 2-D tensor or array (computed in float64).
    """
    X, eps = _as_real_float64(W, "W")
    return _rank_of(torch.linalg.svdvals(X), tuple(X.shape), eps)


def _svd(M: object, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Checked thin SVD of the matrix ``M`` (as given, not yet converted) in float64:
    (U, σ, Vᵀ, rank), the rank as in :func:`numerical_rank`, judged at the precision of M's own
    dtype; a zero M is rejected."""
    X, eps = _as_real_float64(M, name)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    rank = _rank_of(S, tuple(X.shape), eps)
    if rank == 0:
        raise ValueError(f"{name} must not be the zero matrix (it has no singular directions)")
    return U, S, Vh, rank


def _check_count(count: object, count_name: str, rank: int, name: str) -> int:
    """A number of singular directions: an int in 1 … rank(M)."""
    count = check_int(count_name, count)
    if not 1 <= count <= rank:
        raise ValueError(f"{count_name} must be an int with 1 <= {count_name} <= rank({name}) = "
                         f"{rank}, got {count}")
    return count


def _same_columns(k1: int, k2: int) -> None:
    if k1 != k2:
        raise ValueError(f"A2 must have as many columns (the input dimension k) as A1 ({k1}), "
                         f"got {k2}")


def subspace_similarity(A1: ArrayLike, A2: ArrayLike, i: int, j: int) -> float:
    """Normalised subspace similarity φ(A1, A2, i, j) = ‖U_iᵀ·U_j‖_F² / min(i, j) ∈ [0, 1].

    LoRA paper §7.2, eq. (4), the measure behind source §2.3 (2)'s "a small r is enough": A1
    (r₁×k) and A2 (r₂×k) are two trained down-projections A ∈ ℝ^{r×k}; their rows span the
    directions of the input space ℝ^k that the bypass reads. U_i ∈ ℝ^{k×i} holds the top-i right
    singular vectors of A1 (A1 = U·Σ·Vᵀ, the first i columns of V), U_j the top-j of A2. The
    squared entries of U_iᵀ·U_j are the squared cosines of the min(i, j) principal angles
    between the two subspaces, so φ is their mean: 1 when the smaller subspace lies inside the
    larger one, 0 when they are orthogonal; φ(A1, A2, i, j) = φ(A2, A1, j, i). Two random
    subspaces of ℝ^k give φ ≈ max(i, j)/k on average.

    ``A1``, ``A2``: finite, non-empty, real 2-D tensors or arrays with the same number of
    columns k (``ValueError`` naming ``A2`` otherwise); ``i`` an int in 1 … rank(A1), ``j`` in
    1 … rank(A2) (:func:`numerical_rank`; beyond the rank the singular vectors are arbitrary).
    Computed in float64; returns a Python float. The top-i subspace is well defined only when
    σ_i > σ_{i+1}; with a tie the result depends on which basis the SVD returns.
    """
    _, _, V1h, rank1 = _svd(A1, "A1")
    _, _, V2h, rank2 = _svd(A2, "A2")
    _same_columns(V1h.shape[1], V2h.shape[1])
    i = _check_count(i, "i", rank1, "A1")
    j = _check_count(j, "j", rank2, "A2")
    Ui, Uj = V1h[:i].T, V2h[:j].T          # k × i and k × j, orthonormal columns
    overlap = float((Ui.T @ Uj).pow(2).sum())
    return min(max(overlap / min(i, j), 0.0), 1.0)


def subspace_similarity_grid(A1: ArrayLike, A2: ArrayLike, i_max: int | None = None,
                             j_max: int | None = None) -> np.ndarray:
    """φ(A1, A2, i, j) of :func:`subspace_similarity` for every i ≤ i_max, j ≤ j_max at once.

    The heat map of LoRA paper Figure 3 (source §2.3 (2)): entry ``[i-1, j-1]`` is φ(A1, A2, i,
    j). One SVD per matrix: with C = U_{i_max}ᵀ·U_{j_max}, ‖U_iᵀ·U_j‖_F² is the sum of C² over
    the first i rows and j columns, a 2-D cumulative sum. ``i_max`` defaults to rank(A1),
    ``j_max`` to rank(A2); each must lie in 1 … that rank. Other arguments as in
    :func:`subspace_similarity`, which the tests compare this with entry by entry. Returns a
    float64 array of shape (i_max, j_max).
    """
    _, _, V1h, rank1 = _svd(A1, "A1")
    _, _, V2h, rank2 = _svd(A2, "A2")
    _same_columns(V1h.shape[1], V2h.shape[1])
    i_max = _check_count(rank1 if i_max is None else i_max, "i_max", rank1, "A1")
    j_max = _check_count(rank2 if j_max is None else j_max, "j_max", rank2, "A2")
    cumulative = (V1h[:i_max] @ V2h[:j_max].T).pow(2).cumsum(0).cumsum(1).numpy()
    rows = np.arange(1, i_max + 1)[:, None]
    cols = np.arange(1, j_max + 1)[None, :]
    return np.clip(cumulative / np.minimum(rows, cols), 0.0, 1.0)


def _same_shape(first: tuple[int, ...], second: tuple[int, ...], first_name: str,
                second_name: str) -> None:
    if tuple(first) != tuple(second):
        raise ValueError(f"{second_name} must have the shape of {first_name} {tuple(first)}, "
                         f"got {tuple(second)}")


def projected_norm(w: ArrayLike, directions: ArrayLike, r: int) -> float:
    """‖Uᵀ·W·V‖_F: the size of W inside the top-r singular directions of another matrix M.

    LoRA paper §7.3, Table 7 (written UᵀWVᵀ there, with V's singular vectors as rows): with
    M = U_M·Σ·V_Mᵀ, U = U_M[:, :r] (d×r) and V = V_M[:, :r] (k×r), the r×r matrix Uᵀ·W·V is W
    projected onto M's r strongest output and input directions. M = ΔW gives the denominator of
    :func:`amplification_factor`; M = W gives sqrt(σ₁² + … + σ_r²) of W (its own top
    directions, the most it can have); random orthonormal U, V give
    E‖Uᵀ·W·V‖_F² = r²·‖W‖_F²/(d·k) (source §2.3 (3): does ΔW point where W is already strong?).

    ``w`` and ``directions`` are finite, non-empty, real 2-D tensors or arrays of the same shape
    (``ValueError`` naming ``directions`` otherwise); ``r`` an int in 1 … rank(directions)
    (:func:`numerical_rank`; a zero matrix is rejected). Computed in float64; returns a Python
    float.
    """
    W, _ = _as_real_float64(w, "w")
    U, _, Vh, rank = _svd(directions, "directions")
    _same_shape(W.shape, (U.shape[0], Vh.shape[1]), "w", "directions")
    r = _check_count(r, "r", rank, "directions")
    return float(torch.linalg.matrix_norm(U[:, :r].T @ W @ Vh[:r].T))


def amplification_factor(delta_w: ArrayLike, w: ArrayLike, r: int) -> float:
    """‖ΔW‖_F / ‖Uᵀ·W·V‖_F, U and V the top-r left/right singular vectors of ΔW.

    LoRA paper §7.3 (source §2.3 (3), ΔW "amplifies hidden features"): how much larger the
    update is than the part of the frozen W that lies in the update's own r directions
    (:func:`projected_norm` with M = ΔW). The paper reports 21.5 ≈ 6.91/0.32 for W_q of GPT-3's
    48th layer at r = 4 and ≈ 1.9 (3.57/1.90) at r = 64. When U and V are complete (r = d = k
    for a square W), Uᵀ·W·V keeps all of W and the factor is just ‖ΔW‖_F / ‖W‖_F.

    ``delta_w`` and ``w`` are finite, non-empty, real 2-D tensors or arrays of the same shape
    (``ValueError`` naming ``w`` otherwise); ``r`` an int in 1 … rank(ΔW) (a zero ΔW is
    rejected). Computed in float64; returns a Python float, ``math.inf`` if W has no component
    at all in those directions.
    """
    U, S, Vh, rank = _svd(delta_w, "delta_w")
    W, _ = _as_real_float64(w, "w")
    _same_shape((U.shape[0], Vh.shape[1]), W.shape, "delta_w", "w")
    r = _check_count(r, "r", rank, "delta_w")
    inside = float(torch.linalg.matrix_norm(U[:, :r].T @ W @ Vh[:r].T))
    size = float(torch.linalg.norm(S))
    return math.inf if inside == 0.0 else size / inside
