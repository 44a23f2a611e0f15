"""Exact storage arithmetic of blockwise 4-bit quantization with and without double quantization.

The source document (source §4.2(2), 双量化 / double quantization) states that quantizing the
32-bit quantization constants (量化常数) once more, to 8 bits, cuts their overhead (额外开销)
from 0.5 bit to 0.127 bit per parameter. With one constant per block of ``blocksize`` weights
and one second-level constant per block of ``blocksize2`` first-level constants
(QLoRA, Dettmers et al. 2023, §3):

.. math::

    \\text{overhead}_\\text{plain} = \\frac{c}{b_1} = \\frac{32}{64} = \\frac12,\\qquad
    \\text{overhead}_\\text{DQ} = \\frac{c_2}{b_1} + \\frac{c}{b_1 b_2}
        = \\frac{8}{64} + \\frac{32}{64\\cdot 256} = \\frac{65}{512},

so the saving is :math:`191/512 = 0.373046875` bit per parameter. Every function here returns
an exact :class:`fractions.Fraction` (or an exact integer count of bits); ``float()`` it for
display. The mechanism itself lives in :mod:`lora_edu.quant`, which re-exports this module.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral

from lora_edu.checks import check_instance, check_int, check_power_of_two

__all__ = [
    "constant_overhead_bits",
    "dq_constant_overhead_bits",
    "dq_saving_bits",
    "bits_per_param",
    "model_bytes",
    "dq_saving_bytes",
    "quantized_storage_bits",
]


def _check_pow2(value: object, name: str, minimum: int = 1) -> int:
    return check_power_of_two(name, value, minimum)


def _check_bits(value: object, name: str) -> int:
    return check_int(name, value, 1)


def _check_count(value: object, name: str) -> int:
    return check_int(name, value, 1)


def _check_exact_bits(bits: object) -> Fraction:
    """A positive int or Fraction number of bits (``check_int`` does not take Fractions)."""
    if isinstance(bits, bool) or not isinstance(bits, (Integral, Fraction)):
        raise TypeError(f"bits must be an int or Fraction, got {type(bits).__name__}")
    if bits <= 0:
        raise ValueError(f"bits must be > 0, got {bits}")
    return Fraction(bits)


def constant_overhead_bits(blocksize: int = 64, const_bits: int = 32) -> Fraction:
    """Bits per parameter spent on the per-block constants without double quantization.

    ``const_bits / blocksize``; the QLoRA default 32/64 = 1/2 bit (source §4.2(2): "0.5bit/参数").
    """
    blocksize = _check_pow2(blocksize, "blocksize")
    const_bits = _check_bits(const_bits, "const_bits")
    return Fraction(const_bits, blocksize)


def dq_constant_overhead_bits(blocksize: int = 64, blocksize2: int = 256, code_bits: int = 8,
                              const_bits: int = 32) -> Fraction:
    """Bits per parameter spent on the constants with double quantization.

    Each first-level constant becomes a ``code_bits`` code (``code_bits / blocksize`` per
    parameter); each block of ``blocksize2`` codes keeps one ``const_bits`` scale
    (``const_bits / (blocksize * blocksize2)`` per parameter). QLoRA's 8/64 + 32/(64·256) =
    65/512 ≈ 0.127 bit (source §4.2(2): "0.127bit/参数"). The single float32 mean offset per
    tensor is not included (it vanishes per parameter); :func:`quantized_storage_bits` counts it.
    """
    blocksize = _check_pow2(blocksize, "blocksize")
    blocksize2 = _check_pow2(blocksize2, "blocksize2", minimum=2)
    code_bits = _check_bits(code_bits, "code_bits")
    const_bits = _check_bits(const_bits, "const_bits")
    return Fraction(code_bits, blocksize) + Fraction(const_bits, blocksize * blocksize2)


def dq_saving_bits(blocksize: int = 64, blocksize2: int = 256, code_bits: int = 8,
                   const_bits: int = 32) -> Fraction:
    """Bits per parameter saved by double quantization: 1/2 − 65/512 = 191/512 = 0.373046875.

    The constants' cost falls from 32/64 = 1/2 to 8/64 + 32/(64·256) = 65/512 ≈ 0.127 bit per
    parameter at QLoRA's block sizes (source §4.2 (2)).
    """
    return (constant_overhead_bits(blocksize, const_bits)
            - dq_constant_overhead_bits(blocksize, blocksize2, code_bits, const_bits))


def bits_per_param(weight_bits: int = 4, blocksize: int = 64, *, double_quant: bool = True,
                   blocksize2: int = 256, code_bits: int = 8, const_bits: int = 32) -> Fraction:
    """Total bits per parameter of a blockwise-quantized weight in the large-tensor limit.

    ``weight_bits + overhead``: 4 + 1/2 = 9/2 without double quantization, 4 + 65/512 = 2113/512
    ≈ 4.127 with it (QLoRA defaults). Partial blocks and the per-tensor offset are left out here;
    see :func:`quantized_storage_bits` for the exact count of one tensor. Source §4.2 (1), (2).
    """
    weight_bits = _check_bits(weight_bits, "weight_bits")
    check_instance("double_quant", double_quant, bool)
    if double_quant:
        return weight_bits + dq_constant_overhead_bits(blocksize, blocksize2, code_bits,
                                                       const_bits)
    return weight_bits + constant_overhead_bits(blocksize, const_bits)


def model_bytes(n_params: int, bits: Fraction | int) -> Fraction:
    """Bytes taken by ``n_params`` parameters at ``bits`` bits each: ``n_params · bits / 8``.

    Decimal gigabytes are ``model_bytes(...) / 10**9`` (the unit of "≈ 3 GB for 65B" in QLoRA).
    """
    n_params = _check_count(n_params, "n_params")
    return Fraction(n_params) * _check_exact_bits(bits) / 8


def dq_saving_bytes(n_params: int, blocksize: int = 64, blocksize2: int = 256,
                    code_bits: int = 8, const_bits: int = 32) -> Fraction:
    """Bytes saved by double quantization on ``n_params`` parameters (source §4.2 (2)).

    65·10⁹ · 191/512 / 8 = 3 031 005 859.375 bytes ≈ 3.03 GB for a 65B model.
    """
    return model_bytes(n_params, dq_saving_bits(blocksize, blocksize2, code_bits, const_bits))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def quantized_storage_bits(n_params: int, blocksize: int = 64, *, double_quant: bool = True,
                           blocksize2: int = 256, weight_bits: int = 4, code_bits: int = 8,
                           const_bits: int = 32) -> int:
    """Exact bits stored for one tensor of ``n_params`` values, partial blocks and offset included.

    The layout of :func:`lora_edu.quant.quantize_4bit` (and bitsandbytes): the codes take
    ``⌈n · weight_bits / 8⌉`` whole bytes (no padding to whole blocks; for 4-bit codes an odd
    count leaves one unused nibble); ``nb = ⌈n/blocksize⌉`` blocks, the last one possibly
    partial, each with one constant: ``nb · const_bits`` bits, or with double quantization
    ``nb · code_bits`` bits of codes, ``⌈nb/blocksize2⌉ · const_bits`` bits of second-level
    scales and ``const_bits`` bits for the one mean offset. Fixed code tables (shared by every
    tensor) are not counted.
    """
    n_params = _check_count(n_params, "n_params")
    blocksize = _check_pow2(blocksize, "blocksize")
    blocksize2 = _check_pow2(blocksize2, "blocksize2", minimum=2)
    weight_bits = _check_bits(weight_bits, "weight_bits")
    code_bits = _check_bits(code_bits, "code_bits")
    const_bits = _check_bits(const_bits, "const_bits")
    check_instance("double_quant", double_quant, bool)
    nb = _ceil_div(n_params, blocksize)
    bits = 8 * _ceil_div(n_params * weight_bits, 8)
    if double_quant:
        return bits + nb * code_bits + _ceil_div(nb, blocksize2) * const_bits + const_bits
    return bits + nb * const_bits
