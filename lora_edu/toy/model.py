"""A tiny pre-LN transformer classifier that trains in seconds on a CPU.

It exists so that the chapters can *run* what source §2 describes — freeze W0, add the B·A bypass
to W_q and W_v (source §2.3 (1)), train, merge — on a real attention network rather than on a
single matrix. Its projections carry the names adapters target: ``blocks[i].attn.q_proj``,
``k_proj``, ``v_proj``, ``o_proj`` and ``blocks[i].mlp.fc1``, ``fc2``, all ``nn.Linear``.

Input: token ids of shape (batch, seq); position 0 is read as the classification ("CLS") token.
Output: class logits of shape (batch, n_classes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["ToyConfig", "TinyTransformer", "SelfAttention", "MLP", "Block"]


@dataclass(frozen=True)
class ToyConfig:
    """Shape of :class:`TinyTransformer` (defaults: 2 layers, d_model 64, ≈ 0.1 M parameters)."""

    vocab_size: int = 48
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    max_len: int = 32
    n_classes: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len",
                     "n_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """Plain-dict form (for printing and for saving with a checkpoint)."""
        return asdict(self)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with projections ``q_proj, k_proj, v_proj, o_proj``.

    softmax(Q·Kᵀ/√d_head)·V per head, written out (no fused kernel) so every matrix is visible.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.n_heads, self.d_head).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        weights = self.dropout(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.o_proj(out)


class MLP(nn.Module):
    """Position-wise feed-forward network ``fc2(GELU(fc1(x)))`` (the FFN of source §3.3)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config.d_model, config.n_heads, config.dropout)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.d_ff, config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token ids (batch, seq) → class logits (batch, n_classes), read at position 0.

    Parameters
    ----------
    config:
        A :class:`ToyConfig`.
    seed:
        If given, the weights are initialised from ``torch.manual_seed(seed)`` inside a forked RNG
        (the global generator is left untouched); otherwise from the global generator.
    """

    def __init__(self, config: ToyConfig | None = None, seed: int | None = None) -> None:
        super().__init__()
        config = ToyConfig() if config is None else config
        if not isinstance(config, ToyConfig):
            raise TypeError(f"config must be a ToyConfig, got {type(config).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.config = config
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
            self.pos_emb = nn.Embedding(config.max_len, config.d_model)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.n_classes)
            for emb in (self.tok_emb, self.pos_emb):
                nn.init.normal_(emb.weight, std=0.5)

    def reset_head(self, n_classes: int | None = None, seed: int = 0) -> nn.Linear:
        """Replace the classifier by a fresh, trainable ``nn.Linear`` (seeded); return it.

        Used when a pre-trained body is reused for a downstream task with new labels.
        """
        n_classes = self.config.n_classes if n_classes is None else n_classes
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(self.config.d_model, n_classes)
        return self.head

    def features(self, tokens: Tensor) -> Tensor:
        """Final-layer-norm hidden state at position 0, shape (batch, d_model)."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a Tensor, got {type(tokens).__name__}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must hold integer ids, got {tokens.dtype}")
        seq = tokens.shape[1]
        if not 1 <= seq <= self.config.max_len:
            raise ValueError(f"tokens has length {seq}, max_len is {self.config.max_len}")
        positions = torch.arange(seq, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x[:, 0])

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.features(tokens))
