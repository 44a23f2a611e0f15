"""Blockwise 4-bit quantization with NF4 (or any 16-level code), packed two codes per byte.

Source §4.2(1): "先归一化权重到[-1,1]，再映射到16个NF4分位数点" — normalize the weights to [−1, 1],
then map them to the 16 NF4 points; §4.3(1): the frozen base model is stored in 4-bit NF4.

The tensor is flattened and cut into blocks of ``blocksize`` values; the last block may be
partial. Per block b (Dettmers et al. 2021 blockwise quantization; QLoRA §3):

.. math::

    m_b = \\max_{j\\in b} |x_j|,\\qquad v_j = x_j / m_b \\in [-1, 1],\\qquad
    i_j = \\arg\\min_k |v_j - c_k| = \\#\\{t \\in T : t < v_j\\},\\qquad \\hat x_j = c_{i_j}\\, m_b,

where c is the sorted 16-level code and T its 15 midpoints rounded to float32
(:func:`code_thresholds`): the nearest level, ties to the lower one. Two 4-bit indices share a
byte, element 2i in the **high** nibble and 2i+1 in the low nibble; an odd count is completed
by one padding value 0 in the last low nibble. ``⌈n/2⌉`` bytes and one float32 absmax per block
are stored: [−1, 1] packs to 0x0F.

**Two implementations of the same function.**

- :func:`quantize_4bit_reference` / :func:`dequantize_4bit_reference` read like the equations
  above: a view of the blocks, ``m = |x|.max``, ``v = x · (1/m)``, count the midpoints below
  ``v``, pack ``16·hi + lo``. Use them to read, check and experiment.
- :func:`quantize_4bit` / :func:`dequantize_4bit` compute the same bytes and values faster
  (see ``benchmarks/bench_nf4.py``): the nearest level comes from a 4096-bin grid lookup plus one
  comparison instead of 15 comparisons, buffers are reused in place, and dequantization looks
  up a pair of levels per byte and scales the pairs straight into the result, a cache-sized
  step of blocks at a time. The tests check the two byte for byte and bit for bit (random, tied,
  partial, all-zero and tiny blocks; float16, bfloat16, float32, float64); the benchmarks time
  the fast one against bitsandbytes'.

**Interchangeable with bitsandbytes.** ``packed`` and ``absmax`` (or, with double
quantization, the 8-bit codes, their scales and the offset) are byte-identical to
``bitsandbytes.functional.quantize_4bit(x, blocksize, quant_type="nf4")`` on the CPU, which
fixes four details of the arithmetic that both implementations here follow:

1. v is computed as ``x · fl(1/m)`` (a float32 reciprocal, then a product), except in a last,
   partial block, where bitsandbytes divides, ``x / m``; the two can differ in the last bit, and
   that bit decides a value lying on a threshold.
2. The scale is at least 10⁻³⁸ (``_TINY``, so that 1/m never overflows): an all-zero block
   gives v = 0 (index 7 of NF4, byte 0x77) and stores absmax 0 — or 10⁻³⁸ if it is the partial
   last block, whose stored constant is the clamped one. Blocks whose values are all below
   10⁻³⁸ in magnitude are scaled by 10³⁸ instead of 1/m.
3. v is clipped to [−1, 1] (a no-op for NF4, whose thresholds lie inside).
4. The thresholds are float32 midpoints of the float32 levels (see :func:`code_thresholds`).

Computation is in float32 whatever the input dtype; a float64 tensor with values beyond
float32's range (|x| > 3.4·10³⁸) is rejected with a ``ValueError`` rather than silently turned
into infinities.

With ``double_quant=True`` the float32 ``absmax`` vector is itself quantized by
:func:`lora_edu.quant.quantize_constants` (source §4.2(2), chapter 5).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from lora_edu.checks import (
    check_instance,
    check_int,
    check_power_of_two,
    check_tensor,
)
from lora_edu.quant.codes import check_code, code_thresholds, nf4_code
from lora_edu.quant.double_quant import (
    QuantizedConstants,
    dequantize_constants,
    quantize_constants,
)

__all__ = [
    "QuantizedTensor",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_4bit_reference",
    "dequantize_4bit_reference",
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

#: The smallest block size :func:`quantize_4bit` accepts (block sizes are powers of two).
MIN_BLOCKSIZE = 32
#: The largest block size :func:`quantize_4bit` accepts.
MAX_BLOCKSIZE = 4096
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: Smallest scale (bitsandbytes' ``absmax.clamp(min=1e-38)``): 1/_TINY = 1e38 is finite.
_TINY = 1e-38
_TINY32 = np.float32(_TINY)


@dataclass
class QuantizedTensor:
    """A blockwise 4-bit quantized tensor.

    Attributes
    ----------
    packed:
        uint8 tensor of ``⌈numel/2⌉`` bytes; byte i holds the index of element 2i in its high
        nibble and of element 2i+1 in its low nibble (for an odd ``numel`` the last low nibble
        holds the index of a padding 0).
    absmax:
        float32 tensor, one constant per block (``max|x|``; at least 10⁻³⁸ in a partial last
        block); ``None`` when the constants are double-quantized.
    absmax_dq:
        ``None``, or the :class:`lora_edu.quant.QuantizedConstants` holding the
        double-quantized ``absmax``.
    shape:
        The original tensor's shape (restored by :func:`dequantize_4bit`).
    dtype:
        The original tensor's dtype (restored by :func:`dequantize_4bit`).
    blocksize:
        Values per block (power of two, 32 … 4096).
    code:
        float32 tensor of the 16 levels the indices point into.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | None
    absmax_dq: QuantizedConstants | None
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    code: torch.Tensor

    @property
    def numel(self) -> int:
        """Number of values of the original tensor."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, ⌈numel/blocksize⌉ (= number of absmax constants)."""
        return -(-self.numel // self.blocksize)


# --------------------------------------------------------------------------- argument checks

def _check_blocksize(blocksize: object) -> int:
    blocksize = check_int("blocksize", blocksize, MIN_BLOCKSIZE, MAX_BLOCKSIZE)
    return check_power_of_two("blocksize", blocksize, MIN_BLOCKSIZE)


def _check_x(x: object) -> torch.Tensor:
    check_tensor("x", x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be a float32/float16/bfloat16/float64 tensor, got {x.dtype}")
    return x


def _not_finite_error(x: torch.Tensor) -> ValueError:
    """The error for an x whose float32 copy holds NaN or ±inf (only built on that path)."""
    if x.dtype == torch.float64 and bool(torch.isfinite(x).all()):
        peak = float(x.detach().abs().max())
        return ValueError(f"x must fit float32's range (|x| <= {_FLOAT32_MAX:.7g}), the "
                          f"precision quantization computes in; got max |x| = {peak:.4g}: "
                          f"rescale x first")
    return ValueError("x must hold only finite values (no NaN or inf)")


def _float32_flat(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32 or flat.device.type != "cpu":
        flat = flat.to(device="cpu", dtype=torch.float32)
    return flat


def _effective_thresholds(code: torch.Tensor) -> torch.Tensor:
    """Thresholds T' with #{t' < v} = #{t < clip(v, −1, 1)} for every finite v.

    A threshold ≥ 1 is never below a clipped v (+inf), one < −1 always is (−inf); the others
    compare the same with v and with clip(v). For NF4 nothing changes.
    """
    t = code_thresholds(code)
    t[t >= 1] = math.inf
    t[t < -1] = -math.inf
    return t


# --------------------------------------------------------------------------- packing

def pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices (integer tensor, values 0…15) two per byte, high nibble first.

    ``out[i] = indices[2i] << 4 | indices[2i+1]``, as uint8; an odd count gets a 0 low nibble
    in its last byte (:func:`quantize_4bit` puts the index of a padding value 0 there instead).
    """
    check_tensor("indices", indices)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    flat = indices.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 15):
        raise ValueError("indices must lie in [0, 15]")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: uint8 bytes → uint8 indices, twice as many, high first."""
    check_tensor("packed", packed)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)


# --------------------------------------------------------------------------- the reference

def quantize_4bit_reference(x: torch.Tensor, blocksize: int = 64,
                            code: torch.Tensor | None = None, *, double_quant: bool = False,
                            blocksize2: int = 256) -> QuantizedTensor:
    """Blockwise absmax 4-bit quantization written as the equations (slow; same bytes as
    :func:`quantize_4bit`). Arguments and result as for :func:`quantize_4bit`.

    The nearest level ``argmin_k |v − c_k|`` is computed as the number of midpoints below v,
    ``(v > t).sum()``: that is bitsandbytes' rule, with the midpoints in float32. A float64
    argmin would agree everywhere except on a v equal to one of the 6 NF4 midpoints that float32
    rounds up (by < 3e-8): there the argmin takes the upper level, the rule the lower one.
    """
    x = _check_x(x)
    blocksize = _check_blocksize(blocksize)
    levels = nf4_code() if code is None else check_code(code)
    check_instance("double_quant", double_quant, bool)
    flat = x.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(flat).all()):
        raise _not_finite_error(x)
    t = code_thresholds(levels)                       # t_k = ½(c_k + c_{k+1}), float32
    n = flat.numel()
    n_full = n // blocksize

    def nearest(v: torch.Tensor) -> torch.Tensor:     # i_j = #{k : t_k < v_j}
        return (v.clamp(-1, 1)[:, None] > t[None, :]).sum(dim=1)

    # full blocks, one per row: m_b = max_j |x_j|, v_j = x_j · (1/m_b)
    blocks = flat[: n_full * blocksize].view(n_full, blocksize)
    m = blocks.abs().amax(dim=1) if n_full else torch.zeros(0)
    v = blocks * (1 / m.clamp(min=_TINY))[:, None]
    indices, absmax = [nearest(v.reshape(-1))], [m]
    if n % blocksize:                                 # the last, partial block: v_j = x_j / m
        tail = flat[n_full * blocksize:]
        m_last = tail.abs().max().clamp(min=_TINY)
        indices.append(nearest(tail / m_last))
        absmax.append(m_last.reshape(1))
    if n % 2:                                         # fill the last byte with a padding 0
        indices.append(nearest(torch.zeros(1)))
    idx = torch.cat(indices)
    packed = (idx[0::2] * 16 + idx[1::2]).to(torch.uint8)  # element 2i in the high nibble
    return _finish(packed, torch.cat(absmax), x, blocksize, levels, double_quant, blocksize2)


def dequantize_4bit_reference(q: QuantizedTensor) -> torch.Tensor:
    """x̂_j = c[i_j] · m_b, written as the equation (same values as :func:`dequantize_4bit`).

    c is the code (``q.code``), i_j the 4-bit index of element j and m_b the absmax of its block
    b (double-quantized constants decoded first). Returns a tensor of shape ``q.shape`` and
    dtype ``q.dtype``.
    """
    check_instance("q", q, QuantizedTensor)
    _check_packed(q)
    levels = check_code(q.code, "q.code")
    n = q.numel
    idx = unpack_nibbles(q.packed)[:n].long()          # high nibble first, padding dropped
    m = _block_constants(q).repeat_interleave(q.blocksize)[:n]   # m_b of every element
    return (levels[idx] * m).view(q.shape).to(q.dtype)


def _finish(packed: torch.Tensor, absmax: torch.Tensor, x: torch.Tensor, blocksize: int,
            code: torch.Tensor, double_quant: bool, blocksize2: int) -> QuantizedTensor:
    absmax_dq = None
    if double_quant:

        absmax_dq = quantize_constants(absmax, blocksize2=blocksize2)
        absmax = None
    else:
        check_power_of_two("blocksize2", blocksize2, 2)
    return QuantizedTensor(packed=packed, absmax=absmax, absmax_dq=absmax_dq, shape=x.shape,
                           dtype=x.dtype, blocksize=blocksize, code=code)


# --------------------------------------------------------------------------- the fast path

def _normalize(x: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, absmax): v float32 of ⌈n/2⌉·2 values (a padding 0 last if n is odd), absmax per block.

    Same arithmetic as the reference, on one preallocated buffer; the per-block vectors (1/64 of
    the data) are handled in NumPy, single-threaded, which avoids a round of thread
    synchronisation per tiny op when the machine is busy.
    """
    flat = _float32_flat(x)
    n = flat.numel()
    n_full = n // blocksize
    full = n_full * blocksize
    v = torch.empty(n + n % 2, dtype=torch.float32)
    parts = []
    if n_full:
        blocks = flat[:full].view(n_full, blocksize)
        lo, hi = torch.aminmax(blocks, dim=1)  # max|x| = max(max x, −min x): no |x| temporary
        m = np.abs(np.maximum(hi.numpy(), -lo.numpy()))
        inv = np.reciprocal(np.maximum(m, _TINY32))
        torch.mul(blocks, torch.from_numpy(inv)[:, None], out=v[:full].view(n_full, blocksize))
        parts.append(m)
    if full < n:
        tail = flat[full:]
        m_last = tail.abs().max().clamp(min=_TINY)
        torch.div(tail, m_last, out=v[full:n])
        parts.append(m_last.reshape(1).numpy())
    if n % 2:
        v[n] = 0.0
    absmax = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if not np.isfinite(absmax).all():  # NaN and ±inf propagate through min/max
        raise _not_finite_error(x)
    return v, torch.from_numpy(absmax)


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
    return _grid_tables_cached(tuple(thresholds.tolist()))


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


def _nearest_indices(v: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """uint8 index #{t ∈ thresholds : t < v} for every v (ties go to the lower code).

    Overwrites ``v`` (a 1-D float32 buffer; its storage is reused for the result).
    """
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

    Returns ``(v, absmax)`` with ``v`` of shape (n_blocks, blocksize) — a partial last block
    completed with zeros — and ``absmax`` float32 of shape (n_blocks,), as :func:`quantize_4bit`
    stores it. All-zero blocks give v = 0.
    """
    x = _check_x(x)
    blocksize = _check_blocksize(blocksize)
    v, absmax = _normalize(x, blocksize)
    n = x.numel()
    padded = torch.zeros(absmax.numel() * blocksize, dtype=torch.float32)
    padded[:n] = v[:n]
    return padded.view(-1, blocksize), absmax


def quantize_4bit(x: torch.Tensor, blocksize: int = 64, code: torch.Tensor | None = None, *,
                  double_quant: bool = False, blocksize2: int = 256) -> QuantizedTensor:
    """Blockwise absmax 4-bit quantization of ``x`` (source §4.2(1); QLoRA §3), fast version.

    Byte-identical to :func:`quantize_4bit_reference` and to bitsandbytes' CPU
    ``quantize_4bit(x, blocksize, quant_type="nf4", compress_statistics=double_quant)``.

    Parameters
    ----------
    x:
        Floating tensor (float32, float16, bfloat16 or float64) of any shape, finite values
        within float32's range. Computation is in float32.
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
        Packed indices (⌈n/2⌉ bytes), constants, and what :func:`dequantize_4bit` needs to
        restore the tensor. An all-zero block decodes to zeros; an empty ``x`` gives empty
        tensors.
    """
    x = _check_x(x)
    blocksize = _check_blocksize(blocksize)
    code = nf4_code() if code is None else check_code(code)
    check_instance("double_quant", double_quant, bool)
    v, absmax = _normalize(x, blocksize)
    idx = _nearest_indices(v, _effective_thresholds(code))
    pairs = idx.view(-1, 2)
    # byte = 16·(index of element 2i) + (index of element 2i+1): the high nibble comes first
    packed = torch.add(pairs[:, 1], pairs[:, 0], alpha=16)
    return _finish(packed, absmax, x, blocksize, code, double_quant, blocksize2)


def _check_packed(q: QuantizedTensor) -> None:
    check_tensor("q.packed", q.packed)
    if q.packed.dtype != torch.uint8:
        raise TypeError(f"q.packed must be a uint8 tensor, got {q.packed.dtype}")
    check_int("q.blocksize", q.blocksize, MIN_BLOCKSIZE, MAX_BLOCKSIZE)
    check_power_of_two("q.blocksize", q.blocksize, MIN_BLOCKSIZE)
    expected = -(-q.numel // 2)
    if q.packed.numel() != expected:
        raise ValueError(f"q.packed must hold ceil(n/2) = {expected} bytes for shape "
                         f"{tuple(q.shape)}, got {q.packed.numel()}")


def _block_constants(q: QuantizedTensor) -> torch.Tensor:
    if q.absmax is not None:
        absmax = check_tensor("q.absmax", q.absmax)
    elif q.absmax_dq is not None:

        absmax = dequantize_constants(q.absmax_dq)
    else:
        raise ValueError("q must hold absmax or absmax_dq, both are None")
    if absmax.shape != (q.n_blocks,):
        raise ValueError(f"q.absmax must have shape ({q.n_blocks},), got {tuple(absmax.shape)}")
    return absmax.to(torch.float32)


@functools.lru_cache(maxsize=32)
def _pair_table_cached(key: tuple[float, ...]) -> torch.Tensor:
    code = torch.tensor(key, dtype=torch.float32)
    b = torch.arange(256)
    pairs = torch.stack([code[b >> 4], code[b & 15]], dim=1).contiguous()
    return pairs.view(torch.int64).view(256)


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """256-entry byte → (code[hi], code[lo]) table, each float32 pair viewed as one int64."""
    return _pair_table_cached(tuple(code.tolist()))


#: Packed bytes that :func:`dequantize_4bit` decodes per step (a power of two). A step's
#: indices and level pairs (2 MiB each) stay in the last-level cache between the lookup and the
#: scaling; a 4096×4096 matrix takes 32 steps.
_STEP_BYTES = 1 << 18
#: A step's lookup is one ``torch.gather`` over this many rows, which PyTorch spreads over its
#: threads (a 1-D ``index_select`` runs on one thread).
_LOOKUP_ROWS = 64


def _decode_into(dst: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor,
                 code: torch.Tensor, blocksize: int, step_bytes: int = _STEP_BYTES) -> None:
    """dst[j] = code[i_j] · m_b(j) for the n = dst.numel() values of ``packed`` (1-D uint8).

    The packed bytes go ``step_bytes`` at a time (a whole number of blocks): each byte is widened
    to an int64 index in a small buffer, looked up in the pair table (one int64 word = the two
    float32 levels of its nibbles, high first), and the pairs, viewed as (blocks, blocksize)
    float32, are multiplied by their block's absmax straight into ``dst`` — in dst's dtype: the
    float32 product rounded once, as ``.to(dtype)`` rounds it. What is left after the last whole
    step (fewer blocks, a partial last block, an odd count's padding value, which is dropped)
    goes the same way in one piece.
    """
    n = dst.numel()
    pairs = _pair_table(code)
    half = blocksize // 2                                # packed bytes per block
    step = max(step_bytes, half, _LOOKUP_ROWS)           # powers of two: whole blocks and rows
    n_steps = n // (2 * step)
    body = n_steps * step                                # bytes decoded by whole steps
    if n_steps:
        table = pairs.expand(_LOOKUP_ROWS, 256)          # the same table for every row
        index = torch.empty(_LOOKUP_ROWS, step // _LOOKUP_ROWS, dtype=torch.int64)
        levels = torch.empty(_LOOKUP_ROWS, step // _LOOKUP_ROWS, dtype=torch.int64)
        scaled = levels.view(torch.float32).view(-1, blocksize)
        for p, m, d in zip(packed[:body].view(n_steps, *index.shape),
                           absmax[: body // half].view(n_steps, -1, 1),
                           dst[: 2 * body].view(n_steps, -1, blocksize), strict=True):
            index.copy_(p)                               # uint8 -> int64 indices
            torch.gather(table, 1, index, out=levels)    # (code[hi], code[lo]) per byte
            torch.mul(scaled, m, out=d)                  # times the block's absmax
    rest = n - 2 * body
    if rest:
        values = torch.index_select(pairs, 0, packed[body:].to(torch.int64))
        values = values.view(torch.float32)[:rest]      # drops an odd count's padding
        m = absmax[body // half:]
        n_full = rest // blocksize                       # whole blocks, then a partial one
        torch.mul(values[: n_full * blocksize].view(-1, blocksize), m[:n_full, None],
                  out=dst[2 * body: 2 * body + n_full * blocksize].view(-1, blocksize))
        if rest > n_full * blocksize:
            torch.mul(values[n_full * blocksize:], m[n_full],
                      out=dst[2 * body + n_full * blocksize:])


def dequantize_4bit(q: QuantizedTensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild the tensor: x̂_j = code[i_j] · absmax_b (double-quantized absmax decoded first).

    Fast version of :func:`dequantize_4bit_reference` (bit-identical values, every dtype): each
    byte is looked up once in a 256-entry table of level *pairs* (high, low nibble) and the pairs
    are scaled by their block's absmax straight into the result, 256 KiB of packed bytes at a
    time so that the intermediate buffers stay in cache; no temporary of the tensor's size is
    allocated, whatever the dtype.

    Parameters
    ----------
    q:
        The :class:`QuantizedTensor` from :func:`quantize_4bit`.
    out:
        Optional preallocated contiguous CPU tensor of ``q.shape`` and ``q.dtype`` to write into
        (saves allocating, i.e. page-faulting, a fresh output on every call).

    Returns
    -------
    torch.Tensor
        Shape ``q.shape``, dtype ``q.dtype`` (``out`` itself when given).
    """
    check_instance("q", q, QuantizedTensor)
    _check_packed(q)
    shape, dtype = q.shape, q.dtype
    if out is not None:
        check_tensor("out", out)
        if out.shape != shape or out.dtype != dtype or not out.is_contiguous() \
                or out.device.type != "cpu":
            raise ValueError(f"out must be a contiguous CPU tensor of shape {tuple(shape)} and "
                             f"dtype {dtype}, got {tuple(out.shape)} {out.dtype}")
    absmax = _block_constants(q)
    code = check_code(q.code, "q.code")
    result = torch.empty(shape, dtype=dtype) if out is None else out
    _decode_into(result.view(-1), q.packed.reshape(-1), absmax, code, q.blocksize)
    return result


def code_indices(q: QuantizedTensor) -> torch.Tensor:
    """The 4-bit index of every original element (padding dropped), uint8 of shape ``q.shape``."""
    check_instance("q", q, QuantizedTensor)
    return unpack_nibbles(q.packed)[: q.numel].view(q.shape)


def code_usage(q: QuantizedTensor) -> torch.Tensor:
    """How often each of the 16 codes is used by the original elements (int64 counts, shape 16)."""
    return torch.bincount(code_indices(q).reshape(-1).long(), minlength=16)


def entropy_bits(counts: torch.Tensor | np.ndarray) -> float:
    """Shannon entropy H = −Σ p_i log₂ p_i of a usage histogram, in bits (≤ log₂ 16 = 4).

    H is the average number of bits an ideal entropy coder would need per index: 4 bits are only
    "fully used" when all 16 codes are equally likely.
    """
    check_instance("counts", counts, (torch.Tensor, np.ndarray))
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().to(torch.float64).cpu().numpy()
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
