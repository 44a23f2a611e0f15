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

Arguments are checked with :mod:`lora_edu.checks` (β with ``check_probability``: a float in
[0, 1)); a wrong type raises ``TypeError``, a wrong value ``ValueError``, both naming the argument.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lora_edu.checks import check_instance, check_probability, check_tensor

__all__ = ["sensitivity", "ema_update", "ImportanceTracker", "triplet_scores"]

#: Elements per operation on the flat buffers. PyTorch runs an element-wise CPU operation on one
#: thread up to 32,768 elements (its grain size) and splits a larger one over its threads; the
#: EMA updates are a few microseconds of memory traffic, far less than what waking a second thread
#: costs (and a busy machine may not run it for milliseconds), so they go chunk by chunk.
CHUNK = 32768


def sensitivity(weight: Tensor, grad: Tensor) -> Tensor:
    """Sensitivity I = |w ⊙ ∂ℒ/∂w| per element: the first-order change of the loss if w were zeroed.

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
    Ī_t inside the absolute value, as in the paper and in both public implementations).
    """
    beta1, beta2 = check_probability("beta1", beta1), check_probability("beta2", beta2)
    for name, t in (("sens", sens), ("i_bar", i_bar), ("u_bar", u_bar)):
        check_tensor(name, t)
        if t.shape != sens.shape:
            raise ValueError(f"{name} must have shape {tuple(sens.shape)}, got {tuple(t.shape)}")
    new_i = beta1 * i_bar + (1.0 - beta1) * sens
    new_u = beta2 * u_bar + (1.0 - beta2) * (sens - new_i).abs()
    return new_i, new_u


def _ema_step(i_bars: list[Tensor], u_bars: list[Tensor], sens: list[Tensor], beta1: float,
              beta2: float) -> None:
    """:func:`ema_update` in place on lists of tensors; ``sens`` is overwritten (|I − Ī_t|)."""
    # Ī ← β1·Ī + (1−β1)·I ;  Ū ← β2·Ū + (1−β2)·|I − Ī|  (with the updated Ī)
    torch._foreach_mul_(i_bars, beta1)
    torch._foreach_add_(i_bars, sens, alpha=1.0 - beta1)
    torch._foreach_sub_(sens, i_bars)
    torch._foreach_abs_(sens)
    torch._foreach_mul_(u_bars, beta2)
    torch._foreach_add_(u_bars, sens, alpha=1.0 - beta2)


