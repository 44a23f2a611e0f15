"""AdaLoRA: the SVD-form adapter, its orthogonal regulariser, and injection by module name.

Source §3.2 (1), 基于SVD的参数化: the update of a frozen W0 ∈ ℝ^{d×k} is written
``ΔW = P·Λ·Q`` with P ∈ ℝ^{d×r} (left "singular vectors"), Λ = diag(λ), λ ∈ ℝ^r (the "singular
values") and Q ∈ ℝ^{r×k} (right "singular vectors"). No actual SVD is ever computed: P, λ and Q
are all trained, and a penalty keeps P and Q close to orthogonal so that λ keeps the meaning of
singular values — λ controls the *magnitude* of the update (更新幅度), P and Q its *direction*
(更新方向). Because a triplet (P_{*i}, λ_i, Q_{i*}) can be switched off by setting λ_i = 0 without
touching the others, the rank of every layer can be changed during training (the allocator in
:mod:`lora_edu.adalora`).

Conventions of this implementation:

* λ starts at **zero** and P, Q are Gaussian (std 0.02 by default, PEFT's value), so ΔW = 0 and the
  adapted layer equals the base at step 0. (PEFT's AdaLoRA for a while drew its λ, ``lora_E``, from
  a normal distribution, so a freshly wrapped model already differed from the base:
  https://github.com/huggingface/peft/issues/1798, fixed by pull request #1884.) P and Q are drawn
  in float64 and then cast, so the same seed gives the same start on every CPU (float32 ``randn``
  differs in the last bits between vectorised kernels).
* The scaling is s = α/r with r the **initial** rank, fixed for the whole run (the AdaLoRA paper's
  α/r; the authors' code and PEFT divide by a ``ranknum`` equal to the initial rank that is never
  updated). Pruning therefore never rescales the triplets that survive.
* Pruning never writes into a parameter from inside :meth:`SVDLinear.forward`. The forward pass
  uses :meth:`SVDLinear.effective_lambda`: with ``mask_between_steps=True`` (the default) that is
  λ ⊙ ``rank_mask`` at every call, so a pruned triplet stays switched off until the allocator
  decides again; with ``False`` (the reference behaviour of the authors' code and PEFT) a pruned λ
  is zeroed once, right after the optimizer step of the masking iteration, and then trained again
  (see :class:`SVDLinear`).
* The regulariser is R(P, Q) = ‖PᵀP − I‖_F² + ‖QQᵀ − I‖_F², summed over layers and weighted by γ
  (paper: 0.1). PEFT instead adds the *unsquared* norms averaged over its tensors; the two differ by
  a constant factor and a square root, so their γ values are not interchangeable.

Arguments are checked with :mod:`lora_edu.checks`: a wrong type raises ``TypeError``, a wrong
value ``ValueError``, both naming the argument; numpy scalars are accepted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_edu.adalora.allocator import find_svd_modules
from lora_edu.checks import check_float, check_instance, check_int, check_seed, check_tensor
from lora_edu.inject import (
    FrozenLinearWrapper,
    add_low_rank_bypass,
    check_layer_input,
    inject_adapters,
    normalize_targets,
    replace_module,
)

__all__ = ["SVDLinear", "orthogonal_regularizer", "orthogonal_penalty", "apply_adalora",
           "merge_adalora"]


class SVDLinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus the SVD-form bypass: h = W0·x + b + s·P·diag(λ)·Q·x.

    ΔW = PΛQ, AdaLoRA's SVD-based parameterization (source §3.2 (1)).

    Parameters
    ----------
    base:
        The layer to adapt; its weight W0 (d×k, out × in) and bias are frozen.
    r:
        Initial rank (number of triplets), ``1 <= r <= min(d, k)``.
    alpha:
        Scaling numerator; s = alpha / r with the initial r, never updated.
    init_std:
        Standard deviation of the Gaussian init of P and Q (λ starts at zero).
    generator:
        Optional ``torch.Generator`` for the initialisation of P and Q (default: torch's global
        generator).

    Attributes
    ----------
    lora_P : nn.Parameter, shape (d, r)
        Left factor (PEFT calls it ``lora_B``).
    lora_lambda : nn.Parameter, shape (r,)
        The diagonal of Λ (PEFT: ``lora_E``, shape (r, 1)).
    lora_Q : nn.Parameter, shape (r, k)
        Right factor (PEFT: ``lora_A``).
    rank_mask : buffer, shape (r,)
        1.0 for active triplets, 0.0 for pruned ones; set by the allocator.
    mask_between_steps : bool
        How the forward pass treats a pruned triplet (set by the allocator; default ``True``):

        * ``True``: λ ⊙ ``rank_mask`` in every forward pass, until the allocator decides again.
          The model computes with exactly the triplets the allocator reports as active; a pruned
          λ gets no gradient from the task loss and keeps its stored value, which comes back if
          a later allocation revives the triplet.
        * ``False`` (the AdaLoRA authors' code and PEFT): a pruned λ is set to zero once, right
          after the optimizer step of the masking iteration, and then trained again, so between
          two masking steps it grows back and the forward pass uses more triplets than the
          allocator reports. The allocator is called *before* the optimizer step, so the zero
          cannot be written then: while ``mask_pending`` is set, the forward pass uses λ_i = 0
          for the pruned triplets (value 0, gradient as for a parameter holding 0) and the
          allocator writes the zero into the parameter at its next call (or :meth:`apply_mask`
          does). Forward passes, gradients and updates are then those of the paper's
          Algorithm 1, step for step: importance from the parameters and gradients of step t,
          the mask applied to the parameters after that step's update.
    mask_pending : bool
        A zeroing decided by the allocator that is not yet written into λ (only with
        ``mask_between_steps=False``).

    Notes
    -----
    What matches PEFT step for step is the **masks**: given the same P, λ, Q and gradients at
    every step, with the importance updated between ``backward`` and the optimizer step (as the
    paper and :class:`~lora_edu.adalora.RankAllocator` do), PEFT's ``RankAllocator``
    (``AdaLoraModel.update_and_allocate``) keeps the same triplets at the same steps, in either
    mode — no masking during the warm-up, then every ΔT steps, then the final pattern
    (``tests/test_adalora_allocator.py``; PEFT differs only on exact ties, where it prunes every
    triplet at its threshold). The training runs need not match: PEFT's documentation calls
    ``update_and_allocate`` *after* ``optimizer.step()``, so its sensitivities are
    ``|θ^{(t+1)}·∇ℒ(θ^{(t)})|`` rather than ``|θ^{(t)}·∇ℒ(θ^{(t)})|`` and its masks can differ;
    called before the optimizer step instead, it scores as here but zeroes λ before the update,
    which the optimizer then moves off zero.

    The forward pass never writes into a parameter or buffer, so a pending backward pass is never
    invalidated by a later forward (e.g. an evaluation between ``forward`` and ``backward``).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0, init_std: float = 0.02,
                 generator: torch.Generator | None = None) -> None:
        check_instance("base", base, nn.Linear)
        d, k = base.out_features, base.in_features
        # r <= min(d, k): P (d×r) and Q (r×k) cannot be orthogonal otherwise
        r = check_int("r", r, 1, min(d, k))
        alpha = check_float("alpha", alpha, 0.0, min_inclusive=False)
        init_std = check_float("init_std", init_std, 0.0, min_inclusive=False)
        if generator is not None:
            check_instance("generator", generator, torch.Generator)
        super().__init__(base)
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        w = base.weight

        def gaussian(*shape: int) -> Tensor:
            # float64 draws are bit-identical on every CPU; float32 ones are not
            z = torch.randn(*shape, dtype=torch.float64, generator=generator) * init_std
            return z.to(dtype=w.dtype, device=w.device)

        self.lora_P = nn.Parameter(gaussian(d, r))
        self.lora_lambda = nn.Parameter(torch.zeros(r, dtype=w.dtype, device=w.device))
        self.lora_Q = nn.Parameter(gaussian(r, k))
        self.register_buffer("rank_mask", torch.ones(r, dtype=w.dtype, device=w.device))
        self.mask_between_steps = True
        self.mask_pending = False

    @property
    def active_rank(self) -> int:
        """Number of triplets the current mask keeps."""
        return int(self.rank_mask.count_nonzero())

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Write λ_i = 0 into the parameter for every pruned triplet now (an explicit call, never
        made by :meth:`forward`; the allocator makes it at its next step)."""
        self.lora_lambda.mul_(self.rank_mask)
        self.mask_pending = False

    def effective_lambda(self) -> Tensor:
        """λ as the forward pass uses it now, shape (r,), differentiable w.r.t. ``lora_lambda``.

        ``λ ⊙ rank_mask`` with ``mask_between_steps=True``; with ``False``, λ with the pruned
        entries at 0 while a zeroing is pending (:attr:`mask_pending`, gradient passed through
        as for a parameter that holds 0) and λ as stored otherwise. Count its non-zero entries to
        know how many triplets the layer really computes with.
        """
        lam = self.lora_lambda
        # rank_mask.bool() is a fresh tensor: autograd never saves the buffer itself, so the
        # allocator may change the mask while a backward pass is still pending
        if self.mask_between_steps:
            return torch.where(self.rank_mask.bool(), lam, 0.0)
        if self.mask_pending:
            # value exactly 0 for pruned entries, d/dλ = 1 (what λ = 0 in the parameter gives)
            return torch.where(self.rank_mask.bool(), lam, lam - lam.detach())
        return lam

    def delta_weight(self) -> Tensor:
        """s·ΔW = s·P·diag(λ)·Q, shape (d, k), what merging adds (with :meth:`effective_lambda`,
        so pruned triplets contribute nothing)."""
        return self.scaling * (self.lora_P * self.effective_lambda()) @ self.lora_Q

    def forward(self, x: Tensor) -> Tensor:
        """h = W0·x + b + s·P·diag(λ)·Q·x with λ = :meth:`effective_lambda`.

        Two skinny products, never ΔW: Q·x (r values per row of x) scaled by s·λ, then P·(…),
        added out of place to ``self.base(x)`` by :func:`lora_edu.inject.add_low_rank_bypass`
        (the helper LoRA and QLoRA share), so a hook on ``self.base`` sees W0·x + b alone and
        ``torch.autocast`` works. Nothing here writes into a parameter or buffer. ``x`` is checked
        once (:func:`lora_edu.inject.check_layer_input`).
        """
        check_layer_input(x, self.in_features, self.base.weight)
        scale = self.scaling * self.effective_lambda()
        return add_low_rank_bypass(self.base(x), x, self.lora_Q, self.lora_P, scale)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"active={self.active_rank}, scaling={self.scaling:g}")


