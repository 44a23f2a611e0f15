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
* The regulariser is R(P, Q) = ‖PᵀP − I‖_F² + ‖QQᵀ − I‖_F², summed over layers and weighted by γ
  (paper: 0.1). PEFT instead adds the *unsquared* norms averaged over its tensors; the two differ by
  a constant factor and a square root, so their γ values are not interchangeable.

The scoring (:mod:`lora_edu.adalora`), the schedule (:mod:`lora_edu.adalora`)
and the allocator (:mod:`lora_edu.adalora`) are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_edu.adalora.allocator import find_svd_modules
from lora_edu.inject import inject_adapters

__all__ = ["SVDLinear", "orthogonal_regularizer", "orthogonal_penalty", "apply_adalora"]


class SVDLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the SVD-form bypass: h = W0·x + b + s·P·diag(λ)·Q·x.

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
        1.0 for active triplets, 0.0 for pruned ones; set by the allocator. When the allocator
        prunes, λ of the pruned triplets is set to zero at the start of the next forward, i.e.
        *after* the optimizer step of that iteration (AdaLoRA's Algorithm 1). The pruned λ stay
        trainable, so a triplet pruned by mistake can come back at a later masking step.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0, init_std: float = 0.02,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        d, k = base.out_features, base.in_features
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"r must be an int, got {type(r).__name__}")
        if r <= 0:
            raise ValueError(f"r must be a positive int, got {r}")
        if r > min(d, k):
            raise ValueError(f"r must be <= min(d, k) = {min(d, k)} (P and Q cannot be "
                             f"orthogonal otherwise), got {r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) \
                or not init_std > 0:
            raise ValueError(f"init_std must be a positive number, got {init_std!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
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
        self.mask_pending = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def active_rank(self) -> int:
        """Number of triplets the current mask keeps."""
        return int(self.rank_mask.count_nonzero())

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Set λ_i = 0 for every pruned triplet now (the allocator normally defers this)."""
        self.lora_lambda.mul_(self.rank_mask)
        self.mask_pending = False

    def delta_weight(self) -> Tensor:
        """s·ΔW = s·P·diag(λ)·Q, shape (d, k), what merging adds (λ as stored; pruned entries are
        zero once masked)."""
        return self.scaling * (self.lora_P * self.lora_lambda) @ self.lora_Q

    def forward(self, x: Tensor) -> Tensor:
        if self.mask_pending:
            self.apply_mask()
        # two skinny products, never materialising ΔW: Q·X (r × n, rows of x as columns X) is
        # scaled row-wise by s·λ, then P·(…) is accumulated into W0·x + b by one in-place GEMM
        # (the layout of lora_edu.lora.LoRALinear: ≈ 1.5× faster than x·Qᵀ on small layers;
        # the base output is not saved by autograd, so updating it in place is safe)
        cols = x.reshape(-1, self.in_features).t()
        down = torch.mm(self.lora_Q, cols) * (self.scaling * self.lora_lambda).unsqueeze(1)
        out = self.base(x)
        out.view(-1, self.out_features).addmm_(down.t(), self.lora_P.t())
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"active={self.active_rank}, scaling={self.scaling:g}")


def orthogonal_regularizer(P: Tensor, Q: Tensor) -> Tensor:
    """R(P, Q) = ‖PᵀP − I_r‖_F² + ‖QQᵀ − I_r‖_F² (AdaLoRA's orthogonality penalty, source §3.2 (1)).

    Zero exactly when P (d×r) has orthonormal columns and Q (r×k) orthonormal rows; differentiable,
    so γ·R is simply added to the loss.
    """
    for name, t in (("P", P), ("Q", Q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    r = P.shape[1]
    if Q.shape[0] != r:
        raise ValueError(f"Q must have {r} rows (P has {r} columns), got shape {tuple(Q.shape)}")
    eye = torch.eye(r, dtype=P.dtype, device=P.device)
    return ((P.t() @ P - eye) ** 2).sum() + ((Q @ Q.t() - eye) ** 2).sum()


def orthogonal_penalty(model: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module],
                       gamma: float = 0.1) -> Tensor:
    """γ·Σ_m R(P_m, Q_m) over every SVD adapter m in ``model`` (the paper's γ = 0.1).

    Use as the training loop's ``extra_loss``: ``extra_loss=lambda m: orthogonal_penalty(m, 0.1)``.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
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
    """Replace the named ``nn.Linear`` layers of ``model`` by :class:`SVDLinear` (in place).

    With ``seed`` the P and Q of all layers are drawn from one generator seeded with it (layers in
    sorted-name order), else from torch's global generator.

    Everything the model held before is frozen (via :func:`lora_edu.inject.inject_adapters`);
    only P, λ, Q are trainable. Returns the model. Raises ``ValueError`` if nothing matches,
    and leaves the model unchanged on any error (``inject_adapters`` builds every replacement
    before installing the first, so a bad ``r``/``alpha`` raises with the model untouched).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if isinstance(target_modules, str):
        targets: str | list[str] = target_modules
    else:
        targets = list(target_modules)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    inject_adapters(model, targets, lambda lin: SVDLinear(lin, r, alpha, init_std, generator))
    return model
