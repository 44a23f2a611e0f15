"""The arithmetic behind LoRA's efficiency claims (source §2.1 (3), §2.2, 1), as functions.

The document says: trainable parameters drop from d×k to d×r + r×k, "r = 8/16/64, only 1/1000 –
1/10000 of full fine-tuning"; the checkpoint shrinks 10,000× (缩10000倍), training memory by 2/3
(显存省2/3) and speed rises 25 % (速度提25%). These come from the LoRA paper's GPT-3 175B
experiments (Hu et al. 2021, §4.2, §7.1, Table 4): 1.2 TB → 350 GB of VRAM, 350 GB → 35 MB of
checkpoint, 32.5 → 43.1 tokens/s per V100. Every figure is computed here from its inputs so the
chapter can print the exact value next to what the paper prints.

A second group *measures* the bytes a real PyTorch training step holds (parameters, gradients,
optimizer states, saved activations), for the toy-scale comparison of chapter 2.

A third group is QLoRA's memory calculator (source §4.1: a 65B model fine-tuned on one 48 GB GPU;
chapter 6): :class:`DecoderShape` with the LLaMA shapes, and :func:`qlora_memory`, which itemises
a training step — 4-bit base, 16-bit embeddings/head/norms, adapters with their gradients and Adam
states, activations with or without gradient checkpointing, logits, the dequantized temporary, the
CUDA context and fragmentation — with every input an argument and the assumptions in its docstring.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument); counts are ints (Python or numpy), byte sizes and speeds
real numbers. The module holds no mutable state: :data:`PAPER` is a read-only mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Rational
from types import MappingProxyType

import torch
from torch import Tensor, nn

from lora_edu.checks import check_callable, check_float, check_instance, check_int

__all__ = [
    "TransformerShape",
    "GPT3_175B",
    "PAPER",
    "lora_matrix_params",
    "lora_trainable_params",
    "reduction_factor",
    "adapter_checkpoint_bytes",
    "full_checkpoint_bytes",
    "MemoryBreakdown",
    "training_memory",
    "memory_saving",
    "implied_bytes_per_param",
    "throughput_gain",
    "time_per_token_saving",
    "measure_state_bytes",
    "measure_activation_bytes",
    "NF4_DQ_BITS",
    "QLORA_PAPER",
    "DecoderShape",
    "LLAMA_7B",
    "LLAMA_13B",
    "LLAMA_33B",
    "LLAMA_65B",
    "QLoRAMemory",
    "qlora_memory",
]


@dataclass(frozen=True)
class TransformerShape:
    """What the parameter arithmetic needs: width, depth and the total parameter count.

    ``name`` is a str; ``d_model``, ``n_layers`` and ``n_params`` are ints ≥ 1 (numpy ints are
    stored as Python ints). A d_model×d_model attention matrix has d = k = d_model in the
    d·r + r·k count of source §2.1 (3).
    """

    name: str
    d_model: int
    n_layers: int
    n_params: int

    def __post_init__(self) -> None:
        check_instance("name", self.name, str)
        for field in ("d_model", "n_layers", "n_params"):
            object.__setattr__(self, field, check_int(field, getattr(self, field), 1))


#: GPT-3 175B as in the LoRA paper: d_model 12,288, 96 layers, 175,255.8 M trainable parameters
#: under full fine-tuning (Table 4; the paper prints the count in millions to one decimal).
GPT3_175B = TransformerShape("GPT-3 175B", d_model=12_288, n_layers=96,
                             n_params=175_255_800_000)

#: Figures as the LoRA paper prints them (for side-by-side tables; never used in arithmetic).
#: A read-only mapping, so that no caller can change what a later one reads.
PAPER: Mapping[str, object] = MappingProxyType({
    "params_r1_qv": "4.7M",
    "params_r4_qv": "18M / 18.8M",
    "params_r8_qv": "37.7M",
    "vram_full": 1.2e12,
    "vram_lora": 350e9,
    "checkpoint_full": 350e9,
    "checkpoint_lora": 35e6,
    "tokens_per_s_full": 32.5,
    "tokens_per_s_lora": 43.1,
    "document_checkpoint_factor": 10_000,
    "document_memory_saving": 2 / 3,
    "document_speedup": 0.25,
})


def _number(name: str, value: object, minimum: float = 0.0, inclusive: bool = True) -> float:
    """A real number >= minimum (> if not inclusive); ints stay ints so exact sums print exactly."""
    checked = check_float(name, value, minimum, min_inclusive=inclusive)
    return int(value) if isinstance(value, Integral) else checked


def lora_matrix_params(d: int, k: int, r: int) -> int:
    """Trainable parameters of LoRA on one d×k matrix: d·r + r·k (source §2.1 (3)).

    ``d``, ``k`` and ``r`` are ints ≥ 1 (r > min(d, k) is allowed here: it is only a count).
    """
    d, k, r = check_int("d", d, 1), check_int("k", k, 1), check_int("r", r, 1)
    return d * r + r * k


def lora_trainable_params(shape: TransformerShape, r: int, matrices_per_layer: int = 2) -> int:
    """``|Θ|`` = 2·L̂·d_model·r for square d_model×d_model matrices (LoRA paper §7.1).

    L̂ = ``matrices_per_layer`` × ``shape.n_layers`` adapted matrices (2 for W_q and W_v; 4 for
    W_q, W_k, W_v, W_o), each contributing d·r + r·k = 2·d_model·r (source §2.1 (3), §2.3 (1)).
    ``shape`` is a :class:`TransformerShape`; ``r`` and ``matrices_per_layer`` are ints ≥ 1.
    """
    check_instance("shape", shape, TransformerShape)
    l_hat = check_int("matrices_per_layer", matrices_per_layer, 1) * shape.n_layers
    return 2 * l_hat * shape.d_model * check_int("r", r, 1)


def reduction_factor(total: int, trainable: int) -> float:
    """How many times fewer parameters are trained: total / trainable (source §2.2, 1).

    For GPT-3 175B with LoRA r = 4 on W_q, W_v: ≈ 9,285, the document's "10000倍". Both are ints
    ≥ 1.
    """
    return check_int("total", total, 1) / check_int("trainable", trainable, 1)


def adapter_checkpoint_bytes(n_adapter_params: int, bytes_per_param: float = 2) -> float:
    """Bytes of an adapter-only checkpoint: n_adapter_params × bytes_per_param (fp16: 2).

    The checkpoint of source §2.2, 1 ("仅存小矩阵A/B"): 37,748,736 bytes for GPT-3 with r = 4 on
    W_q, W_v. ``n_adapter_params`` is an int ≥ 1, ``bytes_per_param`` a number ≥ 0.
    """
    n = check_int("n_adapter_params", n_adapter_params, 1)
    return n * _number("bytes_per_param", bytes_per_param)


def full_checkpoint_bytes(shape: TransformerShape, bytes_per_param: float = 2) -> float:
    """Bytes of a full checkpoint: shape.n_params × bytes_per_param (source §2.2, 1).

    fp16 (2 bytes/parameter): GPT-3 175B → 350.5 GB. ``bytes_per_param`` is a number ≥ 0.
    """
    check_instance("shape", shape, TransformerShape)
    return shape.n_params * _number("bytes_per_param", bytes_per_param)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes held during training, by kind (each a number ≥ 0): the terms of source §2.2, 1's
    training memory, total = weights + gradients + optimizer + activations."""

    weights: float
    gradients: float
    optimizer: float
    activations: float = 0.0

    def __post_init__(self) -> None:
        for field in ("weights", "gradients", "optimizer", "activations"):
            _number(field, getattr(self, field))

    @property
    def total(self) -> float:
        """weights + gradients + optimizer + activations."""
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(n_params: int, n_trainable: int, weight_bytes: float = 2,
                    grad_bytes: float = 2, optimizer_bytes: float = 8,
                    activation_bytes: float = 0.0) -> MemoryBreakdown:
    """A simple training-memory model for Adam (the "训练显存省2/3" of source §2.2, 1).

    total = n_params·weight_bytes + n_trainable·(grad_bytes + optimizer_bytes) + activation_bytes.
    ``n_params`` is an int ≥ 1, ``n_trainable`` an int in [0, n_params], the byte sizes numbers ≥ 0.
    Assumptions (write them next to any number this gives):

    * every parameter is stored once at ``weight_bytes`` (fp16: 2), trainable or not;
    * only trainable parameters have a gradient (``grad_bytes`` each, fp16: 2);
    * Adam keeps two moments per trainable parameter (``optimizer_bytes`` = 2 × 4 in fp32;
      add 4 for an fp32 master copy in mixed precision);
    * activations are an input (``activation_bytes``): they depend on batch, sequence length and
      checkpointing, and LoRA does not shrink them;
    * no sharding, no offloading, no fragmentation or workspace memory.
    """
    n_params = check_int("n_params", n_params, 1)
    n_trainable = check_int("n_trainable", n_trainable, 0, n_params)
    return MemoryBreakdown(
        weights=n_params * _number("weight_bytes", weight_bytes),
        gradients=n_trainable * _number("grad_bytes", grad_bytes),
        optimizer=n_trainable * _number("optimizer_bytes", optimizer_bytes),
        activations=_number("activation_bytes", activation_bytes),
    )