def orthogonal_regularizer(P: Tensor, Q: Tensor) -> Tensor:
    """R(P, Q) = ‖PᵀP − I_r‖_F² + ‖QQᵀ − I_r‖_F² (AdaLoRA's orthogonality penalty, source §3.2 (1)).

    Zero exactly when P (d×r) has orthonormal columns and Q (r×k) orthonormal rows; differentiable,
    so γ·R is simply added to the loss.
    """
    check_tensor("P", P, 2, floating=True)
    check_tensor("Q", Q, 2, floating=True)
    r = P.shape[1]
    if Q.shape[0] != r:
        raise ValueError(f"Q must have {r} rows (P has {r} columns), got shape {tuple(Q.shape)}")
    eye = torch.eye(r, dtype=P.dtype, device=P.device)
    return ((P.t() @ P - eye) ** 2).sum() + ((Q @ Q.t() - eye) ** 2).sum()


def orthogonal_penalty(model: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module],
                       gamma: float = 0.1) -> Tensor:
    """γ·Σ_m R(P_m, Q_m) over every SVD adapter m in ``model`` (the paper's γ = 0.1).

    Use as the training loop's ``extra_loss``: ``extra_loss=lambda m: orthogonal_penalty(m, 0.1)``.
    R is :func:`orthogonal_regularizer` (source §3.2 (1)); the result is a 0-d tensor.
    """
    gamma = check_float("gamma", gamma, 0.0)
    modules = find_svd_modules(model)
    total: Tensor | None = None
    for m in modules.values():
        term = orthogonal_regularizer(m.lora_P, m.lora_Q)
        total = term if total is None else total + term
    assert total is not None  # find_svd_modules raises on an empty set
    return gamma * total


