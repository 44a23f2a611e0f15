"""This library's adapter file: every trainable tensor plus the settings, checked on loading.

"仅存小矩阵A/B" (source §2.2, 1): a trained adapter is stored without W0. The file holds the
A/B matrices, any other trainable tensor (e.g. a new classifier head), the configuration
(:func:`adapter_config`), the library's version and a SHA-256 checksum of every tensor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lora_edu.checks import (
    check_instance,
)
from lora_edu.lora.layer import LoRALinear
from lora_edu.lora.model import (
    _check_lora_state,
    _check_not_merged,
    _other_trainable,
    lora_layers,
    lora_state_dict,
)

__all__ = [
    "adapter_config", "save_lora", "load_lora", "ADAPTER_FORMAT", "ADAPTER_FORMAT_VERSION",
]

#: The ``"format"`` entry of an adapter file's config, which :func:`load_lora` checks.
ADAPTER_FORMAT = "lora_edu.lora adapter"
#: The ``"format_version"`` entry of an adapter file's config.
ADAPTER_FORMAT_VERSION = 1

# The per-layer settings that change what a loaded adapter computes: they must match on loading.
_CHECKED_SETTINGS = ("in_features", "out_features", "r", "alpha", "rslora")


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
