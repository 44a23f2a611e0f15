"""Chapter 4: blockwise NF4 quantize / dequantize against bitsandbytes' CPU functions, measured
in the same run.

16M float32 values, blocksize 64. Timed interleaved at 2 threads (the suite's count):

* ours: ``quantize_4bit(x, 64)``, ``dequantize_4bit(q)`` (a fresh output tensor, as a layer's
  forward pass gets it) and ``dequantize_4bit(q, out=buffer)`` (preallocated);
* bitsandbytes (when installed): ``bitsandbytes.functional.quantize_4bit(x, blocksize=64,
  quant_type="nf4")`` (its CPU path is PyTorch code) and ``dequantize_4bit`` (a native kernel
  that allocates a fresh output); the bytes and values are identical to ours
  (tests/quant/test_bnb_bytes.py);
* two references of the same run: ``x.clone()`` (read 64 MB, write 64 MB) and
  ``torch.empty(n).fill_(1)`` — the cost of a fresh 64 MB output alone (allocating it and
  faulting its pages in), a floor under any dequantization that returns a new tensor;
* the same quantizer with a binary search (``torch.bucketize``) for the nearest level instead
  of the grid lookup.

Dequantization is timed again at 1 thread (ours, bitsandbytes' and the floor): bitsandbytes'
kernel runs on as many threads as PyTorch's, so both thread counts are reported. The floor is
most of either dequantization's time here; it depends on the C allocator's state (a 64 MB
request served from memory that an earlier, freed model left mapped skips the page faults), so
the floor row is printed beside the comparison: when it is small, the comparison measures the
decoding alone.

Figures (median and p10–p90 of per-repeat ratios, time of ours / time of the peer; < 1: ours is
faster):

* ``dequantize_4bit`` / bitsandbytes, fresh outputs, at 2 threads and at 1 — target ≤ 1;
* ``quantize_4bit`` / bitsandbytes — target ≤ 0.67 (ours at least 1.5× as fast);
* without targets: ``dequantize_4bit(out=)`` / bitsandbytes, the floor / bitsandbytes, ours /
  the bucketize quantizer, the throughputs in M values/s, and the readable reference versions
  against the fast ones (1M values).
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import Result, interleaved_times, median_ms, ratios
from lora_edu.quant import (
    block_normalize,
    code_thresholds,
    dequantize_4bit,
    dequantize_4bit_reference,
    nf4_code,
    quantize_4bit,
    quantize_4bit_reference,
)

N = 16 * 2**20
N_REFERENCE = 2**20
BLOCKSIZE = 64


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


def _throughput(samples: list[float]) -> list[float]:
    return [N / t / 1e6 for t in samples]


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

    bnb = _bitsandbytes_functions(x)
    fresh = {
        "floor": lambda: torch.empty(N).fill_(1.0),
        "dequantize": lambda: dequantize_4bit(q),
    }
    if bnb:
        fresh["bnb_dequantize"] = bnb["bnb_dequantize"]
    t = interleaved_times({
        "copy": lambda: x.clone(),
        "quantize": lambda: quantize_4bit(x, BLOCKSIZE),
        "quantize_bucketize": quantize_bucketize,
        "dequantize_out": lambda: dequantize_4bit(q, out=out),
        **fresh,
        **{k: fn for k, fn in bnb.items() if k == "bnb_quantize"},
    }, repeat=9, warmup=2)
    t1 = interleaved_times(fresh, repeat=11, warmup=2, threads=1)

    label = f"16M, bs {BLOCKSIZE}"
    rows = []
    if bnb:
        for samples, threads in ((t, 2), (t1, 1)):
            rows.append(Result.from_samples(
                f"nf4 dequantize_4bit / bitsandbytes ({label}, {threads} thr)",
                ratios(samples, "dequantize", "bnb_dequantize"),
                f"bitsandbytes native = {median_ms(samples['bnb_dequantize'])}", "<= 1.0",
                note=f"fresh outputs both; ours = {median_ms(samples['dequantize'])}"))
            rows.append(Result.from_samples(
                f"  fresh-output floor / bitsandbytes ({threads} thr)",
                ratios(samples, "floor", "bnb_dequantize"),
                f"torch.empty(n).fill_(1) = {median_ms(samples['floor'])}",
                note="allocating and page-faulting 64 MB, no decoding"))
        rows.append(Result.from_samples(
            "nf4 dequantize_4bit(out=) / bitsandbytes (fresh)", ratios(t, "dequantize_out",
                                                                       "bnb_dequantize"),
            "bitsandbytes native, fresh output",
            note=f"ours into a preallocated buffer = {median_ms(t['dequantize_out'])}"))
        rows.append(Result.from_samples(
            f"nf4 quantize_4bit / bitsandbytes ({label})",
            ratios(t, "quantize", "bnb_quantize"),
            f"bitsandbytes = {median_ms(t['bnb_quantize'])}", "<= 0.67",
            note="same bytes; < 1: ours is faster"))
    rows.append(Result.from_samples(
        "nf4 quantize_4bit / same with torch.bucketize", ratios(t, "quantize",
                                                                "quantize_bucketize"),
        f"bucketize version = {median_ms(t['quantize_bucketize'])}",
        note="grid lookup + one comparison instead of a binary search"))
    copy = f"x.clone() = {statistics.median(_throughput(t['copy'])):.0f} M values/s"
    for key, name in (("quantize", "quantize_4bit"), ("dequantize", "dequantize_4bit"),
                      ("dequantize_out", "dequantize_4bit(out=)")):
        rows.append(Result.from_samples(f"  {name}, M values/s (information)",
                                        _throughput(t[key]), copy))
    rows.extend(_reference_rows())
    return rows


def _reference_rows() -> list[Result]:
    """The readable reference versions against the fast ones (same bytes/values), 1M values."""
    x = torch.randn(N_REFERENCE, generator=torch.Generator().manual_seed(1))
    q = quantize_4bit(x, BLOCKSIZE)
    t = interleaved_times({
        "quantize": lambda: quantize_4bit(x, BLOCKSIZE),
        "quantize_reference": lambda: quantize_4bit_reference(x, BLOCKSIZE),
        "dequantize": lambda: dequantize_4bit(q),
        "dequantize_reference": lambda: dequantize_4bit_reference(q),
    }, repeat=7, warmup=1)
    return [Result.from_samples(
        f"nf4 {op}_4bit_reference / {op}_4bit (1M fp32)",
        ratios(t, f"{op}_reference", op), f"{op}_4bit = {median_ms(t[op])}",
        note="the readable version, for reading and tests") for op in ("quantize", "dequantize")]
