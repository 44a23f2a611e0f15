"""AdaLoRA's bookkeeping cost: one importance update + masking vs one training step.

Twelve SVD adapters on 768×768 layers (a BERT-base-sized stack of projections), initial rank 12,
float32, 2 threads. The training step is forward + backward + AdamW step of the stacked layers on
x of shape (batch, 128, 768); the measured operation is one :meth:`RankAllocator.step` in the
pruning phase with ΔT = 1, i.e. the sensitivity/uncertainty EMAs of every P, λ, Q element
(221,328 of them) plus the global top-b(t) selection and the masks. Target: ≤ 0.03 of the step
(PEFT's allocator ≈ 0.024).

How it is timed. The two operations alternate, as in training: every round runs one training step
(fresh gradients; the caches then hold the step's activations, not the allocator's state) and
then one allocator step, each timed on its own; the figure is the ratio of the two medians over
``ROUNDS`` rounds. The allocator step is a fixed number of small, memory-bound operations (about
a millisecond), the training step a few large multi-threaded matrix products and AdamW, so the
ratio moves with the machine: it is largest on a quiet CPU with fast matrix units, and smallest
on a busy one, where the training step's two threads wait for each other. The allocator therefore
keeps its operation count small and independent of the number of adapted matrices where it can —
the EMAs of all tensors live in one flat buffer updated chunk by chunk, the triplet scores of
equally shaped layers are computed together — and runs its operations on one thread (here each
stays below PyTorch's parallel grain size), so that a busy machine cannot stall it either. Both
masking modes are measured: ``mask_between_steps=True`` (default) and ``False`` (the reference
behaviour, which also writes the zeros of the previous step into λ).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from benchmarks.common import THREADS, Result, check
from lora_edu.adalora import RankAllocator, apply_adalora

N_LAYERS, WIDTH, RANK, SEQ = 12, 768, 12, 128
ROUNDS, WARMUP = 21, 3


def _setup(batch: int, mask_between_steps: bool = True):
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
                          t_init=100, t_final=300, mask_between_steps=mask_between_steps)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()

    def allocator_step() -> None:
        alloc.step(400)          # pruning phase, masks every step (delta_t = 1)

    return train_step, allocator_step


def alternating_times(first, second, rounds: int = ROUNDS,
                      warmup: int = WARMUP) -> tuple[list[float], list[float]]:
    """Per round: ``first()`` then ``second()`` (e.g. a training step, then the allocator step
    on its gradients), each timed on its own; the wall times of both, warm-up rounds dropped."""
    torch.set_num_threads(THREADS)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + rounds):
        start = time.perf_counter()
        first()
        mid = time.perf_counter()
        second()
        end = time.perf_counter()
        if i >= warmup:
            times[0].append(mid - start)
            times[1].append(end - mid)
    return times


def _spread(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return f"p10-p90 {q[0] * 1e3:.2f}-{q[-1] * 1e3:.2f}"


def run() -> list[Result]:
    rows = []
    for batch, mode, target in ((4, True, "<= 0.03"), (4, False, "<= 0.03"), (1, True, "")):
        train_step, allocator_step = _setup(batch, mask_between_steps=mode)
        train, alloc = alternating_times(train_step, allocator_step)
        ratio = statistics.median(alloc) / statistics.median(train)
        label = "" if mode else ", reference"
        rows.append(Result(
            name=f"AdaLoRA importance+mask / train step (x {batch}x{SEQ}x{WIDTH}{label})",
            ratio=ratio, baseline="fwd+bwd+AdamW of 12 SVDLinear 768x768 r=12",
            target=target, ok=check(ratio, target),
            note=f"medians of {ROUNDS} rounds: {statistics.median(alloc) * 1e3:.2f} ms "
                 f"({_spread(alloc)}) vs {statistics.median(train) * 1e3:.1f} ms"))
    return rows
