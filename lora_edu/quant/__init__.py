"""Quantization for QLoRA (chapters 4 and 5): NF4 and the other 4-bit codes, blockwise absmax
quantization with bitsandbytes' packing, double quantization of the constants, and the exact
bit arithmetic.

Everything public is imported from here::

    from lora_edu.quant import nf4_code, quantize_4bit, dequantize_4bit, bits_per_param

The modules behind it: ``codes`` (the 16-level codes from their closed forms, source §4.2 (1)),
``blockwise`` (absmax blocks, nibble packing; a readable reference implementation,
``quantize_4bit_reference``, next to the fast ``quantize_4bit``), ``double_quant`` (8-bit codes
for the constants, source §4.2 (2)) and ``arithmetic`` (exact ``Fraction`` bit counts: 0.5 →
0.127 bit).

The stored bytes equal bitsandbytes' (``bitsandbytes.functional.quantize_4bit(x, blocksize,
quant_type="nf4", compress_statistics=...)`` on the CPU) for every size and block size; the
module docstrings of ``blockwise`` and ``double_quant`` list the arithmetic that requires.
Importing this package does not import SciPy; building a code table does, once.
"""

from lora_edu.quant.arithmetic import (
    bits_per_param,
    constant_overhead_bits,
    dq_constant_overhead_bits,
    dq_saving_bits,
    dq_saving_bytes,
    model_bytes,
    quantized_storage_bits,
)
from lora_edu.quant.blockwise import (
    MAX_BLOCKSIZE,
    MIN_BLOCKSIZE,
    QuantizedTensor,
    block_normalize,
    code_indices,
    code_usage,
    dequantize_4bit,
    dequantize_4bit_reference,
    entropy_bits,
    pack_nibbles,
    quantization_error,
    quantize_4bit,
    quantize_4bit_reference,
    unpack_nibbles,
)
from lora_edu.quant.codes import (
    FP4_VARIANTS,
    NF4_OFFSET,
    check_code,
    code_thresholds,
    eq4_literal_levels,
    fp4_code,
    gaussian_level_probabilities,
    gaussian_quantizer_mse,
    int4_code,
    lloyd_code_from_samples,
    lloyd_max_code,
    lloyd_max_levels,
    nf4_code,
    normal_float_code,
    normal_float_offset,
)
from lora_edu.quant.double_quant import (
    BNB_GRID,
    CODE_NAMES,
    QuantizedConstants,
    dequantize_constants,
    dynamic_code,
    fp8_code,
    linear_code,
    parameter_count,
    quantize_constants,
    quantize_with_code,
    second_level_code,
    storage_bits,
    storage_bits_per_param,
)

__all__ = [
    # codes
    "NF4_OFFSET", "FP4_VARIANTS", "normal_float_offset", "normal_float_code", "nf4_code",
    "eq4_literal_levels", "int4_code", "fp4_code", "lloyd_max_levels", "lloyd_max_code",
    "lloyd_code_from_samples", "gaussian_quantizer_mse", "gaussian_level_probabilities",
    "check_code", "code_thresholds",
    # blockwise
    "QuantizedTensor", "quantize_4bit", "dequantize_4bit", "quantize_4bit_reference",
    "dequantize_4bit_reference", "block_normalize", "pack_nibbles",
    "unpack_nibbles", "code_indices", "code_usage", "entropy_bits", "quantization_error",
    "MIN_BLOCKSIZE", "MAX_BLOCKSIZE",
    # double quantization
    "QuantizedConstants", "CODE_NAMES", "BNB_GRID", "dynamic_code", "fp8_code", "linear_code",
    "second_level_code", "quantize_with_code", "quantize_constants", "dequantize_constants",
    "storage_bits", "storage_bits_per_param", "parameter_count",
    # exact arithmetic
    "constant_overhead_bits", "dq_constant_overhead_bits", "dq_saving_bits", "bits_per_param",
    "model_bytes", "dq_saving_bytes", "quantized_storage_bits",
]
