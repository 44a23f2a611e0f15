"""Double quantization (双量化, DQ): quantizing the quantization constants a second time.

Source §4.2(2): "对量化常数（32-bit）再做8-bit量化，将额外开销从0.5bit/参数降至0.127bit/参数".
Blockwise 4-bit quantization (:mod:`lora_edu.quant`) keeps one float32 absmax per block of 64
weights, i.e. 32/64 = 0.5 bit per parameter. QLoRA (Dettmers et al. 2023, §3) stores those
constants as

1. one float32 **offset**, the mean of all constants (they are all positive; centring them lets a
   *signed* code use both of its halves),
2. the centred constants quantized blockwise, ``blocksize2 = 256`` per block, by absmax to 8-bit
   **codes** through a 256-entry code table,
3. one float32 **scale** (the absmax of the centred values) per block of ``blocksize2``,

and rebuilds them as ``code[codes] · scale + offset``: 8/64 + 32/(64·256) = 65/512 ≈ 0.127 bit per
parameter.

The arithmetic is bitsandbytes' (CPU), so that ``quantize_4bit(x, double_quant=True)`` stores the
same bytes as ``bitsandbytes.functional.quantize_4bit(x, quant_type="nf4",
compress_statistics=True)``: the offset is torch's float32 ``mean`` (like every float32 reduction
it can change in the last bit with the number of threads), v = c · fl(1/scale), and the nearest
code is found through a grid of 65,536 points on [−1, 1] (``grid=65536``, see
:func:`quantize_with_code`): v is first rounded to the nearest grid point, which then takes the
code entry nearest to it. That differs from the exact nearest entry only for a v within a grid
step (2/65,535 = 3.1·10⁻⁵) of a midpoint between two entries, and the entry taken is then at
most one grid step farther from v than the nearest one; ``grid=None`` gives the exact nearest
entry. A block of constants all equal to the offset has scale 0 and stores code 0.

The second-level code tables offered here:

- ``"dynamic"`` (default, what bitsandbytes uses for the constants): the signed 8-bit dynamic
  tree code of Dettmers et al. 2021 (:func:`dynamic_code`);
- ``"fp8_e4m3"`` / ``"fp8_e5m2"``: the 256 bit patterns of an 8-bit float (the "8-bit floats" of
  QLoRA's text), scaled so that the largest finite value is 1 (:func:`fp8_code`);
- ``"linear"``: 255 evenly spaced levels in [−1, 1] (a signed int8 absmax code), for comparison.

The exact overhead arithmetic is in :mod:`lora_edu.quant.arithmetic`, and
:func:`storage_bits_per_param` measures the overhead from the ``nbytes`` of the stored tensors.
This module imports nothing from the rest of :mod:`lora_edu.quant`;
``quantize_4bit(..., double_quant=True)`` calls :func:`quantize_constants`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from lora_edu.checks import (
    check_instance,
    check_int,
    check_one_of,
    check_power_of_two,
    check_tensor,
)

__all__ = [
    "QuantizedConstants",
    "CODE_NAMES",
    "BNB_GRID",
    "dynamic_code",
    "fp8_code",
    "linear_code",
    "second_level_code",
    "quantize_with_code",
    "quantize_constants",
    "dequantize_constants",
    "storage_bits",
    "storage_bits_per_param",
    "parameter_count",
]

#: The second-level codes for the constants, by name (:func:`second_level_code`).
CODE_NAMES = ("dynamic", "fp8_e4m3", "fp8_e5m2", "linear")

#: Points of the grid through which bitsandbytes' CPU kernel finds the nearest 8-bit code.
BNB_GRID = 65536


@dataclass
class QuantizedConstants:
    """First-level quantization constants stored with double quantization.

    Attributes
    ----------
    offset:
        float32 0-d tensor, the mean of the constants (``0.0`` when quantized with
        ``center=False``).
    codes:
        uint8 tensor of shape ``(n,)``, one 8-bit index into ``code`` per constant.
    scales:
        float32 tensor of shape ``(⌈n/blocksize2⌉,)``, the absmax of each block of centred
        constants.
    code:
        float32 tensor of 256 entries, the second-level code table (``NaN`` marks bit patterns
        that encode no finite number; quantization never produces them).
    blocksize2:
        Number of constants per second-level block.
    n:
        Number of constants.
    """

    offset: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    code: torch.Tensor
    blocksize2: int
    n: int


# --------------------------------------------------------------------------- code tables

def dynamic_code(bits: int = 8) -> torch.Tensor:
    """Signed dynamic (tree) quantization map of Dettmers et al. 2021, built from its definition.

    A ``bits``-bit code word is read as: one sign bit; then ``E`` zero bits giving a decimal
    exponent ``10^-E``; then a 1 bit (the indicator); the remaining ``bits − 2 − E`` bits index
    one of ``2^(bits−2−E)`` equal bins of [0.1, 1], represented by the bin's midpoint. ``E`` runs
    from 0 to ``bits − 2``, so small magnitudes get few fraction bits and large ones many: the
    code covers seven decades (10⁻⁶ … 1 for 8 bits) with ≈ 3 % relative precision at the top.
    The all-zero word is 0; the word that would be "−0" is used for +1 (as in bitsandbytes),
    so the map contains exactly −max, …, 0, …, 1. Returned sorted, float32, ``2**bits``
    entries (for 8 bits: 127 negative values, 0, 127 positive values and 1.0).

    Evaluated in float32 step by step as bitsandbytes' ``create_dynamic_map`` does (bin edges
    ``torch.linspace(0.1, 1)``, midpoints ``(a + b)/2``, times ``10^-E``), so that the 8-bit map
    is bit for bit the one bitsandbytes stores; the same formula in float64 differs from it by up
    to one float32 ulp in 72 of the 256 entries.
    """
    bits = check_int("bits", bits, 3, 8)
    m = bits - 1  # bits after the sign
    positive: list[float] = []
    for e in range(m):  # e leading zeros, then the indicator bit, then m - 1 - e fraction bits
        n_bins = 2 ** (m - 1 - e)
        edges = torch.linspace(0.1, 1, n_bins + 1, dtype=torch.float32)
        midpoints = (edges[:-1] + edges[1:]) / 2.0
        positive += (10.0 ** (-e) * midpoints).tolist()
    values = [0.0, 1.0] + positive + [-v for v in positive]
    out = torch.tensor(sorted(values), dtype=torch.float32)
    assert out.numel() == 2**bits
    return out


_FP8 = {"e4m3": (4, 3), "e5m2": (5, 2)}


def fp8_code(fmt: str = "e4m3") -> torch.Tensor:
    """The 256 values of an 8-bit float, indexed by bit pattern, divided by the largest finite one.

    ``"e4m3"`` is the E4M3FN format (bias 7, no infinities, only S.1111.111 is NaN, max 448);
    ``"e5m2"`` the IEEE-like E5M2 (bias 15, exponent 11111 is inf/NaN, max 57344). Built from the
    definitions: normal numbers ``(1 + f/2^M) · 2^(e − bias)``, subnormals ``f/2^M · 2^(1 − bias)``.
    Non-finite patterns are ``NaN`` in the table. Entry ``i`` is the value of bit pattern ``i``,
    so the stored uint8 codes are genuine FP8 numbers (``codes.view(torch.float8_e4m3fn)``).
    """
    check_one_of("fmt", fmt, sorted(_FP8))
    n_exp, n_man = _FP8[fmt]
    bias = 2 ** (n_exp - 1) - 1
    values = []
    for pattern in range(256):
        sign = -1.0 if pattern >> 7 else 1.0
        e = (pattern >> n_man) & (2**n_exp - 1)
        f = pattern & (2**n_man - 1)
        if fmt == "e4m3" and e == 2**n_exp - 1 and f == 2**n_man - 1:
            values.append(math.nan)
        elif fmt == "e5m2" and e == 2**n_exp - 1:
            values.append(math.nan)  # ±inf and NaN patterns: no finite value
        elif e == 0:
            values.append(sign * f / 2**n_man * 2.0 ** (1 - bias))
        else:
            values.append(sign * (1 + f / 2**n_man) * 2.0 ** (e - bias))
    table = torch.tensor(values, dtype=torch.float64)
    table = table / table.nan_to_num(nan=0.0).abs().max()
    return table.to(torch.float32)


def linear_code() -> torch.Tensor:
    """255 evenly spaced levels ``k/127`` for ``k = −127 … 127`` plus a repeated 1.0 (256 entries).

    The signed int8 absmax code, for comparison with the dynamic map; index 255 duplicates 1.0
    so the table has the common length 256.
    """
    levels = torch.arange(-127, 128, dtype=torch.float64) / 127
    return torch.cat([levels, levels[-1:]]).to(torch.float32)


@functools.cache
def _named_code(name: str) -> torch.Tensor:
    if name == "dynamic":
        return dynamic_code(8)
    if name == "linear":
        return linear_code()
    return fp8_code(name.removeprefix("fp8_"))


def second_level_code(code: str | torch.Tensor = "dynamic") -> torch.Tensor:
    """Resolve a second-level code name (one of :data:`CODE_NAMES`) or check a given table.

    A tensor must be float, 256 entries, every finite entry in [−1, 1], with at least two
    finite entries, an exact 0 (so that an all-equal block of constants is reproduced) and a
    finite entry 0 (the code stored for such a block).
    """
    check_instance("code", code, (str, torch.Tensor))
    if isinstance(code, str):
        check_one_of("code", code, CODE_NAMES)
        return _named_code(code).clone()
    if not code.is_floating_point():
        raise TypeError(f"code must have a floating-point dtype, got {code.dtype}")
    if code.shape != (256,):
        raise ValueError(f"code must have shape (256,), got {tuple(code.shape)}")
    code = code.detach().to(device="cpu", dtype=torch.float32)
    finite = code[torch.isfinite(code)]
    if finite.numel() < 2 or finite.abs().max() > 1 or not bool((finite == 0).any()):
        raise ValueError("code must have >= 2 finite entries in [-1, 1], including an exact 0")
    if not bool(torch.isfinite(code[0])):
        raise ValueError("code[0] must be finite (it is the code of a block of equal constants)")
    return code


def quantize_with_code(values: torch.Tensor, code: torch.Tensor, *,
                       grid: int | None = None) -> torch.Tensor:
    """Index of the nearest entry of ``code`` for each value in [−1, 1] (ties go to the lower one).

    Works for any table order (the FP8 tables are indexed by bit pattern): the finite entries are
    sorted, the thresholds are the midpoints of neighbours, and the thresholds strictly below a
    value are counted (a binary search, ``numpy.searchsorted``); that bin is mapped back to its
    table index. Non-finite table entries are never chosen. Values are clipped to [−1, 1].

    ``grid=None`` (default) finds the exact nearest entry. ``grid=G`` does what bitsandbytes'
    CPU kernel does (with G = :data:`BNB_GRID` = 65,536): each value is first rounded to one of
    G points on [−1, 1], index ⌊(v + 1)·½·(G − 1) + ½⌋ computed in float32, and every grid point
    takes the entry nearest to it (float32 midpoints). The result differs from the exact nearest
    entry only for values within a grid step 2/(G − 1) of a midpoint, and is then at most one
    grid step farther from the value. Returns uint8 when the table has ≤ 256 entries, else
    int64.
    """
    check_tensor("values", values)
    check_tensor("code", code, floating=True)
    if grid is not None:
        grid = check_int("grid", grid, 2, 2**24)
    v = values.detach().to(torch.float32).numpy(force=True)
    if not np.isfinite(v).all():
        raise ValueError("values must hold only finite values (no NaN or inf)")
    if int(np.isfinite(code.detach().to(torch.float32).numpy(force=True)).sum()) < 1:
        raise ValueError("code must have at least one finite entry")
    out = torch.from_numpy(_nearest_codes(np.clip(v, -1.0, 1.0), code, grid))
    return out.to(torch.uint8) if code.numel() <= 256 else out


def _nearest_codes(v: np.ndarray, code: torch.Tensor, grid: int | None) -> np.ndarray:
    """Table indices (int64) of the entries nearest to float32 values v ∈ [−1, 1]."""
    if grid is None:
        lut, thresholds = _code_search_tables(code)
        return lut[np.searchsorted(thresholds, v, side="left")]
    f32 = np.float32
    points = ((v + f32(1)) * f32(0.5)) * f32(grid - 1) + f32(0.5)  # float32, step by step
    return _grid_lut(code, grid)[points.astype(np.int64)]


def _code_search_tables(code: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(table index of the k-th smallest finite entry, midpoints between neighbours), NumPy."""
    c = code.detach().to(torch.float32).numpy(force=True)
    idx = np.flatnonzero(np.isfinite(c))
    order = np.argsort(c[idx], kind="stable")
    sorted_vals = c[idx][order]
    # float64 midpoints of float32 neighbours are exact, so the search is exactly "nearest"
    thresholds = (sorted_vals[:-1].astype(np.float64) + sorted_vals[1:]) / 2
    return idx[order].astype(np.int64), thresholds


