"""Inference latency of serial adapters against LoRA, merged and unmerged.

The LoRA paper's Table 1 (GPT-2 medium, one forward pass) measures Houlsby adapters at +30.3 %
latency for batch 1 × 128 tokens and +3.0 % for batch 32 × 512: the adapters' extra small matrix
products cost most when the batch is small. The same comparison here on a 4-layer toy transformer
of GPT-2 medium's width (d_model 1024, 16 heads, FFN 4096), on this CPU: the ordering (adapters
slower than merged LoRA at batch 1) is the target; the size of the gap depends on the hardware.
All four models are timed interleaved at 2 threads; each figure is the median and p10–p90 of the
per-repeat ratios of two of them.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.common import Result, interleaved_times, ratios
from lora_edu.adapter import apply_adapters
from lora_edu.lora import apply_lora, merge_lora
from lora_edu.toy import TinyTransformer, ToyConfig

CONFIG = ToyConfig(vocab_size=512, d_model=1024, n_heads=16, n_layers=4, d_ff=4096, max_len=128)


def _models() -> dict[str, torch.nn.Module]:
    base = TinyTransformer(CONFIG, seed=0).eval()
    lora = apply_lora(copy.deepcopy(base), ["q_proj", "v_proj"], r=8, alpha=16, seed=0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.01)                # a trained adapter is not zero
    merged = merge_lora(copy.deepcopy(lora))
    adapters = apply_adapters(copy.deepcopy(base), bottleneck=8, seed=0)
    return {"base": base, "merged": merged, "lora": lora, "adapter": adapters}


def run() -> list[Result]:
    models = _models()
    rows = []
    for batch, seq, repeat in ((1, 128, 15), (8, 128, 5)):
        x = torch.randint(0, CONFIG.vocab_size, (batch, seq),
                          generator=torch.Generator().manual_seed(0))

        def fwd(model: torch.nn.Module, x: torch.Tensor = x):
            def f():
                with torch.no_grad():
                    model(x)
            return f

        t = interleaved_times({k: fwd(m) for k, m in models.items()}, repeat=repeat)
        shape = f"batch {batch}x{seq}"
        target = "> 1.0" if batch == 1 else ""
        rows.append(Result.from_samples(
            f"Houlsby adapters m=8 / merged LoRA, {shape}", ratios(t, "adapter", "merged"),
            "merged LoRA q,v r=8; adapters after o_proj and fc2", target))
        for key, name in (("lora", "unmerged LoRA q,v r=8"), ("merged", "merged LoRA q,v r=8")):
            rows.append(Result.from_samples(f"{name} / base model, {shape}",
                                            ratios(t, key, "base"),
                                            "the frozen base model, same run"))
    return rows
