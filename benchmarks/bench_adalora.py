"""AdaLoRA's bookkeeping cost: one importance update + masking vs one training step.

Twelve SVD adapters on 768×768 layers (a BERT-base-sized stack of projections), initial rank 12,
float32, 2 threads. The training step is forward + backward + AdamW step of the stacked layers on
x of shape (batch, 128, 768); the measured operation is one :meth:`RankAllocator.step` in the
pruning phase with ΔT = 1, i.e. the sensitivity/uncertainty EMAs of every P, λ, Q element plus the
global top-b(t) selection and the masks. Target: ≤ 0.03 of the step (PEFT's allocator ≈ 0.024).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import Result, check, interleaved_times
from lora_edu.adalora import RankAllocator, apply_adalora

N_LAYERS, WIDTH, RANK, SEQ = 12, 768, 12, 128


def _setup(batch: int):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(N_LAYERS)])
    apply_adalora(model, [str(i) for i in range(N_LAYERS)], r=RANK, alpha=float(RANK))
    with torch.no_grad():   # a trained-looking state: non-zero λ
        for m in model:
            m.lora_lambda.normal_()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, SEQ, WIDTH)
    alloc = RankAllocator(model, target_budget=N_LAYERS * RANK * 2 // 3, total_steps=1000,
                          t_init=100, t_final=300)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()

    def allocator_step() -> None:
        alloc.step(400)          # pruning phase, masks every step (delta_t = 1)

    train_step()                 # leaves gradients for the allocator to read
    model(x).pow(2).mean().backward()
    return train_step, allocator_step


def run() -> list[Result]:
    rows = []
    for batch, target in ((4, "<= 0.03"), (1, "")):
        train_step, allocator_step = _setup(batch)
        t = interleaved_times({"train": train_step, "alloc": allocator_step}, repeat=7)
        ratio = t["alloc"] / t["train"]
        rows.append(Result(
            name=f"AdaLoRA importance+mask / train step (x {batch}x{SEQ}x{WIDTH})",
            ratio=ratio, baseline="fwd+bwd+AdamW of 12 SVDLinear 768x768 r=12",
            target=target, ok=check(ratio, target),
            note=f"{t['alloc'] * 1e3:.2f} ms vs {t['train'] * 1e3:.1f} ms"))
    return rows
