"""Tests of lora_edu.inject: selection by dotted suffix, freezing, atomic failure, counting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_edu.inject import count_parameters, find_linear_targets, inject_adapters
from lora_edu.toy import TinyTransformer, ToyConfig


class Wrap(nn.Module):
    """A minimal adapter: the frozen base plus one trainable scalar."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.base(x) * (1 + self.gain)


def small() -> TinyTransformer:
    return TinyTransformer(ToyConfig(n_layers=2), seed=0)


def test_suffix_matching_selects_exact_modules():
    model = small()
    assert find_linear_targets(model, "q_proj") == ["blocks.0.attn.q_proj",
                                                    "blocks.1.attn.q_proj"]
    assert find_linear_targets(model, "attn.v_proj") == ["blocks.0.attn.v_proj",
                                                         "blocks.1.attn.v_proj"]
    assert find_linear_targets(model, "blocks.1.mlp.fc1") == ["blocks.1.mlp.fc1"]
    assert find_linear_targets(model, "proj") == []  # no partial-word matches
    assert find_linear_targets(model, "attn") == []  # attn is not an nn.Linear


def test_inject_replaces_and_freezes():
    model = small()
    names = inject_adapters(model, ["q_proj", "v_proj"], Wrap)
    assert names == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj",
                     "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]
    modules = dict(model.named_modules())
    for name in names:
        assert isinstance(modules[name], Wrap)
    assert isinstance(modules["blocks.0.attn.k_proj"], nn.Linear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [n + ".gain" for n in names]
    assert count_parameters(model)[0] == 4


def test_inject_forward_unchanged_and_only_adapter_grads():
    model = small()
    x = torch.randint(0, model.config.vocab_size, (3, 10))
    before = model(x)
    inject_adapters(model, "fc2", Wrap)
    assert torch.equal(model(x), before)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == n.endswith(".gain"), n


def test_no_match_raises_and_leaves_model_unchanged():
    model = small()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="target_modules"):
        inject_adapters(model, ["nope"], Wrap)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_factory_error_leaves_model_unchanged():
    model = small()
    calls = []

    def bad(linear):
        calls.append(linear)
        linear.weight.requires_grad_(False)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return Wrap(linear)

    with pytest.raises(RuntimeError, match="boom"):
        inject_adapters(model, ["q_proj", "v_proj"], bad)
    assert all(p.requires_grad for p in model.parameters())
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))


def test_bad_arguments():
    model = small()
    with pytest.raises(TypeError, match="target_modules"):
        inject_adapters(model, 3, Wrap)
    with pytest.raises(ValueError, match="target_modules"):
        inject_adapters(model, [], Wrap)
    with pytest.raises(TypeError, match="factory"):
        inject_adapters(model, "q_proj", None)
    with pytest.raises(TypeError, match="factory"):
        inject_adapters(model, "q_proj", lambda lin: 5)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="model"):
        count_parameters("model")


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == (16 + 8, 24)
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == (4 + 8, 24)
    tied = nn.Sequential(model[1], model[1])  # shared weights are counted once
    assert count_parameters(tied) == (8, 8)


def test_each_bad_argument_is_named():
    model = small()
    with pytest.raises(TypeError, match=r"target_modules\[1\] must be a str"):
        inject_adapters(model, ["q_proj", 3], Wrap)
    with pytest.raises(ValueError, match="target_modules must hold non-empty dotted names"):
        find_linear_targets(model, ["q_proj", ".v_proj"])
    with pytest.raises(TypeError, match="model must be a Module"):
        inject_adapters("model", "q_proj", Wrap)
    with pytest.raises(TypeError, match="model must be a Module"):
        find_linear_targets(None, "q_proj")
    with pytest.raises(TypeError, match="factory's result for 'blocks.0.attn.q_proj'"):
        inject_adapters(model, "q_proj", lambda lin: "not a module")
    assert all(p.requires_grad for p in model.parameters())


def test_normalize_targets():
    from lora_edu.inject import normalize_targets
    assert normalize_targets("q_proj") == ("q_proj",)
    assert normalize_targets(["q_proj", "attn.v_proj"]) == ("q_proj", "attn.v_proj")
    assert normalize_targets(("a",)) == ("a",)
    with pytest.raises(TypeError, match="target_modules must be a str or Sequence"):
        normalize_targets({"q_proj"})  # a set has no order
