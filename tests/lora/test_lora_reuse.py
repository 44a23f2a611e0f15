"""Tests of lora_edu.lora beyond the layer's arithmetic: argument checks, mixed precision, the
merged state in a state dict, merge/unmerge of whole models, adapter files and PEFT's file layout
(written and read without PEFT; tests/test_peft_interop.py loads the files with PEFT itself)."""

from __future__ import annotations

import json
import math
import pickle
import re
from importlib.metadata import version

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import lora_edu
from lora_edu.lora import (
    ADAPTER_FORMAT,
    LoRALinear,
    adapter_config,
    apply_lora,
    export_peft,
    import_peft,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)
from lora_edu.toy import TinyTransformer, ToyConfig


def trained_layer(d=24, k=16, r=4, alpha=8.0, dtype=torch.float64, seed=0, **kw) -> LoRALinear:
    """A LoRA layer whose B is non-zero (as after training)."""
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(k, d, dtype=dtype), r, alpha, **kw)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def trained_toy(r=4, alpha=8.0, seed=0, head=True, **kw) -> TinyTransformer:
    """TinyTransformer(seed=0) with LoRA on q, v, a non-zero B and (by default) a new trained head,
    as after fine-tuning: the head is trainable, as apply_lora's docstring tells the user."""
    model = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=r, alpha=alpha, seed=seed,
                       **kw)
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=gen))
    if head:
        model.reset_head(seed=seed)
        with torch.no_grad():
            model.head.weight.add_(torch.randn(model.head.weight.shape, generator=gen))
            model.head.bias.add_(torch.randn(model.head.bias.shape, generator=gen))
    return model


TOKENS = torch.randint(0, 48, (8, 12), generator=torch.Generator().manual_seed(5))


