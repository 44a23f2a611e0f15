"""lora_edu.quant stores the same bytes as bitsandbytes (CPU) and decodes to the same values.

Compared with ``bitsandbytes.functional.quantize_4bit(x, blocksize=B, quant_type="nf4",
compress_statistics=dq)`` on CPU float32 (and float16 / bfloat16 input): the packed 4-bit codes,
the float32 absmax, or with double quantization the 8-bit codes of the constants, their
per-256 scales, the offset and the 8-bit code table; then ``dequantize_4bit`` of both. bitsandbytes
is imported only by tests; where it is missing they skip, except under scripts/check.sh (and CI),
where they fail (``helpers.require``).
"""

from __future__ import annotations

import pytest
import torch
from helpers import require

from lora_edu.quant import (
    code_thresholds,
    dequantize_4bit,
    dequantize_4bit_reference,
    dynamic_code,
    nf4_code,
    quantize_4bit,
)

F = require("bitsandbytes.functional")

# bitsandbytes dequantizes odd shapes through torch.compile; eager mode gives the same values and
# saves seconds of compilation per block size.
no_compile = torch._dynamo.config.patch(disable=True)


def bnb_fields(x: torch.Tensor, blocksize: int, dq: bool) -> tuple[dict, torch.Tensor]:
    """What bitsandbytes stores for x, and its dequantized tensor."""
    with no_compile:
        packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4",
                                        compress_statistics=dq)
        decoded = F.dequantize_4bit(packed, state)
    if dq:
        fields = {"packed": packed.reshape(-1), "codes": state.absmax, "offset": state.offset,
                  "scales": state.state2.absmax, "table": state.state2.code,
                  "blocksize2": state.state2.blocksize}
    else:
        fields = {"packed": packed.reshape(-1), "absmax": state.absmax}
    return fields, decoded


def our_fields(q) -> dict:
    if q.absmax_dq is None:
        return {"packed": q.packed, "absmax": q.absmax}
    qc = q.absmax_dq
    return {"packed": q.packed, "codes": qc.codes, "offset": qc.offset, "scales": qc.scales,
            "table": qc.code, "blocksize2": qc.blocksize2}


def assert_identical(x: torch.Tensor, blocksize: int, dq: bool, decode: bool = True) -> None:
    theirs, decoded = bnb_fields(x, blocksize, dq)
    q = quantize_4bit(x, blocksize, double_quant=dq)
    ours = our_fields(q)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert ours[key].dtype == value.dtype, key
            assert torch.equal(ours[key], value), (key, x.numel(), blocksize, dq)
        else:
            assert ours[key] == value, key
    if decode:
        ours_decoded = dequantize_4bit(q)
        # (bitsandbytes' CPU kernel returns a 1-D tensor of even length as shape (1, n))
        assert ours_decoded.shape == x.shape and ours_decoded.dtype == decoded.dtype
        assert torch.equal(ours_decoded.reshape(-1), decoded.reshape(-1)), (x.numel(), blocksize)


def randn(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=torch.float64, generator=g).float() * 0.02


@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("blocksize", [64, 128, 256, 4096])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 100, 4096 * 3 + 7])
def test_random_tensors(n, blocksize, dq):
    assert_identical(randn(n, seed=n + blocksize), blocksize, dq)


@pytest.mark.parametrize("blocksize, dq", [(64, True), (4096, False)])
def test_a_4096x4096_weight_plus_7(blocksize, dq):
    """16.8M values: 262,145 blocks of 64 (the last one of 7 values) and 1,025 blocks of 256
    constants, or 4,097 blocks of 4096."""
    assert_identical(randn(4096 * 4096 + 7, seed=1), blocksize, dq)


def edge_tensor() -> torch.Tensor:
    """Ties on every float32 threshold (absmax 1 and absmax 0.7, so v = x·fl(1/0.7)), ±absmax,
    all-zero blocks (a full one and, last, a partial one), values below the 1e-38 guard, and a
    partial last block with ties (v = x / m there)."""
    t = code_thresholds(nf4_code())
    up, down = torch.nextafter(t, torch.tensor(2.0)), torch.nextafter(t, torch.tensor(-2.0))
    probe = torch.cat([t, up, down, torch.tensor([-1.0, 1.0, 0.0, -0.0])])  # 49 values
    parts = [torch.cat([probe, torch.ones(15)]),
             torch.cat([probe * 0.7, torch.full((15,), -0.7)]),
             torch.cat([probe * 3.3, torch.full((15,), 3.3)]),
             torch.zeros(64),
             torch.full((64,), 3e-39),
             torch.cat([probe[:48] * 0.37, torch.tensor([0.37])])]  # a partial block of 49
    return torch.cat(parts)


@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
def test_ties_zero_and_tiny_blocks(dq):
    x = edge_tensor()
    assert_identical(x, 64, dq)
    q = quantize_4bit(x, 64)
    assert bool((q.packed[96:128] == 0x77).all())  # the all-zero block, as bitsandbytes packs it
    assert_identical(torch.cat([x[:-49], torch.zeros(30)]), 64, dq)  # all-zero partial block
    assert_identical(torch.zeros(200), 64, dq)                        # all zero: offset 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_bytes(dtype):
    x = torch.cat([randn(4096 + 33, seed=3) * 50, edge_tensor()]).to(dtype)
    for dq in (False, True):
        assert_identical(x, 64, dq, decode=False)  # bytes only: half outputs round differently


def test_second_level_code_is_bitsandbytes_dynamic_map():
    """dynamic_code() is create_dynamic_map() bit for bit (both evaluated in float32 the same way);
    the table bitsandbytes stores with the constants is that map too."""
    theirs = F.create_dynamic_map()
    ours = dynamic_code()
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)
    _, state = F.quantize_4bit(randn(64 * 300, seed=4), blocksize=64, quant_type="nf4",
                               compress_statistics=True)
    assert torch.equal(state.state2.code, ours)


def test_reference_and_nf4_table_agree_with_bitsandbytes():
    assert torch.equal(nf4_code(), F.get_4bit_type("nf4", device="cpu"))
    x = torch.cat([randn(1000, seed=5), edge_tensor()])
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    from lora_edu.quant import quantize_4bit_reference

    r = quantize_4bit_reference(x, 64)
    assert torch.equal(r.packed, packed.reshape(-1)) and torch.equal(r.absmax, state.absmax)
    with no_compile:
        assert torch.equal(dequantize_4bit_reference(r), F.dequantize_4bit(packed, state))


@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("blocksize", [64, 128, 4096])
def test_whole_decode_steps_and_a_few_blocks_more(blocksize, dq):
    """dequantize_4bit decodes whole steps of _STEP_BYTES packed bytes, then the rest: sizes of
    exactly two steps, and two steps plus three blocks, decode as bitsandbytes decodes them."""
    from lora_edu.quant.blockwise import _STEP_BYTES

    n = 2 * (2 * _STEP_BYTES)
    assert_identical(randn(n, seed=11), blocksize, dq)
    assert_identical(randn(n + 3 * blocksize, seed=12), blocksize, dq)
