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

Everything here is written as the formulas read, one tensor at a time (the allocator updates every
P, λ and Q of every adapted matrix this way at every step); for a BERT-base-sized stack of twelve
adapted 768×768 matrices that stays within the 3 % of a training step that
``benchmarks/bench_adalora.py`` allows.

Arguments are checked with :mod:`lora_edu.checks` (β with ``check_probability``: a float in
[0, 1)); a wrong type raises ``TypeError``, a wrong value ``ValueError``, both naming the argument.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lora_edu.checks import check_instance, check_probability, check_tensor

__all__ = ["sensitivity", "ema_update", "ImportanceTracker", "triplet_scores"]


def sensitivity(weight: Tensor, grad: Tensor) -> Tensor:
    """Sensitivity ``I = |w ⊙ ∂ℒ/∂w|`` per element: the first-order change of the loss if w were
    zeroed (source §3.2 (2)). A tensor of ``weight``'s shape.

    Raises ``ValueError`` if the shapes differ.
    """
    check_tensor("weight", weight)
    check_tensor("grad", grad)
    if weight.shape != grad.shape:
        raise ValueError(f"grad must have the shape of weight {tuple(weight.shape)}, got "
                         f"{tuple(grad.shape)}")
    return (weight.detach() * grad.detach()).abs()


def ema_update(i_bar: Tensor, u_bar: Tensor, sens: Tensor, beta1: float = 0.85,
               beta2: float = 0.85) -> tuple[Tensor, Tensor]:
    """One step of the two EMAs, out of place: returns ``(Ī_t, Ū_t)``.

    ``Ī_t = β1·Ī_{t−1} + (1−β1)·I_t`` and ``Ū_t = β2·Ū_{t−1} + (1−β2)·|I_t − Ī_t|`` (the updated
    Ī_t inside the absolute value, as in the paper and in both public implementations). All three
    tensors have one shape, which the results keep (source §3.2 (2)).
    """
    beta1, beta2 = check_probability("beta1", beta1), check_probability("beta2", beta2)
    for name, t in (("sens", sens), ("i_bar", i_bar), ("u_bar", u_bar)):
        check_tensor(name, t)
        if t.shape != sens.shape:
            raise ValueError(f"{name} must have shape {tuple(sens.shape)}, got {tuple(t.shape)}")
    new_i = beta1 * i_bar + (1.0 - beta1) * sens
    new_u = beta2 * u_bar + (1.0 - beta2) * (sens - new_i).abs()
    return new_i, new_u


class ImportanceTracker:
    """The EMAs Ī and Ū of every tracked tensor (S = Ī·Ū per element; source §3.2 (2)).

    Tensors are keyed by name; their state starts at zero on the first :meth:`update`.
    ``i_bar[name]`` and ``u_bar[name]`` are the EMAs of tensor ``name`` (same shape),
    ``n_updates[name]`` counts its updates.

    Parameters
    ----------
    beta1, beta2:
        Smoothing factors in [0, 1) for the sensitivity and the uncertainty EMAs.
    """

    def __init__(self, beta1: float = 0.85, beta2: float = 0.85) -> None:
        self.beta1 = check_probability("beta1", beta1)
        self.beta2 = check_probability("beta2", beta2)
        self.i_bar: dict[str, Tensor] = {}
        self.u_bar: dict[str, Tensor] = {}
        self.n_updates: dict[str, int] = {}

    def update(self, name: str, weight: Tensor, grad: Tensor | None) -> None:
        """Fold the current sensitivity ``|w ⊙ grad|`` of tensor ``name`` into its EMAs.

        ``grad=None`` (the tensor took no part in the loss) counts as a zero gradient. Nothing
        here is recorded by autograd (:func:`sensitivity` detaches ``weight`` and ``grad``).
        """
        self._check(name, weight, grad)
        if grad is None:
            grad = torch.zeros_like(weight)
        sens = sensitivity(weight, grad)                      # I = |w ⊙ ∂ℒ/∂w|
        if name not in self.i_bar:                            # Ī_0 = Ū_0 = 0
            self.i_bar[name], self.u_bar[name] = torch.zeros_like(sens), torch.zeros_like(sens)
            self.n_updates[name] = 0
        # Ī ← β1·Ī + (1−β1)·I,  then  Ū ← β2·Ū + (1−β2)·|I − Ī|  with the updated Ī;
        # torch.lerp(a, b, w) = (1−w)·a + w·b computes each weighted mean in one operation
        i_bar = torch.lerp(self.i_bar[name], sens, 1 - self.beta1)
        u_bar = torch.lerp(self.u_bar[name], (sens - i_bar).abs(), 1 - self.beta2)
        self.i_bar[name], self.u_bar[name] = i_bar, u_bar
        self.n_updates[name] += 1

    def update_many(self, items: Iterable[tuple[str, Tensor, Tensor | None]]) -> None:
        """:meth:`update` for several ``(name, weight, grad)`` (e.g. one call per training step).

        Every item is checked before any is applied; names must be distinct.
        """
        check_instance("items", items, Iterable)
        items = list(items)
        for i, item in enumerate(items):
            check_instance(f"items[{i}]", item, (tuple, list))
            if len(item) != 3:
                raise ValueError(f"items[{i}] must be a (name, weight, grad) triple, got "
                                 f"{len(item)} values")
            self._check(*item)
        names = [item[0] for item in items]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"name {twice!r} appears twice in one update")
        for name, weight, grad in items:
            self.update(name, weight, grad)

    def _check(self, name: object, weight: object, grad: object) -> None:
        check_instance("name", name, str)
        check_tensor("weight", weight, floating=True)
        if grad is not None:
            check_tensor("grad", grad)
            if grad.shape != weight.shape:
                raise ValueError(f"grad must have the shape of weight {tuple(weight.shape)}, "
                                 f"got {tuple(grad.shape)}")
        if name in self.i_bar and self.i_bar[name].shape != weight.shape:
            raise ValueError(f"weight {name!r} changed shape from "
                             f"{tuple(self.i_bar[name].shape)} to {tuple(weight.shape)}")

    def score(self, name: str) -> Tensor:
        """Element-wise importance S = Ī·Ū of tensor ``name`` (a new tensor)."""
        check_instance("name", name, str)
        if name not in self.i_bar:
            raise ValueError(f"name={name!r}: no importance recorded for it")
        return self.i_bar[name] * self.u_bar[name]

    def reset(self) -> None:
        """Forget every EMA."""
        self.i_bar.clear()
        self.u_bar.clear()
        self.n_updates.clear()


def triplet_scores(score_P: Tensor, score_lambda: Tensor, score_Q: Tensor) -> Tensor:
    """S_i = S(λ_i) + mean_j S(P_{ji}) + mean_j S(Q_{ij}) for each triplet i of one layer.

    The triplet score of source §3.2 (2), by which :class:`RankAllocator` ranks the triplets.

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
    check_tensor("score_P", score_P, 2)
    check_tensor("score_lambda", score_lambda, 1)
    check_tensor("score_Q", score_Q, 2)
    r = score_lambda.shape[0]
    if score_P.shape[1] != r or score_Q.shape[0] != r:
        raise ValueError(f"score_P must be (d, {r}) and score_Q ({r}, k), got "
                         f"{tuple(score_P.shape)} and {tuple(score_Q.shape)}")
    return score_lambda + score_P.mean(dim=0) + score_Q.mean(dim=1)
