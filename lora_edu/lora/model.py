"""LoRA on a whole model: put layers in by name, merge them, read and write their matrices.

Source §2.3 (1) (which matrices: preferably W_q and W_v; everything else frozen) and §2.2
(merging: no extra latency; storing only the small matrices A and B).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lora_edu.checks import (
    check_instance,
    check_seed,
)
from lora_edu.inject import (
    find_linear_targets,
    inject_adapters,
    replace_module,
)
from lora_edu.lora.layer import LoRALinear, check_lora_hparams, check_rank_fits

__all__ = [


    "apply_lora", "lora_layers", "merge_lora", "unmerge_lora", "lora_state_dict",
    "load_lora_state_dict",
]


def _check_model(model: object) -> nn.Module:
    return check_instance("model", model, nn.Module)


def apply_lora(model: nn.Module, target_modules: str | Sequence[str], r: int, alpha: float,
               dropout: float = 0.0, init: str = "gaussian", rslora: bool = False,
               seed: int | None = None) -> nn.Module:
    """Wrap every ``nn.Linear`` named by ``target_modules`` in a :class:`LoRALinear`, in place.

    Names match exactly or as a dotted suffix (``"q_proj"`` selects ``blocks.0.attn.q_proj``).
    Every other parameter is frozen (source §2.3 (1): "冻结其余模块"); re-enable a new classifier
    head yourself if the task needs one (:func:`save_lora` then saves it with the adapter). With
    ``seed`` the A matrices are drawn from a generator seeded with it (layers in sorted-name
    order), else from torch's global generator.

    Returns the model. Raises ``ValueError`` naming ``target_modules`` if nothing matched,
    ``ValueError`` naming ``r`` if r > min(d, k) for a selected layer, and ``TypeError`` /
    ``ValueError`` naming a bad ``r``/``alpha``/``dropout``/``init``/``rslora``/``seed``; the model
    is unchanged on any error.
    """
    r, alpha, dropout, init, rslora, _ = check_lora_hparams(r, alpha, dropout, init, rslora)
    if seed is not None:
        seed = check_seed("seed", seed)
    _check_model(model)
    modules = dict(model.named_modules())
    names = find_linear_targets(model, target_modules)
    wrapped = [n for n in names if isinstance(modules.get(n.rpartition(".")[0]), LoRALinear)]
    if wrapped:
        raise ValueError(f"target_modules={target_modules!r} selects the base of existing LoRA "
                         f"layers {wrapped}")
    for name in names:
        check_rank_fits(r, modules[name], f" of {name!r}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)

    def factory(linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, r, alpha, dropout=dropout, init=init, rslora=rslora,
                          generator=generator)

    inject_adapters(model, target_modules, factory)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` submodules of ``model`` by qualified name (``""`` for ``model``
    itself if it is one)."""
    _check_model(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module, replace: bool = True) -> nn.Module:
    """Merge every :class:`LoRALinear` of ``model``: W ← W0 + s·B·A (source §2.2, 2).

    * ``replace=True`` (default; PEFT's ``merge_and_unload()``): each LoRA layer is replaced by
      its merged base ``nn.Linear``, so the result has exactly the original architecture and zero
      inference latency. The adapter is gone: :func:`unmerge_lora` cannot undo this (it raises).
      For a bare ``LoRALinear`` the merged ``nn.Linear`` itself is returned.
    * ``replace=False`` (PEFT's ``merge_adapter()``): the layers stay :class:`LoRALinear`, merged
      in place (forward = base layer, A and B kept); :func:`unmerge_lora` undoes it.

    Returns the model (or, for a bare layer with ``replace=True``, its base ``nn.Linear``).
    Raises ``ValueError`` if ``model`` holds no LoRA layer.
    """
    _check_model(model)
    replace = check_instance("replace", replace, bool)
    if isinstance(model, LoRALinear):
        model.merge()
        return model.base if replace else model
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRALinear layer to merge")
    for layer in layers.values():
        layer.merge()
    if replace:
        for name, layer in layers.items():
            replace_module(model, name, layer.base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` with ``replace=False``: :meth:`LoRALinear.unmerge` on every layer
    (layers that are not merged: no-op). Returns the model.

    Raises ``ValueError`` if ``model`` holds no LoRA layer — in particular after
    ``merge_lora(model)`` with the default ``replace=True``, which replaced the layers by plain
    ``nn.Linear`` layers: W0 and ΔW can no longer be told apart.
    """
    _check_model(model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRALinear layer to unmerge; merge_lora(model) with "
                         "replace=True replaces them by plain nn.Linear layers, which cannot be "
                         "unmerged — merge with merge_lora(model, replace=False) to keep them")
    for layer in layers.values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The LoRA matrices only: ``{"<layer>.lora_A": (r, k), "<layer>.lora_B": (d, r)}`` (copies).

    What the document calls the checkpoint (source §2.2, 1: "仅存小矩阵A/B"). An adapter that was
    trained together with other tensors (a new head) needs those too: :func:`save_lora` saves
    them.
    """
    out: dict[str, Tensor] = {}
    for name, layer in lora_layers(model).items():
        out[_join(name, "lora_A")] = layer.lora_A.detach().clone()
        out[_join(name, "lora_B")] = layer.lora_B.detach().clone()
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lora_param_names(layers: Mapping[str, LoRALinear]) -> set[str]:
    return {_join(n, f"lora_{m}") for n in layers for m in "AB"}


def _other_trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``model`` other than the LoRA matrices (e.g. a new head)."""
    lora_names = _lora_param_names(lora_layers(model))
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n not in lora_names}


def _check_lora_state(layers: Mapping[str, LoRALinear], state: object) -> dict[str, Tensor]:
    """Strict key, type and shape check of LoRA tensors; returns ``{key: target parameter}``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of tensors, got {type(state).__name__}")
    expected = {}
    for name, layer in layers.items():
        expected[_join(name, "lora_A")] = layer.lora_A
        expected[_join(name, "lora_B")] = layer.lora_B
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"state is missing adapter keys {missing}")
    if extra:
        raise ValueError(f"state has unexpected keys {extra}")
    for key, param in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{key!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != param.shape:
            raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)}, the model's "
                             f"{key} has {tuple(param.shape)}")
    return expected


def _check_not_merged(layers: Mapping[str, LoRALinear]) -> None:
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged} are merged; unmerge them before loading an adapter")


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy LoRA matrices (as from :func:`lora_state_dict`) into ``model``'s LoRA layers, strictly.

    Raises ``ValueError`` naming missing or unexpected keys or a key whose shape
    differs, ``TypeError`` for a non-tensor value, and ``ValueError`` if a target layer is merged
    (unmerge first). Everything is checked before anything is copied.
    """
    layers = lora_layers(model)
    expected = _check_lora_state(layers, state)
    _check_not_merged(layers)
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(state[key])
