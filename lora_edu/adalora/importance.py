"""AdaLoRA importance: smoothed sensitivity × uncertainty per element, and triplet scores.

Source §3.2 (2), 重要性评分: the importance of one parameter is
``S(w) = 平滑后敏感度 × 平滑后不确定性`` (the source writes s(w); S here, because s is the LoRA
scale α/r) — the EMA of the sensitivity |w·∇_w ℒ| times the EMA of how much that sensitivity
fluctuates. Per element, at every step t::

    I_t   = | w ⊙ ∂ℒ/∂w |                                   (sensitivity)
    Ī_t   = β1 · Ī_{t−1} + (1 − β1) · I_t                    (smoothed sensitivity)
    Ū_t   = β2 · Ū_{t−1} + (1 − β2) · | I_t − Ī_t |          (uncertainty, with the *updated* Ī_t)
    S_t   = Ī_t · Ū_t

with Ī_0 = Ū_0 = 0 and β1 = β2 = 0.85 by default (the AdaLoRA paper's values; PEFT's defaults too).

A triplet (P_{m,*i}, λ_{m,i}, Q_{m,i*}) — column i of P, singular value i, row i of Q of the adapted
matrix m — is scored by aggregating its elements (source §3.2 (2), 三元组重要性)::

    S_{m,i} = S(λ_{m,i}) + mean_j S(P_{m,ji}) + mean_j S(Q_{m,ij})
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["sensitivity", "ema_update", "ImportanceTracker", "triplet_scores", "check_beta"]


def check_beta(name: str, value: object) -> float:
    """Return ``value`` as a float if it lies in [0, 1); raise naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    return value


def sensitivity(weight: Tensor, grad: Tensor) -> Tensor:
    """Sensitivity I = |w ⊙ ∂ℒ/∂w| per element: the first-order change of the loss if w were zeroed.

    Raises ``ValueError`` if the shapes differ.
    """
    _check_tensor("weight", weight)
    _check_tensor("grad", grad)
    if weight.shape != grad.shape:
        raise ValueError(f"grad must have the shape of weight {tuple(weight.shape)}, got "
                         f"{tuple(grad.shape)}")
    return (weight.detach() * grad.detach()).abs()


def ema_update(i_bar: Tensor, u_bar: Tensor, sens: Tensor, beta1: float = 0.85,
               beta2: float = 0.85) -> tuple[Tensor, Tensor]:
    """One step of the two EMAs, out of place: returns ``(Ī_t, Ū_t)``.

    ``Ī_t = β1·Ī_{t−1} + (1−β1)·I_t`` and ``Ū_t = β2·Ū_{t−1} + (1−β2)·|I_t − Ī_t|`` (the updated
    Ī_t inside the absolute value, as in the paper and in both public implementations).
    """
    beta1, beta2 = check_beta("beta1", beta1), check_beta("beta2", beta2)
    for name, t in (("i_bar", i_bar), ("u_bar", u_bar), ("sens", sens)):
        _check_tensor(name, t)
        if t.shape != sens.shape:
            raise ValueError(f"{name} must have shape {tuple(sens.shape)}, got {tuple(t.shape)}")
    new_i = beta1 * i_bar + (1.0 - beta1) * sens
    new_u = beta2 * u_bar + (1.0 - beta2) * (sens - new_i).abs()
    return new_i, new_u


