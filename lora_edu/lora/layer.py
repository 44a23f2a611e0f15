"""The LoRA layer: a frozen ``nn.Linear`` plus the trainable low-rank bypass (source §2.1).

h = W0·x + b + s·B·(A·x) with W0 ∈ ℝ^{d×k} frozen, B ∈ ℝ^{d×r} (zero at the start),
A ∈ ℝ^{r×k} (random), s = α/r; merging writes W0 + s·B·A (source §2.2, 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lora_edu.checks import (
    check_float,
    check_instance,
    check_int,
    check_one_of,
    check_probability,
    check_tensor,
)
from lora_edu.inject import (
    FrozenLinearWrapper,
    add_low_rank_bypass,
    check_layer_input,
)

__all__ = ["LoRALinear", "INITS", "check_lora_hparams", "check_rank_fits", "init_lora_A"]

#: The initialisations of A that :class:`LoRALinear` accepts as ``init`` (B always starts at 0).
INITS = ("gaussian", "kaiming")


def check_lora_hparams(r: object, alpha: object, dropout: object, init: object, rslora: object,
                   gaussian_std: object = None) -> tuple[int, float, float, str, bool,
                                                         float | None]:
    """Validate the LoRA hyperparameters; return them as plain Python values."""
    r = check_int("r", r, minimum=1)
    alpha = check_float("alpha", alpha, 0.0, min_inclusive=False)
    dropout = check_probability("dropout", dropout)
    init = check_one_of("init", init, INITS)
    if isinstance(rslora, np.bool_):
        rslora = bool(rslora)
    rslora = check_instance("rslora", rslora, bool)
    if gaussian_std is not None:
        gaussian_std = check_float("gaussian_std", gaussian_std, 0.0, min_inclusive=False)
        if init != "gaussian":
            raise ValueError(f"gaussian_std applies to init='gaussian' only, got init={init!r}")
    return r, alpha, dropout, init, rslora, gaussian_std


def check_rank_fits(r: int, linear: nn.Linear, where: str = "") -> None:
    """r ≤ min(d, k): a rank-r product B·A of a d×k matrix cannot have a larger rank."""
    d, k = linear.out_features, linear.in_features
    if r > min(d, k):
        raise ValueError(f"r must be <= min(d, k) = {min(d, k)}{where} (an nn.Linear({k}, {d})), "
                         f"got {r}")


@torch.no_grad()
def init_lora_A(lora_A: Tensor, init: str = "gaussian", gaussian_std: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw A ∈ ℝ^{r×k} in place, as :class:`LoRALinear` does (B starts at zero; source §2.1 (2)).

    * ``"gaussian"``: A ~ N(0, σ²), σ = ``gaussian_std`` (default 1/r) — "A高斯随机初始化";
    * ``"kaiming"``: ``kaiming_uniform_(A, a=√5)`` as loralib and PEFT do, i.e.
      A ~ U(−1/√k, 1/√k): gain √(2/(1+5)) = √(1/3), bound gain·√(3/k) = 1/√k.

    The QLoRA layer calls it too, so the same generator gives the same A in both layers.
    Returns ``lora_A``.
    """
    check_tensor("lora_A", lora_A, 2, floating=True)
    init = check_one_of("init", init, INITS)
    if generator is not None:
        check_instance("generator", generator, torch.Generator)
    r, k = lora_A.shape
    if init == "gaussian":
        std = 1.0 / r if gaussian_std is None else check_float(
            "gaussian_std", gaussian_std, 0.0, min_inclusive=False)
        return lora_A.normal_(0.0, std, generator=generator)
    bound = 1.0 / math.sqrt(k)
    return lora_A.uniform_(-bound, bound, generator=generator)


def _sync_merged_flag(module: nn.Module, incompatible_keys: object) -> None:
    """Load-state-dict post hook: the Python mirror of the ``lora_merged`` buffer follows it."""
    module._merged = bool(module.lora_merged)


