"""Put adapters into a model by module name, and count what is trainable.

Source §2.3 (1): LoRA is applied to chosen weight matrices (preferably W_q and W_v of
self-attention) and "everything else is frozen" (冻结其余模块). :func:`inject_adapters` is that
operation in general form: it finds ``nn.Linear`` submodules by (dotted-suffix) name, freezes every
parameter the model already has, and swaps each match for ``factory(linear)``. LoRA
(:func:`lora_edu.lora.apply_lora`) and AdaLoRA build on it with their own factories.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument). Nothing here touches global state: the only thing changed
is the model passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lora_edu.checks import check_callable, check_instance

__all__ = ["BaseLayerWidths", "FrozenLinearWrapper", "inject_adapters", "replace_module",
           "count_parameters", "find_linear_targets", "normalize_targets", "add_low_rank_bypass",
           "check_layer_input"]


class BaseLayerWidths:
    """Mixin for a module whose ``self.base`` is the layer it stands in for (W0 ∈ ℝ^{d×k}).

    ``in_features`` (k) and ``out_features`` (d) are the base layer's, so the wrapper can stand
    wherever the layer stood. Used by :class:`FrozenLinearWrapper` and by the QLoRA layer, whose
    base is a quantized layer rather than an ``nn.Linear``.
    """

    base: nn.Module

    @property
    def in_features(self) -> int:
        """k, the input width of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """d, the output width of the wrapped layer."""
        return self.base.out_features


class FrozenLinearWrapper(BaseLayerWidths, nn.Module):
    """Base of the adapter layers (LoRA, AdaLoRA, adapters): a module that keeps a frozen
    ``nn.Linear``.

    ``self.base`` holds the pretrained layer W0 (d×k) with ``requires_grad=False`` on its
    parameters (source §2.1: W0 stays frozen, only the bypass trains); ``in_features`` (k) and
    ``out_features`` (d) are the base layer's (:class:`BaseLayerWidths`).
    """

    def __init__(self, base: nn.Linear) -> None:
        check_instance("base", base, nn.Linear)
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)


def check_layer_input(x: object, in_features: int, weight: Tensor, name: str = "x", *,
                      any_float: bool = False) -> Tensor:
    """Check the input of an adapter layer's forward pass once, before any product is formed.

    ``x`` must be a floating ``torch.Tensor`` whose last dimension is the layer's k
    (``in_features``), on the device of ``weight`` (a ``meta`` tensor or a tensor on another
    device is refused), and, unless ``any_float`` (a layer that casts its input itself, like the
    4-bit base) or ``torch.autocast`` is active, of ``weight``'s dtype — the rule of
    ``nn.Linear``, stated in the error instead of as a matmul's "mat1 and mat2" message.

    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for a wrong shape or device,
    naming ``name``; returns ``x``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"{name} must have last dimension in_features={in_features}, got shape "
                         f"{tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{name} is on device {x.device}, the layer's weights on {weight.device}; "
                         f"move one of them (x.to({str(weight.device)!r}))")
    if (not any_float and x.dtype != weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(f"{name} has dtype {x.dtype}, the layer's weights {weight.dtype}; cast one "
                        f"of them (x.to({weight.dtype})) or run under torch.autocast")
    return x


def add_low_rank_bypass(h: Tensor, x: Tensor, down: Tensor, up: Tensor,
                        scale: float | Tensor) -> Tensor:
    """h + up·(scale ⊙ (down·x)): the low-rank bypass of LoRA, AdaLoRA and QLoRA, out of place.

    With ``down`` = A ∈ ℝ^{r×k}, ``up`` = B ∈ ℝ^{d×r} and a number ``scale`` = s = α/r this is
    LoRA's h = W0·x + b + s·B·(A·x) (source §2.1 (2)), given h = W0·x + b; with ``down`` = Q,
    ``up`` = P and the vector ``scale`` = s·λ (shape (r,)) it is AdaLoRA's s·P·Λ·Q·x (source §3.2
    (1)); QLoRA passes the output of its 4-bit base as ``h`` (source §4.3 (2)).

    Two skinny products, never the d×k matrix up·down: "降维" (k → r) then "升维" (r → d). The rows
    of ``x`` (shape (..., k)) are taken as the columns of X (k × n); the scale is applied to the
    small (r × n) product. ``h`` (shape (..., d)) is never modified: the sum is a new tensor, so a
    forward hook on the base layer sees the base output alone, and autograd's saved tensors are
    never overwritten. The bypass is computed in the adapter's dtype (or the autocast dtype) and
    added to ``h`` in ``h``'s dtype, fused into one ``addmm`` when the two dtypes agree.
    """
    cols = x.reshape(-1, down.shape[1]).t()                  # X: (k × n)
    small = torch.mm(down, cols.to(down.dtype))              # 降维: down·X, (r × n)
    if isinstance(scale, Tensor):
        small = small * scale.unsqueeze(1)                   # a scale per rank (AdaLoRA: s·λ)
    else:
        small = small * scale
    flat = h.reshape(-1, up.shape[0])                        # (n × d)
    if flat.dtype == small.dtype == up.dtype:
        out = torch.addmm(flat, small.t(), up.t())           # 升维 and the sum, one fused GEMM
    else:
        out = flat + torch.mm(small.t(), up.t()).to(flat.dtype)
    return out.view(h.shape)


def normalize_targets(target_modules: str | Sequence[str]) -> tuple[str, ...]:
    """Validate ``target_modules`` and return it as a tuple of non-empty names.

    The names of the weight matrices LoRA is applied to (source §2.3 (1): preferably
    ``("q_proj", "v_proj")``). A single str is one name.

    Raises
    ------
    TypeError
        If ``target_modules`` is not a string or a sequence of strings.
    ValueError
        If it is empty or holds an empty name.
    """
    if isinstance(target_modules, str):
        targets: tuple[str, ...] = (target_modules,)
    else:
        check_instance("target_modules", target_modules, (str, Sequence))
        targets = tuple(target_modules)
        for i, t in enumerate(targets):
            check_instance(f"target_modules[{i}]", t, str)
    if not targets:
        raise ValueError("target_modules must name at least one module, got an empty sequence")
    if any(not t or t.startswith(".") or t.endswith(".") for t in targets):
        raise ValueError(f"target_modules must hold non-empty dotted names, got {targets!r}")
    return targets


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def find_linear_targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Sorted qualified names of the ``nn.Linear`` submodules that ``target_modules`` selects.

    A module named ``blocks.0.attn.q_proj`` is selected by the target ``"q_proj"``, by
    ``"attn.q_proj"`` or by the full name (equality or a match after a ``"."``), never by a
    partial word such as ``"proj"``. Returns an empty list when nothing matches. The matrices
    source §2.3 (1) adapts are these layers' weights W0 ∈ ℝ^{d×k} (``nn.Linear``: out × in).
    """
    check_instance("model", model, nn.Module)
    targets = normalize_targets(target_modules)
    return sorted(name for name, module in model.named_modules()
                  if name and isinstance(module, nn.Linear) and _matches(name, targets))


