"""AdaLoRA's rank allocator: global top-b(t) triplets by importance, the rest masked.

Source §3.2 (2), 按分数排序裁剪低重要性三元组: every ΔT steps the triplets of *all* adapted layers
are ranked together by their score S_{m,i} (m the adapted matrix, i the triplet;
:func:`~lora_edu.adalora.triplet_scores`) and exactly the b(t) best keep their λ
(:func:`~lora_edu.adalora.budget_schedule`); λ of the others is set to zero. A layer whose
triplets score low thus loses rank, one that scores high keeps it — the "参数动态分配" (dynamic
allocation). The three phases of the schedule, for training steps t = 1 … T:

* warm-up, t ≤ t_i: importance is accumulated, nothing is masked (the AdaLoRA paper's schedule and
  PEFT: the scores start at zero, as λ does, so an early ranking would keep triplets by position);
* cubic pruning, t_i < t < T − t_f: importance is updated at every step, and at every step that is
  a multiple of ΔT the b(t) best triplets are kept — the first masking step is thus the first
  multiple of ΔT after t_i (t_i + 1 with ΔT = 1);
* final phase, t ≥ T − t_f: at step T − t_f the final pattern, with b(T) triplets, is fixed (no
  further importance update) and re-applied at every later step.

Given the same parameters and gradients at every step, the masks are PEFT's, step for step (what
matches and what does not: :class:`~lora_edu.adalora.SVDLinear`). Details that differ from PEFT's
``RankAllocator`` on purpose:

* exactly b(t) triplets stay active: ties are broken deterministically by position (layer order,
  then triplet index), where PEFT's rule "mask every score ≤ the k-th smallest" prunes every tied
  triplet and can remove more than asked;
* the budget is a total in triplets (PEFT's ``target_r`` is an average per matrix,
  see :func:`~lora_edu.adalora.budget_from_average_rank`), and b(0) may be set below the number
  of triplets (``init_budget``; PEFT's is always all of them): the warm-up then trains all
  triplets, and the first masking step cuts to b(t);
* a schedule that cannot work (t_i + t_f ≥ T, target > initial, initial > number of triplets,
  β outside [0, 1)) raises ``ValueError`` at construction, and a warning is issued if the model
  has been trained for ``total_steps`` forward passes without the allocator ever being stepped
  — the silent failure where AdaLoRA trains as plain LoRA with an SVD-shaped adapter.

Usage with :func:`lora_edu.toy.train`, whose ``after_backward(step, model)`` runs between
``backward`` and ``optimizer.step`` with steps counted from 1::

    alloc = RankAllocator(model, target_budget=24, total_steps=300, t_init=30, t_final=60)
    train(model, task, steps=300, lr=..., after_backward=alloc.after_backward,
          extra_loss=lambda m: orthogonal_penalty(m, 0.1))

Importance is computed from the gradients of the current step (at Λ^{(t)}, before the optimizer
step) and the mask is decided then, as in the paper's Algorithm 1. What the masks do between two
masking steps is the option ``mask_between_steps``:

* ``True`` (default): every forward pass until the next allocation uses λ ⊙ mask, so the model
  computes with exactly the b(t) triplets the allocator reports (:meth:`RankAllocator.ranks`).
* ``False``: the reference behaviour of the authors' ``loralib`` and of PEFT — a pruned λ is zeroed
  once, right after the optimizer step of the masking iteration, and then trained again, so
  with ΔT > 1 it grows back and the forward passes between two masking steps use more triplets
  than reported (all of them, one step after the masking step).

:meth:`RankAllocator.nonzero_lambdas` counts the triplets the forward pass really uses, in the
model. Neither mode writes into a parameter inside ``forward``; the allocator changes no global
setting (grad mode, random generators, thread count, deterministic flags): only the masks, the
λ it zeroes (reference mode, at its own calls or :meth:`RankAllocator.apply_masks`) and its own
importance state.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lora_edu.adalora.budget import budget_schedule, validate_schedule
from lora_edu.adalora.importance import ImportanceTracker, triplet_scores
from lora_edu.checks import check_instance, check_int

__all__ = ["RankAllocator", "find_svd_modules", "is_svd_adapter"]

_ATTRS = ("lora_P", "lora_lambda", "lora_Q", "rank_mask")
_FACTORS = ("lora_P", "lora_lambda", "lora_Q")


def is_svd_adapter(module: object) -> bool:
    """True for an SVD-form adapter: a module with ``lora_P``, ``lora_lambda``, ``lora_Q`` and
    ``rank_mask`` (e.g. :class:`lora_edu.adalora.SVDLinear`)."""
    return isinstance(module, nn.Module) and all(hasattr(module, a) for a in _ATTRS)


def find_svd_modules(model: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module]
                     ) -> dict[str, nn.Module]:
    """The SVD adapters of ``model`` as an ordered ``{name: module}`` dict.

    ``model`` may be a network (searched with ``named_modules``), a mapping name → adapter, or a
    list or tuple of adapters (named ``"0"``, ``"1"``, …). Raises ``ValueError`` if there is none
    and ``TypeError`` if ``model`` is none of these or a mapping/list holds something else.
    """
    check_instance("model", model, (nn.Module, Mapping, list, tuple))
    if isinstance(model, nn.Module):
        found = {name: m for name, m in model.named_modules() if is_svd_adapter(m)}
    elif isinstance(model, Mapping):
        found = dict(model)
    else:
        found = {str(i): m for i, m in enumerate(model)}
    for name, m in found.items():
        if not is_svd_adapter(m):
            raise TypeError(f"model[{name!r}] is not an SVD adapter (needs {', '.join(_ATTRS)}), "
                            f"got {type(m).__name__}")
    if not found:
        raise ValueError("model contains no SVD adapter (apply_adalora first)")
    return found


class RankAllocator:
    """Importance-driven rank allocation over a set of SVD adapters (source §3.2 (2)).

    Parameters
    ----------
    model:
        A network holding SVD adapters, or a mapping/sequence of adapters.
    target_budget:
        b(T): triplets that stay active after pruning, over all layers together.
    total_steps:
        T, the number of training steps (the steps passed to :meth:`step` run from 1 to T).
    t_init, t_final:
        Durations of the warm-up and of the final phase (in steps); ``t_init + t_final < T``.
        Nothing is masked during the warm-up (steps 1 … t_init).
    delta_t:
        Mask every ``delta_t`` steps during the pruning phase (ΔT).
    init_budget:
        b(0); default: all triplets (Σ_m r_m over the adapted matrices m); must not exceed that.
    beta1, beta2:
        EMA factors of sensitivity and uncertainty, in [0, 1).
    mask_between_steps:
        ``True`` (default): pruned triplets stay at λ = 0 in every forward pass until the next
        allocation (the forward multiplies λ by the mask; the parameter is not written), so the
        model computes with exactly the reported budget. ``False``: the reference behaviour of
        the authors' code and PEFT — a pruned λ is zeroed once after the optimizer step of the
        masking iteration and then re-trained until the next masking step.

    Notes
    -----
    Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type,
    ``ValueError`` for a wrong value, naming the argument; numpy scalars accepted).

    Attributes
    ----------
    tracker : ImportanceTracker
        Ī and Ū of every P, λ, Q, keyed ``"{layer name}.lora_P"`` etc.
    history : list of (step, budget)
        Each masking step and the number of triplets it kept.
    frozen : bool
        True once the final pattern has been fixed (step ≥ T − t_final).
    steps_taken : int
        How many times :meth:`step` ran.
    """

    def __init__(self, model: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module],
                 target_budget: int, total_steps: int, t_init: int, t_final: int,
                 delta_t: int = 1, init_budget: int | None = None, beta1: float = 0.85,
                 beta2: float = 0.85, mask_between_steps: bool = True) -> None:
        self.modules = find_svd_modules(model)
        self.n_triplets = sum(int(m.lora_lambda.numel()) for m in self.modules.values())
        init_budget = (self.n_triplets if init_budget is None
                       else check_int("init_budget", init_budget, 1, self.n_triplets))
        total_steps, init_budget, target_budget, t_init, t_final = validate_schedule(
            total_steps, init_budget, target_budget, t_init, t_final)
        delta_t = check_int("delta_t", delta_t, 1)
        check_instance("mask_between_steps", mask_between_steps, (bool, np.bool_))
        self.tracker = ImportanceTracker(beta1, beta2)
        self.init_budget, self.target_budget = init_budget, target_budget
        self.total_steps, self.t_init, self.t_final = total_steps, t_init, t_final
        self.delta_t = delta_t
        self.mask_between_steps = bool(mask_between_steps)
        for m in self.modules.values():
            m.mask_between_steps = self.mask_between_steps
        self.history: list[tuple[int, int]] = []
        self.frozen = False
        self.steps_taken = 0
        self.last_step = 0
        self._train_forwards = 0
        self._warned = False
        first = next(iter(self.modules.values()))
        self._hook = first.register_forward_pre_hook(self._count_forward)

    # -- the trap: training without ever stepping the allocator ---------------------------------
    def _count_forward(self, module: nn.Module, args: tuple) -> None:
        if module.training and torch.is_grad_enabled():
            self._train_forwards += 1
            if self._train_forwards >= self.total_steps:
                self._warn_if_never_stepped()

    def _warn_if_never_stepped(self) -> None:
        if self.steps_taken == 0 and not self._warned:
            self._warned = True
            warnings.warn("the AdaLoRA RankAllocator was never stepped: no importance was "
                          "scored and nothing was pruned, so the model trained as plain LoRA "
                          "with an SVD-shaped adapter (pass after_backward=allocator."
                          "after_backward to the training loop)", RuntimeWarning, stacklevel=3)

    def remove_hooks(self) -> None:
        """Remove the forward-counting hook this allocator put on the first adapter."""
        self._hook.remove()

    # -- scores ---------------------------------------------------------------------------------
    def budget(self, step: int) -> int:
        """b(step) of this allocator's schedule."""
        return budget_schedule(step, self.total_steps, self.init_budget, self.target_budget,
                               self.t_init, self.t_final)

    def nonzero_lambdas(self) -> int:
        """How many triplets the forward pass uses now: the non-zero entries of every layer's
        :meth:`~lora_edu.adalora.SVDLinear.effective_lambda`, counted in the model (not in the
        masks). With ``mask_between_steps=True`` it never exceeds ``sum(ranks().values())``."""
        with torch.no_grad():
            return sum(int(m.effective_lambda().count_nonzero()) for m in self.modules.values())

    @torch.no_grad()
    def update_importance(self) -> None:
        """Fold the current gradients of every P, λ, Q into the EMAs (call after backward)."""
        for name, m in self.modules.items():
            for attr in _FACTORS:
                weight = getattr(m, attr)
                self.tracker.update(f"{name}.{attr}", weight, weight.grad)

    def scores(self) -> dict[str, Tensor]:
        """Triplet scores S_{m,i} of every layer, ``{name: tensor (r_m,)}`` (zeros before any
        update)."""
        out = {}
        for name, m in self.modules.items():
            if f"{name}.lora_lambda" not in self.tracker.i_bar:
                out[name] = torch.zeros_like(m.lora_lambda.detach())
            else:   # S(λ_i) + mean_j S(P_ji) + mean_j S(Q_ij)
                out[name] = triplet_scores(*(self.tracker.score(f"{name}.{attr}")
                                             for attr in _FACTORS))
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, int]:
        """Keep exactly the ``budget`` best triplets over all layers; mask the others.

        Ties are broken by position (earlier layer, then lower index, first). The masks are set
        now and act from the next forward pass on: with ``mask_between_steps=True`` in every
        forward until the next allocation; with ``False`` λ of the pruned triplets counts as zero
        in the next forward and is written as zero at the allocator's next :meth:`step` (or by
        :meth:`apply_masks`), then trained again. Returns the active rank per layer.
        """
        budget = check_int("budget", budget, 0, self.n_triplets)
        scores = torch.cat(list(self.scores().values()))      # every triplet, layer by layer
        best = torch.sort(scores, descending=True, stable=True).indices[:budget]
        keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        keep[best] = True
        sizes = [m.lora_lambda.numel() for m in self.modules.values()]
        ranks = {}
        for (name, m), kept in zip(self.modules.items(), keep.split(sizes), strict=True):
            m.rank_mask.copy_(kept)
            m.mask_pending = not self.mask_between_steps
            ranks[name] = int(kept.sum())
        return ranks

    def apply_masks(self) -> None:
        """Write λ = 0 into the parameter of every pruned triplet now (e.g. after training,
        before inspecting or saving λ)."""
        for m in self.modules.values():
            m.apply_mask()

    # -- the training-loop hook -----------------------------------------------------------------
    def step(self, step: int) -> int:
        """One allocator step at training step ``step`` (1 … T); returns b(step).

        Call it between ``backward`` and the optimizer step. With ``mask_between_steps=False`` it
        first writes the zeros that the previous step decided (the forward pass of this step
        already used them). Before T − t_final: update the importance EMAs from the current
        gradients and, after the warm-up (step > t_init), every ``delta_t`` steps keep the
        b(step) best triplets. At T − t_final (or the first call past it): fix the final pattern
        with b(T) triplets. After: re-apply that pattern.
        """
        step = check_int("step", step, 1, self.total_steps)
        for m in self.modules.values():
            if m.mask_pending:               # reference mode: the zeros decided last step
                m.apply_mask()
        self.steps_taken += 1
        self.last_step = step
        budget = self.budget(step)
        if step < self.total_steps - self.t_final:          # warm-up and cubic pruning
            self.update_importance()
            if step > self.t_init and step % self.delta_t == 0:
                self.mask_to_budget(budget)
                self.history.append((step, budget))
        elif not self.frozen:                               # the final pattern, once
            self.mask_to_budget(self.target_budget)
            self.history.append((step, self.target_budget))
            self.frozen = True
        elif not self.mask_between_steps:                   # reference mode: zero it again
            for m in self.modules.values():
                m.mask_pending = True
        return budget

    def after_backward(self, step: int, model: nn.Module | None = None) -> None:
        """``after_backward(step, model)`` hook for :func:`lora_edu.toy.train`."""
        self.step(step)

    # -- results --------------------------------------------------------------------------------
    def ranks(self, warn: bool = True) -> dict[str, int]:
        """Active rank of every layer, ``{name: int}`` (warns if the allocator never stepped)."""
        check_instance("warn", warn, (bool, np.bool_))
        if warn:
            self._warn_if_never_stepped()
        return {name: int(m.rank_mask.count_nonzero()) for name, m in self.modules.items()}

    def rank_pattern(self, warn: bool = True) -> dict[str, list[bool]]:
        """Which triplets of every layer are active, ``{name: [bool] * r}`` (warns if the
        allocator never stepped)."""
        check_instance("warn", warn, (bool, np.bool_))
        if warn:
            self._warn_if_never_stepped()
        return {name: [bool(v) for v in m.rank_mask] for name, m in self.modules.items()}
