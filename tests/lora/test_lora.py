"""Tests of lora_edu.lora: the LoRA layer, merging, injection by name, adapter checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_edu.inject import count_parameters
from lora_edu.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)
from lora_edu.toy import TinyTransformer


def trained_layer(d=24, k=16, r=4, alpha=8.0, dtype=torch.float64, **kw) -> LoRALinear:
    """A LoRA layer whose B is non-zero (as after training)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(k, d, dtype=dtype), r, alpha, **kw)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_shapes_scaling_and_frozen_base():
    base = nn.Linear(16, 24)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (24, 4)
    assert layer.scaling == 2.0
    assert LoRALinear(nn.Linear(16, 24), r=4, alpha=8, rslora=True).scaling == 4.0
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert count_parameters(layer) == (4 * 16 + 24 * 4, 4 * 16 + 24 * 4 + 24 * 16 + 24)


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_output_equals_base_at_init_exactly(init):
    torch.manual_seed(1)
    base = nn.Linear(16, 24)
    x = torch.randn(5, 7, 16)
    expected = base(x)
    layer = LoRALinear(base, r=4, alpha=8, init=init)
    assert torch.equal(layer.lora_B, torch.zeros(24, 4))
    assert torch.equal(layer(x), expected)


def dense_delta(b: torch.Tensor, a: torch.Tensor, s: float) -> torch.Tensor:
    """ΔW[i, j] = s·Σ_t B[i, t]·A[t, j] entry by entry in plain Python (independent reference)."""
    bl, al = b.detach().tolist(), a.detach().tolist()
    r, k = len(al), len(al[0])
    return torch.tensor([[s * math.fsum(row[t] * al[t][j] for t in range(r)) for j in range(k)]
                         for row in bl], dtype=torch.float64)


@pytest.mark.parametrize("rslora, s", [(False, 8.0 / 4), (True, 8.0 / math.sqrt(4))])
def test_delta_weight_bypass_and_merge_match_a_dense_loop(rslora, s):
    """ΔW from the definition (s = α/r or α/√r, loops over B and A) against what the layer does:
    delta_weight(), the bypass output layer(x) − base(x) computed column by column, and the
    change merge() makes to W0."""
    layer = trained_layer(d=24, k=16, r=4, alpha=8.0, rslora=rslora)
    dw = dense_delta(layer.lora_B, layer.lora_A, s)
    assert dw.abs().max() > 0.1  # a non-trivial update
    assert torch.allclose(layer.delta_weight(), dw, rtol=0, atol=1e-12)
    x = torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        bypass = layer(x) - layer.base(x)
    expected = torch.tensor([[math.fsum(dw[i, j].item() * x[n, j].item() for j in range(16))
                              for i in range(24)] for n in range(3)], dtype=torch.float64)
    assert torch.allclose(bypass, expected, rtol=0, atol=1e-12)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    assert torch.allclose(layer.base.weight - w0, dw, rtol=0, atol=1e-12)


def test_merge_unmerge_round_trip_and_equal_forward():
    layer = trained_layer()
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(6, 16, dtype=torch.float64)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    assert torch.allclose(layer.base.weight, w0 + layer.delta_weight(), atol=1e-12)
    layer.merge()  # idempotent: the update is not added twice
    assert torch.allclose(layer.base.weight, w0 + layer.delta_weight(), atol=1e-12)
    assert torch.allclose(layer(x), unmerged, atol=1e-12)
    layer.unmerge()
    layer.unmerge()  # idempotent
    assert not layer.merged
    assert (layer.base.weight - w0).abs().max() <= 1e-12
    assert torch.allclose(layer(x), unmerged, atol=1e-12)


def test_eval_does_not_merge():
    layer = trained_layer()
    w0 = layer.base.weight.detach().clone()
    layer.eval()
    layer.train()
    assert not layer.merged and torch.equal(layer.base.weight, w0)


def test_only_lora_parameters_get_gradients():
    layer = trained_layer(dropout=0.1)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert x.grad is not None


def test_dropout_applies_to_bypass_only():
    layer = trained_layer(dropout=0.5)
    x = torch.randn(64, 16, dtype=torch.float64)
    layer.eval()
    clean = layer(x)
    layer.train()
    noisy = layer(x)
    assert not torch.allclose(noisy, clean)
    with torch.no_grad():
        layer.lora_B.zero_()
    assert torch.equal(layer(x), layer.base(x))  # nothing random on the main path