def _check_every_target_matches(model: nn.Module, target_modules: str | Sequence[str]) -> None:
    """``ValueError`` naming every target that selects no ``nn.Linear``: a layer that already
    carries an adapter is named as such, any other miss (a typo) with the layers there are."""
    targets = normalize_targets(target_modules)
    modules = [(n, m) for n, m in model.named_modules() if n]
    linear = [n for n, m in modules if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(_matches(n, (t,)) for n in linear)]
    if not unmatched:
        return
    wrapped = {t: sorted({type(m).__name__ for n, m in modules
                          if isinstance(m, FrozenLinearWrapper) and _matches(n, (t,))})
               for t in unmatched}
    already = {t: kinds for t, kinds in wrapped.items() if kinds}
    if already:
        raise ValueError(f"target_modules={target_modules!r}: {sorted(already)} already have an "
                         f"adapter ({', '.join(sorted({k for v in already.values() for k in v}))});"
                         " merge or remove it before adapting these layers again")
    raise ValueError(f"target_modules={target_modules!r}: {unmatched} matched nothing; "
                     f"every target must select an nn.Linear (linear layers are {linear[:8]}"
                     + (" ..." if len(linear) > 8 else "") + ")")


def inject_adapters(model: nn.Module, target_modules: str | Sequence[str],
                    factory: Callable[[nn.Linear], nn.Module]) -> list[str]:
    """Freeze ``model`` and replace each selected ``nn.Linear`` in place by ``factory(linear)``.

    Every parameter the model holds before the call gets ``requires_grad=False``, so only the
    parameters created by ``factory`` (the adapter's, e.g. LoRA's B and A) stay trainable — the
    frozen main path of source §2.1 (1): h = W0·x + ΔW·x with only the adapter's ΔW trainable.

    Parameters
    ----------
    model:
        The network to adapt (modified in place).
    target_modules:
        A name or names; a linear layer is selected if its qualified name equals a target or ends
        with ``"." + target`` (so ``"q_proj"`` and ``"attn.q_proj"`` both work).
    factory:
        Called once per selected layer with the original ``nn.Linear``; returns its replacement.

    Returns
    -------
    list[str]
        The sorted qualified names that were replaced.

    Raises
    ------
    ValueError
        If any target of ``target_modules`` selects no ``nn.Linear`` (naming each such target,
        and saying so when the layer already carries an adapter); TypeError for wrong argument
        types or if
        ``factory`` does not return an ``nn.Module``. On any error the model is left unchanged:
        all replacements are built before the first one is installed.
    """
    check_instance("model", model, nn.Module)
    check_callable("factory", factory)
    _check_every_target_matches(model, target_modules)
    names = find_linear_targets(model, target_modules)
    modules = dict(model.named_modules())
    # Build every replacement first (the factory may raise); remember each layer's frozen state.
    old_flags = {id(p): p.requires_grad for p in model.parameters()}
    replacements: dict[str, nn.Module] = {}
    try:
        for name in names:
            new = factory(modules[name])
            check_instance(f"factory's result for {name!r}", new, nn.Module)
            replacements[name] = new
    except BaseException:
        for p in model.parameters():
            p.requires_grad_(old_flags[id(p)])
        raise
    for p in model.parameters():
        p.requires_grad_(False)
    for name, new in replacements.items():
        replace_module(model, name, new)
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (a dotted path) of ``model`` is.

    The one place the library swaps a layer for its replacement (an adapter layer, or a merged
    ``nn.Linear`` after merging). A name that is not a submodule raises ``ValueError``; a
    ``name`` that is not a str or a ``new`` that is not an ``nn.Module`` raises ``TypeError``.
    """
    check_instance("model", model, nn.Module)
    check_instance("name", name, str)
    check_instance("new", new, nn.Module)
    if not name:
        raise ValueError("name must be a submodule's dotted name, got ''")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        parent.get_submodule(child)
    except AttributeError:
        raise ValueError(f"name={name!r} is not a submodule of the model") from None
    setattr(parent, child, new)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` element counts of ``model``'s parameters.

    Shared tensors are counted once. For LoRA on a d×k matrix the trainable part is
    r·(d + k) instead of d·k (source §2.1 (3)). ``model`` must be an ``nn.Module``.
    """
    check_instance("model", model, nn.Module)
    trainable = total = 0
    for p in model.parameters():  # parameters() already deduplicates shared tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
