"""Low-rank approximation: the idea LoRA stands on (source §2.1 "低秩近似思想").

A matrix W ∈ ℝ^{d×k} with singular value decomposition W = U·diag(σ)·Vᵀ (σ₁ ≥ σ₂ ≥ … ≥ 0) has, by
the Eckart–Young theorem, the best rank-r approximation in the Frobenius (and spectral) norm

    W_r = U[:, :r] · diag(σ[:r]) · V[:, :r]ᵀ,     ‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²).

Written as a product W_r = B·A with B ∈ ℝ^{d×r} and A ∈ ℝ^{r×k}, it needs r·(d + k) numbers instead
of d·k: the parameter count of a LoRA bypass (source §2.1 (3)).

Functions accept a 2-D ``torch.Tensor`` or ``numpy.ndarray`` and return the same kind.
"""

from __future__ import annotations

import math

import numpy as np
import torch

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


def _as_matrix(W: ArrayLike, name: str = "W") -> torch.Tensor:
    """Validate a finite, non-empty 2-D matrix and return it as a torch tensor."""
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(W)
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(W).__name__}")
    if W.ndim != 2:
        raise ValueError(f"{name} must be 2-D (d x k), got {W.ndim}-D with shape {tuple(W.shape)}")
    if W.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(W.shape)}")
    if not (W.is_floating_point() or W.is_complex()):
        W = W.to(torch.float64)
    if not torch.isfinite(W).all():
        raise ValueError(f"{name} must contain only finite values (no NaN or inf)")
    return W


def _check_rank(r: int, d: int, k: int) -> None:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"r must be an int, got {type(r).__name__}")
    if not 1 <= r <= min(d, k):
        raise ValueError(f"r must satisfy 1 <= r <= min(d, k) = {min(d, k)}, got {r}")


def _like(result: torch.Tensor, template: ArrayLike) -> ArrayLike:
    return result.numpy() if isinstance(template, np.ndarray) else result


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    # SVD in half precision is not supported on CPU: compute half/bfloat16 inputs in float32.
    return torch.float32 if W.dtype in (torch.float16, torch.bfloat16) else W.dtype


def singular_values(W: ArrayLike) -> ArrayLike:
    """Singular values σ₁ ≥ … ≥ σ_min(d,k) of a 2-D matrix W (same kind as the input)."""
    M = _as_matrix(W)
    return _like(torch.linalg.svdvals(M.to(_compute_dtype(M))), W)


def low_rank_factors(W: ArrayLike, r: int) -> tuple[ArrayLike, ArrayLike]:
    """Factors B ∈ ℝ^{d×r}, A ∈ ℝ^{r×k} with B·A the best rank-r approximation of W.

    The singular values are split evenly: B = U_r·diag(√σ_r), A = diag(√σ_r)·V_rᵀ, so both
    factors have the same scale (the "balanced" factorisation). Eckart–Young: no other pair of
    d×r and r×k matrices gets closer to W in Frobenius norm.
    """
    M = _as_matrix(W)
    d, k = M.shape
    _check_rank(r, d, k)
    U, S, Vh = torch.linalg.svd(M.to(_compute_dtype(M)), full_matrices=False)
    root = S[:r].sqrt()
    B = (U[:, :r] * root).to(M.dtype)
    A = (root[:, None] * Vh[:r]).to(M.dtype)
    return _like(B, W), _like(A, W)


def best_rank_r(W: ArrayLike, r: int) -> ArrayLike:
    """Best rank-r approximation W_r = U_r·diag(σ_r)·V_rᵀ of W (Eckart–Young, 1936).

    ‖W − W_r‖_F = sqrt(Σ_{i>r} σ_i²) is the smallest Frobenius error of any matrix of rank ≤ r.
    """
    B, A = low_rank_factors(W, r)
    return B @ A


def truncation_error(sigma: ArrayLike, r: int) -> float:
    """Frobenius error of the best rank-r approximation: sqrt(Σ_{i>r} σ_i²)."""
    s = torch.as_tensor(np.asarray(sigma) if isinstance(sigma, np.ndarray) else sigma)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError("sigma must be a non-empty 1-D array of singular values")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must contain finite, non-negative singular values")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"r must be an int, got {type(r).__name__}")
    if not 0 <= r <= s.numel():
        raise ValueError(f"r must satisfy 0 <= r <= len(sigma) = {s.numel()}, got {r}")
    tail = s.to(torch.float64)[r:]
    return math.sqrt(float((tail**2).sum()))


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def factorization_params(d: int, k: int, r: int) -> int:
    """Number of parameters of B ∈ ℝ^{d×r} and A ∈ ℝ^{r×k}: r·(d + k) (source §2.1 (3))."""
    for value, name in ((d, "d"), (k, "k"), (r, "r")):
        _check_positive_int(value, name)
    if r > min(d, k):
        raise ValueError(f"r must satisfy 1 <= r <= min(d, k) = {min(d, k)}, got {r}")
    return int(r) * (int(d) + int(k))


def param_fraction(d: int, k: int, r: int) -> float:
    """Fraction r·(d + k) / (d·k) of the full matrix's parameters a rank-r factorisation needs."""
    return factorization_params(d, k, r) / (int(d) * int(k))


def energy_curve(sigma: ArrayLike) -> np.ndarray:
    """Cumulative energy E(r) = Σ_{i≤r} σ_i² / Σ_i σ_i² for r = 1 … len(σ) (a float64 array)."""
    s = np.asarray(sigma.detach().cpu() if isinstance(sigma, torch.Tensor) else sigma,
                   dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("sigma must be a non-empty 1-D array of singular values")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must contain finite, non-negative singular values")
    total = float((s**2).sum())
    if total == 0.0:
        raise ValueError("sigma must not be all zeros (the matrix has no energy)")
    return np.cumsum(np.sort(s)[::-1] ** 2) / total


def effective_rank(sigma: ArrayLike, energy: float = 0.9) -> int:
    """Smallest r whose top-r singular values hold at least ``energy`` of Σσ² (0 < energy ≤ 1).

    The "intrinsic rank" of an update ΔW at a given energy threshold (source §2.1).
    """
    if isinstance(energy, bool) or not isinstance(energy, (int, float)):
        raise TypeError(f"energy must be a float, got {type(energy).__name__}")
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must satisfy 0 < energy <= 1, got {energy}")
    curve = energy_curve(sigma)
    # A tiny slack absorbs rounding when energy is exactly reached (e.g. energy=1.0).
    return int(np.searchsorted(curve, energy - 1e-12) + 1)