def test_gaussian_init_statistics():
    r, k = 8, 4096
    torch.manual_seed(0)
    a = LoRALinear(nn.Linear(k, 64), r=r, alpha=16, init="gaussian").lora_A
    n = a.numel()
    # sample std within 4 standard errors of 1/r (se of std ≈ σ/√(2n)); mean near 0
    assert abs(a.std().item() - 1 / r) < 4 * (1 / r) / math.sqrt(2 * n)
    assert abs(a.mean().item()) < 4 * (1 / r) / math.sqrt(n)
    # the tails look Gaussian: ≈ 4.55 % beyond 2σ (uniform would give 0)
    tail = (a.abs() > 2 / r).double().mean().item()
    assert abs(tail - 0.0455) < 0.006
    b = LoRALinear(nn.Linear(k, 64), r=r, alpha=16, init="gaussian", gaussian_std=0.02).lora_A
    assert abs(b.std().item() - 0.02) < 4 * 0.02 / math.sqrt(2 * n)


@pytest.mark.parametrize("k", [256, 1024, 4096])
def test_kaiming_init_is_uniform_on_plus_minus_one_over_sqrt_k(k):
    """LoRALinear(init="kaiming").lora_A ~ U(−1/√k, 1/√k): support, std, and a uniform's tails."""
    r = 8
    torch.manual_seed(0)
    a = LoRALinear(nn.Linear(k, 64), r=r, alpha=16, init="kaiming").lora_A.detach().double()
    assert a.shape == (r, k)
    bound, n = 1 / math.sqrt(k), a.numel()
    # the whole interval is used, and nothing lies outside it
    assert a.abs().max().item() <= bound
    assert a.max().item() > 0.99 * bound and a.min().item() < -0.99 * bound
    # std of U(−b, b) is b/√3; the sample variance has std error σ²·√(0.8/n) (kurtosis 1.8)
    sigma = bound / math.sqrt(3)
    assert abs(a.var().item() - sigma**2) < 5 * sigma**2 * math.sqrt(0.8 / n)
    assert abs(a.mean().item()) < 5 * sigma / math.sqrt(n)
    # uniform: half the entries lie beyond b/2 (a Gaussian of the same std: 38.6 %)
    beyond = (a.abs() > bound / 2).double().mean().item()
    assert abs(beyond - 0.5) < 5 * math.sqrt(0.25 / n)
    # the same law as torch's kaiming_uniform_(a=√5) on an (r, k) tensor (loralib, PEFT)
    ref = torch.empty(r, k, dtype=torch.float64)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert 0.99 * bound < ref.abs().max().item() <= bound


def test_generator_makes_init_reproducible():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a1 = LoRALinear(nn.Linear(8, 8), 2, 4, generator=g1).lora_A
    a2 = LoRALinear(nn.Linear(8, 8), 2, 4, generator=g2).lora_A
    assert torch.equal(a1, a2)


@pytest.mark.parametrize("kwargs, exc, arg", [
    ({"r": 0}, ValueError, "r"),
    ({"r": -2}, ValueError, "r"),
    ({"r": 2.0}, TypeError, "r"),
    ({"alpha": 0}, ValueError, "alpha"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"init": "xavier"}, ValueError, "init"),
])
def test_bad_hyperparameters(kwargs, exc, arg):
    args = {"r": 2, "alpha": 4.0} | kwargs
    base = nn.Linear(4, 4)
    with pytest.raises(exc, match=arg):
        LoRALinear(base, **args)
    assert base.weight.requires_grad  # base untouched
    model = TinyTransformer(seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=arg):
        apply_lora(model, ["q_proj", "v_proj"], **args)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_base_must_be_linear():
    with pytest.raises(TypeError, match="base"):
        LoRALinear(nn.Conv1d(3, 3, 1), 2, 4)