def apply_adalora(model: nn.Module, target_modules: str | Iterable[str], r: int,
                  alpha: float = 1.0, init_std: float = 0.02, seed: int | None = None
                  ) -> nn.Module:
    """Replace the named ``nn.Linear`` layers by :class:`SVDLinear`, in place (source §3.2 (1)).

    With ``seed`` the P and Q of all layers are drawn from one generator seeded with it (layers in
    sorted-name order), else from torch's global generator.

    Everything the model held before is frozen (via :func:`lora_edu.inject.inject_adapters`);
    only P, λ, Q are trainable. Returns the model. ``target_modules`` is a name or an iterable of
    names (``TypeError`` otherwise); ``r``, ``alpha``, ``init_std`` and ``seed`` are checked before
    anything is touched. Raises ``ValueError`` if nothing matches, and leaves the model unchanged
    on any error (``inject_adapters`` builds every replacement
    before installing the first, so a bad ``r``/``alpha`` raises with the model untouched).
    """
    check_instance("model", model, nn.Module)
    if not isinstance(target_modules, str):
        # any iterable of names (a list, tuple, generator); 42 is a TypeError naming the argument
        check_instance("target_modules", target_modules, (str, Iterable))
        target_modules = tuple(target_modules)
    targets = normalize_targets(target_modules)
    r = check_int("r", r, 1)
    alpha = check_float("alpha", alpha, 0.0, min_inclusive=False)
    init_std = check_float("init_std", init_std, 0.0, min_inclusive=False)
    if seed is not None:
        seed = check_seed("seed", seed)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    inject_adapters(model, list(targets),
                    lambda lin: SVDLinear(lin, r, alpha, init_std, generator))
    return model


