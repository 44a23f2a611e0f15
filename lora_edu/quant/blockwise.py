"""Blockwise 4-bit quantization with NF4 (or any 16-level code), packed two codes per byte.

Source §4.2(1): "先归一化权重到[-1,1]，再映射到16个NF4分位数点" — normalize the weights to [−1, 1],
then map them to the 16 NF4 points; §4.3(1): the frozen base model is stored in 4-bit NF4.

The tensor is flattened and cut into blocks of ``blocksize`` values (the last block padded with
zeros). Per block b (Dettmers et al. 2021 blockwise quantization; QLoRA §3):

.. math::

    m_b = \\max_{j\\in b} |x_j|,\\qquad v_j = x_j \\cdot (1/m_b) \\in [-1, 1],\\qquad
    i_j = \\#\\{t \\in T : t < v_j\\},\\qquad \\hat x_j = c_{i_j}\\, m_b,

where c is the sorted 16-level code and T its 15 midpoints (:func:`code_thresholds`): the
nearest level, ties to the lower one. (The count is found with a 4096-bin grid lookup plus one
comparison instead of a binary search; the tests check it against ``torch.bucketize``.)
Two 4-bit indices share a byte, element 2i in the **high** nibble and 2i+1 in the low nibble
(bitsandbytes' layout, so ``packed`` and ``absmax`` are interchangeable with its
``quantize_4bit``): [−1, 1] packs to 0x0F.

With ``double_quant=True`` the float32 ``absmax`` vector is itself quantized by
:func:`lora_edu.quant.quantize_constants` (source §4.2(2), chapter 5).

The code tables (NF4, Int4, FP4, Lloyd–Max) live in :mod:`lora_edu.quant` and are
re-exported here, so ``from lora_edu.quant import nf4_code, quantize_4bit`` is the entry point.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import torch

from lora_edu.quant.codes import (
    check_code,
    code_thresholds,
    nf4_code,
)

__all__ = [
    "QuantizedTensor",
    "quantize_4bit",
    "dequantize_4bit",
    "block_normalize",
    "pack_nibbles",
    "unpack_nibbles",
    "code_indices",
    "code_usage",
    "entropy_bits",
    "quantization_error",
    "MIN_BLOCKSIZE",
    "MAX_BLOCKSIZE",
]

MIN_BLOCKSIZE = 32
MAX_BLOCKSIZE = 4096
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class QuantizedTensor:
    """A blockwise 4-bit quantized tensor.

    Attributes
    ----------
    packed:
        uint8 tensor of ``ceil(numel/blocksize)·blocksize/2`` bytes; byte i holds the index of
        element 2i in its high nibble and of element 2i+1 in its low nibble.
    absmax:
        float32 tensor, one max|x| per block; ``None`` when the constants are double-quantized.
    absmax_dq:
        ``None``, or the :class:`lora_edu.quant.QuantizedConstants` holding the
        double-quantized ``absmax``.
    shape, dtype:
        The original tensor's shape and dtype (restored by :func:`dequantize_4bit`).
    blocksize:
        Values per block (power of two, 32 … 4096).
    code:
        float32 tensor of the 16 levels the indices point into.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | None
    absmax_dq: Any
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    code: torch.Tensor

    @property
    def numel(self) -> int:
        """Number of values of the original tensor (padding excluded)."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """Number of blocks (= number of absmax constants)."""
        return self.packed.numel() * 2 // self.blocksize


def _check_blocksize(blocksize: object) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, Integral):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__}")
    blocksize = int(blocksize)
    if not (MIN_BLOCKSIZE <= blocksize <= MAX_BLOCKSIZE) or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two in [{MIN_BLOCKSIZE}, "
                         f"{MAX_BLOCKSIZE}], got {blocksize}")
    return blocksize


def pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices (integer tensor, even length, values 0…15) two per byte, high first.

    ``out[i] = indices[2i] << 4 | indices[2i+1]``, as uint8.
    """
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    flat = indices.reshape(-1)
    if flat.numel() % 2:
        raise ValueError(f"indices must have an even number of entries, got {flat.numel()}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 15):
        raise ValueError("indices must lie in [0, 15]")
    pairs = flat.view(-1, 2)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: uint8 bytes → uint8 indices, twice as many, high first."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed must be a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)


def _normalize(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32 or flat.device.type != "cpu":
        flat = flat.to(device="cpu", dtype=torch.float32)
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    if n_blocks * blocksize != n:  # pad the last block with zeros (dropped on the way back)
        padded = torch.zeros(n_blocks * blocksize, dtype=torch.float32)
        padded[:n] = flat
        flat = padded
    blocks = flat.view(n_blocks, blocksize)
    if n_blocks == 0:
        empty = torch.zeros(0, dtype=torch.float32)
        return blocks.clone(), empty
    # max|x| = max(max x, −min x): one pass over the data, no |x| temporary.
    lo, hi = torch.aminmax(blocks, dim=1)
    # The per-block vectors are 1/blocksize of the data: handle them in NumPy (single-threaded),
    # which avoids a round of thread synchronisation per tiny op when the machine is busy.
    lo_np, hi_np = lo.numpy(), hi.numpy()
    absmax_np = np.abs(np.maximum(hi_np, -lo_np))
    if not math.isfinite(float(absmax_np.max())):  # NaN and ±inf propagate through min/max
        raise ValueError("x must contain only finite values (NaN or inf cannot be quantized)")
    with np.errstate(divide="ignore", over="ignore"):
        inv_np = np.reciprocal(absmax_np)
    inv_np[absmax_np == 0] = 0.0  # all-zero block: v = 0
    absmax, inv = torch.from_numpy(absmax_np), torch.from_numpy(inv_np)
    normalized = blocks * inv[:, None]
    tiny = np.isinf(inv_np)  # subnormal absmax: 1/absmax overflows, divide those blocks instead
    if tiny.any():
        t = torch.from_numpy(tiny)
        normalized[t] = blocks[t] / absmax[t, None]
    return normalized, absmax


# Nearest-level search by a uniform grid instead of a binary search (same result, fewer cycles).
# bin(v) = int(v·G + G) with G = _GRID/2 is a non-decreasing function of v (each float op is
# monotone), so for a threshold t: bin(v) < bin(t) ⇒ v < t and bin(v) > bin(t) ⇒ v > t. If no two
# thresholds share a bin, the index #{t < v} = base[bin(v)] + (v > thr[bin(v)]), where base[b]
# counts the thresholds of lower bins and thr[b] is the threshold inside bin b (+inf if none).
_GRID = 4096
_GRID_HALF = torch.tensor(_GRID / 2, dtype=torch.float32)


def _grid_bin(v: torch.Tensor) -> torch.Tensor:
    # G·v + G with G = 2048 a power of two: G·v is exact, so every evaluation order (fused or
    # not, vectorised or not) rounds identically — the bins of data and thresholds agree.
    return torch.add(_GRID_HALF, v, alpha=_GRID // 2).to(torch.int32)  # truncates; |v| ≤ 1+2⁻²³


def _grid_tables(thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(base, thr) lookup tables of the grid search, or None if two thresholds share a bin."""
    key = tuple(thresholds.tolist())
    return _grid_tables_cached(key)


@functools.lru_cache(maxsize=32)
def _grid_tables_cached(key: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    thresholds = torch.tensor(key, dtype=torch.float32)
    tb = _grid_bin(thresholds.clamp(-2.0, 2.0))  # clamping keeps far-out thresholds off-grid
    inside = (tb >= 0) & (tb <= _GRID)
    tb_in = tb[inside]
    if tb_in.unique().numel() != tb_in.numel():
        return None  # two thresholds closer than the grid: use the binary search
    base = torch.searchsorted(tb, torch.arange(_GRID + 1, dtype=torch.int32)).to(torch.uint8)
    thr = torch.full((_GRID + 1,), math.inf, dtype=torch.float32)
    thr[tb_in.long()] = thresholds[inside]
    return base, thr


def _nearest_indices(normalized: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """uint8 index #{t ∈ thresholds : t < v} for every v (ties go to the lower code).

    Overwrites ``normalized`` (its storage is reused for the result).
    """
    v = normalized.reshape(-1)
    tables = _grid_tables(thresholds)
    if tables is None or v.numel() == 0:
        return torch.bucketize(v, thresholds, out_int32=True, right=False).to(torch.uint8)
    base, thr = tables
    scratch = torch.add(_GRID_HALF, v, alpha=_GRID // 2)  # exact: the scale is a power of two
    bins = scratch.to(torch.int32)
    torch.index_select(thr, 0, bins, out=scratch)  # scratch := thr[bin(v)]
    above = torch.gt(v, scratch).view(torch.uint8)
    del scratch
    out = v.view(torch.uint8)[: v.numel()]  # v is not needed any more: reuse its storage
    torch.index_select(base, 0, bins, out=out)
    return out.add_(above)


def block_normalize(x: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first step of :func:`quantize_4bit`: v = x · (1/absmax_b) per block, in [−1, 1].

    Returns ``(v, absmax)`` with ``v`` of shape (n_blocks, blocksize) — the last block padded
    with zeros — and ``absmax`` float32 of shape (n_blocks,). All-zero blocks give v = 0.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be a float32/float16/bfloat16/float64 tensor, got {x.dtype}")
    return _normalize(x, _check_blocksize(blocksize))


def quantize_4bit(x: torch.Tensor, blocksize: int = 64, code: torch.Tensor | None = None, *,
                  double_quant: bool = False, blocksize2: int = 256) -> QuantizedTensor:
    """Blockwise absmax 4-bit quantization of ``x`` (source §4.2(1); QLoRA §3).

    Parameters
    ----------
    x:
        Floating tensor (float32, float16, bfloat16 or float64) of any shape, finite values.
        Computation is in float32.
    blocksize:
        Values per block, a power of two from 32 to 4096 (QLoRA: 64). Each block costs one
        float32 constant, 32/blocksize bits per value.
    code:
        16 sorted levels (see :func:`check_code`); ``None`` means NF4 (:func:`nf4_code`).
    double_quant:
        Quantize the per-block absmax once more (QLoRA's double quantization, chapter 5) via
        :func:`lora_edu.quant.quantize_constants`; ``absmax`` is then ``None``.
    blocksize2:
        Constants per second-level block when ``double_quant`` (QLoRA: 256).

    Returns
    -------
    QuantizedTensor
        Packed indices, constants, and what :func:`dequantize_4bit` needs to restore the tensor.
        An all-zero block gets absmax 0 and decodes to zeros; an empty ``x`` gives empty tensors.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be a float32/float16/bfloat16/float64 tensor, got {x.dtype}")
    blocksize = _check_blocksize(blocksize)
    code = nf4_code() if code is None else check_code(code)
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be a bool, got {type(double_quant).__name__}")
    shape, dtype = x.shape, x.dtype
    normalized, absmax = _normalize(x, blocksize)
    # Index of the nearest level: the number of thresholds strictly below v (ties -> lower).
    # Values beyond ±1 by rounding fall in the outer cells, exactly as after a clamp.
    idx = _nearest_indices(normalized, code_thresholds(code))
    pairs = idx.view(-1, 2)
    # byte = 16·(index of element 2i) + (index of element 2i+1): the high nibble comes first
    packed = torch.add(pairs[:, 1], pairs[:, 0], alpha=16)
    absmax_dq = None
    if double_quant:
        from lora_edu.quant.double_quant import quantize_constants

        absmax_dq = quantize_constants(absmax, blocksize2=blocksize2)
        absmax = None
    return QuantizedTensor(packed=packed, absmax=absmax, absmax_dq=absmax_dq, shape=shape,
                           dtype=dtype, blocksize=blocksize, code=code)


def _block_constants(q: QuantizedTensor) -> torch.Tensor:
    if q.absmax is not None:
        absmax = q.absmax
    elif q.absmax_dq is not None:
        from lora_edu.quant.double_quant import dequantize_constants

        absmax = dequantize_constants(q.absmax_dq)
    else:
        raise ValueError("q must hold absmax or absmax_dq, both are None")
    if absmax.shape != (q.n_blocks,):
        raise ValueError(f"q.absmax must have shape ({q.n_blocks},), got {tuple(absmax.shape)}")
    return absmax.to(torch.float32)


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """256-entry byte → (code[hi], code[lo]) table, each float32 pair viewed as one int64."""
    b = torch.arange(256)
    pairs = torch.stack([code[b >> 4], code[b & 15]], dim=1).contiguous()
    return pairs.view(torch.int64).view(256)


def dequantize_4bit(q: QuantizedTensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild the tensor: x̂_j = code[i_j] · absmax_b (double-quantized absmax decoded first).

    Each byte is looked up once in a 256-entry table of level *pairs* (high, low nibble), the
    pair copied as one 64-bit word, then every block is scaled by its absmax in place.

    Parameters
    ----------
    q:
        The :class:`QuantizedTensor` from :func:`quantize_4bit`.
    out:
        Optional preallocated contiguous tensor of ``q.shape`` and ``q.dtype`` to write into
        (saves allocating, i.e. page-faulting, a fresh output on every call).

    Returns
    -------
    torch.Tensor
        Shape ``q.shape``, dtype ``q.dtype`` (``out`` itself when given).
    """
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    if q.packed.dtype != torch.uint8:
        raise TypeError(f"q.packed must be uint8, got {q.packed.dtype}")
    shape, dtype, n = q.shape, q.dtype, q.numel
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if out.shape != shape or out.dtype != dtype or not out.is_contiguous() \
                or out.device.type != "cpu":
            raise ValueError(f"out must be a contiguous CPU tensor of shape {tuple(shape)} and "
                             f"dtype {dtype}, got {tuple(out.shape)} {out.dtype}")
    n_padded = q.packed.numel() * 2
    if n_padded != -(-n // q.blocksize) * q.blocksize:
        raise ValueError(f"q.packed has {q.packed.numel()} bytes, inconsistent with shape "
                         f"{tuple(shape)} and blocksize {q.blocksize}")
    absmax = _block_constants(q)
    code = check_code(q.code, "q.code")
    direct = out is not None and dtype == torch.float32 and n_padded == n
    buf = out.view(-1) if direct else torch.empty(n_padded, dtype=torch.float32)
    if n_padded:
        torch.index_select(_pair_table(code), 0, q.packed.reshape(-1).to(torch.int32),
                           out=buf.view(torch.int64))
        buf.view(-1, q.blocksize).mul_(absmax[:, None])
    if direct:
        return out
    result = buf[:n].view(shape)
    if out is not None:
        return out.copy_(result)
    return result if dtype == torch.float32 else result.to(dtype)


def code_indices(q: QuantizedTensor) -> torch.Tensor:
    """The 4-bit index of every original element (padding dropped), uint8 of shape ``q.shape``."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    return unpack_nibbles(q.packed)[: q.numel].view(q.shape)


def code_usage(q: QuantizedTensor) -> torch.Tensor:
    """How often each of the 16 codes is used by the original elements (int64 counts, shape 16)."""
    return torch.bincount(code_indices(q).reshape(-1).long(), minlength=16)


def entropy_bits(counts: torch.Tensor | np.ndarray) -> float:
    """Shannon entropy H = −Σ p_i log₂ p_i of a usage histogram, in bits (≤ log₂ 16 = 4).

    H is the average number of bits an ideal entropy coder would need per index: 4 bits are only
    "fully used" when all 16 codes are equally likely.
    """
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().to(torch.float64).cpu().numpy()
    if not isinstance(counts, np.ndarray):
        raise TypeError(f"counts must be a tensor or array, got {type(counts).__name__}")
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    if c.size == 0 or np.any(c < 0) or not np.all(np.isfinite(c)) or c.sum() <= 0:
        raise ValueError("counts must be non-negative, finite, with a positive total")
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def quantization_error(x: torch.Tensor, blocksize: int = 64,
                       code: torch.Tensor | None = None) -> float:
    """Mean squared error per value, mean((x − dequantize_4bit(quantize_4bit(x)))²), float64 sum."""
    q = quantize_4bit(x, blocksize, code)
    if q.numel == 0:
        raise ValueError("x must not be empty")
    diff = x.detach().to(torch.float64) - dequantize_4bit(q).to(torch.float64)
    return float((diff * diff).mean())
