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

from torch import nn

from lora_edu.checks import check_callable, check_instance

__all__ = ["BaseLayerWidths", "FrozenLinearWrapper", "inject_adapters", "count_parameters",
           "find_linear_targets", "normalize_targets"]


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
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, new)
    return names


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
