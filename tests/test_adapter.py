"""Houlsby bottleneck adapters: the formula, the placement, what trains, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lora_edu.adapter import (
    HoulsbyAdapter,
    SerialAdapterLinear,
    adapter_layers,
    adapter_params,
    apply_adapters,
)
from lora_edu.inject import count_parameters
from lora_edu.toy import TinyTransformer, ToyConfig

TOKENS = torch.randint(0, 48, (6, 10), generator=torch.Generator().manual_seed(3))


def test_forward_is_the_formula_written_out():
    torch.manual_seed(0)
    a = HoulsbyAdapter(12, 3, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    y = torch.randn(4, 5, 12, dtype=torch.float64)
    # element by element: y_i + Σ_j up_ij · tanh(Σ_q down_jq · y_q + bd_j) + bu_i
    y2 = y.reshape(-1, 12)
    expected = torch.empty_like(y2)
    for n in range(y2.shape[0]):
        hidden = [torch.tanh(sum(a.down[j, q] * y2[n, q] for q in range(12)) + a.down_bias[j])
                  for j in range(3)]
        for i in range(12):
            expected[n, i] = (y2[n, i] + sum(a.up[i, j] * hidden[j] for j in range(3))
                              + a.up_bias[i])
    assert torch.allclose(a(y).reshape(-1, 12), expected, rtol=1e-12, atol=1e-12)


def test_zero_up_starts_as_the_exact_identity_and_houlsby_near_it():
    y = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(HoulsbyAdapter(16, 4, init="zero_up")(y), y)
    g = torch.Generator().manual_seed(2)
    a = HoulsbyAdapter(16, 4, init="houlsby", init_std=1e-2, generator=g)
    # truncated at 2σ: every entry within ±0.02, and not all zero
    for w in (a.down, a.up):
        assert w.abs().max() <= 2e-2 and w.abs().max() > 5e-3
    # |W_up σ(W_down y)| ≤ ‖W_up‖·‖σ(W_down y)‖, tiny next to ‖y‖
    change = (a(y) - y).norm(dim=-1)
    assert (change < 1e-2 * y.norm(dim=-1)).all()


def test_parameter_count_matches_the_tensors():
    for d, m in [(64, 8), (384, 1), (7, 7)]:
        a = HoulsbyAdapter(d, m)
        assert sum(p.numel() for p in a.parameters()) == adapter_params(d, m) == 2 * d * m + d + m


def test_apply_adapters_places_them_after_o_proj_and_fc2_and_freezes_the_rest():
    cfg = ToyConfig(n_layers=3)
    model = TinyTransformer(cfg, seed=0)
    _, total = count_parameters(model)
    apply_adapters(model, bottleneck=4, seed=0)
    layers = adapter_layers(model)
    assert sorted(layers) == sorted(f"blocks.{i}.{n}" for i in range(3)
                                    for n in ("attn.o_proj", "mlp.fc2"))
    trainable, total_after = count_parameters(model)
    assert trainable == 6 * adapter_params(cfg.d_model, 4)
    assert total_after == total + trainable
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n for n in names)
    # a gradient reaches only the adapters
    model(TOKENS).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (".adapter." in n), n


def test_serial_layer_is_adapter_after_base_and_equals_the_model_before_at_zero_up():
    model = TinyTransformer(seed=1)
    before = model(TOKENS)
    apply_adapters(model, bottleneck=8, init="zero_up", seed=0)
    assert torch.equal(model(TOKENS), before)
    layer = model.blocks[0].attn.o_proj
    assert isinstance(layer, SerialAdapterLinear) and layer.in_features == 64
    x = torch.randn(3, 64)
    with torch.no_grad():
        layer.adapter.up.normal_()
    assert torch.allclose(layer(x), layer.adapter(F.linear(x, layer.base.weight,
                                                             layer.base.bias)))


def test_seed_makes_initialisation_reproducible_without_global_state():
    state = torch.random.get_rng_state()
    a = apply_adapters(TinyTransformer(seed=0), bottleneck=4, seed=5)
    b = apply_adapters(TinyTransformer(seed=0), bottleneck=4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)


BAD = [
    (lambda: HoulsbyAdapter(0, 1), ValueError, "d"),
    (lambda: HoulsbyAdapter(8, 9), ValueError, "bottleneck"),
    (lambda: HoulsbyAdapter(8, 2.5), TypeError, "bottleneck"),
    (lambda: HoulsbyAdapter(8, 2, nonlinearity="swish"), ValueError, "nonlinearity"),
    (lambda: HoulsbyAdapter(8, 2, init="xavier"), ValueError, "init"),
    (lambda: HoulsbyAdapter(8, 2, init_std=0.0), ValueError, "init_std"),
    (lambda: HoulsbyAdapter(8, 2, init_std=float("inf")), ValueError, "init_std"),
    (lambda: HoulsbyAdapter(8, 2, generator=3), TypeError, "generator"),
    (lambda: HoulsbyAdapter(8, 2)(torch.zeros(3, 7)), ValueError, "y"),
    (lambda: SerialAdapterLinear(nn.Conv1d(1, 1, 1), 2), TypeError, "base"),
    (lambda: apply_adapters("model"), TypeError, "model"),
    (lambda: apply_adapters(TinyTransformer(seed=0), "nothing"), ValueError, "target_modules"),
    (lambda: apply_adapters(TinyTransformer(seed=0), bottleneck=0), ValueError, "bottleneck"),
    (lambda: apply_adapters(TinyTransformer(seed=0), seed=-1), ValueError, "seed"),
    (lambda: adapter_params(8, 0), ValueError, "bottleneck"),
    (lambda: adapter_layers([]), TypeError, "model"),
]


@pytest.mark.parametrize("call,exc,arg", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(call, exc, arg):
    with pytest.raises(exc, match=rf"\b{arg}\b"):
        call()


def test_failed_apply_leaves_the_model_unchanged():
    model = TinyTransformer(seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="bottleneck"):
        apply_adapters(model, bottleneck=65)      # > d_model = 64: fails inside the factory
    assert not adapter_layers(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