def exact_output(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """h = W0·x + b + s·B·A·x in float64 from the layer's (possibly low-precision) tensors."""
    w, b = layer.base.weight.double(), layer.base.bias.double()
    a, bb = layer.lora_A.double(), layer.lora_B.double()
    x = x.double()
    return x @ w.T + b + layer.scaling * (x @ a.T) @ bb.T


# ------------------------------------------------------------------------- 1. argument checks


def _toy():
    return TinyTransformer(seed=0)


def _lin(k=8, d=4):
    return nn.Linear(k, d)


BAD_INPUT = [
    # (case, call, exception, argument named in the message)
    ("r=0", lambda: LoRALinear(_lin(), 0, 8), ValueError, "r"),
    ("r<0", lambda: LoRALinear(_lin(), -3, 8), ValueError, "r"),
    ("r float", lambda: LoRALinear(_lin(), 2.0, 8), TypeError, "r"),
    ("r str", lambda: LoRALinear(_lin(), "4", 8), TypeError, "r"),
    ("r bool", lambda: LoRALinear(_lin(), True, 8), TypeError, "r"),
    ("r=100 > min(d,k)=4", lambda: LoRALinear(_lin(8, 4), 100, 8), ValueError, "r"),
    ("r=5 > min(d,k)=4", lambda: LoRALinear(_lin(4, 8), 5, 8), ValueError, "r"),
    ("alpha=0", lambda: LoRALinear(_lin(), 2, 0), ValueError, "alpha"),
    ("alpha<0", lambda: LoRALinear(_lin(), 2, -1.0), ValueError, "alpha"),
    ("alpha=inf", lambda: LoRALinear(_lin(), 2, math.inf), ValueError, "alpha"),
    ("alpha=nan", lambda: LoRALinear(_lin(), 2, math.nan), ValueError, "alpha"),
    ("alpha str", lambda: LoRALinear(_lin(), 2, "8"), TypeError, "alpha"),
    ("alpha None", lambda: LoRALinear(_lin(), 2, None), TypeError, "alpha"),
    ("dropout=1", lambda: LoRALinear(_lin(), 2, 4, dropout=1.0), ValueError, "dropout"),
    ("dropout=nan", lambda: LoRALinear(_lin(), 2, 4, dropout=math.nan), ValueError, "dropout"),
    ("dropout str", lambda: LoRALinear(_lin(), 2, 4, dropout="0.1"), TypeError, "dropout"),
    ("init unknown", lambda: LoRALinear(_lin(), 2, 4, init="xavier"), ValueError, "init"),
    ("init None", lambda: LoRALinear(_lin(), 2, 4, init=None), TypeError, "init"),
    ("gaussian_std=0", lambda: LoRALinear(_lin(), 2, 4, gaussian_std=0.0), ValueError,
     "gaussian_std"),
    ("gaussian_std<0", lambda: LoRALinear(_lin(), 2, 4, gaussian_std=-0.1), ValueError,
     "gaussian_std"),
    ("gaussian_std=inf", lambda: LoRALinear(_lin(), 2, 4, gaussian_std=math.inf), ValueError,
     "gaussian_std"),
    ("gaussian_std=nan", lambda: LoRALinear(_lin(), 2, 4, gaussian_std=math.nan), ValueError,
     "gaussian_std"),
    ("gaussian_std str", lambda: LoRALinear(_lin(), 2, 4, gaussian_std="0.1"), TypeError,
     "gaussian_std"),
    ("gaussian_std with kaiming",
     lambda: LoRALinear(_lin(), 2, 4, init="kaiming", gaussian_std=0.1), ValueError,
     "gaussian_std"),
    ("rslora str", lambda: LoRALinear(_lin(), 2, 4, rslora="yes"), TypeError, "rslora"),
    ("rslora int", lambda: LoRALinear(_lin(), 2, 4, rslora=1), TypeError, "rslora"),
    ("generator int", lambda: LoRALinear(_lin(), 2, 4, generator=0), TypeError, "generator"),
    ("base not Linear", lambda: LoRALinear(nn.Conv1d(3, 3, 1), 2, 4), TypeError, "base"),
    ("apply_lora r > d_model", lambda: apply_lora(_toy(), "q_proj", r=65, alpha=8), ValueError,
     "r"),
    ("apply_lora alpha=inf", lambda: apply_lora(_toy(), "q_proj", r=2, alpha=math.inf),
     ValueError, "alpha"),
    ("apply_lora seed float", lambda: apply_lora(_toy(), "q_proj", r=2, alpha=4, seed=1.5),
     TypeError, "seed"),
    ("apply_lora seed<0", lambda: apply_lora(_toy(), "q_proj", r=2, alpha=4, seed=-1),
     ValueError, "seed"),
    ("apply_lora model", lambda: apply_lora("model", "q_proj", r=2, alpha=4), TypeError, "model"),
    ("lora_layers model", lambda: lora_layers([nn.Linear(2, 2)]), TypeError, "model"),
    ("merge_lora replace", lambda: merge_lora(trained_toy(), replace="no"), TypeError,
     "replace"),
    ("merge_lora nothing", lambda: merge_lora(_toy()), ValueError, "model"),
    ("unmerge_lora nothing", lambda: unmerge_lora(_toy()), ValueError, "model"),
    ("save_lora path", lambda: save_lora(trained_toy(), 3), TypeError, "path"),
    ("load_lora strict", lambda: load_lora(trained_toy(), "x.pt", strict="yes"), TypeError,
     "strict"),
    ("export_peft safe_serialization",
     lambda: export_peft(trained_toy(), "d", safe_serialization=1), TypeError,
     "safe_serialization"),
    ("export_peft directory", lambda: export_peft(trained_toy(), 3), TypeError, "directory"),
    ("import_peft model", lambda: import_peft(None, "d"), TypeError, "model"),
]


@pytest.mark.parametrize("call, exc, arg", [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_naming_the_argument(call, exc, arg):
    """A wrong type is a TypeError, a wrong value a ValueError; the message starts with the
    argument's name."""
    with pytest.raises(exc) as info:
        call()
    assert re.match(rf"{re.escape(arg)}\b", str(info.value)), str(info.value)


def test_rank_above_min_d_k_leaves_the_model_unchanged():
    model = TinyTransformer(ToyConfig(d_model=32, n_heads=4, d_ff=16), seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^r must be <= min\(d, k\) = 16 of 'blocks.0.mlp.fc1'"):
        apply_lora(model, ["q_proj", "fc1"], r=17, alpha=8)  # q_proj: 32×32 fits, fc1: 32→16 not
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    apply_lora(model, ["q_proj", "fc1"], r=16, alpha=8)  # r = min(d, k) is allowed
    assert len(lora_layers(model)) == 4


def test_numpy_scalars_are_accepted():
    layer = LoRALinear(nn.Linear(16, 24), np.int64(4), np.float32(8.0), dropout=np.float64(0.1),
                       gaussian_std=np.float64(0.05), rslora=np.bool_(True))
    assert type(layer.r) is int and layer.r == 4
    assert type(layer.scaling) is float and layer.scaling == 8.0 / 2
    assert type(layer.alpha) is float and type(layer.rslora) is bool
    assert layer.lora_A.shape == (4, 16)
    a = apply_lora(TinyTransformer(seed=0), "q_proj", r=np.int32(2), alpha=np.int64(4),
                   seed=np.int64(3))
    b = apply_lora(TinyTransformer(seed=0), "q_proj", r=2, alpha=4, seed=3)
    sa, sb = lora_state_dict(a), lora_state_dict(b)
    assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- 2. forward: dtypes, autocast


def use_path(layer: LoRALinear, path: str) -> LoRALinear:
    """A plain base ("plain") or one with a forward hook ("hooked"): the result must not depend
    on it."""
    if path == "hooked":
        layer.base.register_forward_hook(lambda module, inputs, output: None)
    return layer


def test_forward_hook_on_base_sees_the_base_output():
    """The base layer's output tensor is not overwritten by the bypass."""
    layer = trained_layer()
    seen = []
    layer.base.register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = torch.randn(4, 16, dtype=torch.float64)
    out = layer(x)
    assert torch.equal(seen[0], nn.functional.linear(x, layer.base.weight, layer.base.bias))
    assert (out - seen[0]).abs().max() > 0.1  # the bypass is in `out`, not in the base output
    assert torch.allclose(out, exact_output(layer, x), rtol=0, atol=1e-12)


def test_global_hooks_and_subclassed_bases_are_called():
    """Module hooks registered globally see the base output; a subclass of nn.Linear with its
    own forward is called, not bypassed."""
    layer = trained_layer()
    x = torch.randn(4, 16, dtype=torch.float64)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.append((module, output)))
    try:
        out = layer(x)
    finally:
        handle.remove()
    base_out = [o for m, o in seen if m is layer.base]
    assert len(base_out) == 1
    assert torch.equal(base_out[0], nn.functional.linear(x, layer.base.weight, layer.base.bias))
    assert torch.allclose(out, exact_output(layer, x), rtol=0, atol=1e-12)

    class Shifted(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    torch.manual_seed(0)
    shifted = LoRALinear(Shifted(16, 24, dtype=torch.float64), 4, 8.0)
    with torch.no_grad():
        shifted.lora_B.normal_()
    assert torch.allclose(shifted(x), exact_output(shifted, x) + 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["plain", "hooked"])
@pytest.mark.parametrize("shape", [(16,), (5, 16), (2, 3, 16)])
@pytest.mark.parametrize("rslora", [False, True])
def test_fast_forward_equals_reference_forward_and_gradients(shape, rslora, path):
    layer = use_path(trained_layer(rslora=rslora, dropout=0.5), path)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = (x, layer.lora_A, layer.lora_B)
    g = torch.randn(*shape[:-1], 24, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        torch.manual_seed(7)  # the same dropout mask on both paths
        fast = layer(x)
        grads_fast = torch.autograd.grad(fast, params, g)
        torch.manual_seed(7)
        ref = layer.reference_forward(x)
        grads_ref = torch.autograd.grad(ref, params, g)
        assert fast.shape == ref.shape == (*shape[:-1], 24)
        assert torch.allclose(fast, ref, rtol=0, atol=1e-12)
        for a, b in zip(grads_fast, grads_ref, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert torch.allclose(layer(x), exact_output(layer, x), rtol=0, atol=1e-12)  # eval: no drop


@pytest.mark.parametrize("path", ["plain", "hooked"])
def test_forward_under_cpu_autocast_with_float32_weights(path):
    """torch.autocast("cpu", bfloat16): the products run in bfloat16 (output dtype bfloat16),
    close to the float64 formula; the gradients of A and B stay float32."""
    layer = use_path(trained_layer(d=64, k=48, dtype=torch.float32), path)
    x = torch.randn(3, 5, 48)
    exact = exact_output(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = layer(x)
        ref = layer.reference_forward(x)
    assert fast.dtype == ref.dtype == torch.bfloat16
    scale = exact.abs().max()
    assert (fast.double() - exact).abs().max() <= 0.02 * scale
    assert (ref.double() - exact).abs().max() <= 0.02 * scale
    assert (fast.double() - ref.double()).abs().max() <= 0.02 * scale
    fast.float().pow(2).sum().backward()
    assert layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32
    assert layer.lora_B.grad.abs().max() > 0


@pytest.mark.parametrize("path", ["plain", "hooked"])
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.02), (torch.float16, 0.003),
                                        (torch.float32, 1e-6)])
def test_forward_with_low_precision_weights(dtype, tol, path):
    """bfloat16/float16 weights and input: output of that dtype, within its rounding of the
    float64 formula evaluated on the same (rounded) weights; fast and reference paths agree."""
    layer = use_path(trained_layer(d=64, k=48, dtype=dtype), path)
    x = torch.randn(3, 5, 48).to(dtype)
    exact = exact_output(layer, x)
    fast, ref = layer(x), layer.reference_forward(x)
    assert fast.dtype == ref.dtype == dtype
    scale = exact.abs().max()
    assert (fast.double() - exact).abs().max() <= tol * scale
    assert (ref.double() - exact).abs().max() <= tol * scale
    merged = layer.merged_linear()(x)
    assert (merged.double() - exact).abs().max() <= tol * scale
    layer.merge()
    assert (layer(x).double() - exact).abs().max() <= tol * scale


# ------------------------------------------------------------ 3. merged state, merge/unmerge


def test_merged_state_dict_round_trip_gives_identical_outputs():
    """A merged layer's state dict holds W0 + s·B·A and says so (lora_merged): loading it into a
    fresh, unmerged layer must not add s·B·A a second time."""
    layer = trained_layer()
    x = torch.randn(6, 16, dtype=torch.float64)
    layer.merge()
    state = layer.state_dict()
    fresh = LoRALinear(nn.Linear(16, 24, dtype=torch.float64), 4, 8.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), layer(x))
    assert "lora_merged" in state and bool(state["lora_merged"]) and fresh.merged
    fresh.unmerge()  # and it can be unmerged like the original
    layer.unmerge()
    assert torch.equal(fresh.base.weight, layer.base.weight) and torch.equal(fresh(x), layer(x))
    # the other way round: an unmerged state dict into a merged layer unmerges it
    other = trained_layer(seed=1)
    other.merge()
    other.load_state_dict(layer.state_dict())
    assert not other.merged and torch.equal(other(x), layer(x))


def test_merged_model_state_dict_round_trip():
    model = trained_toy()
    expected = model(TOKENS)
    merge_lora(model, replace=False)
    fresh = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=9)
    fresh.reset_head(seed=0)
    fresh.load_state_dict(model.state_dict())
    assert all(layer.merged for layer in lora_layers(fresh).values())
    assert torch.allclose(fresh(TOKENS), expected, rtol=0, atol=1e-4)
    assert torch.equal(fresh(TOKENS), model(TOKENS))


def test_merge_lora_in_place_then_unmerge_lora_undoes_it():
    model = trained_toy()
    weights = {n: m.base.weight.clone() for n, m in lora_layers(model).items()}
    expected = model(TOKENS)
    out = merge_lora(model, replace=False)
    assert out is model
    layers = lora_layers(model)
    assert sorted(layers) == sorted(weights) and all(m.merged for m in layers.values())
    assert all((m.base.weight - weights[n]).abs().max() > 1e-3 for n, m in layers.items())
    assert torch.allclose(model(TOKENS), expected, rtol=0, atol=1e-4)
    unmerge_lora(model)
    assert not any(m.merged for m in layers.values())
    for name, layer in layers.items():
        assert torch.allclose(layer.base.weight, weights[name], rtol=0, atol=1e-6)
    assert torch.allclose(model(TOKENS), expected, rtol=0, atol=1e-5)


def test_unmerge_after_replacing_merge_says_it_cannot():
    model = trained_toy()
    expected = model(TOKENS)
    merge_lora(model)  # replace=True: plain nn.Linear layers, adapter gone
    assert not lora_layers(model)
    with pytest.raises(ValueError, match="replace=True"):
        unmerge_lora(model)
    assert torch.allclose(model(TOKENS), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("replace", [True, False])
def test_merge_lora_on_a_bare_layer(replace):
    layer = trained_layer()
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = layer(x)
    merged = merge_lora(layer, replace=replace)
    names = [n for n, _ in merged.named_modules()]
    keys = list(merged.state_dict())
    assert len(names) == len(set(names)) and len(keys) == len(set(keys))
    assert not [n for n, _ in merged.named_children() if n == ""]
    if replace:
        assert type(merged) is nn.Linear and keys == ["weight", "bias"]
    else:
        assert merged is layer and layer.merged
        assert sorted(keys) == ["base.bias", "base.weight", "lora_A", "lora_B", "lora_merged"]
    assert torch.allclose(merged(x), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- 4. adapter files


def test_adapter_file_restores_a_trained_head(tmp_path):
    """apply_lora tells the user to unfreeze a new head: the adapter file must carry it."""
    model = trained_toy()
    expected = model(TOKENS)
    path = tmp_path / "adapter.pt"
    save_lora(model, path)
    fresh = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=1)
    assert (fresh(TOKENS) - expected).abs().max() > 1.0  # different before loading
    config = load_lora(fresh, path)
    assert torch.equal(fresh(TOKENS), expected)
    assert config["trainable"] == ["head.bias", "head.weight"]
    trainable = sorted(n for n, p in fresh.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_adapter_file_holds_the_config(tmp_path):
    model = trained_toy(rslora=True, init="kaiming", dropout=0.1)
    path = tmp_path / "adapter.pt"
    size = save_lora(model, path)
    obj = torch.load(path, weights_only=True)
    config = dict(obj["config"])
    checksums = config.pop("checksums")                  # one per saved tensor, beside the config
    assert config == adapter_config(model)
    assert len(checksums) == len(obj["lora"]) + len(obj["trainable"])
    assert config["format"] == ADAPTER_FORMAT
    assert config["lora_edu_version"] == lora_edu.__version__ == version("lora-edu")
    names = [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert config["target_modules"] == names
    for name in names:
        assert config["layers"][name] == {"in_features": 64, "out_features": 64, "r": 4,
                                          "alpha": 8.0, "rslora": True, "init": "kaiming",
                                          "dropout": 0.1}
    json.dumps(config)  # plain values only
    tensors = {**obj["lora"], **obj["trainable"]}
    assert sorted(obj["trainable"]) == ["head.bias", "head.weight"]
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    assert payload == 4 * (8 * 4 * 64 + 4 * 64 + 4)
    assert payload < size < payload + 16384


@pytest.mark.parametrize("change, words", [
    (dict(r=8, alpha=16), ["r is 4 in the adapter file, 8 in the model"]),
    (dict(alpha=16), ["alpha is 8.0 in the adapter file, 16.0 in the model"]),
    (dict(rslora=True), ["rslora is False in the adapter file, True in the model"]),
    (dict(targets=["q_proj"]),
     ["no LoRA layer at", "blocks.0.attn.v_proj", "blocks.1.attn.v_proj"]),
    (dict(targets=["q_proj", "v_proj", "k_proj"]), ["blocks.0.attn.k_proj", "not in the adapter"]),
])
def test_load_lora_names_what_does_not_match(tmp_path, change, words):
    path = tmp_path / "adapter.pt"
    save_lora(trained_toy(), path)
    kw = dict(r=4, alpha=8.0, rslora=False) | {k: v for k, v in change.items() if k != "targets"}
    fresh = apply_lora(TinyTransformer(seed=0), change.get("targets", ["q_proj", "v_proj"]),
                       seed=1, **kw)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_lora(fresh, path)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # atomic


def test_load_lora_strict_about_trainable_tensors_left_out(tmp_path):
    path = tmp_path / "adapter.pt"
    save_lora(trained_toy(head=False), path)
    fresh = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=1)
    fresh.reset_head(seed=3)  # trainable, but the file has no head
    with pytest.raises(ValueError, match=r"head\.bias.*head\.weight.*strict=False"):
        load_lora(fresh, path)
    with pytest.warns(UserWarning, match=r"head\.bias"):
        load_lora(fresh, path, strict=False)
    assert torch.equal(lora_state_dict(fresh)["blocks.0.attn.q_proj.lora_B"],
                       lora_state_dict(trained_toy(head=False))["blocks.0.attn.q_proj.lora_B"])


def test_load_lora_refuses_other_files_and_merged_layers(tmp_path):
    plain = tmp_path / "plain.pt"
    model = trained_toy()
    torch.save(lora_state_dict(model), plain)  # A/B only, no config
    with pytest.raises(ValueError, match="save_lora"):
        load_lora(model, plain)
    path = tmp_path / "adapter.pt"
    save_lora(model, path)
    merge_lora(model, replace=False)
    with pytest.raises(ValueError, match="merged"):
        load_lora(model, path)


class Payload:
    """Not a tensor: a weights_only load must refuse to build it."""

    def __reduce__(self):
        return (print, ("code from the file ran",))


def test_load_lora_reads_with_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    model = trained_toy()
    obj = {"config": adapter_config(model), "lora": lora_state_dict(model), "trainable": {},
           "x": Payload()}
    torch.save(obj, path)
    with pytest.raises(pickle.UnpicklingError):
        load_lora(model, path)


# -------------------------------------------------------------------- 5. PEFT layout, no PEFT


@pytest.mark.parametrize("safe", [True, False])
def test_export_peft_layout(tmp_path, safe):
    model = trained_toy(rslora=True, init="kaiming")
    paths = export_peft(model, tmp_path, safe_serialization=safe)
    assert [p.name for p in paths] == ["adapter_config.json",
                                       "adapter_model.safetensors" if safe else "adapter_model.bin"]
    config = json.loads(paths[0].read_text())
    names = [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert config["peft_type"] == "LORA" and config["bias"] == "none"
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8.0, True)
    assert config["target_modules"] == names and config["modules_to_save"] == ["head"]
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    if safe:
        tensors = safetensors.torch.load_file(str(paths[1]))
    else:
        tensors = torch.load(paths[1], weights_only=True)
    expected = {f"base_model.model.{n}.lora_{m}.weight" for n in names for m in "AB"}
    expected |= {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert set(tensors) == expected
    layer = lora_layers(model)["blocks.1.attn.v_proj"]
    assert torch.equal(tensors["base_model.model.blocks.1.attn.v_proj.lora_A.weight"],
                       layer.lora_A)
    assert torch.equal(tensors["base_model.model.blocks.1.attn.v_proj.lora_B.weight"],
                       layer.lora_B)
    assert torch.equal(tensors["base_model.model.head.weight"], model.head.weight)


@pytest.mark.parametrize("safe", [True, False])
def test_export_then_import_peft_round_trip(tmp_path, safe):
    model = trained_toy(alpha=6.0)
    expected = model(TOKENS)
    export_peft(model, tmp_path, safe_serialization=safe)
    fresh = import_peft(TinyTransformer(seed=0), tmp_path)
    assert torch.equal(fresh(TOKENS), expected)
    assert {n: m.settings() for n, m in lora_layers(fresh).items()} == \
        {n: m.settings() for n, m in lora_layers(model).items()}
    trainable = sorted(n for n, p in fresh.named_parameters() if p.requires_grad)
    assert trainable == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_export_peft_rank_and_alpha_patterns(tmp_path):
    """Layers with their own r and α go to rank_pattern/alpha_pattern (escaped module paths)."""
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    seq[0] = LoRALinear(seq[0], 2, 4.0)
    seq[2] = LoRALinear(seq[2], 3, 6.0)
    seq[4] = LoRALinear(seq[4], 2, 4.0)
    for layer in lora_layers(seq).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    config = json.loads(export_peft(seq, tmp_path, safe_serialization=False)[0].read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4.0)
    assert config["rank_pattern"] == {"2": 3} and config["alpha_pattern"] == {"2": 6.0}
    assert config["modules_to_save"] is None
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    for i in (0, 2, 4):
        plain[i].load_state_dict(seq[i].base.state_dict())
    import_peft(plain, tmp_path)
    x = torch.randn(5, 6)
    assert torch.equal(plain(x), seq(x))
    assert [plain[i].r for i in (0, 2, 4)] == [2, 3, 2]


def test_import_peft_into_the_wrong_model_changes_nothing(tmp_path):
    export_peft(trained_toy(), tmp_path, safe_serialization=False)
    other = TinyTransformer(ToyConfig(d_model=32, n_heads=4), seed=0)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="in_features is 64 in the PEFT adapter"):
        import_peft(other, tmp_path)
    assert not lora_layers(other) and all(p.requires_grad for p in other.parameters())
    assert other.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())


def test_export_peft_refuses_what_peft_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="bare LoRALinear"):
        export_peft(trained_layer(), tmp_path)
    seq = nn.Sequential(LoRALinear(nn.Linear(4, 4), 2, 4, dropout=0.1),
                        LoRALinear(nn.Linear(4, 4), 2, 4))
    with pytest.raises(ValueError, match="dropout"):
        export_peft(seq, tmp_path)
    model = trained_toy(head=False)
    lora_layers(model)["blocks.0.attn.q_proj"].base.bias.requires_grad_(True)
    with pytest.raises(ValueError, match="blocks.0.attn.q_proj"):
        export_peft(model, tmp_path)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_import_peft_refuses_an_adapter_whose_init_rewrote_the_base(tmp_path, init):
    """PEFT saves a PiSSA/OLoRA/CorDA/LoftQ adapter for a base it modified; loading it onto the
    unchanged base would be silently wrong, so it is refused with the init named."""
    export_peft(trained_toy(), tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["init_lora_weights"] = init
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"init_lora_weights={init!r}"):
        import_peft(TinyTransformer(), tmp_path / "adapter")


def test_export_peft_leaves_nothing_behind_when_it_cannot_serialise(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors.torch", None)     # as if not installed
    with pytest.raises(ImportError):
        export_peft(trained_toy(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    written = export_peft(trained_toy(), tmp_path / "adapter_bin", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "adapter_bin").iterdir()) == sorted(
        p.name for p in written)                                      # no temporary file left


def test_a_damaged_adapter_file_is_refused_naming_the_tensor(tmp_path):
    """Bytes changed inside a saved tensor (64 of them) are caught by the stored checksums."""
    model = trained_toy()
    path = tmp_path / "adapter.pt"
    save_lora(model, path)
    obj = torch.load(path, weights_only=True)
    name = sorted(obj["lora"])[0]
    damaged = obj["lora"][name].clone()
    raw = damaged.view(-1).view(torch.uint8)
    raw[:64] ^= 0xFF                                   # flip 64 bytes of the tensor's data
    obj["lora"][name] = damaged
    torch.save(obj, path)
    fresh = apply_lora(TinyTransformer(), ["q_proj", "v_proj"], r=4, alpha=8.0)
    with pytest.raises(ValueError, match=re.escape(repr([name]))):
        load_lora(fresh, path)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in fresh.named_parameters()
               if n.endswith("lora_B"))                  # nothing was copied


def test_checksums_pass_for_a_good_file_and_every_tensor_has_one(tmp_path):
    model = trained_toy()
    save_lora(model, tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(obj["config"]["checksums"]) == (
        {f"lora.{n}" for n in obj["lora"]} | {f"trainable.{n}" for n in obj["trainable"]})
    fresh = apply_lora(TinyTransformer(), ["q_proj", "v_proj"], r=4, alpha=8.0)
    load_lora(fresh, tmp_path / "a.pt")