class LoRALinear(FrozenLinearWrapper):
    """``base`` (frozen) plus the bypass s·B·A: h = W0·x + b + s·B·(A·dropout(x)).

    Parameters
    ----------
    base:
        The ``nn.Linear(k, d)`` to adapt; its weight W0 (d×k) and bias are frozen
        (``requires_grad=False``) and kept as ``self.base``.
    r:
        Rank of the update, 1 ≤ r ≤ min(d, k) (source §2.1: r ≪ min(d, k)); ``lora_A`` is (r, k),
        ``lora_B`` (d, r).
    alpha:
        Scale numerator, a finite number > 0: s = α / r (or α / √r with ``rslora=True``,
        Kalajdzievski 2023).
    dropout:
        Dropout probability on the bypass input only, in [0, 1).
    init:
        How A starts (B is always zero, so the layer starts equal to ``base``):

        * ``"gaussian"`` — A ~ N(0, σ²) with σ = ``gaussian_std``, default 1/r: the document's
          "A高斯随机初始化" (the paper says "random Gaussian" without a σ; 1/r is PEFT's
          ``init_lora_weights="gaussian"``);
        * ``"kaiming"`` — what loralib and PEFT do by default: ``kaiming_uniform_(A, a=√5)``,
          i.e. A ~ U(−1/√k, 1/√k).
    rslora:
        Use s = α/√r (rank-stabilised LoRA) instead of α/r.
    gaussian_std:
        σ > 0 for ``init="gaussian"`` (default 1/r); an error with ``init="kaiming"``.
    generator:
        Optional ``torch.Generator`` for the initialisation of A.

    Notes
    -----
    Numbers may be Python or numpy scalars. A wrong type raises ``TypeError``, a wrong value
    ``ValueError``, each naming the argument.

    The merged state is part of the state dict (the boolean buffer ``lora_merged``): a state dict
    saved after :meth:`merge` holds W0 + s·B·A *and* says so, so loading it into an unmerged layer
    makes that layer merged too, and the update is never applied twice.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "gaussian", rslora: bool = False, gaussian_std: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        check_instance("base", base, nn.Linear)
        r, alpha, dropout, init, rslora, gaussian_std = check_lora_hparams(
            r, alpha, dropout, init, rslora, gaussian_std)
        check_rank_fits(r, base)
        if generator is not None:
            check_instance("generator", generator, torch.Generator)
        super().__init__(base)
        d, k = base.out_features, base.in_features
        self.r = r
        self.alpha = alpha
        self.rslora = rslora
        self.init = init
        self.dropout_p = dropout
        self.scaling = alpha / (math.sqrt(r) if rslora else r)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, k, **factory))
        self.lora_B = nn.Parameter(torch.zeros(d, r, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # persistent: the flag travels with the (possibly merged) base weight in the state dict
        self.register_buffer("lora_merged", torch.zeros((), dtype=torch.bool,
                                                        device=base.weight.device))
        self._merged = False  # Python mirror of the buffer (no tensor read in forward)
        self.register_load_state_dict_post_hook(_sync_merged_flag)
        init_lora_A(self.lora_A, init, gaussian_std, generator)

    @property
    def merged(self) -> bool:
        """Whether ``base.weight`` currently holds W0 + s·B·A (set by :meth:`merge`)."""
        return self._merged

    def _set_merged(self, value: bool) -> None:
        self._merged = value
        self.lora_merged.fill_(value)

    def delta_weight(self) -> Tensor:
        """s·ΔW = s·B·A, shape (d, k): the scaled update that :meth:`merge` adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        """h = W0·x + b + s·B·(A·dropout(x)); after :meth:`merge` just the (merged) base layer.

        ``self.base(x)`` is called as it is (its hooks see W0·x + b) and the bypass is added out
        of place by :func:`lora_edu.inject.add_low_rank_bypass`, the helper the AdaLoRA and QLoRA
        layers share. Works under ``torch.autocast`` and with float16/bfloat16 weights. ``x`` is
        checked once (:func:`lora_edu.inject.check_layer_input`: a floating tensor of the
        weights' dtype and device with last dimension k). :meth:`reference_forward` is the formula
        written with two ``F.linear`` calls; the tests check the two agree. While merged, the
        bypass is not evaluated, so A and B receive no gradient.
        """
        check_layer_input(x, self.in_features, self.base.weight)
        if self._merged:
            return self.base(x)
        return add_low_rank_bypass(self.base(x), self.dropout(x), self.lora_A, self.lora_B,
                                   self.scaling)

    def reference_forward(self, x: Tensor) -> Tensor:
        """The formula as written, h = W0·x + b + s·B·(A·dropout(x)), with two ``F.linear`` calls
        and an out-of-place sum: the plain path that :meth:`forward` is tested against."""
        h = self.base(x)
        if self._merged:
            return h
        bypass = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A),
                          self.lora_B)
        return h + (self.scaling * bypass).to(h.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + s·B·A in place (one fused ``addmm_``); afterwards forward = base layer.

        Idempotent: calling it again on a merged layer does nothing (the update is never added
        twice). Merging is explicit — ``eval()``/``train()`` never merge or unmerge.
        """
        if not self._merged:
            w = self.base.weight
            w.addmm_(self.lora_B.to(w.dtype), self.lora_A.to(w.dtype), alpha=self.scaling)
            self._set_merged(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − s·B·A in place; no-op on a layer that is not merged.

        Restores W0 up to floating-point rounding (≤ 1e-12 relative in float64; a few units of
        the last place in float16/bfloat16), so train or swap adapters again after an unmerge,
        not while merged.
        """
        if self._merged:
            w = self.base.weight
            w.addmm_(self.lora_B.to(w.dtype), self.lora_A.to(w.dtype), alpha=-self.scaling)
            self._set_merged(False)

    def merged_linear(self) -> nn.Linear:
        """A new plain ``nn.Linear`` whose weight is W0 + s·B·A (this layer is not modified)."""
        d, k = self.out_features, self.in_features
        w = self.base.weight
        lin = nn.Linear(k, d, bias=self.base.bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w if self._merged else torch.addmm(
                w, self.lora_B.to(w.dtype), self.lora_A.to(w.dtype), alpha=self.scaling))
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        lin.requires_grad_(False)
        return lin

    def settings(self) -> dict:
        """The layer's configuration as plain values (what an adapter file records per layer)."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "r": self.r, "alpha": self.alpha, "rslora": self.rslora, "init": self.init,
                "dropout": self.dropout_p}

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, init={self.init}, "
                f"rslora={self.rslora}, merged={self._merged}")
