"""LoRA: a frozen linear layer plus a trainable low-rank bypass (source §2.1; Hu et al. 2021).

For a frozen weight W0 ∈ ℝ^{d×k} (``nn.Linear(k, d)``: ``weight`` has shape (d, k)) LoRA learns
ΔW = B·A with B ∈ ℝ^{d×r}, A ∈ ℝ^{r×k}, r ≪ min(d, k), and computes

    h = W0·x + b + s·B·(A·x),   s = α / r   (rsLoRA: s = α / √r)

as two skinny matrix products (A first: "降维", down to r; then B: "升维", back up to d), never
by forming the d×k matrix B·A. B starts at zero, so the output equals the base layer's at step 0
(source §2.1 (2)). After training, W0 ← W0 + s·B·A ("合并", merge) gives a plain linear layer with
zero extra inference latency (source §2.2, 2).

In code ``lora_A`` has shape (r, k) and ``lora_B`` shape (d, r) — the document's shapes, and the
weight shapes PEFT uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_edu.inject import count_parameters, find_linear_targets, inject_adapters  # noqa: F401 (TEMP)

__all__ = [
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_layers",
    "lora_state_dict",
    "load_lora_state_dict",
    "save_lora",
    "load_lora",
    "INITS",
]

INITS = ("gaussian", "kaiming")


def _check_hparams(r: object, alpha: object, dropout: object, init: object) -> None:
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r must be a positive int, got {type(r).__name__}")
    if r <= 0:
        raise ValueError(f"r must be a positive int, got {r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise TypeError(f"alpha must be a positive number, got {type(alpha).__name__}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float):
        raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


class LoRALinear(nn.Module):
    """``base`` (frozen) plus the bypass s·B·A: h = W0·x + b + s·B·(A·dropout(x)).

    Parameters
    ----------
    base:
        The ``nn.Linear(k, d)`` to adapt; its weight W0 (d×k) and bias are frozen
        (``requires_grad=False``) and kept as ``self.base``.
    r:
        Rank of the update (source §2.1: r ≪ min(d, k)); ``lora_A`` is (r, k), ``lora_B`` (d, r).
    alpha:
        Scale numerator: s = α / r (or α / √r with ``rslora=True``, Kalajdzievski 2023).
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
        σ for ``init="gaussian"`` (default 1/r).
    generator:
        Optional ``torch.Generator`` for the initialisation of A.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "gaussian", rslora: bool = False, gaussian_std: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        _check_hparams(r, alpha, dropout, init)
        if gaussian_std is not None and not gaussian_std > 0:
            raise ValueError(f"gaussian_std must be > 0, got {gaussian_std}")
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        d, k = base.out_features, base.in_features
        self.r = r
        self.alpha = float(alpha)
        self.rslora = bool(rslora)
        self.init = init
        self.scaling = self.alpha / (math.sqrt(r) if rslora else r)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, k, **factory))
        self.lora_B = nn.Parameter(torch.zeros(d, r, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        with torch.no_grad():
            if init == "gaussian":
                std = 1.0 / r if gaussian_std is None else float(gaussian_std)
                self.lora_A.normal_(0.0, std, generator=generator)
            else:
                # kaiming_uniform_(a=√5): gain √(2/(1+5)) = √(1/3), bound gain·√(3/k) = 1/√k
                bound = 1.0 / math.sqrt(k)
                self.lora_A.uniform_(-bound, bound, generator=generator)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """s·ΔW = s·B·A, shape (d, k): the scaled update that :meth:`merge` adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        """h = W0·x + b + s·B·(A·dropout(x)); after :meth:`merge` just the (merged) base layer.

        While merged, the bypass is not evaluated, so A and B receive no gradient.
        """
        out = self.base(x)
        if self.merged:
            return out
        # Rows of x as columns X (k × n). A: 降维, A·X is (r × n); s is folded into this small
        # product. (A·X rather than X^T·A^T: the skinny GEMM runs ≈ 2× faster in this layout.)
        cols = self.dropout(x).reshape(-1, self.in_features).t()
        down = torch.mm(self.lora_A, cols) * self.scaling
        # B: 升维, (B·down)^T accumulated into W0·x + b by one fused in-place GEMM (the base
        # output is not saved by autograd, so updating it in place is safe)
        out.view(-1, self.out_features).addmm_(down.t(), self.lora_B.t())
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + s·B·A in place (one fused ``addmm_``); afterwards forward = base layer.

        Idempotent: calling it again on a merged layer does nothing (the update is never added
        twice). Merging is explicit — ``eval()``/``train()`` never merge or unmerge.
        """
        if not self.merged:
            self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=self.scaling)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − s·B·A in place; no-op on a layer that is not merged.

        Restores W0 up to floating-point rounding (≤ 1e-12 relative in float64), so train or
        swap adapters again after an unmerge, not while merged.
        """
        if self.merged:
            self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=-self.scaling)
            self.merged = False

    def merged_linear(self) -> nn.Linear:
        """A new plain ``nn.Linear`` whose weight is W0 + s·B·A (this layer is not modified)."""
        d, k = self.out_features, self.in_features
        w = self.base.weight
        lin = nn.Linear(k, d, bias=self.base.bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w if self.merged else torch.addmm(w, self.lora_B, self.lora_A,
                                                                 alpha=self.scaling))
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        lin.requires_grad_(False)
        return lin

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, init={self.init}, "
                f"rslora={self.rslora}, merged={self.merged}")


def apply_lora(model: nn.Module, target_modules: str | Sequence[str], r: int, alpha: float,
               dropout: float = 0.0, init: str = "gaussian", rslora: bool = False,
               seed: int | None = None) -> nn.Module:
    """Wrap every ``nn.Linear`` named by ``target_modules`` in a :class:`LoRALinear`, in place.

    Names match exactly or as a dotted suffix (``"q_proj"`` selects ``blocks.0.attn.q_proj``).
    Every other parameter is frozen (source §2.3 (1): "冻结其余模块"); re-enable a new classifier
    head yourself if the task needs one. With ``seed`` the A matrices are drawn from a generator
    seeded with it (layers in sorted-name order), else from torch's global generator.

    Returns the model. Raises ``ValueError`` naming ``target_modules`` if nothing matched, and for
    bad ``r``/``alpha``/``dropout``/``init``; the model is unchanged on any error.
    """
    _check_hparams(r, alpha, dropout, init)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    wrapped = [n for n in find_linear_targets(model, target_modules)
               if isinstance(modules.get(n.rpartition(".")[0]), LoRALinear)]
    if wrapped:
        raise ValueError(f"target_modules={target_modules!r} selects the base of existing LoRA "
                         f"layers {wrapped}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)

    def factory(linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, r, alpha, dropout=dropout, init=init, rslora=rslora,
                          generator=generator)

    inject_adapters(model, target_modules, factory)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` submodules of ``model`` by qualified name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` with W = W0 + s·B·A, in place.

    The result has exactly the original architecture (source §2.2, 2: zero inference latency).
    Returns the model; raises ``ValueError`` if it holds no LoRA layer.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRALinear layer to merge")
    modules = dict(model.named_modules())
    for name, layer in layers.items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer.base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Call :meth:`LoRALinear.unmerge` on every LoRA layer (layers that are not merged: no-op)."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Adapter-only state: ``{"<layer>.lora_A": (r, k), "<layer>.lora_B": (d, r)}`` (copies).

    This is all a LoRA checkpoint needs (source §2.2, 1: "仅存小矩阵A/B").
    """
    out: dict[str, Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().clone()
        out[f"{name}.lora_B"] = layer.lora_B.detach().clone()
    return out


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy adapter tensors into ``model``'s LoRA layers, strictly.

    Raises ``KeyError`` naming missing or unexpected keys, ``ValueError`` naming a key whose shape
    differs, ``TypeError`` for a non-tensor value, and ``ValueError`` if a target layer is merged
    (unmerge first). Everything is checked before anything is copied.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of tensors, got {type(state).__name__}")
    layers = lora_layers(model)
    expected = {}
    for name, layer in layers.items():
        expected[f"{name}.lora_A"] = layer.lora_A
        expected[f"{name}.lora_B"] = layer.lora_B
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise KeyError(f"state is missing adapter keys {missing}")
    if extra:
        raise KeyError(f"state has unexpected keys {extra}")
    for key, param in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != param.shape:
            raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)}, the model's "
                             f"{key} has {tuple(param.shape)}")
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged} are merged; unmerge them before loading an adapter")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(state[key])


def save_lora(model: nn.Module, path: str | os.PathLike) -> int:
    """Save the adapter-only state dict with ``torch.save``; return the file size in bytes."""
    state = lora_state_dict(model)
    if not state:
        raise ValueError("model holds no LoRALinear layer to save")
    torch.save(state, path)
    return os.path.getsize(path)


def load_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Load an adapter saved by :func:`save_lora` (``torch.load(..., weights_only=True)``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_lora_state_dict(model, state)