def _merged_base(layer: SVDLinear) -> nn.Linear:
    # a copy of the frozen base holding W0 + s·P·diag(λ ⊙ mask)·Q
    merged = copy.deepcopy(layer.base)
    with torch.no_grad():
        merged.weight.add_(layer.delta_weight().to(merged.weight.dtype))
    return merged


def merge_adalora(model: nn.Module) -> nn.Module:
    """Replace every :class:`SVDLinear` of ``model`` by an ``nn.Linear`` holding W0 + s·P·Λ·Q.

    The SVD form is linear like LoRA's B·A, so it merges the same way (source §2.2, 2; §3.2 (1)):
    the merged model has the original architecture and no extra latency. Pruned triplets
    contribute nothing (:meth:`SVDLinear.delta_weight` uses the masked λ). The adapters are gone
    afterwards (this is PEFT's ``merge_and_unload``). Returns the model; for a bare
    :class:`SVDLinear` the merged ``nn.Linear`` itself. Raises ``ValueError`` if the model holds no
    :class:`SVDLinear`; the model is unchanged on any error.
    """
    check_instance("model", model, nn.Module)
    if isinstance(model, SVDLinear):
        return _merged_base(model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SVDLinear)}
    if not layers:
        raise ValueError("model holds no SVDLinear layer to merge")
    replacements = {name: _merged_base(layer) for name, layer in layers.items()}
    for name, new in replacements.items():
        replace_module(model, name, new)
    return model
