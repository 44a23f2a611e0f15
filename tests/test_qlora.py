"""Tests of lora_edu.qlora: the 4-bit base, the adapter on top of it, prepare_qlora, merging, and
bad input (one parametrised table)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lora_edu.inject import count_parameters
from lora_edu.lora import LoRALinear, apply_lora, lora_layers
from lora_edu.qlora import (
    NF4Linear,
    QLoRALinear,
    merge_qlora,
    prepare_qlora,
    qlora_layers,
    storage_report,
)
from lora_edu.quant import dequantize_4bit, quantize_4bit, quantized_storage_bits
from lora_edu.toy import TinyTransformer, ToyConfig

D, K, R = 48, 128, 4
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}


def linear(seed: int = 0, bias: bool = True) -> nn.Linear:
    """An nn.Linear(K, D) with weights drawn in float64 (portable), stored in float32."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, D, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(0.05 * torch.randn(D, K, generator=g, dtype=torch.float64))
        if bias:
            lin.bias.copy_(0.1 * torch.randn(D, generator=g, dtype=torch.float64))
    return lin


def inputs(dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(*shape, K, generator=g, dtype=torch.float64).to(dtype)


def trained_layer(compute_dtype: torch.dtype = torch.float32, seed: int = 0) -> QLoRALinear:
    """A QLoRALinear with a non-zero B, as after training."""
    layer = QLoRALinear(linear(seed), R, 8, compute_dtype=compute_dtype,
                        generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        layer.lora_B.copy_(0.05 * torch.randn(D, R, generator=g, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_output_equals_lora_on_the_dequantized_weight(dtype):
    layer = trained_layer(dtype)
    ref = layer.lora_linear()
    assert ref.base.weight.dtype == dtype
    x = inputs(dtype)
    with torch.no_grad():
        # the plain formula: the same operations on the same numbers, bit for bit
        assert torch.equal(layer.reference_forward(x), ref.reference_forward(x))
        out, expected = layer(x), ref(x)
    scale = expected.abs().max()
    assert out.dtype == dtype and out.shape == (3, 5, D)
    assert (out - expected).abs().max() <= TOL[dtype] * scale
    assert (expected - layer.base(x)).abs().max() > 0.1 * scale   # the bypass B·A·x matters


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_at_init_equals_the_dequantized_base(dtype):
    lin = linear()
    layer = QLoRALinear(lin, R, 8, compute_dtype=dtype)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    w = dequantize_4bit(quantize_4bit(lin.weight, double_quant=True)).to(dtype)
    x = inputs(dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, w, lin.bias.to(dtype)))
    # the base really is quantized: it differs from the float32 layer
    assert not torch.equal(layer.base.dequantized_weight().float(), lin.weight)


def test_same_initialisation_as_lora():
    lin = linear()
    lora = LoRALinear(copy.deepcopy(lin), R, 8, generator=torch.Generator().manual_seed(3))
    qlora = QLoRALinear(copy.deepcopy(lin), R, 8, generator=torch.Generator().manual_seed(3),
                        compute_dtype=torch.float32)
    assert torch.equal(lora.lora_A, qlora.lora_A) and torch.equal(lora.lora_B, qlora.lora_B)
    assert qlora.scaling == lora.scaling == 2.0


def test_only_adapters_are_parameters_and_only_they_change():
    layer = trained_layer()
    assert [n for n, _ in layer.named_parameters()] == ["lora_A", "lora_B"]
    buffers = {n: b.clone() for n, b in layer.named_buffers()}
    assert set(buffers) == {"base.weight_packed", "base.absmax_codes", "base.absmax_scales",
                            "base.absmax_offset", "base.bias"}
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(layer.lora_A),
                                                                      id(layer.lora_B)}
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    x = inputs().requires_grad_(True)
    layer(x).square().sum().backward()
    opt.step()
    for name, buf in layer.named_buffers():
        assert torch.equal(buf, buffers[name]), name     # stored bytes unchanged
        assert buf.grad is None and not buf.requires_grad
    assert set(opt.state) == {layer.lora_A, layer.lora_B}   # no optimizer state for the base
    assert not torch.equal(layer.lora_A, a0) and not torch.equal(layer.lora_B, b0)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradients_match_lora_on_the_dequantized_weight():
    layer = trained_layer(torch.float64)
    ref = layer.lora_linear()
    x1 = inputs(torch.float64).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(9)
    target = torch.randn(3, 5, D, generator=g, dtype=torch.float64)
    (layer(x1) * target).sum().backward()
    (ref(x2) * target).sum().backward()
    for a, b in ((x1.grad, x2.grad), (layer.lora_A.grad, ref.lora_A.grad),
                 (layer.lora_B.grad, ref.lora_B.grad)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_no_dequantized_copy_is_kept():
    layer = trained_layer()
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    x = inputs().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    assert saved, "the bypass saves its inputs"
    assert all(shape != (D, K) and shape != (K, D) for shape, _ in saved), saved
    # nothing the module holds is a dequantized (d, k) float tensor
    held = list(layer.parameters()) + list(layer.buffers()) + [
        v for v in vars(layer.base).values() if isinstance(v, torch.Tensor)]
    assert all(t.shape != (D, K) or not t.is_floating_point() or t is layer.lora_B
               for t in held)
    out.sum().backward()                        # backward dequantizes again, and works
    assert x.grad.shape == x.shape


def test_nf4_linear_stores_the_bytes_of_quantize_4bit():
    lin = linear()
    for dq in (True, False):
        layer = NF4Linear(lin, compute_dtype=torch.float32, double_quant=dq)
        bits = quantized_storage_bits(D * K, double_quant=dq)
        assert layer.stored_bytes() * 8 == bits
        q = quantize_4bit(lin.weight, double_quant=dq)
        assert torch.equal(layer.weight_packed, q.packed)
        assert torch.equal(layer.dequantized_weight(), dequantize_4bit(q))
        assert [n for n, _ in layer.named_parameters()] == []


def test_state_dict_round_trip():
    layer = trained_layer(torch.bfloat16)
    other = QLoRALinear(linear(seed=5), R, 8, compute_dtype=torch.bfloat16)
    x = inputs(torch.bfloat16)
    with torch.no_grad():
        assert not torch.equal(other(x), layer(x))
        other.load_state_dict(layer.state_dict())
        assert torch.equal(other(x), layer(x))
    assert set(layer.state_dict()) == {"lora_A", "lora_B", "base.weight_packed",
                                       "base.absmax_codes", "base.absmax_scales",
                                       "base.absmax_offset", "base.bias"}


def test_bias_free_layer_and_input_dtype_kept():
    layer = QLoRALinear(linear(bias=False), R, 8, compute_dtype=torch.bfloat16)
    assert layer.base.bias is None
    x = inputs(torch.float32)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.float32                  # cast back to the input's dtype
    w = layer.base.dequantized_weight()
    expected = F.linear(x.to(torch.bfloat16), w).float()
    assert torch.equal(y, expected)


def toy() -> TinyTransformer:
    return TinyTransformer(ToyConfig(), seed=0)


ATTN = ["q_proj", "v_proj"]
OTHERS = ["k_proj", "o_proj", "fc1", "fc2"]


def test_prepare_qlora_report_and_freezing():
    """prepare_qlora returns the model; storage_report on both sides counts the bytes, here
    derived by hand from the layer shapes."""
    model = toy()
    n_before = sum(p.numel() * p.element_size() for p in model.parameters())
    before = storage_report(model)
    assert prepare_qlora(model, ATTN, r=4, alpha=8, seed=0, compute_dtype=torch.float32,
                         quantize_only=OTHERS) is model
    after = storage_report(model)
    assert before.total == before.trainable == n_before
    # quantized bytes: exactly the per-tensor storage of quantize_4bit with double quantization
    shapes = [(64, 64)] * 8 + [(128, 64), (64, 128)] * 2
    assert after.quantized * 8 == sum(quantized_storage_bits(d * k) for d, k in shapes)
    assert after.adapters == 4 * 4 * (64 + 64) * 4      # 4 layers · r·(d + k) · 4 bytes
    assert after.trainable == 0                         # everything else frozen
    trainable, _ = count_parameters(model)
    assert trainable * 4 == after.adapters
    assert after.total < before.total / 3
    assert len(qlora_layers(model)) == 4
    # the same A as apply_lora with the same seed
    ref = toy()
    apply_lora(ref, ATTN, r=4, alpha=8, seed=0)
    for (n1, q), (n2, lo) in zip(sorted(qlora_layers(model).items()),
                                 sorted(lora_layers(ref).items()), strict=True):
        assert n1 == n2 and torch.equal(q.lora_A, lo.lora_A)
    tokens = torch.randint(0, 48, (2, 16), generator=torch.Generator().manual_seed(0))
    assert model(tokens).shape == (2, 4)


def test_seeded_preparation_and_merging_leave_the_global_generator_alone():
    model = toy()
    state = torch.random.get_rng_state()
    prepare_qlora(model, ATTN, r=4, alpha=8, seed=1, quantize_only=OTHERS)
    layer = next(iter(qlora_layers(model).values()))
    layer.lora_linear()
    merge_qlora(model, "nf4")
    assert torch.equal(state, torch.random.get_rng_state())


def test_merge_both_ways():
    layer = trained_layer()
    x = inputs()
    with torch.no_grad():
        unmerged = layer(x)
        a32 = layer.merged_linear(torch.float32)(x)
        a16 = layer.merged_linear(torch.bfloat16)(x.bfloat16()).float()
        b4 = layer.merged_nf4()(x)
    scale = unmerged.abs().max()
    err = {k: float((v - unmerged).abs().max() / scale)
           for k, v in (("a32", a32), ("a16", a16), ("b4", b4))}
    assert err["a32"] < 1e-5 < err["a16"] < 2e-2 < err["b4"]
    # (b) is the NF4 quantization of the merged weight
    w = layer.merged_weight()
    assert torch.equal(layer.merged_nf4().dequantized_weight(),
                       dequantize_4bit(quantize_4bit(w, double_quant=True)))
    model = nn.Sequential(trained_layer(), nn.ReLU(), nn.Linear(D, 2))
    merged = merge_qlora(copy.deepcopy(model), into="nf4")
    assert isinstance(merged[0], NF4Linear) and not qlora_layers(merged)
    merged = merge_qlora(copy.deepcopy(model), into="16bit", dtype=torch.float32)
    assert type(merged[0]) is nn.Linear and not merged[0].weight.requires_grad
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), rtol=1e-5, atol=1e-6)
    assert storage_report(merge_qlora(copy.deepcopy(model), "nf4")).adapters == 0


# --------------------------------------------------------------------------- bad input

def _bad_cases():
    lin = linear()
    model_cases = [
        # (description, call on a fresh toy model, exception, argument named)
        ("non-linear target", lambda m: prepare_qlora(m, ["ln1"], 4, 8), ValueError,
         "target_modules"),
        ("target matches nothing", lambda m: prepare_qlora(m, ["nope"], 4, 8), ValueError,
         "target_modules"),
        ("linear and non-linear", lambda m: prepare_qlora(m, ["q_proj", "ln2"], 4, 8),
         ValueError, "target_modules"),
        ("quantize_only not linear", lambda m: prepare_qlora(m, ATTN, 4, 8,
                                                             quantize_only=["ln_f"]),
         ValueError, "quantize_only"),
        ("overlapping targets", lambda m: prepare_qlora(m, ATTN, 4, 8, quantize_only=["q_proj"]),
         ValueError, "quantize_only"),
        ("rank too large", lambda m: prepare_qlora(m, ATTN, 65, 8), ValueError, "r"),
        ("rank zero", lambda m: prepare_qlora(m, ATTN, 0, 8), ValueError, "r"),
        ("rank float", lambda m: prepare_qlora(m, ATTN, 4.0, 8), TypeError, "r"),
        ("alpha zero", lambda m: prepare_qlora(m, ATTN, 4, 0), ValueError, "alpha"),
        ("compute dtype int", lambda m: prepare_qlora(m, ATTN, 4, 8, compute_dtype=torch.int8),
         TypeError, "compute_dtype"),
        ("compute dtype str", lambda m: prepare_qlora(m, ATTN, 4, 8, compute_dtype="bfloat16"),
         TypeError, "compute_dtype"),
        ("blocksize not a power of two", lambda m: prepare_qlora(m, ATTN, 4, 8, blocksize=48),
         ValueError, "blocksize"),
        ("double_quant str", lambda m: prepare_qlora(m, ATTN, 4, 8, double_quant="yes"),
         TypeError, "double_quant"),
        ("seed negative", lambda m: prepare_qlora(m, ATTN, 4, 8, seed=-1), ValueError, "seed"),
        ("model not a module", lambda m: prepare_qlora("model", ATTN, 4, 8), TypeError, "model"),
        ("merge mode", lambda m: merge_qlora(m, into="int4"), ValueError, "into"),
        ("merge without layers", lambda m: merge_qlora(m), ValueError, "model"),
    ]
    layer_cases = [
        ("base not linear", lambda: QLoRALinear(nn.Conv1d(2, 2, 1), 2, 2), TypeError, "base"),
        ("adapter dtype int", lambda: QLoRALinear(lin, 2, 2, adapter_dtype=torch.int32),
         TypeError, "adapter_dtype"),
        ("blocksize too small", lambda: NF4Linear(lin, blocksize=16), ValueError, "blocksize"),
        ("blocksize2 odd", lambda: NF4Linear(lin, blocksize2=3), ValueError, "blocksize2"),
        ("NF4Linear of a conv", lambda: NF4Linear(nn.Conv1d(2, 2, 1)), TypeError, "linear"),
        ("integer input", lambda: QLoRALinear(lin, 2, 2)(torch.ones(2, K, dtype=torch.long)),
         TypeError, "x"),
        ("input width", lambda: QLoRALinear(lin, 2, 2)(torch.ones(2, K + 1)), ValueError, "x"),
        ("merge dtype int", lambda: trained_layer().merged_linear(torch.int8), TypeError,
         "dtype"),
        ("merge nf4 with dtype", lambda: merge_qlora(trained_layer(), "nf4", torch.float32),
         ValueError, "dtype"),
    ]
    return model_cases, layer_cases


MODEL_CASES, LAYER_CASES = _bad_cases()


@pytest.mark.parametrize("call, exc, arg", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_bad_input_leaves_the_model_unchanged(call, exc, arg):
    model = toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(exc, match=rf"^{arg}\b|\b{arg}\b"):
        call(model)
    assert [type(m) for m in model.modules()] == types
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("call, exc, arg", [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])
def test_bad_input_to_layers(call, exc, arg):
    with pytest.raises(exc, match=rf"\b{arg}\b"):
        call()


def test_merge_to_16bit_can_dequantize_the_layers_without_adapter():
    model = toy()
    prepare_qlora(model, ATTN, r=4, alpha=8, seed=1, quantize_only=OTHERS,
                  compute_dtype=torch.float32)
    with torch.no_grad():
        for layer in qlora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    x = torch.randint(0, 48, (4, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = model(x)
    partly = merge_qlora(copy.deepcopy(model), "16bit", torch.float32)
    fully = merge_qlora(copy.deepcopy(model), "16bit", torch.float32, dequantize_rest=True)
    assert sum(isinstance(m, NF4Linear) for m in partly.modules()) == 4 * 2   # the others, 2 blocks
    assert not any(isinstance(m, (NF4Linear, QLoRALinear)) for m in fully.modules())
    # each dequantized layer holds exactly its NF4 layer's Ŵ0, and the outputs do not move
    nf4 = {n: m for n, m in partly.named_modules() if isinstance(m, NF4Linear)}
    for name, m in nf4.items():
        assert torch.equal(fully.get_submodule(name).weight, m.dequantized_weight())
    with torch.no_grad():
        scale = unmerged.abs().max()
        assert float((fully(x) - unmerged).abs().max() / scale) < 1e-5
        assert float((fully(x) - partly(x)).abs().max() / scale) < 1e-6
    with pytest.raises(ValueError, match="dequantize_rest"):
        merge_qlora(copy.deepcopy(model), "nf4", dequantize_rest=True)
    with pytest.raises(TypeError, match="dequantize_rest"):
        merge_qlora(copy.deepcopy(model), "16bit", dequantize_rest=1)