class ImportanceTracker:
    """The EMAs Ī and Ū of every tracked tensor, updated in place (one concept: S = Ī·Ū).

    Tensors are keyed by name; the state is created at zero on the first :meth:`update`.

    Parameters
    ----------
    beta1, beta2:
        Smoothing factors in [0, 1) for the sensitivity and the uncertainty EMAs.
    """

    def __init__(self, beta1: float = 0.85, beta2: float = 0.85) -> None:
        self.beta1 = check_beta("beta1", beta1)
        self.beta2 = check_beta("beta2", beta2)
        self.i_bar: dict[str, Tensor] = {}
        self.u_bar: dict[str, Tensor] = {}
        self.n_updates: dict[str, int] = {}

    @torch.no_grad()
    def update(self, name: str, weight: Tensor, grad: Tensor | None) -> None:
        """Fold the current sensitivity |w ⊙ grad| of tensor ``name`` into its EMAs.

        ``grad=None`` (the tensor took no part in the loss) counts as a zero gradient.
        """
        self.update_many([(name, weight, grad)])

    @torch.no_grad()
    def update_many(self, items: Iterable[tuple[str, Tensor, Tensor | None]]) -> None:
        """:meth:`update` for several ``(name, weight, grad)`` at once (one call per training step).

        The arithmetic is the same element by element; the EMAs of all tensors are updated by
        ``torch._foreach_*`` operations, which saves the per-tensor Python overhead that dominates
        on small adapters. Names must be distinct.
        """
        names: list[str] = []
        sens: list[Tensor] = []
        for name, weight, grad in items:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str, got {type(name).__name__}")
            _check_tensor("weight", weight)
            if name in names:
                raise ValueError(f"name {name!r} appears twice in one update")
            if grad is None:
                s = torch.zeros_like(weight, dtype=torch.float32
                                     if not weight.is_floating_point() else weight.dtype)
            else:
                s = sensitivity(weight, grad)
            if name in self.i_bar and self.i_bar[name].shape != s.shape:
                raise ValueError(f"weight {name!r} changed shape from "
                                 f"{tuple(self.i_bar[name].shape)} to {tuple(s.shape)}")
            names.append(name)
            sens.append(s)
        for name, s in zip(names, sens, strict=True):
            if name not in self.i_bar:
                self.i_bar[name] = torch.zeros_like(s)
                self.u_bar[name] = torch.zeros_like(s)
                self.n_updates[name] = 0
        if not names:
            return
        i_bars = [self.i_bar[n] for n in names]
        u_bars = [self.u_bar[n] for n in names]
        # Ī ← β1·Ī + (1−β1)·I ;  Ū ← β2·Ū + (1−β2)·|I − Ī|  (with the updated Ī)
        torch._foreach_mul_(i_bars, self.beta1)
        torch._foreach_add_(i_bars, sens, alpha=1.0 - self.beta1)
        torch._foreach_sub_(sens, i_bars)
        torch._foreach_abs_(sens)
        torch._foreach_mul_(u_bars, self.beta2)
        torch._foreach_add_(u_bars, sens, alpha=1.0 - self.beta2)
        for name in names:
            self.n_updates[name] += 1

    def score(self, name: str) -> Tensor:
        """Element-wise importance S = Ī·Ū of tensor ``name`` (a new tensor)."""
        if name not in self.i_bar:
            raise KeyError(f"no importance recorded for {name!r}")
        return self.i_bar[name] * self.u_bar[name]

    def reset(self) -> None:
        """Forget every EMA."""
        self.i_bar.clear()
        self.u_bar.clear()
        self.n_updates.clear()


def triplet_scores(score_P: Tensor, score_lambda: Tensor, score_Q: Tensor) -> Tensor:
    """S_i = S(λ_i) + mean_j S(P_{ji}) + mean_j S(Q_{ij}) for each triplet i of one layer.

    Parameters
    ----------
    score_P:
        Element importances of P, shape (d, r) (column i belongs to triplet i).
    score_lambda:
        Element importances of λ, shape (r,).
    score_Q:
        Element importances of Q, shape (r, k) (row i belongs to triplet i).

    Returns
    -------
    Tensor of shape (r,).
    """
    for name, t, dim in (("score_P", score_P, 2), ("score_lambda", score_lambda, 1),
                         ("score_Q", score_Q, 2)):
        _check_tensor(name, t)
        if t.dim() != dim:
            raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    r = score_lambda.shape[0]
    if score_P.shape[1] != r or score_Q.shape[0] != r:
        raise ValueError(f"score_P must be (d, {r}) and score_Q ({r}, k), got "
                         f"{tuple(score_P.shape)} and {tuple(score_Q.shape)}")
    return score_lambda + score_P.mean(dim=0) + score_Q.mean(dim=1)