class ImportanceTracker:
    """The EMAs Ī and Ū of every tracked tensor, updated in place (one concept: S = Ī·Ū).

    Tensors are keyed by name; the state is created at zero on the first :meth:`update`.
    ``i_bar[name]`` and ``u_bar[name]`` are the EMAs of tensor ``name``, with its shape.

    Tensors first seen together in one :meth:`update_many` call (same dtype and device) share one
    flat buffer, and ``i_bar[name]`` is a view into it: every later update of that same group is a
    handful of operations on that buffer (in chunks of :data:`CHUNK` elements), however many
    tensors it holds (the allocator updates the P, λ, Q of every adapted matrix at every step).
    The arithmetic is the same element by element as one tensor at a time.

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
        # the flat group: its names, the two flat buffers, and the views handed out in i_bar/u_bar
        self._group: tuple[str, ...] = ()
        self._flat_i: Tensor | None = None
        self._flat_u: Tensor | None = None
        self._flat_s: Tensor | None = None
        self._views: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._sens_views: list[Tensor] = []
        self._chunks: tuple[list[Tensor], ...] = ([], [], [])

    @torch.no_grad()
    def update(self, name: str, weight: Tensor, grad: Tensor | None) -> None:
        """Fold the current sensitivity |w ⊙ grad| of tensor ``name`` into its EMAs.

        ``grad=None`` (the tensor took no part in the loss) counts as a zero gradient.
        """
        self.update_many([(name, weight, grad)])

    @torch.no_grad()
    def update_many(self, items: Iterable[tuple[str, Tensor, Tensor | None]]) -> None:
        """:meth:`update` for several ``(name, weight, grad)`` at once (one call per training step).

        The arithmetic is the same element by element; a group of tensors updated together is
        stored in one flat buffer (see the class docstring), other tensors are updated by
        ``torch._foreach_*`` operations. Names must be distinct.
        """
        check_instance("items", items, Iterable)
        names: list[str] = []
        weights: list[Tensor] = []
        grads: list[Tensor | None] = []
        for i, item in enumerate(items):
            check_instance(f"items[{i}]", item, (tuple, list))
            if len(item) != 3:
                raise ValueError(f"items[{i}] must be a (name, weight, grad) triple, got "
                                 f"{len(item)} values")
            name, weight, grad = item
            check_instance("name", name, str)
            check_tensor("weight", weight)
            if grad is not None:
                check_tensor("grad", grad)
                if grad.shape != weight.shape:
                    raise ValueError(f"grad must have the shape of weight "
                                     f"{tuple(weight.shape)}, got {tuple(grad.shape)}")
            if name in self.i_bar and self.i_bar[name].shape != weight.shape:
                raise ValueError(f"weight {name!r} changed shape from "
                                 f"{tuple(self.i_bar[name].shape)} to {tuple(weight.shape)}")
            names.append(name)
            weights.append(weight)
            grads.append(grad)
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"name {twice!r} appears twice in one update")
        self._update(tuple(names), weights, grads)

    def _group_intact(self, names: tuple[str, ...],
                      kind: tuple[torch.dtype, torch.device] | None = None) -> bool:
        """True if ``names`` is the flat group (of dtype and device ``kind``, if given) and every
        ``i_bar``/``u_bar`` entry is still the view into its buffer (a caller may have replaced
        an entry)."""
        if names != self._group or self._flat_i is None:
            return False
        if kind is not None and (self._flat_i.dtype, self._flat_i.device) != kind:
            return False
        vi, vu = self._views
        return all(self.i_bar.get(n) is a and self.u_bar.get(n) is b
                   for n, a, b in zip(names, vi, vu, strict=True))

    def flat_scores(self, names: tuple[str, ...]) -> Tensor | None:
        """S = Ī·Ū of the group ``names`` as one flat tensor (the names' elements one after the
        other, in order), or ``None`` if these names are not stored as one flat group.

        The tensor is a scratch buffer of the tracker: read it before the next update."""
        if not self._group_intact(tuple(names)):
            return None
        for i_chunk, u_chunk, s_chunk in zip(*self._chunks, strict=True):
            torch.mul(i_chunk, u_chunk, out=s_chunk)
        return self._flat_s

    def _update(self, names: tuple[str, ...], weights: list[Tensor],
                grads: list[Tensor | None]) -> None:
        """The update itself, for arguments already checked (the allocator calls it directly),
        under ``torch.no_grad()``."""
        if not names:
            return
        kind = (weights[0].dtype, weights[0].device)
        flat_ok = kind[0].is_floating_point and all(
            (w.dtype, w.device) == kind and (g is None or (g.dtype, g.device) == kind)
            for w, g in zip(weights, grads, strict=True))
        if flat_ok and not any(n in self.i_bar for n in names):
            self._new_group(names, weights)
        if flat_ok and self._group_intact(names, kind):
            self._update_flat(weights, grads)
        else:
            self._update_each(names, weights, grads)
        for name in names:
            self.n_updates[name] += 1

    def _new_group(self, names: tuple[str, ...], weights: list[Tensor]) -> None:
        total = sum(w.numel() for w in weights)
        like = weights[0]
        self._flat_i = torch.zeros(total, dtype=like.dtype, device=like.device)
        self._flat_u = torch.zeros_like(self._flat_i)
        self._flat_s = torch.zeros_like(self._flat_i)     # scratch: the sensitivity of a step
        vi, vu, vs, start = [], [], [], 0
        for name, w in zip(names, weights, strict=True):
            n = w.numel()
            vi.append(self._flat_i[start:start + n].view(w.shape))
            vu.append(self._flat_u[start:start + n].view(w.shape))
            vs.append(self._flat_s[start:start + n].view(w.shape))
            self.i_bar[name], self.u_bar[name], self.n_updates[name] = vi[-1], vu[-1], 0
            start += n
        self._group, self._views, self._sens_views = names, (vi, vu), vs
        self._chunks = tuple([t[j:j + CHUNK] for j in range(0, total, CHUNK)]
                             for t in (self._flat_i, self._flat_u, self._flat_s))

    def _update_flat(self, weights: list[Tensor], grads: list[Tensor | None]) -> None:
        # I = |w ⊙ ∂ℒ/∂w|, each product written straight into its slice of one flat buffer
        for w, g, out in zip(weights, grads, self._sens_views, strict=True):
            if g is None:
                out.zero_()
            else:
                torch.mul(w, g, out=out)         # (no graph: the callers run under no_grad)
        ci, cu, cs = self._chunks
        torch._foreach_abs_(cs)
        _ema_step(ci, cu, cs, self.beta1, self.beta2)

    def _update_each(self, names: tuple[str, ...], weights: list[Tensor],
                     grads: list[Tensor | None]) -> None:
        sens: list[Tensor] = []
        for name, weight, grad in zip(names, weights, grads, strict=True):
            if grad is None:
                s = torch.zeros_like(weight, dtype=torch.float32
                                     if not weight.is_floating_point() else weight.dtype)
            else:
                s = sensitivity(weight, grad)
            if name not in self.i_bar:
                self.i_bar[name] = torch.zeros_like(s)
                self.u_bar[name] = torch.zeros_like(s)
                self.n_updates[name] = 0
            sens.append(s)
        _ema_step([self.i_bar[n] for n in names], [self.u_bar[n] for n in names], sens,
                  self.beta1, self.beta2)

    def score(self, name: str) -> Tensor:
        """Element-wise importance S = Ī·Ū of tensor ``name`` (a new tensor)."""
        check_instance("name", name, str)
        if name not in self.i_bar:
            raise KeyError(f"no importance recorded for {name!r}")
        return self.i_bar[name] * self.u_bar[name]

    def reset(self) -> None:
        """Forget every EMA."""
        self.i_bar.clear()
        self.u_bar.clear()
        self.n_updates.clear()
        self._group, self._views, self._sens_views = (), ([], []), []
        self._flat_i = self._flat_u = self._flat_s = None
        self._chunks = ([], [], [])


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
    check_tensor("score_P", score_P, 2)
    check_tensor("score_lambda", score_lambda, 1)
    check_tensor("score_Q", score_Q, 2)
    r = score_lambda.shape[0]
    if score_P.shape[1] != r or score_Q.shape[0] != r:
        raise ValueError(f"score_P must be (d, {r}) and score_Q ({r}, k), got "
                         f"{tuple(score_P.shape)} and {tuple(score_Q.shape)}")
    return score_lambda + score_P.mean(dim=0) + score_Q.mean(dim=1)
