"""AdaLoRA's bookkeeping cost: one importance update + masking against one training step, and
against PEFT's allocator doing the same work on the same model, in the same run.

The model: twelve 768×768 linear layers in a row (a BERT-base-sized stack of projections), AdaLoRA
with initial rank 12 on every layer (221,328 entries of P, λ, Q), float32, 2 threads, x of shape
(batch, 128, 768). Two implementations of the same schedule (initial budget 144 triplets, target
96, T = 1000 steps, t_i = 100, t_f = 300, ΔT = 1) on identically initialised base layers, with a
trained-looking λ (drawn from N(0, 1), not the zeros of the initialisation):

* ours: :func:`lora_edu.adalora.apply_adalora` and :class:`lora_edu.adalora.RankAllocator`, whose
  measured operation is one ``step(400)`` — the sensitivity/uncertainty EMAs of every P, λ, Q
  element, the global top-b(t) selection over the 144 triplets and the masks (pruning phase,
  ΔT = 1: it masks every step). Both masking modes: ``mask_between_steps=True`` (the default) and
  ``False`` (the reference behaviour, which also writes the zeros of the previous step into λ);
* PEFT (``peft.get_peft_model`` with an ``AdaLoraConfig`` of the same ranks and schedule, the
  public API of ``peft.tuners.adalora``): one ``AdaLoraModel.update_and_allocate(400)``, which runs
  its ``RankAllocator`` (importance EMAs of every element, then the budget mask) on the same step.

A training step is ``zero_grad`` + forward + backward + AdamW step of the adapter parameters;
the allocator runs on the gradients that step left, as in training. Every round runs, for each
implementation, one training step and then its allocator step, each timed on its own; the
figures are per-round ratios (median and p10–p90 over ``ROUNDS`` rounds):

* our allocator step / our training step — target ≤ 0.03 at batch 4×128, both masking modes;
* PEFT's allocator step / PEFT's training step — the same figure for the peer (no target);
* our allocator step / PEFT's allocator step, same round (no target: how much of the
  bookkeeping each leaves to the training loop).

The allocator step is a fixed number of small, memory-bound operations, the training step a few
large multi-threaded matrix products and AdamW, so the first ratio moves with the machine: it is
largest on a quiet CPU with fast matrix units, smallest on a busy one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import THREADS, Result, median_ms, ratios, spread
from lora_edu.adalora import RankAllocator, apply_adalora

N_LAYERS, WIDTH, RANK, TARGET_RANK, SEQ = 12, 768, 12, 8, 128
TOTAL, T_INIT, T_FINAL, STEP = 1000, 100, 300, 400
ROUNDS, WARMUP = 21, 3

Pair = tuple[Callable[[], None], Callable[[], None]]   # (training step, allocator step)


def _base() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(N_LAYERS)])


def _trainer(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()
    return train_step


def _ours(x: torch.Tensor, mask_between_steps: bool) -> Pair:
    model = _base()
    apply_adalora(model, [str(i) for i in range(N_LAYERS)], r=RANK, alpha=float(RANK))
    with torch.no_grad():   # a trained-looking state: non-zero λ
        for m in model:
            m.lora_lambda.normal_()
    alloc = RankAllocator(model, target_budget=N_LAYERS * TARGET_RANK, total_steps=TOTAL,
                          t_init=T_INIT, t_final=T_FINAL, mask_between_steps=mask_between_steps)
    return _trainer(model, x), lambda: alloc.step(STEP)


def _peft(x: torch.Tensor) -> Pair | None:
    """PEFT's AdaLoRA on the same base layers, or None when peft is not installed."""
    try:
        from peft import AdaLoraConfig, get_peft_model
    except ImportError:
        return None
    config = AdaLoraConfig(init_r=RANK, target_r=TARGET_RANK, tinit=T_INIT, tfinal=T_FINAL,
                           deltaT=1, total_step=TOTAL, beta1=0.85, beta2=0.85,
                           lora_alpha=RANK, lora_dropout=0.0, orth_reg_weight=0.0,
                           target_modules=[str(i) for i in range(N_LAYERS)])
    peft_model = get_peft_model(_base(), config)
    adalora_model = peft_model.base_model              # peft.tuners.adalora.AdaLoraModel
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_E" in name:
                p.normal_()
    return _trainer(adalora_model.model, x), lambda: adalora_model.update_and_allocate(STEP)


def alternating_times(pairs: dict[str, Pair], rounds: int = ROUNDS, warmup: int = WARMUP,
                      threads: int = THREADS) -> dict[str, list[float]]:
    """Per round and per implementation: its training step, then its allocator step, each timed
    on its own. Returns ``{"<name> train": [...], "<name> alloc": [...]}``, one sample per round
    (the ``warmup`` rounds dropped)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {f"{k} {part}": [] for k in pairs for part in ("train",
                                                                                  "alloc")}
    try:
        for i in range(warmup + rounds):
            for name, (train, alloc) in pairs.items():
                for part, fn in (("train", train), ("alloc", alloc)):
                    start = time.perf_counter()
                    fn()
                    if i >= warmup:
                        times[f"{name} {part}"].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return times


def run() -> list[Result]:
    rows = []
    for batch in (4, 1):
        x = torch.randn(batch, SEQ, WIDTH, generator=torch.Generator().manual_seed(1))
        pairs = {"ours": _ours(x, True)}
        if batch == 4:
            pairs["ours_ref"] = _ours(x, False)
        peft = _peft(x)
        if peft is not None:
            pairs["peft"] = peft
        t = alternating_times(pairs)
        shape = f"x {batch}x{SEQ}"
        base = f"fwd+bwd+AdamW, 12 adapters 768x768 r={RANK}, x {batch}x{SEQ}x{WIDTH}"
        target = "<= 0.03" if batch == 4 else ""
        for key, label in (("ours", ""), ("ours_ref", ", reference masking")):
            if key not in pairs:
                continue
            rows.append(Result.from_samples(
                f"AdaLoRA alloc step / train step, {shape}{label}",
                ratios(t, f"{key} alloc", f"{key} train"), base, target,
                note=f"{median_ms(t[f'{key} alloc'])} vs {median_ms(t[f'{key} train'])}"))
        if peft is None:
            continue
        rows.append(Result.from_samples(
            f"PEFT update_and_allocate / its train step, {shape}",
            ratios(t, "peft alloc", "peft train"), f"PEFT's {base}",
            note=f"{median_ms(t['peft alloc'])} vs {median_ms(t['peft train'])}"))
        ours_over_peft = ratios(t, "ours alloc", "peft alloc")
        rows.append(Result.from_samples(
            f"AdaLoRA alloc step: ours / PEFT's, {shape}", ours_over_peft,
            "PEFT AdaLoraModel.update_and_allocate, same round",
            note=f"PEFT's is {1 / spread(ours_over_peft)[0]:.0f}x ours"))
    return rows
