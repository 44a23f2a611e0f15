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

Reuse of a trained adapter ("仅存小矩阵A/B", source §2.2, 1):

* :func:`save_lora` / :func:`load_lora` — this library's adapter file: every trainable tensor (the
  A/B matrices and, e.g., a new classifier head) plus the configuration (:func:`adapter_config`),
  checked against the model on loading;
* :func:`export_peft` / :func:`import_peft` — the same adapter in the directory layout of Hugging
  Face PEFT (``adapter_config.json`` + ``adapter_model.safetensors``), which
  ``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    check_seed,
)
from lora_edu.inject import (
    FrozenLinearWrapper,
    add_low_rank_bypass,
    check_layer_input,
    find_linear_targets,
    inject_adapters,
    replace_module,
)

__all__ = [
    "LoRALinear",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_layers",
    "lora_state_dict",
    "load_lora_state_dict",
    "adapter_config",
    "save_lora",
    "load_lora",
    "export_peft",
    "import_peft",
    "INITS",
    "ADAPTER_FORMAT",
    "ADAPTER_FORMAT_VERSION",
]

INITS = ("gaussian", "kaiming")
ADAPTER_FORMAT = "lora_edu.lora adapter"
ADAPTER_FORMAT_VERSION = 1

# The per-layer settings that change what a loaded adapter computes: they must match on loading.
_CHECKED_SETTINGS = ("in_features", "out_features", "r", "alpha", "rslora")
# PEFT's file names (peft.utils.constants) and the prefix PeftModel puts before module paths.
_PEFT_CONFIG = "adapter_config.json"
_PEFT_SAFETENSORS = "adapter_model.safetensors"
_PEFT_BIN = "adapter_model.bin"
_PEFT_PREFIX = "base_model.model."
#: PEFT initialisations that rewrite the base weights as well as A and B (PiSSA, OLoRA, CorDA,
#: LoftQ): an adapter saved with one of them is only correct on that rewritten base.
_PEFT_INITS_THAT_CHANGE_THE_BASE = ("pissa", "olora", "corda", "loftq")


