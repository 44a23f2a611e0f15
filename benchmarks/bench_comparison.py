"""The four methods of the note's closing table: latency at GPT-2 medium's width, chapter 8's toy.

Chapter 8 measures the toy transformer (d_model 64); this benchmark repeats the comparison on a
4-layer toy transformer of GPT-2 medium's width (d_model 1024, 16 heads, FFN 4096), the model of
the LoRA paper's Table 1, at batch 1 × 128 tokens and 8 × 128, 2 threads. Every figure is the
forward time of one model divided by that of the base model (the same architecture with merged
weights), measured interleaved in the same run; each figure is the median (and p10–p90) of the
per-repeat ratios:

* Houlsby adapters (m = 8, after ``o_proj`` and ``fc2``) and one adapter per block after ``fc2``
  (Adapter^L's placement): no target, the size of the gap depends on the hardware (see
  ``bench_adapter`` for the adapter-against-LoRA target);
* AdaLoRA unmerged (initial rank 8 on all six matrices): no target;
* QLoRA with its NF4 + DQ base (LoRA r = 8 on W_q, W_v, every linear layer in 4 bit, float32
  compute): every forward pass dequantizes all weights. Target > 1.2 at batch 1 × 128 (source
  §5: "无" inference latency for QLoRA holds only after merging to 16 bit);
* QLoRA merged to float32 (and the quantize-only layers dequantized): the base architecture, so
  its figure shows the timing noise.

The orderings that chapter 8 shows on its own toy (d_model 64, 2 blocks, the chapter's methods and
budgets: Adapter^H m = 6, LoRA and QLoRA r = 6 on W_q, W_v, AdaLoRA r = 6 on all 12 matrices with
its allocator and regulariser; one thread, as in the chapter) are held here, each as a ratio
against a baseline of the same run:

* one AdamW training step (batch 64 × 16 tokens, AdaLoRA's allocator step included), each method
  against LoRA's step: QLoRA > 1.15 (it dequantizes its 12 weight matrices in the forward and again
  in the backward pass), AdaLoRA > 1.3 (12 adapted matrices instead of 4, the regulariser, the
  importance scores); full fine-tuning and the adapters are reported without a target;
* one forward pass at batch 1 × 16 tokens: Houlsby adapters against merged LoRA > 1.1, unmerged
  AdaLoRA against merged AdaLoRA > 1.3, the 4-bit QLoRA base and QLoRA merged into NF4 against
  QLoRA merged to float32 > 2 (every forward pass dequantizes all 12 weight matrices).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.common import Result, interleaved_times, ratios
from lora_edu.adalora import RankAllocator, apply_adalora, merge_adalora, orthogonal_penalty
from lora_edu.adapter import apply_adapters
from lora_edu.lora import apply_lora, merge_lora
from lora_edu.qlora import NF4Linear, merge_qlora, prepare_qlora
from lora_edu.toy import TinyTransformer, ToyConfig, downstream_task, pretrained_toy_model

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


TOY_STEPS = 100     # chapter 8's training length: the allocator's schedule runs over it


def _toy_method(method: str, seed: int = 0) -> tuple[nn.Module, RankAllocator | None]:
    """Chapter 8's pre-trained toy adapted by ``method`` (its budgets), with a fresh head."""
    model, _ = pretrained_toy_model(seed=0)
    alloc = None
    if method == "Adapter^H":
        apply_adapters(model, ["o_proj", "fc2"], bottleneck=6, seed=seed)
    elif method == "LoRA":
        apply_lora(model, QV, r=6, alpha=24.0, init="kaiming", seed=seed)
    elif method == "QLoRA":
        prepare_qlora(model, QV, r=6, alpha=24.0, init="kaiming", seed=seed,
                      compute_dtype=torch.float32, quantize_only=OTHERS)
    elif method == "AdaLoRA":
        apply_adalora(model, QV + OTHERS, r=6, alpha=96.0, seed=seed)
        alloc = RankAllocator(model, target_budget=24, total_steps=TOY_STEPS, t_init=10,
                              t_final=30, delta_t=5, mask_between_steps=False)
    model.reset_head(seed=seed)
    return model, alloc


