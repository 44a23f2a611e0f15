"""Bad input to lora_edu.quant: a wrong type raises TypeError, a wrong value ValueError, and the
message starts with the name of the argument at fault (``"blocksize must be ..."``)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from lora_edu.quant import (
    BNB_GRID,
    bits_per_param,
    block_normalize,
    check_code,
    code_indices,
    code_thresholds,
    constant_overhead_bits,
    dequantize_4bit,
    dequantize_4bit_reference,
    dequantize_constants,
    dq_constant_overhead_bits,
    dq_saving_bytes,
    dynamic_code,
    entropy_bits,
    fp4_code,
    fp8_code,
    gaussian_level_probabilities,
    gaussian_quantizer_mse,
    lloyd_code_from_samples,
    lloyd_max_levels,
    model_bytes,
    nf4_code,
    normal_float_code,
    pack_nibbles,
    parameter_count,
    quantization_error,
    quantize_4bit,
    quantize_4bit_reference,
    quantize_constants,
    quantize_with_code,
    quantized_storage_bits,
    second_level_code,
    storage_bits,
    storage_bits_per_param,
    unpack_nibbles,
)

X = torch.linspace(-1, 1, 128)
Q = quantize_4bit(X.view(2, 64))
DYN = dynamic_code()
ABSMAX = X.abs() + 0.1


def _with(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = X.to(dtype).clone()
    x[5] = value
    return x


CASES = [
    # quantize_4bit / quantize_4bit_reference / block_normalize
    ("quantize list", lambda: quantize_4bit([1.0, 2.0]), TypeError, "x"),
    ("quantize int tensor", lambda: quantize_4bit(torch.arange(64)), TypeError, "x"),
    ("quantize NaN", lambda: quantize_4bit(_with(math.nan)), ValueError, "x"),
    ("quantize inf", lambda: quantize_4bit(_with(math.inf)), ValueError, "x"),
    ("quantize -inf fp16", lambda: quantize_4bit(_with(-math.inf, torch.float16)), ValueError, "x"),
    ("quantize 1e300 float64", lambda: quantize_4bit(_with(1e300, torch.float64)), ValueError, "x"),
    ("blocksize 48", lambda: quantize_4bit(X, 48), ValueError, "blocksize"),
    ("blocksize 16", lambda: quantize_4bit(X, 16), ValueError, "blocksize"),
    ("blocksize 8192", lambda: quantize_4bit(X, 8192), ValueError, "blocksize"),
    ("blocksize float", lambda: quantize_4bit(X, 64.0), TypeError, "blocksize"),
    ("blocksize bool", lambda: quantize_4bit(X, True), TypeError, "blocksize"),
    ("code 8 levels", lambda: quantize_4bit(X, 64, torch.linspace(-1, 1, 8)), ValueError, "code"),
    ("code unsorted", lambda: quantize_4bit(X, 64, nf4_code().flip(0)), ValueError, "code"),
    ("code int", lambda: quantize_4bit(X, 64, torch.arange(16)), TypeError, "code"),
    ("code str", lambda: quantize_4bit(X, 64, "nf4"), TypeError, "code"),
    ("double_quant int", lambda: quantize_4bit(X, double_quant=1), TypeError, "double_quant"),
    ("blocksize2 3", lambda: quantize_4bit(X, double_quant=True, blocksize2=3), ValueError,
     "blocksize2"),
    ("blocksize2 float", lambda: quantize_4bit(X, double_quant=True, blocksize2=2.0), TypeError,
     "blocksize2"),
    ("reference blocksize", lambda: quantize_4bit_reference(X, 100), ValueError, "blocksize"),
    ("reference int tensor", lambda: quantize_4bit_reference(torch.arange(4)), TypeError, "x"),
    ("reference 1e300", lambda: quantize_4bit_reference(_with(1e300, torch.float64)), ValueError,
     "x"),
    ("block_normalize blocksize", lambda: block_normalize(X, 100), ValueError, "blocksize"),
    ("quantization_error empty", lambda: quantization_error(torch.zeros(0)), ValueError, "x"),
    # dequantize / unpacking
    ("dequantize tensor", lambda: dequantize_4bit(X), TypeError, "q"),
    ("dequantize out shape", lambda: dequantize_4bit(Q, out=torch.empty(8, 65)), ValueError, "out"),
    ("dequantize out list", lambda: dequantize_4bit(Q, out=[0.0] * 128), TypeError, "out"),
    ("dequantize_reference str", lambda: dequantize_4bit_reference("q"), TypeError, "q"),
    ("pack float", lambda: pack_nibbles(torch.tensor([1.0])), TypeError, "indices"),
    ("pack 16", lambda: pack_nibbles(torch.tensor([16, 0])), ValueError, "indices"),
    ("pack list", lambda: pack_nibbles([1, 2]), TypeError, "indices"),
    ("unpack int64", lambda: unpack_nibbles(torch.tensor([1])), TypeError, "packed"),
    ("code_indices tensor", lambda: code_indices(X), TypeError, "q"),
    ("entropy list", lambda: entropy_bits([1, 2]), TypeError, "counts"),
    ("entropy zeros", lambda: entropy_bits(torch.zeros(16)), ValueError, "counts"),
    # code tables
    ("nf bits 1", lambda: normal_float_code(1), ValueError, "bits"),
    ("nf bits float", lambda: normal_float_code(4.0), TypeError, "bits"),
    ("nf offset 1", lambda: normal_float_code(4, offset=1.0), ValueError, "offset"),
    ("nf offset str", lambda: normal_float_code(4, offset="0.97"), TypeError, "offset"),
    ("nf symmetric int", lambda: normal_float_code(4, symmetric=1), TypeError, "symmetric"),
    ("fp4 variant", lambda: fp4_code("e3m0"), ValueError, "variant"),
    ("fp4 variant int", lambda: fp4_code(1), TypeError, "variant"),
    ("lloyd bits 0", lambda: lloyd_max_levels(0), ValueError, "bits"),
    ("lloyd tol 0", lambda: lloyd_max_levels(4, tol=0.0), ValueError, "tol"),
    ("lloyd samples list", lambda: lloyd_code_from_samples([1.0] * 20), TypeError, "samples"),
    ("lloyd samples few", lambda: lloyd_code_from_samples(torch.zeros(3)), ValueError, "samples"),
    ("lloyd samples int", lambda: lloyd_code_from_samples(torch.arange(40)), TypeError, "samples"),
    ("lloyd iters 0", lambda: lloyd_code_from_samples(X, iters=0), ValueError, "iters"),
    ("mse levels unsorted", lambda: gaussian_quantizer_mse([1.0, 0.0]), ValueError, "levels"),
    ("probabilities str", lambda: gaussian_level_probabilities("abc"), TypeError, "levels"),
    ("check_code NaN", lambda: check_code(torch.tensor([math.nan] + [0.0] * 15)), ValueError,
     "code"),
    ("thresholds 15 levels", lambda: code_thresholds(torch.linspace(-1, 1, 15)), ValueError,
     "code"),
    # double quantization
    ("dynamic bits 9", lambda: dynamic_code(9), ValueError, "bits"),
    ("dynamic bits float", lambda: dynamic_code(8.0), TypeError, "bits"),
    ("fp8 fmt", lambda: fp8_code("e3m4"), ValueError, "fmt"),
    ("second code name", lambda: second_level_code("int8"), ValueError, "code"),
    ("second code list", lambda: second_level_code([0.0] * 256), TypeError, "code"),
    ("second code range", lambda: second_level_code(torch.linspace(-2, 2, 256)), ValueError,
     "code"),
    ("second code nan first", lambda: second_level_code(torch.cat([torch.tensor([math.nan]),
                                                                  DYN[1:]])), ValueError, "code"),
    ("with_code list", lambda: quantize_with_code([0.5], DYN), TypeError, "values"),
    ("with_code NaN", lambda: quantize_with_code(torch.tensor([math.nan]), DYN), ValueError,
     "values"),
    ("with_code int table", lambda: quantize_with_code(X, torch.arange(256)), TypeError, "code"),
    ("with_code grid 1", lambda: quantize_with_code(X, DYN, grid=1), ValueError, "grid"),
    ("with_code grid float", lambda: quantize_with_code(X, DYN, grid=65536.0), TypeError, "grid"),
    ("constants list", lambda: quantize_constants([1.0, 2.0]), TypeError, "absmax"),
    ("constants 2-D", lambda: quantize_constants(torch.ones(2, 2)), ValueError, "absmax"),
    ("constants int", lambda: quantize_constants(torch.arange(4)), TypeError, "absmax"),
    ("constants inf", lambda: quantize_constants(torch.tensor([1.0, math.inf])), ValueError,
     "absmax"),
    ("constants blocksize2", lambda: quantize_constants(ABSMAX, 100), ValueError, "blocksize2"),
    ("constants center int", lambda: quantize_constants(ABSMAX, center=1), TypeError, "center"),
    ("constants grid 0", lambda: quantize_constants(ABSMAX, grid=0), ValueError, "grid"),
    ("dequantize_constants", lambda: dequantize_constants(torch.ones(3)), TypeError, "qc"),
    ("storage_bits tensor", lambda: storage_bits(torch.ones(3)), TypeError, "q"),
    ("storage_bits flag", lambda: storage_bits(Q, count_code_tables=1), TypeError,
     "count_code_tables"),
    ("per_param exact", lambda: storage_bits_per_param(Q, exact="yes"), TypeError, "exact"),
    ("parameter_count int", lambda: parameter_count(3), TypeError, "q"),
    # exact arithmetic
    ("overhead blocksize 48", lambda: constant_overhead_bits(48), ValueError, "blocksize"),
    ("overhead blocksize float", lambda: constant_overhead_bits(64.0), TypeError, "blocksize"),
    ("dq overhead blocksize2", lambda: dq_constant_overhead_bits(blocksize2=1), ValueError,
     "blocksize2"),
    ("dq overhead code_bits", lambda: dq_constant_overhead_bits(code_bits=0), ValueError,
     "code_bits"),
    ("bits_per_param flag", lambda: bits_per_param(double_quant="yes"), TypeError,
     "double_quant"),
    ("bits_per_param weight_bits", lambda: bits_per_param(weight_bits=-4), ValueError,
     "weight_bits"),
    ("model_bytes n 0", lambda: model_bytes(0, 4), ValueError, "n_params"),
    ("model_bytes bits float", lambda: model_bytes(10, 4.5), TypeError, "bits"),
    ("model_bytes bits 0", lambda: model_bytes(10, 0), ValueError, "bits"),
    ("dq_saving_bytes n", lambda: dq_saving_bytes(-7), ValueError, "n_params"),
    ("storage const_bits", lambda: quantized_storage_bits(10, const_bits=0), ValueError,
     "const_bits"),
    ("storage n float", lambda: quantized_storage_bits(10.0), TypeError, "n_params"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc) as err:
        call()
    assert type(err.value) is exc  # not a subclass or a different error that happens to match
    assert re.match(rf"{re.escape(name)}\b", str(err.value)), str(err.value)


def test_table_is_large_and_covers_both_kinds():
    assert len(CASES) >= 25
    assert {c[2] for c in CASES} == {TypeError, ValueError}


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    x = torch.randn(300, generator=torch.Generator().manual_seed(0))
    q = quantize_4bit(x, np.int64(64), double_quant=True, blocksize2=np.int32(4))
    ref = quantize_4bit(x, 64, double_quant=True, blocksize2=4)
    assert torch.equal(q.packed, ref.packed) and q.blocksize == 64 and type(q.blocksize) is int
    assert torch.equal(q.absmax_dq.codes, ref.absmax_dq.codes)
    assert torch.equal(normal_float_code(np.int64(4), np.float64(0.9677083)), nf4_code())
    assert torch.equal(dynamic_code(np.uint8(8)), dynamic_code())
    assert np.array_equal(lloyd_max_levels(np.int16(3)), lloyd_max_levels(3))
    assert constant_overhead_bits(np.int64(128)) == constant_overhead_bits(128)
    assert model_bytes(np.int64(10), np.int64(4)) == model_bytes(10, 4)
    v = torch.linspace(-1, 1, 101)
    assert torch.equal(quantize_with_code(v, DYN, grid=np.int64(BNB_GRID)),
                       quantize_with_code(v, DYN, grid=BNB_GRID))
    assert torch.equal(quantize_4bit_reference(x, np.int32(32)).packed, quantize_4bit(x, 32).packed)
