"""The bypass shared by the LoRA-type layers (LoRA, AdaLoRA's SVD form, QLoRA): out of place,
hook- and autocast-safe, and the input check every adapter layer's forward makes.

The reference is the formula written directly in float64: h = W0·x + b + s·B·A·x (LoRA, QLoRA on
the dequantized weight) and h = W0·x + b + s·P·diag(λ)·Q·x (AdaLoRA).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lora_edu.adalora import SVDLinear
from lora_edu.adapter import SerialAdapterLinear
from lora_edu.inject import add_low_rank_bypass, check_layer_input
from lora_edu.lora import LoRALinear
from lora_edu.qlora import QLoRALinear

K, D, R = 32, 24, 4
KINDS = ["lora", "svd", "qlora"]


def make(kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A layer of the kind with a non-zero bypass (B, or λ, set away from its zero start)."""
    g = torch.Generator().manual_seed(1)
    base = nn.Linear(K, D, dtype=dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(D, K, generator=g, dtype=torch.float64))
        base.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    if kind == "lora":
        layer = LoRALinear(base, R, 8.0, generator=g)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(D, R, generator=g, dtype=torch.float64))
    elif kind == "svd":
        layer = SVDLinear(base, R, alpha=8.0, init_std=0.5, generator=g)
        with torch.no_grad():
            layer.lora_lambda.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    else:
        layer = QLoRALinear(base, R, 8.0, generator=g, compute_dtype=torch.float32)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(D, R, generator=g, dtype=torch.float64))
    return layer


def base_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W0 (dequantized for QLoRA) and b, in float64."""
    if isinstance(layer, QLoRALinear):
        lin = layer.base.linear(torch.float32)
        return lin.weight.double(), lin.bias.double()
    return layer.base.weight.double(), layer.base.bias.double()


def formula(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output written from its formula, in float64."""
    w, b = base_weight(layer)
    x = x.double()
    if isinstance(layer, SVDLinear):
        lam = torch.diag(layer.lora_lambda.double())
        delta = layer.lora_P.double() @ lam @ layer.lora_Q.double()
    else:
        delta = layer.lora_B.double() @ layer.lora_A.double()
    return x @ (w + layer.scaling * delta).t() + b


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_the_formula(kind):
    layer = make(kind)
    x = torch.randn(3, 5, K, generator=torch.Generator().manual_seed(2))
    out = layer(x)
    assert out.shape == (3, 5, D) and out.dtype == torch.float32
    # float32 products of length ≤ 32 with O(1) entries: an absolute error far below 1e-4
    assert (out.double() - formula(layer, x)).abs().max() < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_a_hook_on_the_base_sees_the_base_output_alone(kind):
    """A forward hook on ``.base`` gets W0·x + b; before the fix the SVD and QLoRA layers added
    the bypass into that very tensor afterwards, so the hook's tensor held the sum."""
    layer = make(kind)
    seen = []
    layer.base.register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.randn(6, K, generator=torch.Generator().manual_seed(3))
    out = layer(x)
    w, b = base_weight(layer)
    assert (seen[0].double() - (x.double() @ w.t() + b)).abs().max() < 1e-4
    assert (out - seen[0]).abs().max() > 0.1     # the bypass is in the layer's output only


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_autocast_runs_forward_and_backward(kind):
    """Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the three layers compute (before the
    fix the SVD and QLoRA layers raised "self and mat2 must have the same dtype") and stay
    within bfloat16's precision of the formula; gradients reach the adapter."""
    layer = make(kind)
    x = torch.randn(8, K, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    exact = formula(layer, x)
    # bfloat16 keeps 8 significant bits: relative error per rounding 2^-8, a few roundings deep
    assert ((out.double() - exact).abs().max() / exact.abs().max()) < 0.05
    out.float().square().sum().backward()
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all()
                             for p in trainable)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_weights_without_autocast(kind):
    if kind == "qlora":
        layer = QLoRALinear(nn.Linear(K, D), R, 8.0, compute_dtype=torch.bfloat16)
        x = torch.randn(4, K, dtype=torch.bfloat16)
    else:
        layer = make(kind, torch.bfloat16)
        x = torch.randn(4, K, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    exact = formula(layer, x)
    assert ((out.double() - exact).abs().max() / exact.abs().max()) < 0.05


def test_helper_equals_the_two_products_and_leaves_h_untouched():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 3, D, dtype=torch.float64, generator=g)
    x = torch.randn(2, 3, K, dtype=torch.float64, generator=g)
    a = torch.randn(R, K, dtype=torch.float64, generator=g)
    b = torch.randn(D, R, dtype=torch.float64, generator=g)
    lam = torch.randn(R, dtype=torch.float64, generator=g)
    h_copy = h.clone()
    out = add_low_rank_bypass(h, x, a, b, 0.5)
    assert torch.allclose(out, h + 0.5 * F.linear(F.linear(x, a), b), rtol=0, atol=1e-12)
    out = add_low_rank_bypass(h, x, a, b, 0.5 * lam)
    assert torch.allclose(out, h + F.linear(x, b @ torch.diag(0.5 * lam) @ a), rtol=0, atol=1e-12)
    assert torch.equal(h, h_copy)


LAYERS = {"lora": lambda: make("lora"), "svd": lambda: make("svd"), "qlora": lambda: make("qlora"),
          "serial adapter": lambda: SerialAdapterLinear(nn.Linear(K, D), 4)}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_forward_names_a_wrong_input(kind):
    layer = LAYERS[kind]()
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list"):
        layer([[1.0] * K])
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor, got torch.int64"):
        layer(torch.ones(2, K, dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"^x must have last dimension in_features={K}"):
        layer(torch.ones(2, K + 1))
    with pytest.raises(ValueError, match=r"^x is on device meta"):
        layer(torch.ones(2, K, device="meta"))
    if kind != "qlora":  # the 4-bit layer casts its input to the compute dtype, as documented
        with pytest.raises(TypeError, match=r"^x has dtype torch.float64, the layer's weights "
                                            r"torch.float32"):
            layer(torch.ones(2, K, dtype=torch.float64))
    else:
        assert layer(torch.ones(2, K, dtype=torch.float64)).dtype == torch.float64


def test_check_layer_input_allows_another_dtype_under_autocast():
    w = torch.zeros(D, K, dtype=torch.bfloat16)
    x = torch.ones(2, K)
    with pytest.raises(TypeError):
        check_layer_input(x, K, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert check_layer_input(x, K, w) is x


def test_replace_module_swaps_one_submodule_and_names_a_wrong_path():
    from lora_edu.inject import replace_module

    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    new = nn.Linear(3, 1)
    replace_module(model, "1.1", new)
    assert model[1][1] is new and isinstance(model[0], nn.Linear)
    with pytest.raises(ValueError, match=r"^name='1.7' is not a submodule"):
        replace_module(model, "1.7", nn.ReLU())
    with pytest.raises(ValueError, match=r"^name must be"):
        replace_module(model, "", nn.ReLU())
    with pytest.raises(TypeError, match=r"^new must be a Module"):
        replace_module(model, "0", "relu")