def _toy_step_rows() -> list[Result]:
    """One training step of each of chapter 8's methods against LoRA's, interleaved."""
    task = downstream_task()
    x, y = task.x_train[:64], task.y_train[:64]

    def stepper(method: str):
        model, alloc = _toy_method(method)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        count = iter(range(1, TOY_STEPS + 1))

        def f():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if alloc is not None:
                loss = loss + orthogonal_penalty(model, 0.1)
            loss.backward()
            if alloc is not None:
                alloc.step(next(count))
            opt.step()
        return f

    methods = ("full fine-tuning", "Adapter^H", "LoRA", "AdaLoRA", "QLoRA")
    # warm-up + repeat = 33 AdaLoRA steps: all in its scoring phase, as in the chapter's timing
    # one thread, as chapter 8 times its toy: on a 64-wide model a second thread would only wait
    t = interleaved_times({m: stepper(m) for m in methods}, repeat=31, threads=1)
    rows = []
    for method, target in (("QLoRA", "> 1.15"), ("AdaLoRA", "> 1.3"),
                           ("full fine-tuning", ""), ("Adapter^H", "")):
        rows.append(Result.from_samples(f"toy step (ch. 8, 1 thr): {method} / LoRA",
                                        ratios(t, method, "LoRA"),
                                        "LoRA q,v r=6 step, batch 64x16, same run", target))
    return rows


def _toy_latency_rows() -> list[Result]:
    """Chapter 8's forward-pass orderings at batch 1 × 16 tokens, each against its merged model."""
    def perturbed(method: str) -> nn.Module:
        model = _toy_method(method)[0]
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("lora_B", "lora_lambda")):
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        return model.eval()

    lora, ada, qlora = perturbed("LoRA"), perturbed("AdaLoRA"), perturbed("QLoRA")
    models = {"LoRA merged": merge_lora(copy.deepcopy(lora)),
              "Adapter^H": _toy_method("Adapter^H")[0],
              "AdaLoRA merged": merge_adalora(copy.deepcopy(ada)),
              "AdaLoRA unmerged": ada,
              "QLoRA merged to float32": merge_qlora(copy.deepcopy(qlora), "16bit",
                                                     torch.float32, dequantize_rest=True),
              "QLoRA merged into NF4": merge_qlora(copy.deepcopy(qlora), "nf4"),
              "QLoRA, 4-bit base": qlora}
    for model in models.values():
        model.eval().requires_grad_(False)
    x = downstream_task().x_test[:1]

    def fwd(model: nn.Module):
        def f():
            with torch.no_grad():
                model(x)
        return f

    t = interleaved_times({k: fwd(m) for k, m in models.items()}, repeat=41, threads=1)
    rows = []
    for key, baseline, target, name in (
            ("Adapter^H", "LoRA merged", "> 1.1", "Adapter^H / merged LoRA"),
            ("AdaLoRA unmerged", "AdaLoRA merged", "> 1.3", "AdaLoRA unmerged / merged"),
            ("QLoRA, 4-bit base", "QLoRA merged to float32", "> 2", "QLoRA 4-bit base / fp32"),
            ("QLoRA merged into NF4", "QLoRA merged to float32", "> 2", "QLoRA NF4-merged / fp32")):
        rows.append(Result.from_samples(f"toy fwd 1x16 (ch. 8, 1 thr): {name}",
                                        ratios(t, key, baseline), f"{baseline}, same run",
                                        target))
    return rows


def run() -> list[Result]:
    rows = _toy_step_rows() + _toy_latency_rows()
    models = _models()
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
            rows.append(Result.from_samples(f"{name} / base, batch {batch}x{seq}",
                                            ratios(t, key, "base"),
                                            "the base model (merged architecture), same run",
                                            target))
    return rows
