"""A tiny pre-LN transformer classifier that trains in seconds on a CPU.

It exists so that the chapters can *run* what source §2 describes — freeze W0, add the B·A bypass
to W_q and W_v (source §2.3 (1)), train, merge — on a real attention network rather than on a
single matrix. Its projections carry the names adapters target: ``blocks[i].attn.q_proj``,
``k_proj``, ``v_proj``, ``o_proj`` and ``blocks[i].mlp.fc1``, ``fc2``, all ``nn.Linear``.

Input: token ids of shape (batch, seq); position 0 is read as the classification ("CLS") token.
Output: class logits of shape (batch, n_classes).

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument). Seeded construction (``TinyTransformer(seed=…)``,
``reset_head(seed=…)``) draws from torch's CPU generator inside a fork of it, seeded with
``torch.default_generator.manual_seed`` — not ``torch.manual_seed``, which would also (re)seed
every CUDA/MPS/XPU generator, for good, behind the caller's back. Seeded construction changes no
global state; unseeded construction draws from (and advances) the global CPU generator, as any
``nn.Module`` constructor does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from lora_edu.checks import check_instance, check_int, check_probability, check_seed, check_tensor

__all__ = ["ToyConfig", "TinyTransformer", "SelfAttention", "MLP", "Block"]



def _check_heads(d_model: object, n_heads: object) -> tuple[int, int]:
    d_model = check_int("d_model", d_model, 1)
    n_heads = check_int("n_heads", n_heads, 1)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    return d_model, n_heads


@dataclass(frozen=True)
class ToyConfig:
    """Shape of :class:`TinyTransformer` (defaults: 2 layers, d_model 64, ≈ 0.1 M parameters).

    Every size is an int ≥ 1 (``n_classes`` ≥ 2), ``d_model`` divisible by ``n_heads``, and
    ``dropout`` a number in [0, 1); numpy scalars are stored as Python ints/floats. The W_q, W_v of
    source §2.3 (1) are d_model×d_model matrices here.
    """

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
            minimum = 2 if name == "n_classes" else 1
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        _check_heads(self.d_model, self.n_heads)
        object.__setattr__(self, "dropout", check_probability("dropout", self.dropout))

    def to_dict(self) -> dict:
        """Plain-dict form (for printing and for saving with a checkpoint)."""
        return asdict(self)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with projections ``q_proj, k_proj, v_proj, o_proj``.

    softmax(Q·Kᵀ/√d_head)·V per head, written out (no fused kernel) so every matrix is visible:
    the W_q, W_k, W_v, W_o of source §2.3 (1), each an ``nn.Linear(d_model, d_model)``.
    ``d_model`` and ``n_heads`` are ints ≥ 1 with ``d_model`` divisible by ``n_heads``; ``dropout``
    (on the attention weights) is in [0, 1).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        d_model, n_heads = _check_heads(d_model, n_heads)
        dropout = check_probability("dropout", dropout)
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, seq, d_model) → (batch, seq, d_model): W_o·concat_h softmax(q·kᵀ/√d_head)·v."""
        check_tensor("x", x, 3)
        b, t, d = x.shape
        if d != self.n_heads * self.d_head:
            raise ValueError(f"x must have last dimension d_model={self.n_heads * self.d_head}, "
                             f"got shape {tuple(x.shape)}")

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.n_heads, self.d_head).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        weights = self.dropout(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.o_proj(out)


class MLP(nn.Module):
    """Position-wise feed-forward network ``fc2(GELU(fc1(x)))`` (the FFN of source §3.3).

    ``d_model`` and ``d_ff`` are ints ≥ 1, ``dropout`` (on the output) is in [0, 1).
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        d_model = check_int("d_model", d_model, 1)
        d_ff = check_int("d_ff", d_ff, 1)
        dropout = check_probability("dropout", dropout)
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(…, d_model) → (…, d_model): fc2(GELU(fc1(x))), then dropout."""
        return self.dropout(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.

    ``config`` must be a :class:`ToyConfig`; attention and MLP are those of source §2.3 (1), §3.3.
    """

    def __init__(self, config: ToyConfig) -> None:
        check_instance("config", config, ToyConfig)
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config.d_model, config.n_heads, config.dropout)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.d_ff, config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, seq, d_model) → (batch, seq, d_model), two residual sub-layers."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token ids (batch, seq) → class logits (batch, n_classes), read at position 0.

    Parameters
    ----------
    config:
        A :class:`ToyConfig`.
    seed:
        If given (an int in ``[0, 2**32 - 1]``), the weights are initialised from the CPU generator
        seeded with ``seed`` inside a fork of it (every global generator is left untouched);
        otherwise from the global CPU generator, which then advances as for any ``nn.Module``.

    Notes
    -----
    The trainable matrices are the W0 of source §2.1 (1) before an adapter freezes them.
    """

    def __init__(self, config: ToyConfig | None = None, seed: int | None = None) -> None:
        config = ToyConfig() if config is None else config
        check_instance("config", config, ToyConfig)
        if seed is not None:
            seed = check_seed("seed", seed)
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
            self.pos_emb = nn.Embedding(config.max_len, config.d_model)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.n_classes)
            for emb in (self.tok_emb, self.pos_emb):
                nn.init.normal_(emb.weight, std=0.5)

    def reset_head(self, n_classes: int | None = None, seed: int = 0) -> nn.Linear:
        """Replace the classifier by a fresh, trainable ``nn.Linear`` (seeded); return it.

        Used when a pre-trained body is reused for a downstream task with new labels (trained
        together with the adapter, as in source §2.3 (1)'s "freeze the rest" with a new head).
        ``n_classes`` is an int ≥ 2 (default: ``config.n_classes``), ``seed`` an int in
        ``[0, 2**32 - 1]``; the draw happens in a fork of the CPU generator.
        """
        n_classes = self.config.n_classes if n_classes is None else n_classes
        n_classes = check_int("n_classes", n_classes, 2)
        seed = check_seed("seed", seed)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.head = nn.Linear(self.config.d_model, n_classes)
        return self.head

    def features(self, tokens: Tensor) -> Tensor:
        """Final-layer-norm hidden state at position 0, shape (batch, d_model).

        ``tokens`` is a 2-D int64/int32 tensor (batch, seq) of ids in ``[0, vocab_size)`` with
        1 ≤ seq ≤ ``max_len``: ``TypeError`` for another type or dtype, ``ValueError`` otherwise.
        """
        check_tensor("tokens", tokens, 2)
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must hold integer ids (int64 or int32), got {tokens.dtype}")
        seq = tokens.shape[1]
        if not 1 <= seq <= self.config.max_len:
            raise ValueError(f"tokens must have 1 to max_len={self.config.max_len} positions, "
                             f"got {seq}")
        if tokens.numel() and (int(tokens.min()) < 0
                               or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"tokens must hold ids in [0, vocab_size={self.config.vocab_size}), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")
        positions = torch.arange(seq, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x[:, 0])

    def forward(self, tokens: Tensor) -> Tensor:
        """Class logits (batch, n_classes) = head(features(tokens)); ``tokens`` as in
        :meth:`features`."""
        return self.head(self.features(tokens))