def _check_hparams(r: object, alpha: object, dropout: object, init: object, rslora: object,
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


def _check_rank_fits(r: int, linear: nn.Linear, where: str = "") -> None:
    """r ≤ min(d, k): a rank-r product B·A of a d×k matrix cannot have a larger rank."""
    d, k = linear.out_features, linear.in_features
    if r > min(d, k):
        raise ValueError(f"r must be <= min(d, k) = {min(d, k)}{where} (an nn.Linear({k}, {d})), "
                         f"got {r}")


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
        r, alpha, dropout, init, rslora, gaussian_std = _check_hparams(
            r, alpha, dropout, init, rslora, gaussian_std)
        _check_rank_fits(r, base)
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
        with torch.no_grad():
            if init == "gaussian":
                std = 1.0 / r if gaussian_std is None else gaussian_std
                self.lora_A.normal_(0.0, std, generator=generator)
            else:
                # kaiming_uniform_(a=√5): gain √(2/(1+5)) = √(1/3), bound gain·√(3/k) = 1/√k
                bound = 1.0 / math.sqrt(k)
                self.lora_A.uniform_(-bound, bound, generator=generator)

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
    r, alpha, dropout, init, rslora, _ = _check_hparams(r, alpha, dropout, init, rslora)
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
        _check_rank_fits(r, modules[name], f" of {name!r}")
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


def adapter_config(model: nn.Module) -> dict:
    """What :func:`save_lora` records beside the tensors, as plain JSON-compatible values.

    ``{"format", "format_version", "lora_edu_version", "target_modules": [layer names],
    "layers": {name: {"in_features", "out_features", "r", "alpha", "rslora", "init",
    "dropout"}}, "trainable": [other trainable tensors, e.g. "head.weight"]}``. The scaling rule
    is ``rslora`` (s = α/√r if true, else α/r).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRALinear layer")
    return {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "lora_edu_version": _library_version(),
        "target_modules": sorted(layers),
        "layers": {name: layer.settings() for name, layer in sorted(layers.items())},
        "trainable": sorted(_other_trainable(model)),
    }


def _library_version() -> str:
    """The installed lora_edu distribution's version ("unknown" when run from a bare checkout)."""
    try:
        return importlib.metadata.version("lora-edu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_path(path: object) -> str | os.PathLike:
    return check_instance("path", path, (str, os.PathLike))


def save_lora(model: nn.Module, path: str | os.PathLike) -> int:
    """Save the adapter — every trainable tensor and the configuration — to ``path``.

    The file (``torch.save``) holds a dict ``{"config": adapter_config(model) with a SHA-256
    checksum of every saved tensor under "checksums", "lora": the A/B matrices
    (lora_state_dict), "trainable": every other parameter with requires_grad=True, by name}``:
    an adapter trained together with a new classifier head (see :func:`apply_lora`) needs the
    head to reproduce the model. Frozen tensors are not saved: load the file into the same base
    model. Returns the file size in bytes.
    """
    _check_path(path)
    config = dict(adapter_config(model))
    lora = lora_state_dict(model)
    trainable = {n: p.detach().clone() for n, p in _other_trainable(model).items()}
    config["checksums"] = {f"{part}.{name}": _tensor_checksum(t)
                           for part, tensors in (("lora", lora), ("trainable", trainable))
                           for name, t in tensors.items()}
    torch.save({"config": config, "lora": lora, "trainable": trainable}, path)
    return os.path.getsize(path)


def _tensor_checksum(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (hex): :func:`save_lora` stores one per
    tensor so that :func:`load_lora` can tell a damaged file from a good one."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verify_checksums(obj: Mapping, source: str) -> None:
    """``ValueError`` naming every tensor of a :func:`save_lora` file whose bytes no longer
    match the checksum stored beside them."""
    stored = obj["config"].get("checksums")
    if stored is None:
        return
    bad = []
    for part in ("lora", "trainable"):
        for name, tensor in obj[part].items():
            if stored.get(f"{part}.{name}") != _tensor_checksum(tensor):
                bad.append(name)
    missing = sorted(set(stored) - {f"{p}.{n}" for p in ("lora", "trainable") for n in obj[p]})
    if bad or missing:
        raise ValueError(f"{source} is damaged: the bytes of {bad} do not match their stored "
                         f"checksums" + (f"; tensors {missing} are missing" if missing else ""))


def _check_layer_settings(layers: Mapping[str, LoRALinear], saved: Mapping[str, Mapping],
                          source: str) -> None:
    """The model's LoRA layers and their settings against a saved configuration; one
    ``ValueError`` that names every module and setting that differs."""
    problems = []
    lacking = sorted(set(saved) - set(layers))
    if lacking:
        problems.append(f"the model has no LoRA layer at {lacking} (its LoRA layers: "
                        f"{sorted(layers)})")
    unsaved = sorted(set(layers) - set(saved))
    if unsaved:
        problems.append(f"the model's LoRA layers {unsaved} are not in {source}")
    for name in sorted(set(saved) & set(layers)):
        mine = layers[name].settings()
        for key in _CHECKED_SETTINGS:
            theirs = saved[name].get(key)
            if theirs != mine[key]:
                problems.append(f"{name}: {key} is {theirs!r} in {source}, {mine[key]!r} in the "
                                "model")
    if problems:
        raise ValueError("adapter does not match the model: " + "; ".join(problems))


def _load_adapter(model: nn.Module, saved_layers: Mapping[str, Mapping],
                  lora: Mapping[str, Tensor], others: Mapping[str, Tensor], strict: bool,
                  source: str) -> None:
    """Check everything, then copy the LoRA matrices and the other tensors into ``model``."""
    layers = lora_layers(model)
    _check_layer_settings(layers, saved_layers, source)
    expected = _check_lora_state(layers, lora)
    _check_not_merged(layers)
    targets: dict[str, Tensor] = dict(model.named_buffers())
    targets.update(model.named_parameters())
    absent = sorted(set(others) - set(targets))
    if absent:
        raise ValueError(f"{source} holds tensors {absent} that the model does not have")
    for name, value in others.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{source}: {name} must be a Tensor, got {type(value).__name__}")
        if value.shape != targets[name].shape:
            raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, the model's has "
                             f"{tuple(targets[name].shape)}")
    left_out = sorted(set(_other_trainable(model)) - set(others))
    if left_out:
        message = (f"the model's trainable tensors {left_out} are not in {source}: they keep "
                   "their current values")
        if strict:
            raise ValueError(message + " (pass strict=False to load anyway)")
        warnings.warn(message, stacklevel=3)
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(lora[key])
        for name, value in others.items():
            targets[name].copy_(value)
            if isinstance(targets[name], nn.Parameter):
                targets[name].requires_grad_(True)


def load_lora(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load an adapter saved by :func:`save_lora` into ``model``; return the file's config.

    The file is read with ``torch.load(..., weights_only=True)`` (tensors and plain values only;
    no code from the file runs). ``model`` must hold LoRA layers at the same names with the same
    shapes, r, α and scaling rule (``init`` and ``dropout`` are recorded but not compared: they do
    not change what a loaded adapter computes), none of them merged; every other saved tensor
    must exist in the model with the same shape, and becomes trainable again. A trainable tensor
    of the model that the file lacks raises (``strict=True``) or warns (``strict=False``).
    Every tensor's SHA-256 checksum, stored by :func:`save_lora`, is checked first: a damaged
    file raises ``ValueError`` naming the tensors whose bytes changed. (A PEFT adapter folder
    carries no checksums: :func:`import_peft` cannot tell damaged tensors from good ones.)
    Raises ``ValueError`` naming every mismatch; nothing is copied unless all checks pass.
    """
    _check_path(path)
    strict = check_instance("strict", strict, bool)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    config = obj.get("config") if isinstance(obj, Mapping) else None
    if not (isinstance(config, Mapping) and config.get("format") == ADAPTER_FORMAT):
        raise ValueError(f"path {os.fspath(path)!r} does not hold a lora_edu adapter file "
                         "(written by save_lora)")
    if config.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise ValueError(f"path {os.fspath(path)!r} has adapter format version "
                         f"{config.get('format_version')!r}; this lora_edu reads version "
                         f"{ADAPTER_FORMAT_VERSION}")
    _verify_checksums(obj, f"path {os.fspath(path)!r}")
    _load_adapter(model, config["layers"], obj["lora"], obj["trainable"], strict,
                  "the adapter file")
    return dict(config)


# ------------------------------------------------------------------ Hugging Face PEFT format


def _peft_config_and_tensors(model: nn.Module) -> tuple[dict, dict[str, Tensor]]:
    """PEFT's adapter_config.json content and its tensors, keyed as PeftModel saves them."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model holds no LoRALinear layer to export")
    if "" in layers:
        raise ValueError("model is a bare LoRALinear; wrap it in a module (PEFT addresses "
                         "layers by name)")
    for key in ("rslora", "dropout"):
        values = {layer.settings()[key] for layer in layers.values()}
        if len(values) > 1:
            raise ValueError(f"PEFT needs one {key} for all layers, the model's layers have "
                             f"{sorted(values)}")
    # the most frequent r and alpha are the defaults; other layers go to rank/alpha_pattern
    r = max(sorted({m.r for m in layers.values()}),
            key=lambda v: sum(m.r == v for m in layers.values()))
    alpha = max(sorted({m.alpha for m in layers.values()}),
                key=lambda v: sum(m.alpha == v for m in layers.values()))
    first = next(iter(layers.values()))
    tensors: dict[str, Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach()
    # PEFT's modules_to_save: whole modules, stored with their full state dict
    owners = sorted({n.rpartition(".")[0] for n in _other_trainable(model)})
    for owner in owners:
        if not owner:
            raise ValueError("model has a trainable parameter directly on the root module; PEFT "
                             "can save whole submodules only (modules_to_save)")
        inside = [n for n in layers if owner == n or owner.startswith(n + ".")
                  or n.startswith(owner + ".")]
        if inside:
            raise ValueError(f"trainable tensors of {owner!r} overlap the LoRA layers {inside}; "
                             "PEFT's format has no place for them (only lora_A/lora_B are "
                             "trainable inside a LoRA layer)")
        for key, value in model.get_submodule(owner).state_dict().items():
            tensors[f"{_PEFT_PREFIX}{owner}.{key}"] = value.detach()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": first.rslora,
        "lora_dropout": first.dropout_p,
        "target_modules": sorted(layers),
        "rank_pattern": {re.escape(n): m.r for n, m in sorted(layers.items()) if m.r != r},
        "alpha_pattern": {re.escape(n): m.alpha for n, m in sorted(layers.items())
                          if m.alpha != alpha},
        "modules_to_save": owners or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "init_lora_weights": "gaussian" if first.init == "gaussian" else True,
        "inference_mode": True,
    }
    return config, {k: v.contiguous().clone() for k, v in tensors.items()}


def export_peft(model: nn.Module, directory: str | os.PathLike,
                safe_serialization: bool = True) -> list[Path]:
    """Write the adapter of ``model`` in Hugging Face PEFT's layout into ``directory``.

    ``adapter_config.json`` (``peft_type "LORA"``, ``r``, ``lora_alpha``, ``use_rslora``,
    ``lora_dropout``, ``target_modules`` = the LoRA layers' full names, ``rank_pattern`` /
    ``alpha_pattern`` for layers whose r or α differ from the most common one,
    ``modules_to_save`` = the modules holding other trainable tensors, ``bias "none"``) and the
    tensors under PEFT's keys ``base_model.model.<layer>.lora_A.weight`` / ``.lora_B.weight``
    (and ``base_model.model.<module>.<tensor>`` for ``modules_to_save``), in
    ``adapter_model.safetensors`` (needs the ``safetensors`` package) or, with
    ``safe_serialization=False``, ``adapter_model.bin`` (``torch.save``).

    ``peft.PeftModel.from_pretrained(base_model, directory)`` then rebuilds the adapted model on
    the same base model. The scale s is identical (PEFT: α/r, or α/√r with ``use_rslora``).
    Nothing is written until both files are serialised, and each file is renamed into place
    from a temporary name, so a failure leaves no half-written adapter. Returns the paths
    written. Raises ``ValueError`` for what PEFT's LoRA format cannot express
    (different dropout or scaling rule per layer, trainable tensors inside a LoRA layer other
    than A and B).
    """
    safe_serialization = check_instance("safe_serialization", safe_serialization, bool)
    directory = Path(_check_dir(directory))
    config, tensors = _peft_config_and_tensors(model)
    # Everything is serialised before the folder is touched, and each file is written under a
    # temporary name and renamed into place: a failure (no safetensors, a full disk) leaves no
    # half-written adapter behind.
    if safe_serialization:
        from safetensors.torch import save

        weights_name, weights = _PEFT_SAFETENSORS, save(tensors, metadata={"format": "pt"})
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        weights_name, weights = _PEFT_BIN, buffer.getvalue()
    files = {_PEFT_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
             weights_name: weights}
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        temporary = directory / f".{name}.partial"
        temporary.write_bytes(data)
        os.replace(temporary, directory / name)
    return [directory / name for name in files]


def _check_dir(directory: object) -> str | os.PathLike:
    return check_instance("directory", directory, (str, os.PathLike))


def _pattern_value(patterns: Mapping[str, object], name: str, default: object) -> object:
    """PEFT's rank/alpha_pattern lookup: the first key that matches the end of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def import_peft(model: nn.Module, directory: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a PEFT LoRA adapter directory (``save_pretrained`` / :func:`export_peft`) into
    ``model``, the base model it was trained on; return the model.

    If ``model`` holds no LoRA layer yet, a :class:`LoRALinear` is put at every layer the file
    has tensors for (r and α from the config, its ``rank_pattern``/``alpha_pattern`` applied),
    and everything else is frozen, as :func:`apply_lora` does; otherwise its LoRA layers must
    match. The ``modules_to_save`` tensors are copied into the model's modules of those names and
    made trainable. Then the same checks as :func:`load_lora`. Raises ``ValueError`` for a
    config this library cannot represent (not ``peft_type "LORA"``, DoRA, trained biases,
    ``fan_in_fan_out``), for an adapter whose ``init_lora_weights`` made PEFT rewrite the base
    weights (PiSSA, OLoRA, CorDA, LoftQ: its tensors fit that rewritten base, not ``model``), and
    for every mismatch with the model. PEFT's format stores no checksums, so unlike
    :func:`load_lora` this cannot tell damaged tensor bytes from good ones.
    """
    _check_model(model)
    strict = check_instance("strict", strict, bool)
    directory = Path(_check_dir(directory))
    config = json.loads((directory / _PEFT_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"directory holds a {config.get('peft_type')!r} adapter, not 'LORA'")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_PEFT_INITS_THAT_CHANGE_THE_BASE):
        raise ValueError(f"directory's adapter has init_lora_weights={init!r}: PEFT changes the "
                         "base weights for this initialisation (W0 minus the initial B·A), so "
                         "these tensors belong to a modified base model, not to the model given; "
                         "lora_edu does not rebuild that base")
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"),
                    ("lora_bias", False)):
        if config.get(key, ok) != ok:
            raise ValueError(f"directory's adapter has {key}={config[key]!r}, which lora_edu's "
                             f"LoRALinear does not implement (needs {ok!r})")
    if (directory / _PEFT_SAFETENSORS).exists():
        from safetensors.torch import load_file

        raw = load_file(str(directory / _PEFT_SAFETENSORS))
    else:
        raw = torch.load(directory / _PEFT_BIN, map_location="cpu", weights_only=True)
    lora: dict[str, Tensor] = {}
    others: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix(_PEFT_PREFIX)
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if match:
            lora[f"{match[1]}.lora_{match[2]}"] = value
        else:
            others[name] = value
    names = sorted({k.rpartition(".")[0] for k in lora})
    r0, alpha0 = config["r"], config["lora_alpha"]
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    saved = {}
    for name in names:
        r = _pattern_value(rank_pattern, name, r0)
        saved[name] = {"r": r, "alpha": float(_pattern_value(alpha_pattern, name, alpha0)),
                       "rslora": bool(config.get("use_rslora", False)),
                       "in_features": lora[f"{name}.lora_A"].shape[1],
                       "out_features": lora[f"{name}.lora_B"].shape[0]}
    source = f"the PEFT adapter {os.fspath(directory)!r}"
    if lora_layers(model):
        _load_adapter(model, saved, lora, others, strict, source)
        return model
    modules = dict(model.named_modules())
    lacking = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if lacking:
        raise ValueError(f"the model has no nn.Linear at {lacking}, which {source} adapts")
    by_id = {id(modules[n]): saved[n] for n in names}
    init = "gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming"

    def factory(linear: nn.Linear) -> LoRALinear:
        if id(linear) not in by_id:
            raise ValueError(f"{source}: its layer names also select another nn.Linear")
        s = by_id[id(linear)]
        return LoRALinear(linear, s["r"], s["alpha"], dropout=config.get("lora_dropout", 0.0),
                          init=init, rslora=s["rslora"])

    flags = {id(p): p.requires_grad for p in model.parameters()}
    inject_adapters(model, names, factory)
    try:
        _load_adapter(model, saved, lora, others, strict, source)
    except BaseException:  # leave the model as it was: the original layers, the same flags
        for name in names:
            replace_module(model, name, modules[name])
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        raise
    return model
