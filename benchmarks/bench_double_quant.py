"""Chapter 5: the time double quantization adds to 4-bit quantization and dequantization, ours
and bitsandbytes', measured in the same run.

16M float32 values (4096×4096), blocksize 64, blocksize2 256, 2 threads. Timed interleaved:

* ``quantize_4bit(w, 64, double_quant=True)`` and ``double_quant=False``, and likewise
  ``dequantize_4bit`` of the two results (fresh outputs);
* when bitsandbytes is installed, ``bitsandbytes.functional.quantize_4bit(w, blocksize=64,
  quant_type="nf4", compress_statistics=True)`` and ``compress_statistics=False``, and its
  ``dequantize_4bit`` of the two results — the same bytes and values as ours
  (tests/quant/test_bnb_bytes.py).

Figures, each the median and p10–p90 of per-repeat ratios:

* ours with / without DQ — targets ≤ 1.3 (quantize) and ≤ 1.1 (dequantize): the constants are
  1/64 of the values, so the second level should add little; bitsandbytes' own ratio is printed
  beside each as the peer's figure (no target);
* ours / bitsandbytes', both with DQ: quantize — target ≤ 0.67 (at least 1.5× as fast, as
  without DQ in ``bench_nf4``); dequantize (fresh outputs) — no target here: ``bench_nf4`` holds
  the dequantization target, and the DQ path only adds the constants' decoding (the DQ / no DQ
  row above). Whether the fresh outputs' page faults are part of these times depends on the C
  allocator's state (see ``bench_nf4``).
"""

from __future__ import annotations

import torch

from benchmarks.common import Result, interleaved_times, median_ms, ratios, spread
from lora_edu.quant import (
    dequantize_4bit,
    dequantize_constants,
    quantize_4bit,
    quantize_constants,
)

SHAPE = (4096, 4096)
BLOCKSIZE = 64


def _bitsandbytes(w: torch.Tensor) -> tuple[dict, dict]:
    """bitsandbytes' quantize and dequantize, with and without DQ ({} when not installed)."""
    try:
        import bitsandbytes.functional as F
    except ImportError:
        return {}, {}

    def quantize(dq: bool):
        return lambda: F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4",
                                       compress_statistics=dq)

    states = {dq: F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4",
                                  compress_statistics=dq) for dq in (False, True)}

    def dequantize(dq: bool):
        packed, state = states[dq]
        return lambda: F.dequantize_4bit(packed, state)

    return ({"bnb_plain": quantize(False), "bnb_dq": quantize(True)},
            {"bnb_plain": dequantize(False), "bnb_dq": dequantize(True)})


def run() -> list[Result]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*SHAPE, generator=g)
    q_plain = quantize_4bit(w, BLOCKSIZE)
    q_dq = quantize_4bit(w, BLOCKSIZE, double_quant=True)
    n_const = q_plain.absmax.numel()
    bnb_quant, bnb_dequant = _bitsandbytes(w)

    quant = interleaved_times({
        "plain": lambda: quantize_4bit(w, BLOCKSIZE),
        "dq": lambda: quantize_4bit(w, BLOCKSIZE, double_quant=True),
        "constants": lambda: quantize_constants(q_plain.absmax),
        **bnb_quant,
    }, repeat=9, warmup=2)
    dequant = interleaved_times({
        "plain": lambda: dequantize_4bit(q_plain),
        "dq": lambda: dequantize_4bit(q_dq),
        "constants": lambda: dequantize_constants(q_dq.absmax_dq),
        **bnb_dequant,
    }, repeat=15, warmup=2)

    label = f"{SHAPE[0]}x{SHAPE[1]}, bs {BLOCKSIZE}/256"
    rows = []
    for op, t, target, const in (("quantize_4bit", quant, "<= 1.3", "quantize_constants"),
                                 ("dequantize_4bit", dequant, "<= 1.1", "dequantize_constants")):
        note = f"{const} alone ({n_const} constants) = {median_ms(t['constants'])}"
        if "bnb_dq" in t:
            peer = spread(ratios(t, "bnb_dq", "bnb_plain"))
            note += (f"; bitsandbytes DQ / no DQ = {peer[0]:.2f} "
                     f"(p10-p90 {peer[1]:.2f}-{peer[2]:.2f})")
        rows.append(Result.from_samples(
            f"{op} DQ / no DQ ({label})", ratios(t, "dq", "plain"),
            f"ours without DQ = {median_ms(t['plain'])}", target, note=note))
    for op, t, target in (("quantize_4bit", quant, "<= 0.67"), ("dequantize_4bit", dequant, "")):
        if "bnb_dq" not in t:
            continue
        rows.append(Result.from_samples(
            f"{op} DQ: ours / bitsandbytes ({label})", ratios(t, "dq", "bnb_dq"),
            f"bitsandbytes compress_statistics=True = {median_ms(t['bnb_dq'])}", target,
            note="same bytes and values; < 1: ours is faster"))
    return rows
