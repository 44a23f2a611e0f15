"""lora_edu's adapters in Hugging Face PEFT and back, with the same outputs:
``export_peft`` → ``PeftModel.from_pretrained`` and ``get_peft_model`` + ``save_pretrained`` →
``import_peft``.

PEFT is a test-only requirement; the library never imports it. Where it is not installed these
tests are skipped, except under scripts/check.sh (and CI), where they fail (``helpers.require``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import require
from torch import nn

peft = require("peft")

from lora_edu.lora import LoRALinear, apply_lora, export_peft, import_peft, lora_layers  # noqa: E402
from lora_edu.toy import TinyTransformer  # noqa: E402

# max |ours − PEFT| relative to max |output|: rounding of the dtype (the two libraries order the
# same products differently; PEFT computes a bfloat16 model's bypass in float32)
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-2}
TOKENS = torch.randint(0, 48, (16, 12), generator=torch.Generator().manual_seed(5))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def perturb(params, gen: torch.Generator, std: float = 0.3) -> None:
    """Pretend training happened: add noise to the given tensors."""
    with torch.no_grad():
        for p in params:
            p.add_(std * torch.randn(p.shape, generator=gen).to(p.dtype))


def peft_from_pretrained(base: nn.Module, directory) -> nn.Module:
    """PeftModel.from_pretrained, failing on PEFT's warnings about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(directory))
    complaints = [str(w.message) for w in caught
                  if any(s in str(w.message).lower() for s in ("missing", "unexpected"))]
    assert not complaints, complaints
    return model.eval()


def peft_lora_modules(model: nn.Module) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer)}


def test_toy_transformer_adapter_loads_in_peft(tmp_path):
    ours = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8,
                      init="kaiming", seed=0)
    ours.reset_head(seed=1)  # a new head, trained with the adapter
    gen = torch.Generator().manual_seed(0)
    perturb([m.lora_B for m in lora_layers(ours).values()] + list(ours.head.parameters()), gen)
    export_peft(ours, tmp_path)

    theirs = peft_from_pretrained(TinyTransformer(seed=0), tmp_path)
    config = theirs.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_rslora) == (4, 8.0, False)
    assert peft_lora_modules(theirs) == set(lora_layers(ours))
    assert list(config.modules_to_save) == ["head"]
    with torch.no_grad():
        a, b = ours(TOKENS), theirs(TOKENS)
        with theirs.disable_adapter():
            plain = theirs(TOKENS)
    assert rel_diff(plain, a) > 0.05  # the adapter (B·A and the head) is what PEFT loaded
    assert rel_diff(a, b) <= TOL[torch.float32]


def student_mlp(dtype: torch.dtype) -> nn.Sequential:
    """A reader's own network: no names but the Sequential's indices."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(),
                         nn.Linear(32, 5)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=str)
def test_students_sequential_loads_in_peft(tmp_path, dtype):
    """LoRA put by hand on two layers with different r (PEFT's rank_pattern), rsLoRA scaling, and
    the last layer trained in full (PEFT's modules_to_save)."""
    ours = student_mlp(dtype)
    ours[0] = LoRALinear(ours[0], 4, 8.0, rslora=True)
    ours[2] = LoRALinear(ours[2], 8, 8.0, rslora=True, init="kaiming")
    gen = torch.Generator().manual_seed(1)
    perturb([ours[0].lora_B, ours[2].lora_B] + list(ours[4].parameters()), gen)
    export_peft(ours, tmp_path)

    theirs = peft_from_pretrained(student_mlp(dtype), tmp_path)
    config = theirs.peft_config["default"]
    assert config.use_rslora and config.rank_pattern == {"2": 8}
    assert peft_lora_modules(theirs) == {"0", "2"} and list(config.modules_to_save) == ["4"]
    x = torch.randn(64, 12, generator=gen).to(dtype)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.dtype == b.dtype == dtype
    assert rel_diff(a, b) <= TOL[dtype]


def test_peft_adapter_imports_into_lora_edu(tmp_path):
    base = TinyTransformer(seed=0)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "fc1"],
                             use_rslora=True, modules_to_save=["head"],
                             init_lora_weights="gaussian")
    theirs = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(2)
    perturb([p for n, p in theirs.named_parameters()
             if "lora_B" in n or "modules_to_save" in n], gen)
    theirs.save_pretrained(str(tmp_path))

    ours = import_peft(TinyTransformer(seed=0), tmp_path)
    layers = lora_layers(ours)
    assert set(layers) == peft_lora_modules(theirs) and len(layers) == 6
    assert all(m.r == 8 and m.scaling == 16 / 8**0.5 for m in layers.values())
    theirs.eval()
    with torch.no_grad():
        a, b = ours(TOKENS), theirs(TOKENS)
    assert rel_diff(a, b) <= TOL[torch.float32]