def _grid_lut(code: torch.Tensor, grid: int) -> np.ndarray:
    """Table index of the entry nearest to each of the ``grid`` points −1 + 2i/(grid − 1).

    As bitsandbytes builds it, in float32: the midpoints ½·(a + b) of sorted neighbours, the
    points −1 + (2i)/(grid − 1), and for each point the number of midpoints below it.
    """
    key = (tuple(code.detach().to(torch.float32).numpy(force=True).tolist()), grid)
    return _grid_lut_cached(*key)


@functools.lru_cache(maxsize=8)
def _grid_lut_cached(code: tuple[float, ...], grid: int) -> np.ndarray:
    f32 = np.float32
    c = np.array(code, dtype=f32)
    idx = np.flatnonzero(np.isfinite(c))
    order = np.argsort(c[idx], kind="stable")
    s = c[idx][order]
    midpoints = f32(0.5) * (s[:-1] + s[1:])
    points = f32(-1) + (f32(2) * np.arange(grid, dtype=f32)) / f32(grid - 1)
    lut = idx[order].astype(np.int64)[np.searchsorted(midpoints, points, side="left")]
    lut.flags.writeable = False
    return lut


# --------------------------------------------------------------------------- the mechanism

def quantize_constants(absmax: torch.Tensor, blocksize2: int = 256,
                       code: str | torch.Tensor = "dynamic", *, center: bool = True,
                       grid: int | None = BNB_GRID) -> QuantizedConstants:
    """Double-quantize a vector of first-level constants (QLoRA §3, source §4.2(2)).

    ``offset = mean(absmax)`` (``0`` if ``center`` is False); ``c = absmax − offset``; per block
    of ``blocksize2`` values ``scale = max|c|`` and ``codes = nearest(code, c · (1/scale))``. The
    last block may be partial (no padding is stored). A block whose values all equal the offset
    has scale 0, stores code 0 and decodes exactly to the offset.

    Computed as bitsandbytes does on the CPU (float32 throughout, the offset by torch's float32
    ``mean``, the nearest code through a grid of :data:`BNB_GRID` points), so that the stored
    tensors are byte-identical to its ``quantize_blockwise(absmax − offset, blocksize=256)``.

    Parameters
    ----------
    absmax:
        1-D floating tensor of finite constants (any float dtype; computed in float32).
    blocksize2:
        Constants per second-level block, a power of two ≥ 2 (QLoRA: 256).
    code:
        ``"dynamic"`` (default), ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"linear"`` or a 256-entry table.
    center:
        Subtract the mean first (QLoRA / bitsandbytes do). False is offered to show why it helps.
    grid:
        ``BNB_GRID`` (default): bitsandbytes' grid search; ``None``: the exact nearest entry
        (see :func:`quantize_with_code`).
    """
    check_tensor("absmax", absmax, 1, floating=True)
    blocksize2 = check_power_of_two("blocksize2", blocksize2, 2)
    table = second_level_code(code)
    check_instance("center", center, bool)
    if grid is not None:
        grid = check_int("grid", grid, 2, 2**24)
    a = absmax.detach().to(device="cpu", dtype=torch.float32).contiguous()
    # The constants are 1/blocksize of the weights: small vectors, done in NumPy (one thread, no
    # thread-pool wake-ups when the machine is busy), float32 throughout as in torch. Only the
    # mean is torch's, whose float32 summation order bitsandbytes' offset depends on.
    a_np = a.numpy()
    n = a_np.size
    if not np.isfinite(a_np).all():
        raise ValueError("absmax must hold only finite values (no NaN or inf)")
    offset = a.mean() if center and n else torch.tensor(0.0)  # torch's float32 mean
    if not bool(torch.isfinite(offset)):
        raise ValueError("absmax: the mean of the constants overflows float32")
    centred = a_np - np.float32(offset.item())
    n_blocks = -(-n // blocksize2)
    padded = np.zeros(n_blocks * blocksize2, dtype=np.float32)  # the last block zero-padded
    padded[:n] = centred
    scales = np.abs(padded.reshape(n_blocks, blocksize2)).max(axis=1) if n_blocks \
        else np.zeros(0, dtype=np.float32)
    inv = np.divide(np.float32(1.0), scales, out=np.zeros_like(scales), where=scales > 0)
    v = np.clip(centred * np.repeat(inv, blocksize2)[:n], np.float32(-1), np.float32(1))
    codes = _nearest_codes(v, table, grid).astype(np.uint8)
    codes[np.repeat(scales == 0, blocksize2)[:n]] = 0  # a block of equal constants: code 0
    return QuantizedConstants(offset=offset.to(torch.float32).reshape(()),
                              codes=torch.from_numpy(codes),
                              scales=torch.from_numpy(np.ascontiguousarray(scales)),
                              code=table, blocksize2=blocksize2, n=n)


def dequantize_constants(qc: QuantizedConstants) -> torch.Tensor:
    """Rebuild the constants: ``code[codes] · scales[block] + offset``, float32 of length ``n``.

    The inverse of :func:`quantize_constants` (double quantization, source §4.2 (2)).
    """
    check_instance("qc", qc, QuantizedConstants)
    n, bs2 = qc.n, qc.blocksize2
    if qc.codes.dtype != torch.uint8 or qc.codes.shape != (n,):
        raise ValueError(f"qc.codes must be uint8 of shape ({n},), got {qc.codes.dtype} "
                         f"{tuple(qc.codes.shape)}")
    n_blocks = -(-n // bs2)
    if qc.scales.shape != (n_blocks,) or qc.scales.dtype != torch.float32:
        raise ValueError(f"qc.scales must be float32 of shape ({n_blocks},), got "
                         f"{qc.scales.dtype} {tuple(qc.scales.shape)}")
    if qc.offset.shape != () or qc.offset.dtype != torch.float32:
        raise ValueError("qc.offset must be a float32 0-d tensor")
    if qc.code.shape != (256,) or qc.code.dtype != torch.float32:
        raise ValueError(f"qc.code must be float32 of shape (256,), got {qc.code.dtype} "
                         f"{tuple(qc.code.shape)}")
    # NumPy: a 256-entry table lookup with the uint8 codes as indices, then one in-place
    # multiply and one add; single-threaded, and no conversion of the codes to int64.
    values = np.zeros(n_blocks * bs2, dtype=np.float32)
    np.take(qc.code.detach().numpy(force=True), qc.codes.numpy(force=True), out=values[:n])
    blocks = values.reshape(n_blocks, bs2)
    blocks *= qc.scales.detach().numpy(force=True)[:, None]
    blocks += np.float32(qc.offset)
    return torch.from_numpy(values[:n])


# --------------------------------------------------------------------------- storage accounting

def _tensor_bits(obj: object, count_code_tables: bool, field_name: str | None) -> int:
    if isinstance(obj, torch.Tensor):
        if field_name == "code" and not count_code_tables:
            return 0
        return obj.numel() * obj.element_size() * 8
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_tensor_bits(getattr(obj, f.name), count_code_tables, f.name)
                   for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bits(item, count_code_tables, field_name) for item in obj)
    return 0


def storage_bits(q: object, *, count_code_tables: bool = False) -> int:
    """Total bits of every tensor a quantized object holds (``nbytes · 8``), found recursively.

    Walks the dataclass fields of ``q`` (a ``QuantizedTensor`` from :mod:`lora_edu.quant`, a
    :class:`QuantizedConstants`, or any dataclass holding tensors), descending into nested
    dataclasses such as the ``absmax_dq`` field. Fields named ``code`` hold the fixed code
    tables (16-entry NF4, 256-entry second level); they are format constants shared by every
    tensor, like the definition of float16 itself, so by default they are **not** counted
    (QLoRA's 4.5 and 4.127 bit figures do not count them). Pass ``count_code_tables=True`` to
    count them anyway.
    """
    if not (dataclasses.is_dataclass(q) and not isinstance(q, type)):
        raise TypeError(f"q must be a quantized dataclass instance, got {type(q).__name__}")
    check_instance("count_code_tables", count_code_tables, bool)
    return _tensor_bits(q, count_code_tables, None)


def parameter_count(q: object) -> int:
    """Number of original values a quantized object stands for: ``prod(q.shape)``, or ``q.n``."""
    if isinstance(q, QuantizedConstants):
        return q.n
    shape = getattr(q, "shape", None)
    if shape is None:
        raise TypeError(f"q must have a shape (or be QuantizedConstants), got {type(q).__name__}")
    return math.prod(int(s) for s in shape)


def storage_bits_per_param(q: object, *, count_code_tables: bool = False,
                           exact: bool = False) -> float | Fraction:
    """Measured bits per original parameter: :func:`storage_bits` / :func:`parameter_count`.

    For a 4096×4096 float32 weight in blocks of 64 this measures exactly 4.5 without double
    quantization and 4 + 65/512 + 32/4096² (the last term is the one float32 offset) with it.
    ``exact=True`` returns the :class:`~fractions.Fraction` instead of a float.
    """
    check_instance("exact", exact, bool)
    bits = storage_bits(q, count_code_tables=count_code_tables)
    n = parameter_count(q)
    if n <= 0:
        raise ValueError(f"q must stand for at least one parameter, got {n}")
    value = Fraction(bits, n)
    return value if exact else float(value)
