"""Chapter 5: the time double quantization adds to 4-bit quantization and dequantization.

16M float32 values (4096×4096), blocksize 64, blocksize2 256, 2 threads. Each ratio compares
``quantize_4bit(..., double_quant=True)`` with ``double_quant=False`` (and likewise for
``dequantize_4bit``) measured interleaved in the same run. The constants are 1/64 of the values,
so the second level should add little: targets ≤ 1.3 (quantize; bitsandbytes' CPU path measures
1.28) and ≤ 1.1 (dequantize).
"""

from __future__ import annotations

import torch

from benchmarks.common import Result, interleaved_times
from lora_edu.quant import (
    dequantize_4bit,
    dequantize_constants,
    quantize_4bit,
    quantize_constants,
)

SHAPE = (4096, 4096)
BLOCKSIZE = 64


def run() -> list[Result]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*SHAPE, generator=g)
    q_plain = quantize_4bit(w, BLOCKSIZE)
    q_dq = quantize_4bit(w, BLOCKSIZE, double_quant=True)
    n_const = q_plain.absmax.numel()

    quant = interleaved_times({
        "plain": lambda: quantize_4bit(w, BLOCKSIZE),
        "dq": lambda: quantize_4bit(w, BLOCKSIZE, double_quant=True),
        "constants": lambda: quantize_constants(q_plain.absmax),
    }, repeat=9, warmup=2)
    dequant = interleaved_times({
        "plain": lambda: dequantize_4bit(q_plain),
        "dq": lambda: dequantize_4bit(q_dq),
        "constants": lambda: dequantize_constants(q_dq.absmax_dq),
    }, repeat=15, warmup=2)

    rq = quant["dq"] / quant["plain"]
    rd = dequant["dq"] / dequant["plain"]
    label = f"{SHAPE[0]}x{SHAPE[1]} fp32, bs {BLOCKSIZE}/256"
    return [
        Result(name=f"quantize_4bit DQ / no DQ ({label})", ratio=rq,
               baseline=f"no DQ = {quant['plain'] * 1e3:.1f} ms",
               target="<= 1.3", ok=rq <= 1.3,
               note=f"quantize_constants alone ({n_const} constants) = "
                    f"{quant['constants'] * 1e3:.2f} ms"),
        Result(name=f"dequantize_4bit DQ / no DQ ({label})", ratio=rd,
               baseline=f"no DQ = {dequant['plain'] * 1e3:.1f} ms",
               target="<= 1.1", ok=rd <= 1.1,
               note=f"dequantize_constants alone = {dequant['constants'] * 1e3:.2f} ms"),
    ]
