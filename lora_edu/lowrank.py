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
