"""Inference latency of the four methods of the note's closing table at GPT-2 medium's width.

Chapter 8 measures the toy transformer (d_model 64); this benchmark repeats the comparison on a
4-layer toy transformer of GPT-2 medium's width (d_model 1024, 16 heads, FFN 4096), the model of
the LoRA paper's Table 1, at batch 1 × 128 tokens and 8 × 128, 2 threads. Every figure is the
forward time of one model divided by that of the base model (the same architecture with merged
weights), measured interleaved in the same run:

* Houlsby adapters (m = 8, after ``o_proj`` and ``fc2``) and one adapter per block after ``fc2``
  (Adapter^L's placement): no target, the size of the gap depends on the hardware (see
  ``bench_adapter`` for the adapter-against-LoRA target);
* AdaLoRA unmerged (initial rank 8 on all six matrices): no target;
* QLoRA with its NF4 + DQ base (LoRA r = 8 on W_q, W_v, every linear layer in 4 bit, float32
  compute): every forward pass dequantizes all weights. Target > 1.2 at batch 1 × 128 (source
  §5: "无" inference latency for QLoRA holds only after merging to 16 bit);
* QLoRA merged to float32 (and the quantize-only layers dequantized): the base architecture, so
  its figure shows the timing noise.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from benchmarks.common import Result, check, interleaved_times
from lora_edu.adalora import apply_adalora
from lora_edu.adapter import apply_adapters
from lora_edu.qlora import NF4Linear, merge_qlora, prepare_qlora
from lora_edu.toy import TinyTransformer, ToyConfig

__all__ = ["run"]

CONFIG = ToyConfig(vocab_size=512, d_model=1024, n_heads=16, n_layers=4, d_ff=4096, max_len=128)
QV, OTHERS = ["q_proj", "v_proj"], ["k_proj", "o_proj", "fc1", "fc2"]


def _dequantized(model: nn.Module) -> nn.Module:
    """Each NF4Linear left in ``model`` replaced by a float32 nn.Linear (its dequantized weight)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, NF4Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, mod.linear(torch.float32))
    return model


def _models() -> dict[str, nn.Module]:
    base = TinyTransformer(CONFIG, seed=0).eval().requires_grad_(False)
    qlora = copy.deepcopy(base)
    prepare_qlora(qlora, QV, r=8, alpha=16, seed=0, compute_dtype=torch.float32,
                  quantize_only=OTHERS)
    models = {
        "base": base,
        "adapter_h": apply_adapters(copy.deepcopy(base), bottleneck=8, seed=0),
        "adapter_l": apply_adapters(copy.deepcopy(base), "fc2", bottleneck=8, seed=0),
        "adalora": apply_adalora(copy.deepcopy(base), QV + OTHERS, r=8, alpha=8.0, seed=0),
        "qlora": qlora,
        "qlora_merged": _dequantized(merge_qlora(copy.deepcopy(qlora), "16bit", torch.float32)),
    }
    return {k: m.eval() for k, m in models.items()}


NAMES = {"adapter_h": ("Houlsby adapters m=8 (o_proj, fc2)", ""),
         "adapter_l": ("one adapter m=8 per block (fc2)", ""),
         "adalora": ("AdaLoRA unmerged, r=8 on 6 matrices", ""),
         "qlora": ("QLoRA, NF4 + DQ base, r=8 on q,v", "> 1.2"),
         "qlora_merged": ("QLoRA merged to float32", "")}


def run() -> list[Result]:
    torch.set_num_threads(2)
    models = _models()
    rows = []
    for batch, seq, repeat in ((1, 128, 9), (8, 128, 5)):
        x = torch.randint(0, CONFIG.vocab_size, (batch, seq),
                          generator=torch.Generator().manual_seed(0))

        def fwd(model: nn.Module, x: torch.Tensor = x):
            def f():
                with torch.no_grad():
                    model(x)
            return f

        t = interleaved_times({k: fwd(m) for k, m in models.items()}, repeat=repeat)
        for key, (name, target) in NAMES.items():
            target = target if batch == 1 else ""
            ratio = t[key] / t["base"]
            rows.append(Result(f"{name} / base, batch {batch}x{seq}", ratio,
                               "the base model (merged architecture), same run", target,
                               check(ratio, target)))
    return rows