def test_apply_lora_wraps_exactly_named_modules():
    model = TinyTransformer(seed=0)
    x = torch.randint(0, model.config.vocab_size, (4, 12))
    before = model(x)
    out = apply_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    assert out is model
    assert sorted(lora_layers(model)) == [f"blocks.{i}.attn.{p}" for i in range(2)
                                          for p in ("q_proj", "v_proj")]
    assert all(type(b.attn.k_proj) is nn.Linear and type(b.mlp.fc1) is nn.Linear
               for b in model.blocks)
    assert torch.equal(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.lora_{m}" for name in lora_layers(model) for m in "AB"}
    d = model.config.d_model
    assert count_parameters(model)[0] == 4 * 4 * (d + d)
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(model, "q_proj", r=4, alpha=8)  # already wrapped: no nn.Linear named q_proj
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(model, "base", r=4, alpha=8)  # would wrap the base of a LoRA layer


def test_apply_lora_no_match_leaves_model_unchanged():
    model = TinyTransformer(seed=0)
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(model, ["query", "value"], r=4, alpha=8)
    assert all(p.requires_grad for p in model.parameters()) and not lora_layers(model)


def test_apply_lora_seed_is_reproducible():
    a = apply_lora(TinyTransformer(seed=0), "q_proj", r=2, alpha=4, seed=7)
    b = apply_lora(TinyTransformer(seed=0), "q_proj", r=2, alpha=4, seed=7)
    sa, sb = lora_state_dict(a), lora_state_dict(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_backward_through_model_only_touches_lora():
    model = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=2, alpha=4, seed=0)
    x = torch.randint(0, model.config.vocab_size, (4, 12))
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name


def test_merge_lora_gives_plain_linears_and_same_output():
    model = apply_lora(TinyTransformer(seed=0).double(), ["q_proj", "v_proj"], r=2, alpha=4,
                       seed=0)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    x = torch.randint(0, model.config.vocab_size, (4, 12))
    before = model(x)
    merge_lora(model)
    assert not lora_layers(model)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
    assert torch.allclose(model(x), before, atol=1e-12)
    with pytest.raises(ValueError, match="LoRALinear"):
        merge_lora(model)


def test_merged_linear_and_unmerge_lora():
    layer = trained_layer()
    lin = layer.merged_linear()
    x = torch.randn(3, 16, dtype=torch.float64)
    assert type(lin) is nn.Linear and torch.allclose(lin(x), layer(x), atol=1e-12)
    assert not layer.merged
    model = nn.Sequential(layer)
    layer.merge()
    unmerge_lora(model)
    assert not layer.merged


def test_adapter_state_dict_round_trip_is_bit_exact(tmp_path):
    src = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    for layer in lora_layers(src).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    state = lora_state_dict(src)
    assert sorted(state) == sorted(f"{n}.lora_{m}" for n in lora_layers(src) for m in "AB")
    assert state["blocks.0.attn.q_proj.lora_A"].shape == (4, 64)
    assert state["blocks.0.attn.q_proj.lora_B"].shape == (64, 4)
    path = tmp_path / "adapter.pt"
    size = save_lora(src, path)
    assert size > sum(t.numel() * 4 for t in state.values())  # payload + container
    assert size < 2 * sum(t.numel() * 4 for t in state.values()) + 4096
    dst = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=1)
    load_lora(dst, path)
    got = lora_state_dict(dst)
    assert all(torch.equal(got[k], state[k]) for k in state)
    x = torch.randint(0, 48, (2, 10))
    assert torch.equal(dst(x), src(x))


def test_adapter_load_is_strict_and_atomic():
    model = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    good = lora_state_dict(model)
    snapshot = {k: v.clone() for k, v in good.items()}
    changed = {k: v + 1 for k, v in good.items()}

    missing = dict(changed)
    del missing["blocks.1.attn.v_proj.lora_B"]
    with pytest.raises(ValueError,
                       match=r"^state is missing adapter keys .*blocks.1.attn.v_proj.lora_B"):
        load_lora_state_dict(model, missing)
    extra = dict(changed, **{"blocks.0.attn.k_proj.lora_A": torch.zeros(4, 64)})
    with pytest.raises(ValueError,
                       match=r"^state has unexpected keys .*blocks.0.attn.k_proj.lora_A"):
        load_lora_state_dict(model, extra)
    wrong = dict(changed, **{"blocks.0.attn.q_proj.lora_A": torch.zeros(8, 64)})
    with pytest.raises(ValueError, match="blocks.0.attn.q_proj.lora_A"):
        load_lora_state_dict(model, wrong)
    now = lora_state_dict(model)
    assert all(torch.equal(now[k], snapshot[k]) for k in snapshot)  # nothing was copied
    with pytest.raises(TypeError, match="state"):
        load_lora_state_dict(model, [1, 2])
    layer = lora_layers(model)["blocks.0.attn.q_proj"]
    layer.merge()
    with pytest.raises(ValueError, match="merged"):
        load_lora_state_dict(model, changed)


def test_gradients_match_the_formula():
    """Autograd through the fused forward equals autograd through h = W0·x + b + s·B·A·x."""
    layer = trained_layer()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(layer, (x,))
    g = torch.randn(2, 3, 24, dtype=torch.float64)
    grads = torch.autograd.grad(layer(x), (x, layer.lora_A, layer.lora_B), g)
    a, b = layer.lora_A.detach().requires_grad_(), layer.lora_B.detach().requires_grad_()
    ref = x @ layer.base.weight.T + layer.base.bias + layer.scaling * (x @ a.T) @ b.T
    expected = torch.autograd.grad(ref, (x, a, b), g)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_forward_on_unbatched_input():
    layer = trained_layer()
    x = torch.randn(16, dtype=torch.float64)
    assert torch.allclose(layer(x), layer(x[None])[0], atol=1e-12)
    assert layer(x).shape == (24,)