def memory_saving(full: float, lora: float) -> float:
    """Fraction of memory saved: 1 − lora/full (source §2.2, 1: "训练显存省2/3").

    The paper's 1.2 TB → 350 GB gives 0.708. ``full`` is a number > 0, ``lora`` a number ≥ 0 (a
    ``lora`` above ``full`` gives a negative saving).
    """
    lora = _number("lora", lora)
    full = _number("full", full, 0.0, inclusive=False)
    return 1.0 - lora / full


def implied_bytes_per_param(total_bytes: float, n_params: int) -> float:
    """total_bytes / n_params: e.g. the paper's 1.2 TB over 175.26 B parameters ≈ 6.85 B/param.

    What a memory figure of source §2.2, 1 implies per parameter. ``total_bytes`` ≥ 0, ``n_params``
    an int ≥ 1.
    """
    return _number("total_bytes", total_bytes) / check_int("n_params", n_params, 1)


def throughput_gain(base: float, new: float) -> float:
    """Relative throughput increase new/base − 1 (source §2.2, 1: "速度提25%").

    The paper's 32.5 → 43.1 tokens/s gives +0.326. ``base`` and ``new`` are numbers > 0.
    """
    base = _number("base", base, 0.0, inclusive=False)
    new = _number("new", new, 0.0, inclusive=False)
    return new / base - 1.0


