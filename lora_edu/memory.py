"""The arithmetic behind LoRA's efficiency claims (source §2.1 (3), §2.2, 1), as functions.

The document says: trainable parameters drop from d×k to d×r + r×k, "r = 8/16/64, only 1/1000 –
1/10000 of full fine-tuning"; the checkpoint shrinks 10,000× (缩10000倍), training memory by 2/3
(显存省2/3) and speed rises 25 % (速度提25%). These come from the LoRA paper's GPT-3 175B
experiments (Hu et al. 2021, §4.2, §7.1, Table 4): 1.2 TB → 350 GB of VRAM, 350 GB → 35 MB of
checkpoint, 32.5 → 43.1 tokens/s per V100. Every figure is computed here from its inputs so the
chapter can print the exact value next to what the paper prints.

A second group *measures* the bytes a real PyTorch training step holds (parameters, gradients,
optimizer states, saved activations), for the toy-scale comparison of chapter 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
]


@dataclass(frozen=True)
class TransformerShape:
    """What the parameter arithmetic needs: width, depth and the total parameter count."""

    name: str
    d_model: int
    n_layers: int
    n_params: int


#: GPT-3 175B as in the LoRA paper: d_model 12,288, 96 layers, 175,255.8 M trainable parameters
#: under full fine-tuning (Table 4; the paper prints the count in millions to one decimal).
GPT3_175B = TransformerShape("GPT-3 175B", d_model=12_288, n_layers=96,
                             n_params=175_255_800_000)

#: Figures as the LoRA paper prints them (for side-by-side tables; never used in arithmetic).
PAPER = {
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
}


def _pos_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _nonneg(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def lora_matrix_params(d: int, k: int, r: int) -> int:
    """Trainable parameters of LoRA on one d×k matrix: d·r + r·k (source §2.1 (3))."""
    return _pos_int("d", d) * _pos_int("r", r) + r * _pos_int("k", k)


def lora_trainable_params(shape: TransformerShape, r: int, matrices_per_layer: int = 2) -> int:
    """|Θ| = 2·L̂·d_model·r for square d_model×d_model matrices (LoRA paper §7.1).

    L̂ = ``matrices_per_layer`` × ``shape.n_layers`` adapted matrices (2 for W_q and W_v; 4 for
    W_q, W_k, W_v, W_o), each contributing d·r + r·k = 2·d_model·r.
    """
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"shape must be a TransformerShape, got {type(shape).__name__}")
    l_hat = _pos_int("matrices_per_layer", matrices_per_layer) * shape.n_layers
    return 2 * l_hat * shape.d_model * _pos_int("r", r)


def reduction_factor(total: int, trainable: int) -> float:
    """How many times fewer parameters are trained: total / trainable (e.g. ≈ 9,285 for GPT-3)."""
    _pos_int("total", total)
    _pos_int("trainable", trainable)
    return total / trainable


def adapter_checkpoint_bytes(n_adapter_params: int, bytes_per_param: float = 2) -> float:
    """Bytes of an adapter-only checkpoint: parameters × bytes each (fp16: 2)."""
    _pos_int("n_adapter_params", n_adapter_params)
    return n_adapter_params * _nonneg("bytes_per_param", bytes_per_param)


def full_checkpoint_bytes(shape: TransformerShape, bytes_per_param: float = 2) -> float:
    """Bytes of a full checkpoint (fp16: 2 bytes/parameter; GPT-3 175B → 350.5 GB)."""
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"shape must be a TransformerShape, got {type(shape).__name__}")
    return shape.n_params * _nonneg("bytes_per_param", bytes_per_param)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes held during training, by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(n_params: int, n_trainable: int, weight_bytes: float = 2,
                    grad_bytes: float = 2, optimizer_bytes: float = 8,
                    activation_bytes: float = 0.0) -> MemoryBreakdown:
    """A simple training-memory model for Adam.

    Assumptions (write them next to any number this gives):

    * every parameter is stored once at ``weight_bytes`` (fp16: 2), trainable or not;
    * only trainable parameters have a gradient (``grad_bytes`` each, fp16: 2);
    * Adam keeps two moments per trainable parameter (``optimizer_bytes`` = 2 × 4 in fp32;
      add 4 for an fp32 master copy in mixed precision);
    * activations are an input (``activation_bytes``): they depend on batch, sequence length and
      checkpointing, and LoRA does not shrink them;
    * no sharding, no offloading, no fragmentation or workspace memory.
    """
    _pos_int("n_params", n_params)
    if isinstance(n_trainable, bool) or not isinstance(n_trainable, int):
        raise TypeError(f"n_trainable must be an int, got {type(n_trainable).__name__}")
    if not 0 <= n_trainable <= n_params:
        raise ValueError(f"n_trainable must be in [0, n_params], got {n_trainable}")
    return MemoryBreakdown(
        weights=n_params * _nonneg("weight_bytes", weight_bytes),
        gradients=n_trainable * _nonneg("grad_bytes", grad_bytes),
        optimizer=n_trainable * _nonneg("optimizer_bytes", optimizer_bytes),
        activations=_nonneg("activation_bytes", activation_bytes),
    )


def memory_saving(full: float, lora: float) -> float:
    """Fraction of memory saved: 1 − lora/full (1.2 TB → 350 GB: 0.708, the document's "2/3")."""
    _nonneg("lora", lora)
    if _nonneg("full", full) == 0:
        raise ValueError("full must be > 0")
    return 1.0 - lora / full


def implied_bytes_per_param(total_bytes: float, n_params: int) -> float:
    """total_bytes / n_params: e.g. the paper's 1.2 TB over 175.26 B parameters ≈ 6.85 B/param."""
    return _nonneg("total_bytes", total_bytes) / _pos_int("n_params", n_params)


def throughput_gain(base: float, new: float) -> float:
    """Relative throughput increase new/base − 1 (32.5 → 43.1 tokens/s: +0.326)."""
    if not (_nonneg("base", base) > 0 and _nonneg("new", new) > 0):
        raise ValueError(f"base and new must be > 0, got {base}, {new}")
    return new / base - 1.0


def time_per_token_saving(base: float, new: float) -> float:
    """Time saved per token, 1 − base/new, for throughputs base → new (32.5 → 43.1: 0.246)."""
    if not (_nonneg("base", base) > 0 and _nonneg("new", new) > 0):
        raise ValueError(f"base and new must be > 0, got {base}, {new}")
    return 1.0 - base / new


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def measure_state_bytes(model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None) -> MemoryBreakdown:
    """Bytes actually held by ``model``'s parameters, their ``.grad`` and the optimizer's state.

    Call after a training step (so gradients and Adam moments exist). Each tensor is counted
    once; Adam's scalar ``step`` counters are included as they are stored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    weights = sum(_tensor_bytes(p) for p in params)
    grads = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
    opt = 0
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch Optimizer, got "
                            f"{type(optimizer).__name__}")
        for state in optimizer.state.values():
            opt += sum(_tensor_bytes(v) for v in state.values() if isinstance(v, Tensor))
    return MemoryBreakdown(weights=weights, gradients=grads, optimizer=opt)


def measure_activation_bytes(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward during ``loss_fn(model)`` (activations).

    Uses ``torch.autograd.graph.saved_tensors_hooks``; a storage saved several times is counted
    once and parameters (already counted as weights) are excluded. The graph is freed afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
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
