"""LoRA speed: bypass overhead, merge = zero latency, cheap merging, and a toy training step.

Shapes: float32, x of shape 8×128×4096, a 4096×4096 layer (the attention projection of a
7B-class model), r = 8, 2 threads. Every figure is the median (and p10–p90) of per-repeat ratios
against a baseline timed in the same run, interleaved. Timed against ``nn.Linear``: the unmerged
forward (target ≤ 1.05), the merged one (the same operation: ≤ 1.03 bounds the noise), the
unmerged forward with a forward hook on the base layer, and the plain ``reference_forward`` that
the tests compare the forward with (these two without a target). Then forward + backward
(≤ 1.30), ``merge()`` against one forward (≤ 0.05), and one training step of the pre-trained toy
transformer, full fine-tuning against LoRA (> 1).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from benchmarks.common import Result, interleaved_times, ratios
from lora_edu.lora import LoRALinear, apply_lora
from lora_edu.toy import downstream_task, pretrained_toy_model

__all__ = ["run"]

D = 4096
R = 8


def _layers() -> tuple[nn.Linear, LoRALinear, LoRALinear, torch.Tensor]:
    torch.manual_seed(0)
    base = nn.Linear(D, D).requires_grad_(False)
    lora = LoRALinear(copy.deepcopy(base), R, 16)
    merged = LoRALinear(copy.deepcopy(base), R, 16)
    for layer in (lora, merged):
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.01)
    merged.merge()
    x = torch.randn(8, 128, D)
    return base, lora, merged, x


def _forward_rows() -> list[Result]:
    base, lora, merged, x = _layers()

    def fwd(layer: nn.Module):
        def f():
            with torch.no_grad():
                layer(x)
        return f

    def ref(layer: LoRALinear):
        def f():
            with torch.no_grad():
                layer.reference_forward(x)
        return f

    hooked = copy.deepcopy(lora)  # a hook on the base: forward adds the bypass out of place
    hooked.base.register_forward_hook(lambda module, inputs, output: None)
    t = interleaved_times({"base": fwd(base), "lora": fwd(lora), "merged": fwd(merged),
                           "hooked": fwd(hooked), "reference": ref(lora)}, repeat=21)
    rows = []
    for key, target, name in (("lora", "<= 1.05", "unmerged LoRA forward (r=8)"),
                              ("merged", "<= 1.03", "merged LoRA forward (same op; noise bound)"),
                              ("hooked", "", "unmerged, forward hook on the base layer"),
                              ("reference", "", "reference_forward (two F.linear, then add)")):
        rows.append(Result.from_samples(name, ratios(t, key, "base"),
                                        "nn.Linear forward 4096x4096, x 8x128x4096", target))

    xg = x.clone().requires_grad_(True)

    def fwd_bwd(layer: nn.Module):
        def f():
            xg.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(xg).sum().backward()
        return f

    t = interleaved_times({"base": fwd_bwd(base), "lora": fwd_bwd(lora)}, repeat=7)
    rows.append(Result.from_samples("LoRA forward+backward (grad x, A, B)",
                                    ratios(t, "lora", "base"),
                                    "frozen nn.Linear forward+backward (grad x)", "<= 1.30"))

    def merge_unmerge():
        lora.merge()
        lora.unmerge()

    t = interleaved_times({"merge": merge_unmerge, "fwd": fwd(base)}, repeat=11)
    rows.append(Result.from_samples("merge() (fused addmm_, half of merge+unmerge)",
                                    [r / 2 for r in ratios(t, "merge", "fwd")],
                                    "one nn.Linear forward", "<= 0.05"))
    return rows


def _toy_step_row() -> Result:
    task = downstream_task()
    x, y = task.x_train[:64], task.y_train[:64]
    full, _ = pretrained_toy_model(seed=0)
    full.reset_head(seed=0)
    lora, _ = pretrained_toy_model(seed=0)
    apply_lora(lora, ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    lora.reset_head(seed=0)

    def stepper(model: nn.Module):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def f():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return f

    fns = {"full": stepper(full), "lora": stepper(lora)}
    t = interleaved_times(fns, repeat=41, warmup=5)
    return Result.from_samples("toy transformer step: full FT / LoRA q,v r=4",
                               ratios(t, "full", "lora"), "LoRA step (batch 64x16 tokens)",
                               "> 1", note="paper at GPT-3 scale: 43.1/32.5 = 1.326")


def run() -> list[Result]:
    return _forward_rows() + [_toy_step_row()]
