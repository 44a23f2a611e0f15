"""Chapter 4, §4.6: NF4 with double quantization on the 36 linear matrices of MiniLM-L6.

All 36 encoder matrices of all-MiniLM-L6-v2 (10.6 M float32 values: 24 of 384×384, 6 of
1536×384, 6 of 384×1536), each quantized by ``quantize_4bit(w, 64, double_quant=True)`` — what
QLoRA does to the frozen base model (source §4.2, §4.3(1)). Real tensors of 0.15 M and 0.59 M
values, not one large random tensor as in ``bench_nf4``, so the per-call overhead (the double
quantization of 2,304 or 9,216 constants per matrix) is part of the figure.

The baseline, measured interleaved in the same run, computes the same bytes with a plain binary
search for the nearest level: ``block_normalize``, ``torch.bucketize`` against the 15 float32
midpoints, nibble packing, and the same ``quantize_constants`` for the absmax vector; the
benchmark checks once that both store identical bytes. Reported: the speed-up, baseline time /
``quantize_4bit`` time per repeat (> 1: the grid lookup is faster; target ≥ 1), and the throughput
of ``quantize_4bit`` in M values/s as information (median and p10–p90 of the repeats). 2 threads.
"""

from __future__ import annotations

import torch

from benchmarks.common import Result, interleaved_times, median_ms, ratios
from lora_edu.pretrained import minilm_linear_weights
from lora_edu.quant import (
    block_normalize,
    code_thresholds,
    nf4_code,
    quantize_4bit,
    quantize_constants,
)

BLOCKSIZE = 64


def run() -> list[Result]:
    weights = list(minilm_linear_weights().values())
    n = sum(w.numel() for w in weights)
    thresholds = code_thresholds(nf4_code())

    def ours():
        return [quantize_4bit(w, BLOCKSIZE, double_quant=True) for w in weights]

    def bucketize():  # the same bytes through a binary search (torch.bucketize)
        out = []
        for w in weights:
            v, absmax = block_normalize(w, BLOCKSIZE)
            pairs = torch.bucketize(v.reshape(-1), thresholds, out_int32=True).view(-1, 2)
            packed = torch.bitwise_left_shift(pairs[:, 0], 4).bitwise_or_(pairs[:, 1])
            out.append((packed.to(torch.uint8), quantize_constants(absmax)))
        return out

    for q, (packed, qc) in zip(ours(), bucketize(), strict=True):
        assert torch.equal(q.packed, packed) and torch.equal(q.absmax_dq.codes, qc.codes)
        assert torch.equal(q.absmax_dq.scales, qc.scales)

    times = interleaved_times({"ours": ours, "bucketize": bucketize}, repeat=9, warmup=2)
    baseline = f"bucketize version = {median_ms(times['bucketize'])}"
    return [
        Result.from_samples(
            "MiniLM-L6 NF4+DQ: bucketize time / quantize_4bit time",
            ratios(times, "bucketize", "ours"), baseline, ">= 1",
            note="same bytes; > 1: the grid lookup is faster"),
        Result.from_samples(
            "  MiniLM-L6 36 matrices NF4+DQ quantize, M values/s",
            [n / t / 1e6 for t in times["ours"]], baseline,
            note=f"{n / 1e6:.1f} M values in {median_ms(times['ours'])}"),
    ]
