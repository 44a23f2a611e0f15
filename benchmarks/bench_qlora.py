"""QLoRA speed: the 4-bit layer's forward against nn.Linear, and the paged optimizer's step.

Shapes: a 4096×4096 layer (the attention projection of a 7B-class model), x of shape 8×128×4096,
LoRA r = 64 (QLoRA's rank), 2 threads. Every figure is the median (and p10–p90) of per-repeat
ratios against a baseline timed in the same run, interleaved.

* QLoRALinear forward / nn.Linear forward, both computing in float32 (the CPU's fast dtype): the
  cost of dequantizing the NF4 + DQ weight on every call plus the bypass. Target ≤ 1.3.
* The same with bfloat16 compute against a bfloat16 nn.Linear (no target: how slow bfloat16
  products are depends on the CPU).
* Forward + backward (gradient of x, A and B) against a frozen nn.Linear's (gradient of x): the
  QLoRA layer dequantizes a second time in the backward pass (no target).
* PagedAdamW step / torch.optim.AdamW step on a 4096×4096 parameter, with a budget that holds
  every page (the bookkeeping overhead). Target ≤ 1.2. And with a budget of half the states, so
  that every step moves every page (no target: a model of page traffic, not of a PCIe link).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from benchmarks.common import Result, interleaved_times, ratios
from lora_edu.paged import PagedAdamW
from lora_edu.qlora import QLoRALinear

__all__ = ["run"]

D = 4096
R = 64


def _layer(dtype: torch.dtype) -> tuple[nn.Linear, QLoRALinear, torch.Tensor]:
    torch.manual_seed(0)
    base = nn.Linear(D, D).requires_grad_(False)
    qlora = QLoRALinear(copy.deepcopy(base), R, 16, compute_dtype=dtype)
    with torch.no_grad():
        qlora.lora_B.normal_(0, 0.01)
    x = torch.randn(8, 128, D)
    return base.to(dtype), qlora, x.to(dtype)


def _forward_rows() -> list[Result]:
    rows = []
    for dtype, target, repeat in ((torch.float32, "<= 1.30", 15), (torch.bfloat16, "", 3)):
        base, qlora, x = _layer(dtype)

        def fwd(layer: nn.Module, x: torch.Tensor = x):
            def f():
                with torch.no_grad():
                    layer(x)
            return f

        t = interleaved_times({"base": fwd(base), "qlora": fwd(qlora)}, repeat=repeat,
                              warmup=1)
        name = "float32" if dtype == torch.float32 else "bfloat16"
        rows.append(Result.from_samples(
            f"QLoRALinear forward, {name} compute (r={R})", ratios(t, "qlora", "base"),
            f"nn.Linear forward in {name}, 4096x4096, x 8x128x4096", target))
    base, qlora, x = _layer(torch.float32)
    xg = x.clone().requires_grad_(True)

    def fwd_bwd(layer: nn.Module):
        def f():
            xg.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(xg).sum().backward()
        return f

    t = interleaved_times({"base": fwd_bwd(base), "qlora": fwd_bwd(qlora)}, repeat=7)
    rows.append(Result.from_samples("QLoRALinear forward+backward (grad x, A, B), float32",
                                    ratios(t, "qlora", "base"),
                                    "frozen nn.Linear forward+backward (grad x)",
                                    note="dequantizes twice"))
    return rows


def _optimizer_rows() -> list[Result]:
    def stepper(make):
        g = torch.Generator().manual_seed(0)
        p = nn.Parameter(torch.randn(D, D, generator=g))
        p.grad = torch.randn(D, D, generator=g)
        opt = make([p])
        return opt.step

    state_bytes = 2 * D * D * 4
    fns = {"adamw": stepper(lambda ps: torch.optim.AdamW(ps, lr=1e-4)),
           "paged": stepper(lambda ps: PagedAdamW(ps, lr=1e-4, budget_bytes=state_bytes)),
           "half": stepper(lambda ps: PagedAdamW(ps, lr=1e-4, budget_bytes=state_bytes // 2))}
    t = interleaved_times(fns, repeat=11)
    rows = [Result.from_samples("PagedAdamW step, budget holds every page",
                                ratios(t, "paged", "adamw"),
                                "torch.optim.AdamW step, 4096x4096 parameter", "<= 1.20")]
    rows.append(Result.from_samples("PagedAdamW step, budget = half the states",
                                    ratios(t, "half", "adamw"),
                                    "torch.optim.AdamW step, 4096x4096 parameter",
                                    note="all 64 pages of 2 MiB move every step (RAM copies)"))
    return rows


def run() -> list[Result]:
    return _forward_rows() + _optimizer_rows()