def time_per_token_saving(base: float, new: float) -> float:
    """Time saved per token, 1 − base/new, for throughputs base → new (source §2.2, 1).

    The other reading of "速度提25%": 32.5 → 43.1 tokens/s saves 0.246 of the time per token.
    ``base`` and ``new`` are numbers > 0.
    """
    base = _number("base", base, 0.0, inclusive=False)
    new = _number("new", new, 0.0, inclusive=False)
    return 1.0 - base / new


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def measure_state_bytes(model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None) -> MemoryBreakdown:
    """Bytes actually held by ``model``'s parameters, their ``.grad`` and the optimizer's state.

    Call after a training step (so gradients and Adam moments exist). Each tensor is counted
    once; Adam's scalar ``step`` counters are included as they are stored. The measured side of
    source §2.2, 1's memory claim: bytes = Σ numel × element_size over the tensors held.
    ``model`` must be an ``nn.Module``, ``optimizer`` a ``torch.optim.Optimizer`` or ``None``.
    """
    check_instance("model", model, nn.Module)
    if optimizer is not None:
        check_instance("optimizer", optimizer, torch.optim.Optimizer)
    params = list(model.parameters())
    weights = sum(_tensor_bytes(p) for p in params)
    grads = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += sum(_tensor_bytes(v) for v in state.values() if isinstance(v, Tensor))
    return MemoryBreakdown(weights=weights, gradients=grads, optimizer=opt)


