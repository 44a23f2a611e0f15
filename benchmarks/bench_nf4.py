"""Chapter 4: blockwise NF4 quantize / dequantize throughput, against a plain copy of the tensor
and against bitsandbytes' CPU functions.

16M float32 values, blocksize 64, 2 threads. The copy (``x.clone()``: read 64 MB, write 64 MB)
is the memory-bandwidth reference measured in the same run; the targets are absolute
throughputs (quantize ≥ 50 M values/s: a 7B model's 4096×4096 matrices in well under a second
each; dequantize ≥ 250 M values/s: dequantizing a layer must cost little next to its matmul),
reported next to the ratio to the copy so a reader can compare machines.

When bitsandbytes is installed, the same tensor goes through
``bitsandbytes.functional.quantize_4bit(x, blocksize=64, quant_type="nf4")`` (its CPU path is
PyTorch code) and ``dequantize_4bit`` (a native kernel), interleaved with ours; the two outputs
are byte-identical (tests/test_bnb_bytes.py). Reported as speed-ups, bitsandbytes' time / ours
(> 1: ours is faster).
"""

from __future__ import annotations

import torch

from benchmarks.common import Result, check, interleaved_times
from lora_edu.quant import (
    block_normalize,
    code_thresholds,
    dequantize_4bit,
    nf4_code,
    quantize_4bit,
    quantize_4bit_reference,
)

N = 16 * 2**20
N_REFERENCE = 2**20
BLOCKSIZE = 64


def run() -> list[Result]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g)
    q = quantize_4bit(x, BLOCKSIZE)
    out = torch.empty_like(x)
    thresholds = code_thresholds(nf4_code())

    def quantize_bucketize():  # the same quantizer with a plain binary search (torch.bucketize)
        v, absmax = block_normalize(x, BLOCKSIZE)
        pairs = torch.bucketize(v, thresholds, out_int32=True).view(-1, 2)
        packed = torch.bitwise_left_shift(pairs[:, 0], 4).bitwise_or_(pairs[:, 1])
        return packed.to(torch.uint8), absmax

    fns = {
        "copy": lambda: x.clone(),
        "quantize": lambda: quantize_4bit(x, BLOCKSIZE),
        "quantize_bucketize": quantize_bucketize,
        "dequantize": lambda: dequantize_4bit(q),
        "dequantize_out": lambda: dequantize_4bit(q, out=out),
    }
    bnb = _bitsandbytes_functions(x)
    fns.update(bnb)
    times = interleaved_times(fns, repeat=9, warmup=2)
    mvals = {k: N / t / 1e6 for k, t in times.items()}
    copy = f"x.clone() = {mvals['copy']:.0f} M values/s ({times['copy'] * 1e3:.1f} ms)"
    rows = []
    for key, label, target in (
        ("quantize", "quantize_4bit", ">= 50"),
        ("dequantize", "dequantize_4bit (fresh output)", ">= 250"),
        ("dequantize_out", "dequantize_4bit (out= preallocated)", ">= 250"),
    ):
        rows.append(Result(
            name=f"nf4 {label}, M values/s (16M fp32, bs {BLOCKSIZE})",
            ratio=mvals[key],
            baseline=copy,
            target=target,
            ok=check(mvals[key], target),
            note=f"time / copy time = {times[key] / times['copy']:.2f}",
        ))
    rows.append(Result(
        name="nf4 quantize_4bit / same with torch.bucketize (time)",
        ratio=times["quantize"] / times["quantize_bucketize"],
        baseline=f"bucketize version = {mvals['quantize_bucketize']:.0f} M values/s",
        note="grid lookup + one comparison instead of a binary search",
    ))
    if bnb:
        speedup = times["bnb_quantize"] / times["quantize"]
        rows.append(Result(
            name="nf4 quantize: bitsandbytes time / quantize_4bit time",
            ratio=speedup,
            baseline=f"bitsandbytes CPU = {mvals['bnb_quantize']:.0f} M values/s",
            target=">= 1.5",
            ok=check(speedup, ">= 1.5"),
            note="same bytes; > 1: ours is faster",
        ))
        speedup = times["bnb_dequantize"] / times["dequantize"]
        with_out = times["bnb_dequantize"] / times["dequantize_out"]
        rows.append(Result(
            name="nf4 dequantize: bitsandbytes time / dequantize_4bit time",
            ratio=speedup,
            baseline=f"bitsandbytes native = {mvals['bnb_dequantize']:.0f} M values/s",
            note=f"fresh outputs both; ours with out= preallocated: {with_out:.2f}",
        ))
    rows.append(_reference_row())
    return rows


def _bitsandbytes_functions(x: torch.Tensor) -> dict:
    """bitsandbytes' quantize / dequantize of x, or {} when it is not installed."""
    try:
        import bitsandbytes.functional as F
    except ImportError:
        return {}
    packed, state = F.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type="nf4")
    return {
        "bnb_quantize": lambda: F.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type="nf4"),
        "bnb_dequantize": lambda: F.dequantize_4bit(packed, state),
    }


def _reference_row() -> Result:
    """The readable reference quantizer against the fast one (same bytes), on 1M values."""
    x = torch.randn(N_REFERENCE, generator=torch.Generator().manual_seed(1))
    times = interleaved_times({
        "fast": lambda: quantize_4bit(x, BLOCKSIZE),
        "reference": lambda: quantize_4bit_reference(x, BLOCKSIZE),
    }, repeat=5, warmup=1)
    return Result(
        name="nf4 quantize_4bit_reference / quantize_4bit (time, 1M fp32)",
        ratio=times["reference"] / times["fast"],
        baseline=f"quantize_4bit = {N_REFERENCE / times['fast'] / 1e6:.0f} M values/s",
        note="the readable version, for reading and tests",
    )
