"""Tests of lora_edu.quant: blockwise 4-bit quantization, packing, round trip, usage entropy, and
the fast quantizer against the reference one, byte for byte."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from lora_edu.quant import (
    QuantizedTensor,
    block_normalize,
    code_indices,
    code_thresholds,
    code_usage,
    dequantize_4bit,
    dequantize_4bit_reference,
    entropy_bits,
    fp4_code,
    int4_code,
    lloyd_code_from_samples,
    lloyd_max_code,
    nf4_code,
    normal_float_code,
    pack_nibbles,
    quantization_error,
    quantize_4bit,
    quantize_4bit_reference,
    unpack_nibbles,
)
from lora_edu.quant.blockwise import _grid_tables  # the fast path's tables

ALL_CODES = {
    "nf4": nf4_code(), "int4": int4_code(), "fp4": fp4_code(), "fp4_bnb": fp4_code("bnb"),
    "lloyd_max": lloyd_max_code(), "nf4_sym": normal_float_code(4, symmetric=True),
}


# Half the widest gap of QLoRA's published NF4 table: the outermost negative gap, -1 -> -0.6961928
# (the negative half has one level fewer than the positive half). Chapter 4's per-block error bound
# is this times the block's absmax.
HALF_WIDEST_NF4_GAP = (1 - 0.6961928009986877) / 2  # 0.1519


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def test_pack_vectors():
    q = quantize_4bit(torch.tensor([-1.0, 1.0]))
    assert q.packed.dtype == torch.uint8
    assert q.packed.tolist() == [0x0F]
    q = quantize_4bit(torch.tensor([0.5, -0.25, 1.0]))
    # ceil(3/2) = 2 bytes; the odd count is completed by a padding 0 -> index 7 (exact 0)
    assert q.packed.tolist() == [0xC4, 0xF7]
    assert q.absmax.tolist() == [1.0]
    out = dequantize_4bit(q)
    assert out.tolist() == pytest.approx([0.44070982933044434, -0.28444138169288635, 1.0],
                                         abs=1e-7)


def test_ties_go_to_the_lower_code():
    code = nf4_code()
    # a value exactly on a float32 threshold (here scaled by absmax 1) takes the lower index
    t = ((code[12].double() + code[13].double()) / 2).float()
    x = torch.tensor([t.item(), 1.0])
    assert code_indices(quantize_4bit(x)).tolist() == [12, 15]
    x = torch.tensor([torch.nextafter(t, torch.tensor(2.0)).item(), 1.0])
    assert code_indices(quantize_4bit(x)).tolist() == [13, 15]


def test_pack_unpack_layout():
    idx = torch.tensor([1, 2, 15, 0, 7, 9], dtype=torch.uint8)
    packed = pack_nibbles(idx)
    assert packed.tolist() == [0x12, 0xF0, 0x79]
    assert torch.equal(unpack_nibbles(packed), idx)
    # an odd count: the last low nibble is 0
    assert pack_nibbles(idx[:5]).tolist() == [0x12, 0xF0, 0x70]


@pytest.mark.parametrize("name", list(ALL_CODES))
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_round_trip_error_bound(name, blocksize):
    code = ALL_CODES[name]
    x = randn(33, 129, seed=blocksize) * 3
    q = quantize_4bit(x, blocksize, code)
    xh = dequantize_4bit(q)
    assert xh.shape == x.shape and xh.dtype == x.dtype
    n = x.numel()
    nb = -(-n // blocksize)
    padded = torch.zeros(nb * blocksize)
    padded[:n] = x.reshape(-1)
    absmax = padded.view(nb, blocksize).abs().amax(1)
    assert torch.equal(q.absmax, absmax)
    inside = code[(code >= -1) & (code <= 1)].double()
    half_gap = float((inside[1:] - inside[:-1]).max()) / 2
    bound = (half_gap + 1e-6) * absmax.repeat_interleave(blocksize)[:n]
    err = (xh - x).abs().reshape(-1)
    assert bool((err <= bound).all())
    # and the error is not trivially zero
    assert float(err.max()) > 0.1 * float(bound.max())


def test_nearest_level_against_brute_force():
    x = randn(4096, seed=3)
    code = nf4_code()
    q = quantize_4bit(x, 64, code)
    v = (x.view(-1, 64) / x.view(-1, 64).abs().amax(1, keepdim=True)).reshape(-1)
    dist = (v[:, None].double() - code[None, :].double()).abs()
    # nearest level; no exact ties occur with random data
    assert torch.equal(code_indices(q).long(), dist.argmin(1))


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5, 7), (64,), (2, 64), (1000,)])
def test_shapes_and_partial_blocks(shape):
    x = randn(*shape, seed=len(shape))
    q = quantize_4bit(x, 32)
    n = math.prod(shape)
    assert q.numel == n
    assert q.packed.numel() == -(-n // 2)  # ceil(n/2) bytes: no padding to whole blocks
    assert q.absmax.shape == (-(-n // 32),) and q.absmax.dtype == torch.float32
    assert q.n_blocks == q.absmax.numel()
    if n % 2:  # the last low nibble holds the padding 0 (NF4 index 7)
        assert q.packed[-1].item() & 15 == 7
    out = dequantize_4bit(q)
    assert out.shape == torch.Size(shape)
    if n:  # per block: |x - x_hat| <= half the widest NF4 gap times the block's own absmax
        nb = -(-n // 32)
        padded, err = torch.zeros(nb * 32), torch.zeros(nb * 32)
        padded[:n], err[:n] = x.reshape(-1), (out - x).abs().reshape(-1)
        block_absmax = padded.view(nb, 32).abs().amax(1, keepdim=True)
        assert bool((err.view(nb, 32) <= (HALF_WIDEST_NF4_GAP + 1e-6) * block_absmax).all())


def test_widest_nf4_gap_is_the_outer_negative_one_and_bounds_the_error():
    gaps = nf4_code().double().diff()
    assert int(gaps.argmax()) == 0
    assert float(gaps.max()) / 2 == pytest.approx(HALF_WIDEST_NF4_GAP, abs=1e-7)
    # Blocks with absmax 1 (last element) sweeping [-1, 1]: the error never exceeds the bound and
    # reaches it at the midpoint of the widest gap, so the bound is tight.
    v = torch.linspace(-1, 1, 63 * 512)
    x = torch.cat([v.view(512, 63), torch.ones(512, 1)], dim=1)
    err = (dequantize_4bit(quantize_4bit(x, 64)) - x).abs()
    assert float(err.max()) <= HALF_WIDEST_NF4_GAP + 1e-6
    assert float(err.max()) > HALF_WIDEST_NF4_GAP - 1e-4
    worst = float(x.reshape(-1)[int(err.argmax())])
    assert -1 < worst < -0.6961928  # inside the outer negative gap


def test_zero_blocks_decode_to_zero():
    x = torch.zeros(4, 64)
    x[1] = randn(64)
    for code in ALL_CODES.values():
        q = quantize_4bit(x, 64, code)
        out = dequantize_4bit(q)
        assert not bool(torch.isnan(out).any())
        assert bool((out[0] == 0).all()) and bool((out[2:] == 0).all())
        assert q.absmax[0] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    x = randn(256, 3, seed=5, dtype=dtype)
    q = quantize_4bit(x, 64)
    assert q.dtype == dtype and q.absmax.dtype == torch.float32
    out = dequantize_4bit(q)
    assert out.dtype == dtype and out.shape == x.shape
    ref = dequantize_4bit(quantize_4bit(x.float(), 64))
    assert torch.equal(out, ref.to(dtype))


def test_out_argument():
    x = randn(8, 64, seed=2)
    q = quantize_4bit(x)
    out = torch.full_like(x, float("nan"))
    res = dequantize_4bit(q, out=out)
    assert res is out and torch.equal(out, dequantize_4bit(q))
    # padded case and half precision go through a temporary
    y = randn(100, seed=2, dtype=torch.bfloat16)
    qy = quantize_4bit(y)
    out = torch.empty(100, dtype=torch.bfloat16)
    assert torch.equal(dequantize_4bit(qy, out=out), dequantize_4bit(qy))
    with pytest.raises(ValueError, match="out"):
        dequantize_4bit(q, out=torch.empty(8, 65))
    with pytest.raises(ValueError, match="out"):
        dequantize_4bit(q, out=torch.empty(8, 64, dtype=torch.float64))


def test_double_quant_round_trip():
    from lora_edu.quant import QuantizedConstants, dequantize_constants

    x = randn(64, 1024, seed=7)
    q = quantize_4bit(x, 64, double_quant=True)
    assert q.absmax is None and isinstance(q.absmax_dq, QuantizedConstants)
    q_plain = quantize_4bit(x, 64)
    assert torch.equal(q.packed, q_plain.packed)  # DQ touches only the constants
    out = dequantize_4bit(q)
    ref = dequantize_4bit(q_plain)
    # decoded by hand: NF4 level of every index times its block's double-quantized constant
    c_hat = dequantize_constants(q.absmax_dq)
    by_hand = (q.code[code_indices(q).long()].view(-1, 64) * c_hat[:, None]).view(x.shape)
    assert torch.equal(out, by_hand)
    rmse_dq = float((out - x).pow(2).mean().sqrt())
    rmse = float((ref - x).pow(2).mean().sqrt())
    assert abs(rmse_dq / rmse - 1) < 0.01
    empty = quantize_4bit(torch.zeros(0), double_quant=True)
    assert dequantize_4bit(empty).shape == (0,)


def test_code_usage_and_entropy():
    x = randn(1 << 16, seed=11)
    q = quantize_4bit(x, 64)
    counts = code_usage(q)
    assert counts.shape == (16,) and int(counts.sum()) == x.numel()
    h = entropy_bits(counts)
    assert h == pytest.approx(scipy_entropy(counts.numpy(), base=2), abs=1e-12)
    # chapter 4: below 4 bits after absmax normalization, and lower for larger blocks
    assert h < 4 - 0.05
    assert entropy_bits(code_usage(quantize_4bit(x, 1024))) < h - 0.1
    # Int4 leaves its -8/7 code unused: at most log2(15) bits
    c_int = code_usage(quantize_4bit(x, 64, int4_code()))
    assert c_int[0] == 0
    assert entropy_bits(c_int) <= math.log2(15)
    assert entropy_bits(torch.ones(16)) == pytest.approx(4.0)
    assert entropy_bits(torch.tensor([5.0, 0, 0])) == 0.0
    with pytest.raises(ValueError, match="counts"):
        entropy_bits(torch.zeros(16))


def test_lloyd_max_beats_nf4_blockwise_at_64_and_expected_range():
    x = randn(1 << 17, seed=13)
    nf4 = quantization_error(x, 64, nf4_code())
    lm = quantization_error(x, 64, lloyd_max_code())
    int4 = quantization_error(x, 64, int4_code())
    assert lm <= nf4 <= int4
    assert 0.007 < nf4 < 0.0095 and 0.006 < lm < nf4


def test_broken_quantized_tensor_is_rejected():
    """A QuantizedTensor whose fields do not fit together fails loudly (bad calls: see
    tests/test_quant_bad_input.py)."""
    x = randn(64)
    q = quantize_4bit(x)
    broken = QuantizedTensor(q.packed[:4], q.absmax, None, q.shape, q.dtype, q.blocksize, q.code)
    with pytest.raises(ValueError, match="packed"):
        dequantize_4bit(broken)
    with pytest.raises(ValueError, match="packed"):
        dequantize_4bit_reference(broken)
    broken = QuantizedTensor(q.packed, q.absmax[:0], None, q.shape, q.dtype, q.blocksize, q.code)
    with pytest.raises(ValueError, match="absmax"):
        dequantize_4bit(broken)
    broken = QuantizedTensor(q.packed, None, None, q.shape, q.dtype, q.blocksize, q.code)
    with pytest.raises(ValueError, match="absmax"):
        dequantize_4bit(broken)


def test_empty_tensor():
    q = quantize_4bit(torch.empty(0, 5))
    assert q.packed.numel() == 0 and q.absmax.numel() == 0
    out = dequantize_4bit(q)
    assert out.shape == (0, 5)


def test_block_normalize_matches_quantizer_and_bounds():
    x = randn(1000, seed=21)
    v, absmax = block_normalize(x, 64)
    assert v.shape == (16, 64) and absmax.shape == (16,)
    assert float(v.abs().max()) <= 1.0 + 1e-7
    assert torch.allclose(v.abs().amax(1)[:-1], torch.ones(15))
    q = quantize_4bit(x, 64)
    assert torch.equal(q.absmax, absmax)
    with pytest.raises(ValueError, match="blocksize"):
        block_normalize(x, 100)


def test_empirical_lloyd_code_beats_nf4_on_its_blocksize():
    train, test = randn(1 << 17, seed=31), randn(1 << 17, seed=32)
    v, _ = block_normalize(train, 64)
    code = lloyd_code_from_samples(v.reshape(-1))
    assert code.shape == (16,) and bool((code[1:] > code[:-1]).all())
    assert float(code.abs().max()) <= 1.0
    assert quantization_error(test, 64, code) < quantization_error(test, 64, nf4_code())
    with pytest.raises(ValueError, match="samples"):
        lloyd_code_from_samples(torch.zeros(3))


def _tie_probe(code):
    """Values on, just above and just below every threshold, plus ±1 and random values."""
    t = code_thresholds(code)
    t = t[(t > -1) & (t < 1)]
    up, down = torch.nextafter(t, torch.tensor(2.0)), torch.nextafter(t, torch.tensor(-2.0))
    v = torch.cat([t, up, down, torch.tensor([-1.0, 1.0, 0.0, -0.0]), torch.rand(500) * 2 - 1])
    n = -(-v.numel() // 64) * 64
    x = torch.zeros(n)
    x[: v.numel()] = v
    x.view(-1, 64)[:, -1] = 1.0  # every block has absmax exactly 1, so v is quantized as given
    return x


@pytest.mark.parametrize("name", list(ALL_CODES) + ["close_levels"])
def test_grid_search_equals_binary_search(name):
    if name == "close_levels":  # thresholds closer than the 1/2048 grid: binary-search fallback
        code = torch.linspace(-1, 1, 16)
        code[8], code[9] = code[7] + 1e-5, code[7] + 2e-5
        assert _grid_tables(code_thresholds(code)) is None
    else:
        code = ALL_CODES[name]
        assert _grid_tables(code_thresholds(code)) is not None
    x = _tie_probe(code)
    q = quantize_4bit(x, 64, code)
    ref = torch.bucketize(x, code_thresholds(code), right=False)
    assert torch.equal(code_indices(q).long(), ref)


def test_tiny_blocks_use_the_1e_minus_38_scale():
    """The scale is max(absmax, 1e-38) (bitsandbytes' guard: 1/scale stays finite)."""
    tiny = float(torch.tensor(1e-38))  # 1e-38 rounded to float32 (a subnormal)
    x = torch.full((64,), 1e-40)
    x[3] = -2e-40
    q = quantize_4bit(x, 64)
    assert q.absmax.item() == pytest.approx(2e-40, rel=1e-2)  # the true absmax is stored
    # v = x * 1e38 is about 0.01: all values go to the zero code (index 7), none is lost to NaN
    assert bool((code_indices(q) == 7).all())
    assert bool((dequantize_4bit(q) == 0).all())
    # a block just above the guard is normalized by its own absmax
    y = torch.full((64,), 2e-38)
    y[3] = -4e-38
    qy = quantize_4bit(y, 64)
    assert code_indices(qy)[3].item() == 0 and code_indices(qy)[0].item() == 12
    # an all-zero partial last block stores the clamped scale, a full one stores 0
    z = quantize_4bit(torch.zeros(64 + 5), 64)
    assert z.absmax.tolist() == [0.0, tiny]
    assert bool((z.packed == 0x77).all()) and bool((dequantize_4bit(z) == 0).all())


def test_float64_beyond_float32_range_is_a_clear_error():
    x = torch.ones(8, dtype=torch.float64)
    x[2] = 1e300
    for fn in (quantize_4bit, quantize_4bit_reference):
        with pytest.raises(ValueError, match="x must fit float32's range") as err:
            fn(x)
        assert "1e+300" in str(err.value)
    x[2] = 3e38  # inside float32's range: quantized normally
    q = quantize_4bit(x)
    assert q.absmax.item() == pytest.approx(3e38, rel=1e-6)
    assert float(dequantize_4bit(q)[2]) == pytest.approx(3e38, rel=1e-6)
    x[2] = math.inf  # a genuine inf is reported as such
    with pytest.raises(ValueError, match="finite"):
        quantize_4bit(x)


def test_code_with_levels_far_outside_the_unit_interval():
    code = torch.cat([torch.tensor([-1e30, -5.0]), torch.linspace(-1, 1, 13), torch.tensor([1e30])])
    x = _tie_probe(code)
    assert _grid_tables(code_thresholds(code)) is not None
    ref = torch.bucketize(x, code_thresholds(code), right=False)
    assert torch.equal(code_indices(quantize_4bit(x, 64, code)).long(), ref)


# ----------------------------------------------------------------------------- fast == reference

def _edge_tensor(seed: int) -> torch.Tensor:
    """Blocks of 64 that probe every rule: ties on the float32 thresholds (absmax 1 and a
    non-power-of-two absmax), ±absmax, all-zero and tiny blocks, then random values; 64·k + 37
    values, so the last block is partial and the count odd."""
    g = torch.Generator().manual_seed(seed)
    t = code_thresholds(nf4_code())
    up, down = torch.nextafter(t, torch.tensor(2.0)), torch.nextafter(t, torch.tensor(-2.0))
    probe = torch.cat([t, up, down, torch.tensor([-1.0, 1.0, 0.0, -0.0])])  # 49 values
    blocks = [torch.cat([probe, torch.ones(15)]),                   # absmax 1: v = x exactly
              torch.cat([probe * 0.7, torch.full((15,), 0.7)]),    # v = x * fl(1/0.7)
              torch.cat([probe * -3.3, torch.full((15,), -3.3)]),  # absmax from a negative value
              torch.zeros(64),                                     # all-zero block
              torch.full((64,), 3e-39),                            # below the 1e-38 guard
              torch.randn(64 * 5, generator=g) * 2]
    tail = torch.cat([probe[:36] * 0.37, torch.tensor([0.37])])  # partial: v = x / 0.37
    return torch.cat(blocks + [tail])


def _assert_same(q: QuantizedTensor, r: QuantizedTensor) -> None:
    assert torch.equal(q.packed, r.packed)
    if q.absmax is None:
        for f in ("offset", "codes", "scales", "code"):
            assert torch.equal(getattr(q.absmax_dq, f), getattr(r.absmax_dq, f))
    else:
        assert torch.equal(q.absmax, r.absmax)
    assert (q.shape, q.dtype, q.blocksize) == (r.shape, r.dtype, r.blocksize)
    assert torch.equal(q.code, r.code)
    # and the dequantized values, both ways
    a, b = dequantize_4bit(q), dequantize_4bit_reference(r)
    assert a.dtype == b.dtype == q.dtype and torch.equal(a, b)


@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("n", [0, 1, 2, 31, 63, 64, 65, 100, 4097, 20_001])
def test_fast_equals_reference_random(n, blocksize):
    x = randn(n, seed=n + blocksize) * 3
    _assert_same(quantize_4bit(x, blocksize), quantize_4bit_reference(x, blocksize))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_reference_edge_cases(dtype, seed):
    x = _edge_tensor(seed).to(dtype)
    for bs in (32, 64, 128):
        for dq in (False, True):
            q = quantize_4bit(x, bs, double_quant=dq, blocksize2=4)
            r = quantize_4bit_reference(x, bs, double_quant=dq, blocksize2=4)
            _assert_same(q, r)
    # the probes really hit the rules: ties take the lower index, the zero block packs to 0x77
    idx = code_indices(quantize_4bit(_edge_tensor(seed), 64))
    assert idx[:15].tolist() == list(range(15))          # v = t_k exactly: index k (lower)
    assert idx[15:30].tolist() == list(range(1, 16))     # just above t_k: index k + 1
    assert bool((quantize_4bit(_edge_tensor(seed), 64).packed[96:128] == 0x77).all())


@pytest.mark.parametrize("name", list(ALL_CODES))
def test_fast_equals_reference_for_every_code(name):
    code = ALL_CODES[name]
    x = torch.cat([_tie_probe(code), randn(1001, seed=4)])
    for bs in (32, 64):
        _assert_same(quantize_4bit(x, bs, code), quantize_4bit_reference(x, bs, code))
    far = torch.cat([torch.tensor([-1e30, -5.0]), torch.linspace(-1, 1, 13), torch.tensor([1.0])])
    y = torch.cat([_tie_probe(far), randn(100, seed=5)])  # a threshold exactly at +1
    _assert_same(quantize_4bit(y, 64, far), quantize_4bit_reference(y, 64, far))


def test_reference_rule_is_the_argmin_except_on_rounded_midpoints():
    """The reference counts float32 midpoints below v; a float64 argmin |v - c_k| picks the same
    level except for a v equal to a midpoint that float32 rounded up (6 of NF4's 15)."""
    code = nf4_code()
    exact = (code[:-1].double() + code[1:].double()) / 2
    t = code_thresholds(code)
    rounded_up = t.double() > exact
    assert int(rounded_up.sum()) == 6
    assert float((t.double() - exact).max()) < 3e-8
    v = torch.cat([t, torch.nextafter(t, torch.tensor(2.0)), torch.nextafter(t, torch.tensor(-2.0)),
                   torch.rand(5000, generator=torch.Generator().manual_seed(6)) * 2 - 1])
    v = torch.cat([v, torch.zeros(-v.numel() % 63)])
    x = torch.cat([v.view(-1, 63), torch.ones(v.numel() // 63, 1)], dim=1)  # absmax 1 per block
    idx = code_indices(quantize_4bit_reference(x, 64))[:, :63].reshape(-1).long()
    argmin = (v.double()[:, None] - code.double()[None, :]).abs().argmin(dim=1)
    differ = torch.nonzero(idx != argmin).reshape(-1)
    assert sorted(differ.tolist()) == torch.nonzero(rounded_up).reshape(-1).tolist()
    assert torch.equal(argmin[differ], idx[differ] + 1)  # the argmin takes the upper level


def test_dequantize_out_and_odd_sizes_match_reference():
    for n, bs in ((1, 64), (7, 32), (65, 64), (129, 128), (4096 * 2 + 1, 4096), (300_001, 64)):
        x = randn(n, seed=n)
        q = quantize_4bit(x, bs)
        ref = dequantize_4bit_reference(q)
        out = torch.full_like(x, math.nan)
        assert dequantize_4bit(q, out=out) is out and torch.equal(out, ref)
        assert torch.equal(dequantize_4bit(q), ref)


# --------------------------------------------------------------------------- fast dequantize
# dequantize_4bit decodes whole steps of _STEP_BYTES packed bytes (a lookup in the pair table,
# then a scaled product straight into the result in its dtype) and the rest in one piece; the
# reference expands every index and every absmax. The two must agree bit for bit: compared
# through an integer view, so that -0.0 against +0.0 or two NaN payloads would count as different.

_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64,
           torch.float16: torch.int16, torch.bfloat16: torch.int16}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _assert_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(_INT_OF[a.dtype]), b.view(_INT_OF[b.dtype]))


def test_bit_comparison_sees_the_sign_of_zero():
    with pytest.raises(AssertionError):
        _assert_bits(torch.tensor([0.0]), torch.tensor([-0.0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dq", [False, True], ids=["plain", "dq"])
def test_fast_dequantize_bits_equal_reference_across_steps(dtype, dq):
    """Sizes around the step (2·_STEP_BYTES values): whole steps only, whole steps plus whole
    blocks, plus a partial block, plus an odd count; with and without out=."""
    from lora_edu.quant.blockwise import _STEP_BYTES

    per_step = 2 * _STEP_BYTES
    for n in (per_step, 2 * per_step + 64 * 3, per_step + 64 * 5 + 37, per_step - 1,
              2 * per_step + 1):
        x = (randn(n, seed=n) * 5).to(dtype)
        q = quantize_4bit(x, 64, double_quant=dq)
        ref = dequantize_4bit_reference(q)
        _assert_bits(dequantize_4bit(q), ref)
        out = torch.full_like(x, math.nan)
        assert dequantize_4bit(q, out=out) is out
        _assert_bits(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 128, 4096])
def test_fast_dequantize_bits_equal_reference_small(dtype, blocksize):
    for n in (1, 2, 31, 63, 64, 65, 127, 4097, 3 * 4096 + 7, 20_001):
        x = (randn(n, seed=n + blocksize) * 3).to(dtype)
        q = quantize_4bit(x, blocksize)
        _assert_bits(dequantize_4bit(q), dequantize_4bit_reference(q))
        out = torch.empty_like(x).fill_(7.0)
        _assert_bits(dequantize_4bit(q, out=out), dequantize_4bit_reference(q))


@pytest.mark.parametrize("name", list(ALL_CODES))
def test_fast_dequantize_bits_equal_reference_for_every_code(name):
    """Every code, with all-zero and tiny blocks (a negative level times absmax 0 is -0.0)."""
    code = ALL_CODES[name]
    x = torch.cat([_edge_tensor(0), randn(3000, seed=8)])
    for dq in (False, True):
        q = quantize_4bit(x, 64, code, double_quant=dq, blocksize2=4)
        _assert_bits(dequantize_4bit(q), dequantize_4bit_reference(q))


@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("step_bytes", [1, 64, 2048, 4096])
def test_decode_steps_smaller_and_larger_than_a_block(blocksize, step_bytes):
    """The stepping itself, with steps shorter than a block (rounded up to one block), of one
    block and of several, on a tensor that ends in a partial block of odd length."""
    from lora_edu.quant import dequantize_constants
    from lora_edu.quant.blockwise import _decode_into

    x = randn(5 * 4096 + 3 * blocksize + 21, seed=blocksize) * 2
    for dq in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            q = quantize_4bit(x.to(dtype), blocksize, double_quant=dq)
            absmax = q.absmax if q.absmax is not None else dequantize_constants(q.absmax_dq)
            dst = torch.full((x.numel(),), math.nan, dtype=dtype)
            _decode_into(dst, q.packed, absmax, q.code, blocksize, step_bytes)
            _assert_bits(dst, dequantize_4bit_reference(q).reshape(-1))


def test_fast_dequantize_shapes_and_noncontiguous_inputs():
    x = randn(3, 5, 77, seed=9)
    q = quantize_4bit(x, 32)
    _assert_bits(dequantize_4bit(q), dequantize_4bit_reference(q))
    # the same bytes held by a non-contiguous tensor decode the same
    wide = torch.zeros(q.packed.numel(), 2, dtype=torch.uint8)
    wide[:, 0] = q.packed
    q2 = QuantizedTensor(packed=wide[:, 0], absmax=q.absmax, absmax_dq=None, shape=q.shape,
                         dtype=q.dtype, blocksize=32, code=q.code)
    _assert_bits(dequantize_4bit(q2), dequantize_4bit_reference(q))
    # and strided constants too (a QuantizedTensor built by hand), over several decode steps
    from lora_edu.quant.blockwise import _STEP_BYTES

    y = randn(2 * _STEP_BYTES * 2 + 100, seed=10)
    qy = quantize_4bit(y, 64)
    strided = torch.zeros(qy.absmax.numel(), 3)
    strided[:, 1] = qy.absmax
    qs = QuantizedTensor(packed=qy.packed, absmax=strided[:, 1], absmax_dq=None, shape=qy.shape,
                         dtype=qy.dtype, blocksize=64, code=qy.code)
    _assert_bits(dequantize_4bit(qs), dequantize_4bit_reference(qy))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fast_dequantize_does_not_depend_on_the_thread_count(threads):
    """A step's lookup and scaling run on PyTorch's threads: the values are the same whatever
    their number (three whole steps, whole blocks and a partial block, DQ, two dtypes)."""
    from lora_edu.quant.blockwise import _STEP_BYTES

    n = 2 * _STEP_BYTES * 3 + 64 * 7 + 29
    x = randn(n, seed=13) * 4
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in (torch.float32, torch.float16):
            q = quantize_4bit(x.to(dtype), 64, double_quant=True)
            ref = dequantize_4bit_reference(q)
            _assert_bits(dequantize_4bit(q), ref)
            out = torch.full_like(ref, math.nan)
            _assert_bits(dequantize_4bit(q, out=out), ref)
    finally:
        torch.set_num_threads(previous)