def measure_activation_bytes(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward during ``loss_fn(model)`` (activations).

    Uses ``torch.autograd.graph.saved_tensors_hooks``; a storage saved several times is counted
    once and parameters (already counted as weights) are excluded. The graph is freed afterwards.
    LoRA does not shrink these (source §2.2, 1's memory saving is in gradients and optimizer
    state). ``model`` must be an ``nn.Module``, ``loss_fn`` a callable; the hook is removed on
    return, so no global autograd setting outlives the call.
    """
    check_instance("model", model, nn.Module)
    check_callable("loss_fn", loss_fn)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    del loss
    return sum(seen.values())


# --------------------------------------------------------------------------- QLoRA (source §4)

#: Bits per parameter of an NF4 weight with double-quantized constants in the large-tensor limit:
#: 4 + 8/64 + 32/(64·256) = 4 + 65/512 = 2113/512 (source §4.2 (2); chapter 5). The one float32
#: offset per tensor (32 bits) is left out: 7 bytes per layer of a LLaMA model.
NF4_DQ_BITS = Fraction(2113, 512)

#: Figures as the QLoRA paper prints them (Dettmers et al. 2023, abstract and §3 "Memory
#: Requirement of Parameter-Efficient Finetuning"): read-only, for side-by-side tables only.
QLORA_PAPER: Mapping[str, object] = MappingProxyType({
    "full_65b_bytes_more_than": 780e9,     # "from >780GB of GPU memory"
    "qlora_65b_bytes_less_than": 48e9,     # "to <48GB", one 48 GB GPU
    "base_4bit_7b_MB": 5048,               # "the 4-bit base model consumes 5,048 MB"
    "lora_params_7b_MB": 26,               # "LoRA parameters take up only 26 MB"
    "lora_input_grads_7b_MB": 567,         # batch size 1, FLAN v2
    "checkpointed_per_sequence_7b_MB": 18,  # "an average of 18 MB per sequence"
    "lora_fraction_7b": 0.002,             # "LoRA weights equivalent to ... 0.2%"
})


@dataclass(frozen=True)
class DecoderShape:
    """A LLaMA-style decoder, the models of source §4.1's "65B on one 48 GB GPU": width
    ``hidden`` (h), ``n_layers`` (L), FFN width ``ffn`` (f),
    vocabulary ``vocab`` (V), RMSNorm without bias, no linear biases, untied input and output
    embeddings (``tied=False``, as in LLaMA).

    Per layer: W_q, W_k, W_v, W_o (h×h) and the SwiGLU FFN's gate, up (f×h) and down (h×f):
    4h² + 3hf linear parameters; 2h norm weights per layer and h for the final norm; V·h for the
    embedding and V·h for the output head. All sizes are ints ≥ 1; ``name`` is a str.
    """

    name: str
    hidden: int
    n_layers: int
    ffn: int
    vocab: int
    tied: bool = False

    def __post_init__(self) -> None:
        check_instance("name", self.name, str)
        for field in ("hidden", "n_layers", "ffn", "vocab"):
            object.__setattr__(self, field, check_int(field, getattr(self, field), 1))
        check_instance("tied", self.tied, bool)

    @property
    def linear_params(self) -> int:
        """L·(4h² + 3hf): the weights QLoRA stores in 4 bit."""
        h, f = self.hidden, self.ffn
        return self.n_layers * (4 * h * h + 3 * h * f)

    @property
    def embedding_params(self) -> int:
        """V·h for the token embedding plus V·h for the output head (once if tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        """(2L + 1)·h RMSNorm weights."""
        return (2 * self.n_layers + 1) * self.hidden

    @property
    def n_params(self) -> int:
        """All parameters: linear + embeddings/head + norms (LLaMA 7B: 6,738,415,616)."""
        return self.linear_params + self.embedding_params + self.norm_params

    @property
    def largest_matrix(self) -> int:
        """Elements of the largest linear weight, max(h², h·f)."""
        return self.hidden * max(self.hidden, self.ffn)

    def lora_params(self, r: int) -> int:
        """LoRA on all seven linear layers of every block (QLoRA's placement), rank r:
        r·L·(4·(h + h) + 2·(h + f) + (f + h)) = r·L·(11h + 3f) (source §2.1 (3): r·(d + k))."""
        r = check_int("r", r, 1)
        return r * self.n_layers * (11 * self.hidden + 3 * self.ffn)

    def activation_values(self, r: int = 64) -> int:
        """16-bit values one block keeps per token for the backward pass (no attention matrix):
        8h + 4f + 7r.

        The count, for the Hugging Face LLaMA block with LoRA (dropout 0) on all seven linear
        layers and a fused attention kernel that keeps no s×s matrix: the two RMSNorm inputs and
        their normalised outputs (4h: inputs of q/k/v and of gate/up), attention's q, k, v and
        output (4h, the output is o's input), the FFN's gate, up, SiLU(gate) and their product
        (4f, the product is down's input), and A·x of the seven adapters (7r). An assumption,
        stated so that it can be changed: other kernels keep more or less.
        """
        r = check_int("r", r, 1)
        return 8 * self.hidden + 4 * self.ffn + 7 * r


#: LLaMA shapes (Touvron et al. 2023, Table 2): hidden, layers, FFN width, vocabulary 32,000.
LLAMA_7B = DecoderShape("LLaMA 7B", hidden=4096, n_layers=32, ffn=11008, vocab=32000)
#: LLaMA 13B, from the same table as :data:`LLAMA_7B`.
LLAMA_13B = DecoderShape("LLaMA 13B", hidden=5120, n_layers=40, ffn=13824, vocab=32000)
#: LLaMA 33B, from the same table as :data:`LLAMA_7B`.
LLAMA_33B = DecoderShape("LLaMA 33B", hidden=6656, n_layers=60, ffn=17920, vocab=32000)
#: LLaMA 65B, from the same table as :data:`LLAMA_7B`.
LLAMA_65B = DecoderShape("LLaMA 65B", hidden=8192, n_layers=80, ffn=22016, vocab=32000)


def _exact(name: str, value: object, minimum: float = 0.0) -> Fraction | float:
    """A number ≥ minimum: exact (Fraction) for ints and Fractions, float otherwise."""
    checked = check_float(name, value, minimum)
    return Fraction(value) if isinstance(value, Rational) else checked


@dataclass(frozen=True)
class QLoRAMemory:
    """Bytes a QLoRA training step holds, item by item (see :func:`qlora_memory`).

    Exact (``int``/``Fraction``) when the inputs are; :meth:`items` lists them in order,
    :attr:`total` sums them.
    """

    base_4bit: Fraction | float
    base_16bit: Fraction | float
    lora_weights: Fraction | float
    lora_gradients: Fraction | float
    optimizer: Fraction | float
    activations: Fraction | float
    logits: Fraction | float
    dequantized_temporary: Fraction | float
    cuda_context: Fraction | float
    fragmentation: Fraction | float

    #: Labels of the items, in order (for tables and stacked bars).
    LABELS = {"base_4bit": "4-bit base (linear layers)",
              "base_16bit": "16-bit embeddings, head, norms",
              "lora_weights": "LoRA weights", "lora_gradients": "LoRA gradients",
              "optimizer": "optimizer states (Adam)", "activations": "activations",
              "logits": "logits and loss", "dequantized_temporary": "dequantized weight (temp.)",
              "cuda_context": "CUDA context", "fragmentation": "allocator fragmentation"}

    def items(self) -> dict[str, Fraction | float]:
        """``{field: bytes}`` in the order of :attr:`LABELS`."""
        return {k: getattr(self, k) for k in self.LABELS}

    @property
    def total(self) -> Fraction | float:
        """Sum of every item."""
        return sum(self.items().values())


def qlora_memory(shape: DecoderShape, r: int = 64, batch: int = 1, seq_len: int = 512, *,
                 n_lora_params: int | None = None, weight_bits: Fraction | float = NF4_DQ_BITS,
                 other_bytes: float = 2, lora_bytes: float = 2, grad_bytes: float = 2,
                 optimizer_bytes: float = 8, activation_bytes: float = 2,
                 checkpointing: bool = True, logits_bytes: float = 10, compute_bytes: float = 2,
                 cuda_context: float = 0, fragmentation: float = 0) -> QLoRAMemory:
    """The memory of one QLoRA training step (source §4.1: 65B on one 48 GB GPU), itemised.

    Inputs (every one an argument; ints and Fractions give exact results):

    * ``shape`` — a :class:`DecoderShape` (e.g. :data:`LLAMA_65B`);
    * ``r`` — LoRA rank on all seven linear layers of every block (QLoRA: 64), or
      ``n_lora_params`` to give the adapter's size directly (the paper's "0.2 %" example);
    * ``batch``, ``seq_len`` — sequences per step and tokens per sequence (ints ≥ 1).

    Items and their assumptions:

    * 4-bit base: the linear weights at ``weight_bits`` per parameter (NF4 + DQ: 4 + 65/512);
    * 16-bit embeddings, head, norms: not quantized by QLoRA, ``other_bytes`` each (bf16: 2);
    * LoRA weights, gradients, optimizer states: ``lora_bytes``, ``grad_bytes`` and
      ``optimizer_bytes`` per adapter parameter (bf16, bf16, two fp32 Adam moments = 8);
    * activations (``activation_bytes`` per value): without ``checkpointing``
      L·tokens·(8h + 4f + 7r) values (:meth:`DecoderShape.activation_values`); with it, the
      input of every block (L·tokens·h values) plus one block's activations, recomputed
      during the backward pass;
    * logits and loss: tokens·V·``logits_bytes`` (default 10: bf16 logits, their float32 copy
      and the float32 softmax kept for the backward pass);
    * the dequantized temporary: the largest weight matrix in ``compute_bytes`` (bf16: 2);
    * ``cuda_context``: bytes of the CUDA context (not tensors; default 0, typically a few hundred
      MB — measure it);
    * ``fragmentation``: a fraction ≥ 0 of the tensor bytes lost to the caching allocator's
      fragmentation (default 0).

    Not included: the attention matrix (a fused kernel keeps none), temporary buffers of the
    matrix kernels, gradient accumulation buffers, data loader pinned memory, and paging (the
    optimizer states are counted on the device; a paged optimizer can move them out).
    """
    check_instance("shape", shape, DecoderShape)
    r = check_int("r", r, 1)
    batch = check_int("batch", batch, 1)
    seq_len = check_int("seq_len", seq_len, 1)
    n_lora = (shape.lora_params(r) if n_lora_params is None
              else check_int("n_lora_params", n_lora_params, 0))
    bits = _exact("weight_bits", weight_bits, 0)
    check_instance("checkpointing", checkpointing, bool)
    b = {name: _exact(name, value) for name, value in (
        ("other_bytes", other_bytes), ("lora_bytes", lora_bytes), ("grad_bytes", grad_bytes),
        ("optimizer_bytes", optimizer_bytes), ("activation_bytes", activation_bytes),
        ("logits_bytes", logits_bytes), ("compute_bytes", compute_bytes),
        ("cuda_context", cuda_context), ("fragmentation", fragmentation))}
    tokens = batch * seq_len
    per_block = shape.activation_values(r)
    if checkpointing:
        act_values = shape.n_layers * tokens * shape.hidden + tokens * per_block
    else:
        act_values = shape.n_layers * tokens * per_block
    items = dict(
        base_4bit=shape.linear_params * bits / 8,
        base_16bit=(shape.embedding_params + shape.norm_params) * b["other_bytes"],
        lora_weights=n_lora * b["lora_bytes"],
        lora_gradients=n_lora * b["grad_bytes"],
        optimizer=n_lora * b["optimizer_bytes"],
        activations=act_values * b["activation_bytes"],
        logits=tokens * shape.vocab * b["logits_bytes"],
        dequantized_temporary=shape.largest_matrix * b["compute_bytes"],
    )
    tensors = sum(items.values())
    items.update(cuda_context=b["cuda_context"], fragmentation=tensors * b["fragmentation"])
    return QLoRAMemory(**{k: _whole(v) for k, v in items.items()})


def _whole(value: Fraction | float) -> int | Fraction | float:
    """An exact byte count as an ``int`` when it is whole (so that it prints with ``:,``)."""
    return int(value) if isinstance(value, Fraction) and value.denominator == 1 else value
