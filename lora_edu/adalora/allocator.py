"""AdaLoRA's rank allocator: global top-b(t) triplets by importance, the rest masked.

Source §3.2 (2), 按分数排序裁剪低重要性三元组: every ΔT steps the triplets of *all* adapted layers
are ranked together by their score S_{m,i} (m the adapted matrix, i the triplet;
:func:`~lora_edu.adalora.triplet_scores`) and exactly the b(t) best keep their λ
(:func:`~lora_edu.adalora.budget_schedule`); λ of the others is set to zero. A layer whose
triplets score low thus loses rank, one that scores high keeps it — the "参数动态分配" (dynamic
allocation). At step T − t_f the final pattern, with b(T) triplets, is fixed and re-applied at
every later step.

Details that differ from PEFT's ``RankAllocator`` on purpose:

* exactly b(t) triplets stay active: ties are broken deterministically by position (layer order,
  then triplet index), where PEFT's rule "mask every score ≤ the k-th smallest" prunes every tied
  triplet and can remove more than asked;
* the budget is a total in triplets (PEFT's ``target_r`` is an average per matrix,
  see :func:`~lora_edu.adalora.budget_from_average_rank`);
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
step), the mask is decided then and applied to λ right after the optimizer step (at the start of
the next forward), as in the paper's Algorithm 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_edu.adalora.budget import budget_schedule, validate_schedule
from lora_edu.adalora.importance import ImportanceTracker, triplet_scores

__all__ = ["RankAllocator", "find_svd_modules", "is_svd_adapter"]

_ATTRS = ("lora_P", "lora_lambda", "lora_Q", "rank_mask")


def is_svd_adapter(module: object) -> bool:
    """True for an SVD-form adapter: a module with ``lora_P``, ``lora_lambda``, ``lora_Q`` and
    ``rank_mask`` (e.g. :class:`lora_edu.adalora.SVDLinear`)."""
    return isinstance(module, nn.Module) and all(hasattr(module, a) for a in _ATTRS)


def find_svd_modules(model: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module]
                     ) -> dict[str, nn.Module]:
    """The SVD adapters of ``model`` as an ordered ``{name: module}`` dict.

    ``model`` may be a network (searched with ``named_modules``), a mapping name → adapter, or a
    sequence of adapters (named ``"0"``, ``"1"``, …). Raises ``ValueError`` if there is none and
    ``TypeError`` if a mapping/sequence holds something else.
    """
    if isinstance(model, nn.Module):
        found = {name: m for name, m in model.named_modules() if is_svd_adapter(m)}
    elif isinstance(model, Mapping):
        found = dict(model)
    elif isinstance(model, Sequence) and not isinstance(model, str):
        found = {str(i): m for i, m in enumerate(model)}
    else:
        raise TypeError("model must be an nn.Module, a mapping or a sequence of SVD adapters, "
                        f"got {type(model).__name__}")
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
    delta_t:
        Mask every ``delta_t`` steps during warm-up and pruning (ΔT).
    init_budget:
        b(0); default: all triplets (Σ_m r_m over the adapted matrices m); must not exceed that.
    beta1, beta2:
        EMA factors of sensitivity and uncertainty, in [0, 1).

    Attributes
    ----------
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
                 beta2: float = 0.85) -> None:
        self.modules = find_svd_modules(model)
        self.n_triplets = sum(int(m.lora_lambda.numel()) for m in self.modules.values())
        if init_budget is None:
            init_budget = self.n_triplets
        if isinstance(init_budget, int) and not isinstance(init_budget, bool) \
                and init_budget > self.n_triplets:
            raise ValueError(f"init_budget ({init_budget}) must be <= the number of triplets "
                             f"in the model ({self.n_triplets})")
        validate_schedule(total_steps, init_budget, target_budget, t_init, t_final)
        if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t < 1:
            raise ValueError(f"delta_t must be a positive int, got {delta_t!r}")
        self.tracker = ImportanceTracker(beta1, beta2)
        self.init_budget, self.target_budget = init_budget, target_budget
        self.total_steps, self.t_init, self.t_final = total_steps, t_init, t_final
        self.delta_t = delta_t
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

    @torch.no_grad()
    def update_importance(self) -> None:
        """Fold the current gradients of every P, λ, Q into the EMAs (call after backward)."""
        self.tracker.update_many((f"{name}.{attr}", p, p.grad)
                                 for name, m in self.modules.items()
                                 for attr in ("lora_P", "lora_lambda", "lora_Q")
                                 for p in (getattr(m, attr),))

    def scores(self) -> dict[str, Tensor]:
        """Triplet scores S_{m,i} of every layer, ``{name: tensor (r_m,)}`` (zeros before any
        update)."""
        out = {}
        for name, m in self.modules.items():
            key = f"{name}.lora_lambda"
            if key not in self.tracker.i_bar:
                out[name] = torch.zeros_like(m.lora_lambda.detach())
                continue
            out[name] = triplet_scores(self.tracker.score(f"{name}.lora_P"),
                                       self.tracker.score(key),
                                       self.tracker.score(f"{name}.lora_Q"))
        return out

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, int]:
        """Keep exactly the ``budget`` best triplets over all layers; mask the others.

        Ties are broken by position (earlier layer, then lower index, first). The masks are set
        now; λ of the pruned triplets is zeroed at the adapter's next forward (after the optimizer
        step) or by :meth:`apply_masks`. Returns the active rank per layer.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) \
                or not 0 <= budget <= self.n_triplets:
            raise ValueError(f"budget must be an int in [0, {self.n_triplets}], got {budget!r}")
        scores = self.scores()
        flat = torch.cat([scores[n].reshape(-1).float() for n in self.modules])
        order = torch.sort(flat, descending=True, stable=True).indices
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order[:budget]] = True
        start = 0
        for m in self.modules.values():
            r = m.lora_lambda.numel()
            m.rank_mask.copy_(keep[start:start + r].to(m.rank_mask.dtype))
            m.mask_pending = True
            start += r
        return self.ranks(warn=False)

    def apply_masks(self) -> None:
        """Zero λ of every pruned triplet now (e.g. after training, before inspecting λ)."""
        for m in self.modules.values():
            m.apply_mask()

    # -- the training-loop hook -----------------------------------------------------------------
    def step(self, step: int) -> int:
        """One allocator step at training step ``step`` (1 … T); returns b(step).

        Before T − t_final: update the importance EMAs from the current gradients and, every
        ``delta_t`` steps, keep the b(step) best triplets. At T − t_final (or the first call past
        it): fix the final pattern with b(T) triplets. After: re-apply that pattern.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if not 1 <= step <= self.total_steps:
            raise ValueError(f"step must be in [1, total_steps={self.total_steps}], got {step}")
        self.steps_taken += 1
        self.last_step = step
        final_start = self.total_steps - self.t_final
        budget = self.budget(step)
        if step < final_start:
            self.update_importance()
            if step % self.delta_t == 0:
                self.mask_to_budget(budget)
                self.history.append((step, budget))
        elif not self.frozen:
            self.mask_to_budget(self.target_budget)
            self.history.append((step, self.target_budget))
            self.frozen = True
        else:
            for m in self.modules.values():
                m.mask_pending = True
        return budget

    def after_backward(self, step: int, model: nn.Module | None = None) -> None:
        """``after_backward(step, model)`` hook for :func:`lora_edu.toy.train`."""
        self.step(step)

    # -- results --------------------------------------------------------------------------------
    def ranks(self, warn: bool = True) -> dict[str, int]:
        """Active rank of every layer, ``{name: int}`` (warns if the allocator never stepped)."""
        if warn:
            self._warn_if_never_stepped()
        return {name: m.active_rank for name, m in self.modules.items()}

    def rank_pattern(self, warn: bool = True) -> dict[str, list[bool]]:
        """Which triplets of every layer are active, ``{name: [bool] * r}`` (warns if the
        allocator never stepped)."""
        if warn:
            self._warn_if_never_stepped()
        return {name: [bool(v) for v in m.rank_mask] for name, m in self.modules.items()}
