"""The same adapter in Hugging Face PEFT's directory layout, both ways.

``adapter_config.json`` + ``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained``
loads; and the reverse, a PEFT LoRA adapter loaded into this library's layers. PEFT itself is
never imported: the format is written and read with json and safetensors.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lora_edu.checks import (
    check_instance,
)
from lora_edu.inject import (
    inject_adapters,
    replace_module,
)
from lora_edu.lora.adapter_file import _load_adapter
from lora_edu.lora.layer import LoRALinear
from lora_edu.lora.model import _check_model, _other_trainable, lora_layers

__all__ = ["export_peft", "import_peft"]

# PEFT's file names (peft.utils.constants) and the prefix PeftModel puts before module paths.
_PEFT_CONFIG = "adapter_config.json"
_PEFT_SAFETENSORS = "adapter_model.safetensors"
_PEFT_BIN = "adapter_model.bin"
_PEFT_PREFIX = "base_model.model."
#: PEFT initialisations that rewrite the base weights as well as A and B (PiSSA, OLoRA, CorDA,
#: LoftQ): an adapter saved with one of them is only correct on that rewritten base.
_PEFT_INITS_THAT_CHANGE_THE_BASE = ("pissa", "olora", "corda", "loftq")


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
