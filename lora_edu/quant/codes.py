"""The 16-level code tables of 4-bit quantization: NF4 and the codes it is compared with.

Source §4.2(1) (4-bit NormalFloat, NF4): "基于分位数量化（每个量化桶包含等数量值），先归一化权重到
[-1,1]，再映射到16个NF4分位数点" — quantile quantization (every bucket holds the same number of
values): normalize the weights to [−1, 1], then map them to the 16 NF4 quantile points.

A *code* here is a sorted float32 tensor of ``2**bits`` levels in [−1, 1]; a value v ∈ [−1, 1]
is stored as the index of its nearest level. The tables:

- :func:`normal_float_code` / :func:`nf4_code` — the asymmetric QLoRA construction
  (Dettmers et al. 2023, §3 "4-bit NormalFloat Quantization"): with Q = Φ⁻¹ the N(0, 1)
  quantile function and offset δ = 0.9677083,

  .. math::

      q^+_j = Q(p_j),\\; p = \\operatorname{linspace}(δ, ½, 2^{k-1}+1)[:-1],\\qquad
      q^-_j = -Q(p'_j),\\; p' = \\operatorname{linspace}(δ, ½, 2^{k-1})[:-1],

  plus an exact 0, all divided by Q(δ): 8 positive levels, 7 negative ones and 0 for k = 4.
- :func:`normal_float_offset` — δ = 1 − ½(1/(2·16) + 1/(2·15)) = 1 − ½(1/32 + 1/30), the mean of
  the offsets a symmetric 16-level and a symmetric 15-level quantile code would use.
- :func:`eq4_literal_levels` — the paper's Eq. 4, q_i = ½(Q(i/(2^k+1)) + Q((i+1)/(2^k+1))), read
  literally: q_0 = −∞, which is why the construction above uses an offset.
- :func:`int4_code` — symmetric absmax integers k/7 (k = −7…7) plus one unreachable level.
- :func:`fp4_code` — a 4-bit float with 2 exponent bits and 1 mantissa bit (E2M1).
- :func:`lloyd_max_levels` / :func:`lloyd_max_code` — the MSE-optimal 16-level scalar quantizer
  of N(0, 1) (Lloyd 1982, "Method I"), the limit any 16-level code can reach on Gaussian data.
- :func:`gaussian_quantizer_mse` / :func:`gaussian_level_probabilities` — exact MSE and level
  probabilities of a nearest-level quantizer on N(0, 1) (levels in units of σ, no clipping).

SciPy (the normal quantile function Φ⁻¹ = ``scipy.stats.norm.ppf``) is imported inside the
functions that need it, the first time a code is built: ``import lora_edu.quant`` stays as fast
as importing torch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from lora_edu.checks import (
    check_float,
    check_instance,
    check_int,
    check_one_of,
    check_tensor,
)

__all__ = [
    "NF4_OFFSET",
    "FP4_VARIANTS",
    "normal_float_offset",
    "normal_float_code",
    "nf4_code",
    "eq4_literal_levels",
    "int4_code",
    "fp4_code",
    "lloyd_max_levels",
    "lloyd_max_code",
    "lloyd_code_from_samples",
    "gaussian_quantizer_mse",
    "gaussian_level_probabilities",
    "check_code",
    "code_thresholds",
]

#: The offset δ of QLoRA's NF4 construction, 1 − ½(1/32 + 1/30) = 0.96770833… cut to 7 decimals.
NF4_OFFSET = 0.9677083

#: Names accepted by :func:`fp4_code`.
FP4_VARIANTS = ("e2m1", "bnb")


def _norm():
    """``scipy.stats.norm``, imported on first use (SciPy's stats module takes ~0.5 s to load)."""
    from scipy.stats import norm

    return norm


def _check_bits(bits: object, low: int = 2, high: int = 8) -> int:
    return check_int("bits", bits, low, high)


def normal_float_offset(bits: int = 4) -> float:
    """The exact offset δ_k = 1 − ½(1/(2·2^k) + 1/(2·(2^k − 1))) of the k-bit NormalFloat code.

    A symmetric quantile code with n levels puts its outermost level at the quantile
    1 − 1/(2n) (the centre of the last of n equal-probability bins). NF4 has 2^k levels on an
    asymmetric grid — its positive half behaves like a 16-level code, its negative half like a
    15-level one — so QLoRA takes the mean of the two: for k = 4, 1 − ½(1/32 + 1/30) =
    0.9677083̅, published as 0.9677083 (:data:`NF4_OFFSET`). Part of NF4's construction
    (source §4.2 (1)).
    """
    n = 2 ** _check_bits(bits)
    return 1.0 - 0.5 * (1.0 / (2 * n) + 1.0 / (2 * (n - 1)))


def normal_float_code(bits: int = 4, offset: float = NF4_OFFSET, *,
                      symmetric: bool = False) -> torch.Tensor:
    """The k-bit NormalFloat code built from N(0, 1) quantiles (QLoRA §3; source §4.2(1)).

    Asymmetric (default, NF4 for ``bits=4``): 2^(k−1) positive levels Q(p) for
    p ∈ linspace(offset, ½, 2^(k−1)+1) without its last point ½, 2^(k−1) − 1 negative levels
    −Q(p) for p ∈ linspace(offset, ½, 2^(k−1)) without ½, and an exact 0; everything divided by
    the largest level Q(offset), so the extremes are exactly ±1.

    Evaluated the way bitsandbytes' ``create_normal_map`` does it, so that NF4 is *bit for bit*
    the table published with QLoRA: the probabilities ``linspace`` in float32
    (``torch.linspace``), Q in float64 (``scipy.stats.norm.ppf``), the levels rounded to float32
    and divided by their maximum in float32. (The same formula in float64, rounded to float32 at
    the end, differs from the table in 10 of the 16 levels, by up to 1.2e-7.)

    ``symmetric=True`` gives the variant without zero: 2^(k−1) levels on each side, both from
    linspace(offset, ½, 2^(k−1)+1)[:-1], mirrored — it cannot represent 0 exactly.

    Returns a sorted float32 tensor of ``2**bits`` levels.
    """
    bits = _check_bits(bits)
    offset = check_float("offset", offset, 0.5, 1.0, min_inclusive=False, max_inclusive=False)
    check_instance("symmetric", symmetric, bool)
    return _normal_float_code(bits, offset, symmetric).clone()


@functools.lru_cache(maxsize=16)
def _normal_float_code(bits: int, offset: float, symmetric: bool) -> torch.Tensor:
    ppf = _norm().ppf
    half = 2 ** (bits - 1)

    def quantiles(steps: int) -> np.ndarray:  # Q(p), p = float32 linspace(offset, ½, steps)[:-1]
        p = torch.linspace(offset, 0.5, steps, dtype=torch.float32)[:-1]
        return ppf(p.double().numpy())

    positive = quantiles(half + 1)
    negative = -positive if symmetric else -quantiles(half)
    zero = [] if symmetric else [0.0]
    levels = torch.from_numpy(np.sort(np.concatenate([positive, zero, negative])))
    levels = levels.to(torch.float32)
    return levels / levels.max()


def nf4_code() -> torch.Tensor:
    """The 16 NF4 levels, index 0 … 15 = −1, −0.6962, …, 0, …, 0.7230, 1 (QLoRA's table).

    Bit-identical to the table of QLoRA and bitsandbytes (``get_4bit_type("nf4")``). Built once
    per process (the first call imports SciPy); every call returns a fresh copy: float32, shape
    (16,). The 4-bit NormalFloat type of source §4.2 (1), ``normal_float_code(4, NF4_OFFSET)``.
    """
    return normal_float_code(4, NF4_OFFSET)


def eq4_literal_levels(bits: int = 4) -> np.ndarray:
    """QLoRA's Eq. 4 read literally: q_i = ½(Q(i/(2^k+1)) + Q((i+1)/(2^k+1))), i = 0 … 2^k − 1.

    Returned in float64 and *not* normalized, so that the reader sees the problem:
    Q(0) = −∞ makes q_0 = −∞ (the highest level is finite, since (i+1)/(2^k+1) < 1). The
    published code avoids the infinite tail by starting the quantile grid at the offset δ
    (:func:`normal_float_code`).
    """
    bits = _check_bits(bits)
    n = 2**bits
    p = np.arange(n + 1) / (n + 1)
    with np.errstate(divide="ignore"):
        q = _norm().ppf(p)
    return 0.5 * (q[:-1] + q[1:])


def int4_code() -> torch.Tensor:
    """Symmetric absmax 4-bit integers: levels k/7 for k = −7 … 7, plus −8/7 at index 0.

    The usual signed-int4 absmax quantizer computes round(7·x/absmax) ∈ {−7, …, 7}: 15 levels.
    The 16th bit pattern (−8) decodes to −8/7, outside [−1, 1]; since normalized values never
    go below −1 it is never chosen — it is kept so the table has 16 entries like the others, and
    the usage histograms show the wasted code.
    """
    return (torch.arange(-8, 8, dtype=torch.float64) / 7).to(torch.float32)


def fp4_code(variant: str = "e2m1") -> torch.Tensor:
    """A 4-bit float with 1 sign, 2 exponent and 1 mantissa bit (E2M1), divided by its maximum.

    ``"e2m1"`` (default): the OCP Microscaling (MX) E2M1 element, bias 1, magnitudes
    {0, 0.5, 1, 1.5, 2, 3, 4, 6} (subnormal 0.5), here divided by 6.
    ``"bnb"``: the variant of bitsandbytes' ``fp4`` type (bias 3, subnormal 0.0625), magnitudes
    {0, 0.0625, 2, 3, 4, 6, 8, 12} divided by 12 — its smallest non-zero level 1/192 is almost
    a second zero.

    Both have a +0 and a −0 bit pattern: the 16 levels are sorted and contain 0 twice (index 7
    holds −0, index 8 holds +0), so only 15 distinct values exist. Quantization resolves the tie
    to the lower index; the histogram shows index 8 only gets the values in (0, first midpoint].
    """
    check_one_of("variant", variant, FP4_VARIANTS)
    if variant == "e2m1":
        magnitudes = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    else:
        magnitudes = [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]
    m = np.array(magnitudes) / max(magnitudes)
    levels = np.concatenate([-m[::-1], m])  # −1 … −0, +0 … 1 (the −0 sorts before +0 here)
    return torch.from_numpy(levels).to(torch.float32)


def _interval_moments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """P(lo<X<hi), E[X; lo<X<hi], E[X²; lo<X<hi] for X ~ N(0, 1) (lo/hi may be ±inf)."""
    norm = _norm()
    p0 = norm.cdf(hi) - norm.cdf(lo)
    p1 = norm.pdf(lo) - norm.pdf(hi)
    with np.errstate(invalid="ignore"):
        t_hi = np.where(np.isinf(hi), 0.0, hi * norm.pdf(hi))
        t_lo = np.where(np.isinf(lo), 0.0, lo * norm.pdf(lo))
    p2 = p0 - (t_hi - t_lo)
    return p0, p1, p2


def lloyd_max_levels(bits: int = 4, *, tol: float = 1e-13, max_iter: int = 100_000) -> np.ndarray:
    """The MSE-optimal ``2**bits``-level quantizer of N(0, 1), in units of σ (float64).

    Lloyd's Method I (Lloyd 1982; Max 1960): alternate the two optimality conditions,
    thresholds t_i = ½(c_i + c_{i+1}) (nearest neighbour) and levels
    c_i = E[X | t_{i−1} < X < t_i] = (φ(t_{i−1}) − φ(t_i)) / (Φ(t_i) − Φ(t_{i−1})) (centroid),
    starting from the equal-probability levels, until no level moves by more than ``tol``.
    For 16 levels the MSE is 0.009497 (Max's table) and the outermost levels are ±2.733.
    """
    bits = _check_bits(bits, 1, 8)
    tol = check_float("tol", tol, 0.0, min_inclusive=False)
    max_iter = check_int("max_iter", max_iter, 1)
    n = 2**bits
    c = _norm().ppf((np.arange(n) + 0.5) / n)
    for _ in range(max_iter):
        t = np.concatenate([[-np.inf], 0.5 * (c[:-1] + c[1:]), [np.inf]])
        p0, p1, _ = _interval_moments(t[:-1], t[1:])
        new = p1 / p0
        new = 0.5 * (new - new[::-1])  # enforce the exact symmetry of the optimum
        if np.max(np.abs(new - c)) < tol:
            return new
        c = new
    raise RuntimeError(f"Lloyd iteration did not converge in {max_iter} steps")  # pragma: no cover


def lloyd_max_code(bits: int = 4) -> torch.Tensor:
    """:func:`lloyd_max_levels` divided by its largest level, so that the code spans [−1, 1].

    The same normalization NF4 uses (its outer quantile Q(δ) maps to 1). Note what this does
    *not* do: after blockwise absmax scaling the data in a block is not N(0, 1) any more, so this
    code is optimal for the Gaussian itself, not for absmax-normalized blocks (see chapter 4).
    """
    levels = lloyd_max_levels(bits)
    return torch.from_numpy(levels / levels[-1]).to(torch.float32)


def lloyd_code_from_samples(samples: object, bits: int = 4, *, iters: int = 500,
                            tol: float = 1e-10) -> torch.Tensor:
    """Lloyd's algorithm on an empirical sample (1-D k-means): the MSE-optimal levels *for it*.

    Same two steps as :func:`lloyd_max_levels` — thresholds at midpoints, levels at the mean of
    their cell — with the sample's empirical distribution instead of N(0, 1), starting from its
    equal-count quantiles. Fed with absmax-normalized blocks
    (:func:`lora_edu.quant.block_normalize`) it gives the best 16-level code for *that* block
    size, the target NF4 only approximates. A cell that becomes empty keeps its level. Returns
    sorted float32 levels.
    """
    bits = _check_bits(bits, 1, 8)
    check_instance("samples", samples, (torch.Tensor, np.ndarray))
    iters = check_int("iters", iters, 1)
    tol = check_float("tol", tol, 0.0, min_inclusive=False)
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise TypeError(f"samples must have a floating-point dtype, got {samples.dtype}")
        samples = samples.detach().to(torch.float64).cpu().numpy()
    elif not np.issubdtype(samples.dtype, np.floating):
        raise TypeError(f"samples must have a floating-point dtype, got {samples.dtype}")
    x = np.sort(np.asarray(samples, dtype=np.float64).reshape(-1))
    n = 2**bits
    if x.size < n:
        raise ValueError(f"samples must hold at least {n} values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must hold only finite values (no NaN or inf)")
    csum = np.concatenate([[0.0], np.cumsum(x)])
    c = np.quantile(x, (np.arange(n) + 0.5) / n)
    for _ in range(iters):
        t = 0.5 * (c[:-1] + c[1:])
        edges = np.concatenate([[0], np.searchsorted(x, t, side="right"), [x.size]])
        counts = np.diff(edges)
        sums = csum[edges[1:]] - csum[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = np.sort(new)
        done = np.max(np.abs(new - c)) < tol
        c = new
        if done:
            break
    return torch.from_numpy(c).to(torch.float32)


def _levels_array(levels: object) -> np.ndarray:
    if isinstance(levels, torch.Tensor):
        arr = levels.detach().to(torch.float64).cpu().numpy()
    else:
        check_instance("levels", levels, (np.ndarray, list, tuple))
        try:
            arr = np.asarray(levels, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"levels must hold real numbers ({err})") from None
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"levels must be 1-D with at least 2 entries, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("levels must hold only finite values (no NaN or inf)")
    if np.any(np.diff(arr) < 0):
        raise ValueError("levels must be sorted in increasing order")
    return arr


def gaussian_level_probabilities(levels: object) -> np.ndarray:
    """P(level i is chosen) for X ~ N(0, 1) quantized to the nearest of ``levels`` (units of σ).

    Ties go to the lower level, as in :func:`lora_edu.quant.quantize_4bit` (a tie has probability 0
    here, but a repeated level gets probability 0 on its upper copy).
    """
    arr = _levels_array(levels)
    t = np.concatenate([[-np.inf], 0.5 * (arr[:-1] + arr[1:]), [np.inf]])
    cdf = _norm().cdf
    return cdf(t[1:]) - cdf(t[:-1])


def gaussian_quantizer_mse(levels: object) -> float:
    """Exact E[(X − q(X))²] for X ~ N(0, 1) and q the nearest-level quantizer on ``levels``.

    Levels are in units of σ and nothing is clipped (the outer cells extend to ±∞):
    Σ_i ∫_{t_{i−1}}^{t_i} (x − c_i)² φ(x) dx, each cell by its closed-form moments
    ∫φ = ΔΦ, ∫xφ = −Δφ, ∫x²φ = ΔΦ − Δ(xφ).
    """
    arr = _levels_array(levels)
    t = np.concatenate([[-np.inf], 0.5 * (arr[:-1] + arr[1:]), [np.inf]])
    p0, p1, p2 = _interval_moments(t[:-1], t[1:])
    return float(np.sum(p2 - 2 * arr * p1 + arr**2 * p0))


def check_code(code: object, name: str = "code") -> torch.Tensor:
    """Validate a 16-level 4-bit code and return it as a contiguous float32 CPU tensor.

    It must be a 1-D float tensor (or sequence of numbers) of exactly 16 finite levels sorted in
    non-decreasing order (a repeated level, like FP4's ±0, is allowed).
    """
    if isinstance(code, (list, tuple, np.ndarray)):
        try:
            code = torch.as_tensor(np.asarray(code, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must hold 16 real numbers ({err})") from None
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a sequence of 16 numbers, "
                        f"got {type(code).__name__}")
    if not code.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {code.dtype}")
    if code.shape != (16,):
        raise ValueError(f"{name} must have exactly 16 levels (shape (16,)), "
                         f"got shape {tuple(code.shape)}")
    code = code.detach().to(device="cpu", dtype=torch.float32).contiguous()
    check_tensor(name, code, finite=True)
    if bool((code[1:] < code[:-1]).any()):
        raise ValueError(f"{name} must be sorted in increasing order")
    return code


def code_thresholds(code: torch.Tensor) -> torch.Tensor:
    """The 15 decision thresholds of a code: midpoints ½(c_i + c_{i+1}) rounded to float32.

    (Computed as a float64 sum, which is exact, then rounded: the same numbers as bitsandbytes'
    float32 ``(code[:-1] + code[1:]) / 2``, since halving commutes with rounding.)
    A normalized value v gets index i with t_{i−1} < v ≤ t_i: at an exact tie the lower code
    wins. For NF4, t_12 = ½(0.44071 + 0.56262) = 0.50166, so 0.5 maps to index 12 (0.4407).
    Rounding to float32 moves 6 of NF4's 15 midpoints up by less than 3e-8; a v equal to such a
    rounded midpoint still takes the lower level, though the upper one is nearer by that much.
    """
    c = check_code(code).to(torch.float64)
    return ((c[:-1] + c[1:]) / 2).to(torch.float32)
