"""QLoRA: a frozen base stored in 4-bit NF4 (with double quantization) and 16-bit LoRA adapters.

Source §4.3, the workflow in three steps (Dettmers et al. 2023):

1. **存储 (store)**: 加载16-bit模型→量化为4-bit NF4（双量化压缩常数），冻结基座模型 —
   load the 16-bit model, quantize it to 4-bit NF4 (double quantization compresses the
   constants), freeze the base. :class:`NF4Linear` keeps a linear layer's weight
   W0 ∈ ℝ^{d×k} **only** as the bytes of :func:`lora_edu.quant.quantize_4bit`
   (``double_quant=True`` by default) — registered *buffers*, not parameters: there is nothing
   to train and no optimizer state for them.
2. **计算 (compute)**: 前向时动态反量化基座权重至16-bit BF16，与16-bit LoRA适配器并行计算，
   计算后释放临时高精度权重 — at forward time the base weight is dequantized to BF16,
   computed beside the 16-bit LoRA adapter, and the temporary high-precision weight is
   released. :class:`QLoRALinear` computes h = dequant(W0)·x + b + s·B·(A·x); the dequantized
   weight exists only inside the call, and the backward pass dequantizes again instead of
   keeping it (bitsandbytes' ``MatMul4Bit`` does the same).
3. **更新 (update)**: 梯度仅反向传播到16-bit LoRA适配器 — gradients reach only the
   adapter's A and B; the paged optimizer (:mod:`lora_edu.paged`) handles the memory peaks.

The compute dtype is ``torch.bfloat16`` by default and selectable. On a CPU ``torch.float32`` is the
portable choice and what the book's trainings use: CPUs without bfloat16 matrix instructions
convert on the fly and are much slower in bfloat16 (those with AVX-512 BF16 or AMX can be faster
in it; chapter 6 times both). The adapter follows :class:`lora_edu.lora.LoRALinear`
exactly: A (r×k) drawn as there, B (d×r) zero, s = α/r (α/√r with rsLoRA), so a fresh QLoRA
layer computes the dequantized base layer.

After training the adapter can be **merged** (合并) two ways, with different costs
(:func:`merge_qlora`): (a) into the dequantized base, kept in 16 bit — the trained model's outputs
up to 16-bit rounding, at 16-bit size; (b) merged and re-quantized to NF4 — 4-bit size, but a fresh
quantization error of the size of the first one, which a small update ΔW does not survive intact.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lora_edu.checks import check_instance, check_int, check_one_of, check_power_of_two, check_seed
from lora_edu.inject import (
    BaseLayerWidths,
    add_low_rank_bypass,
    check_layer_input,
    inject_adapters,
    normalize_targets,
    replace_module,
)
from lora_edu.lora import LoRALinear, check_lora_hparams, check_rank_fits, init_lora_A
from lora_edu.quant import (
    MAX_BLOCKSIZE,
    MIN_BLOCKSIZE,
    QuantizedConstants,
    QuantizedTensor,
    dequantize_4bit,
    nf4_code,
    quantize_4bit,
    second_level_code,
)

__all__ = ["NF4Linear", "QLoRALinear", "prepare_qlora", "qlora_layers", "merge_qlora",
           "StorageReport", "storage_report", "COMPUTE_DTYPES", "MERGE_MODES"]

#: Dtypes a 4-bit layer may compute in (QLoRA: bfloat16; float32 is the fast choice on a CPU).
COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
#: The two ways of merging a QLoRA adapter (see :func:`merge_qlora`).
MERGE_MODES = ("16bit", "nf4")


@functools.cache
def _code_tables() -> tuple[Tensor, Tensor]:
    """The shared NF4 table and second-level (dynamic) table: format constants, not per layer."""
    return nf4_code(), second_level_code("dynamic")


def _check_compute_dtype(compute_dtype: object, name: str = "compute_dtype") -> torch.dtype:
    check_instance(name, compute_dtype, torch.dtype)
    if compute_dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{name} must be one of the floating dtypes {COMPUTE_DTYPES}, got "
                        f"{compute_dtype}")
    return compute_dtype


def _check_quant_args(blocksize: object, double_quant: object,
                      blocksize2: object) -> tuple[int, bool, int]:
    blocksize = check_int("blocksize", blocksize, MIN_BLOCKSIZE, MAX_BLOCKSIZE)
    check_power_of_two("blocksize", blocksize, MIN_BLOCKSIZE)
    check_instance("double_quant", double_quant, bool)
    blocksize2 = check_power_of_two("blocksize2", blocksize2, 2)
    return blocksize, double_quant, blocksize2


def _empty_linear(in_features: int, out_features: int, **kwargs) -> nn.Linear:
    """An ``nn.Linear`` whose weights are filled in afterwards: built without drawing from the
    global random generator (``nn.Linear()`` would draw its initial weights from it)."""
    return nn.utils.skip_init(nn.Linear, in_features, out_features, **kwargs)


def _check_x(x: object) -> Tensor:
    check_instance("x", x, Tensor)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return x


class _DequantizeMatmul(torch.autograd.Function):
    """y = x·dequant(W)ᵀ + b for x of shape (n, k), keeping only the 4-bit bytes between forward
    and backward.

    Forward dequantizes W into a temporary, multiplies, and drops it; backward needs W again for
    ∂L/∂x = ∂L/∂y · W and dequantizes it a second time (source §4.3 (2): 计算后释放临时高精度权重).
    No gradient is formed for W or b: the base is frozen.
    """

    @staticmethod
    def forward(ctx, x: Tensor, q: QuantizedTensor, bias: Tensor | None) -> Tensor:
        ctx.q = q                      # the quantized bytes (buffers), not the 16-bit weight
        w = dequantize_4bit(q)         # the temporary: (d, k) in the compute dtype
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(dequantize_4bit(ctx.q))   # dequantized again, then freed
        return grad_x, None, None


class NF4Linear(nn.Module):
    """A frozen linear layer stored in 4 bits: y = dequant(W0)·x + b (source §4.3 (1), (2)).

    The weight is quantized once, in the constructor, with :func:`lora_edu.quant.quantize_4bit`
    (NF4 codes, blocks of ``blocksize``, double-quantized constants by default — byte for byte what
    bitsandbytes stores) and kept as buffers: ``weight_packed`` (uint8, ⌈d·k/2⌉ bytes) and either
    ``weight_absmax`` (float32 per block) or, with double quantization, ``absmax_codes`` (uint8 per
    block), ``absmax_scales`` (float32 per ``blocksize2`` blocks) and ``absmax_offset`` (one
    float32). The bias, if any, is kept unquantized in the compute dtype (buffer ``bias``). The
    layer has no parameters.

    Parameters
    ----------
    linear:
        The ``nn.Linear(k, d)`` to store (it is not modified).
    compute_dtype:
        One of :data:`COMPUTE_DTYPES` (default ``torch.bfloat16``): the dtype of the temporary
        dequantized weight and of the matrix product. The input is cast to it and the output
        cast back to the input's dtype (as bitsandbytes' ``Linear4bit`` does).
    blocksize, double_quant, blocksize2:
        As for :func:`lora_edu.quant.quantize_4bit` (QLoRA: 64, True, 256).
    """

    def __init__(self, linear: nn.Linear, *, compute_dtype: torch.dtype = torch.bfloat16,
                 blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256) -> None:
        check_instance("linear", linear, nn.Linear)
        compute_dtype = _check_compute_dtype(compute_dtype)
        blocksize, double_quant, blocksize2 = _check_quant_args(blocksize, double_quant,
                                                                blocksize2)
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        self.blocksize, self.double_quant, self.blocksize2 = blocksize, double_quant, blocksize2
        w = linear.weight.detach()
        if w.device.type != "cpu":
            raise ValueError(f"linear must be on the CPU, got {w.device}")
        q = quantize_4bit(w, blocksize, double_quant=double_quant, blocksize2=blocksize2)
        self.register_buffer("weight_packed", q.packed)
        if double_quant:
            self.register_buffer("absmax_codes", q.absmax_dq.codes)
            self.register_buffer("absmax_scales", q.absmax_dq.scales)
            self.register_buffer("absmax_offset", q.absmax_dq.offset)
        else:
            self.register_buffer("weight_absmax", q.absmax)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None
                             else bias.detach().to(compute_dtype).clone())

    def quantized(self) -> QuantizedTensor:
        """The stored weight as a :class:`lora_edu.quant.QuantizedTensor` (views of the buffers;
        ``dtype`` is the compute dtype, so :func:`~lora_edu.quant.dequantize_4bit` returns it)."""
        code, code2 = _code_tables()
        absmax, absmax_dq = None, None
        if self.double_quant:
            absmax_dq = QuantizedConstants(offset=self.absmax_offset, codes=self.absmax_codes,
                                           scales=self.absmax_scales, code=code2,
                                           blocksize2=self.blocksize2,
                                           n=self.absmax_codes.numel())
        else:
            absmax = self.weight_absmax
        return QuantizedTensor(packed=self.weight_packed, absmax=absmax, absmax_dq=absmax_dq,
                               shape=torch.Size((self.out_features, self.in_features)),
                               dtype=self.compute_dtype, blocksize=self.blocksize, code=code)

    def dequantized_weight(self) -> Tensor:
        """A new (d, k) tensor in the compute dtype: Ŵ0 = code[i]·absmax (the temporary of the
        forward pass, source §4.3 (2)). The layer keeps no reference to it."""
        return dequantize_4bit(self.quantized())

    def stored_bytes(self) -> int:
        """Bytes of the stored weight (codes and constants; the bias and the shared code tables
        not included): ⌈d·k/2⌉ + the constants, ≈ d·k·(4 + 65/512)/8 with double quantization."""
        names = (("weight_packed", "absmax_codes", "absmax_scales", "absmax_offset")
                 if self.double_quant else ("weight_packed", "weight_absmax"))
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in names)

    def forward(self, x: Tensor) -> Tensor:
        """y = Ŵ0·x + b computed in the compute dtype (Ŵ0 dequantized for this call only), returned
        in ``x``'s dtype. ``x`` is a floating tensor whose last dimension is k."""
        _check_x(x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have last dimension in_features={self.in_features}, got "
                             f"shape {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = _DequantizeMatmul.apply(rows, self.quantized(), self.bias)     # (n, d), not a view
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain frozen ``nn.Linear`` holding Ŵ0 (and b) in ``dtype`` (default: compute dtype)."""
        dtype = self.compute_dtype if dtype is None else _check_compute_dtype(dtype, "dtype")
        lin = _empty_linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.requires_grad_(False)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}")


class QLoRALinear(BaseLayerWidths, nn.Module):
    """A 4-bit frozen base plus a 16-bit LoRA bypass: h = Ŵ0·x + b + s·B·(A·dropout(x)).

    Source §4.3: the base ``self.base`` is an :class:`NF4Linear` (buffers only); the adapter's
    ``lora_A`` (r×k) and ``lora_B`` (d×r) are the only parameters. A is drawn exactly as by
    :class:`lora_edu.lora.LoRALinear` with the same arguments (same generator, same draws) and
    B = 0, so the layer starts as the dequantized base.

    Parameters
    ----------
    base:
        The ``nn.Linear(k, d)`` to quantize (its values are not changed; like ``LoRALinear``,
        its parameters get ``requires_grad=False``).
    r, alpha, dropout, init, rslora, gaussian_std, generator:
        As for :class:`lora_edu.lora.LoRALinear`.
    compute_dtype, blocksize, double_quant, blocksize2:
        As for :class:`NF4Linear` (QLoRA: bfloat16, 64, True, 256).
    adapter_dtype:
        dtype of A and B (default: the compute dtype, QLoRA's "16-bit LoRA adapters").

    Notes
    -----
    Wrong types raise ``TypeError``, wrong values ``ValueError``, naming the argument, before
    anything is modified.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "gaussian", rslora: bool = False,
                 gaussian_std: float | None = None, generator: torch.Generator | None = None,
                 *, compute_dtype: torch.dtype = torch.bfloat16, blocksize: int = 64,
                 double_quant: bool = True, blocksize2: int = 256,
                 adapter_dtype: torch.dtype | None = None) -> None:
        check_instance("base", base, nn.Linear)
        compute_dtype = _check_compute_dtype(compute_dtype)
        adapter_dtype = (compute_dtype if adapter_dtype is None
                         else _check_compute_dtype(adapter_dtype, "adapter_dtype"))
        _check_quant_args(blocksize, double_quant, blocksize2)
        # the checks and the draw of A that LoRALinear uses: the same generator gives the same A
        r, alpha, dropout, init, rslora, gaussian_std = check_lora_hparams(
            r, alpha, dropout, init, rslora, gaussian_std)
        check_rank_fits(r, base)
        if generator is not None:
            check_instance("generator", generator, torch.Generator)
        for p in base.parameters():        # frozen, as LoRALinear freezes its base
            p.requires_grad_(False)
        super().__init__()
        self.base = NF4Linear(base, compute_dtype=compute_dtype, blocksize=blocksize,
                              double_quant=double_quant, blocksize2=blocksize2)
        self.r, self.alpha, self.rslora, self.init = r, alpha, rslora, init
        self.dropout_p = dropout
        self.scaling = alpha / (math.sqrt(r) if rslora else r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        a = init_lora_A(torch.empty(r, self.base.in_features, dtype=w.dtype, device=w.device),
                        init, gaussian_std, generator)
        self.lora_A = nn.Parameter(a.to(adapter_dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.base.out_features, r, dtype=adapter_dtype,
                                               device=w.device))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in."""
        return self.base.compute_dtype

    def delta_weight(self) -> Tensor:
        """s·ΔW = s·B·A, shape (d, k), in the adapter's dtype."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        """h = Ŵ0·x + b + s·B·(A·dropout(x)) (source §4.3 (2)), in ``x``'s dtype.

        The base term is computed in the compute dtype from a weight dequantized for this call
        only (:class:`NF4Linear`); the bypass in the adapter's dtype, added out of place by
        :func:`lora_edu.inject.add_low_rank_bypass` (the helper of every LoRA-type layer), so a
        hook on ``self.base`` sees the base output alone. ``x`` may be any floating dtype on the
        adapter's device (it is cast, as the 4-bit base casts it).
        :meth:`reference_forward` is the formula written plainly; the tests compare the two.
        """
        check_layer_input(x, self.in_features, self.lora_A, any_float=True)
        return add_low_rank_bypass(self.base(x), self.dropout(x), self.lora_A, self.lora_B,
                                   self.scaling)

    def reference_forward(self, x: Tensor) -> Tensor:
        """The formula as written, h = Ŵ0·x + b + s·B·(A·dropout(x)), with two ``F.linear``
        calls and an out-of-place sum — the same operations as
        :meth:`lora_edu.lora.LoRALinear.reference_forward` on the dequantized weight."""
        h = self.base(x)
        a = self.lora_A
        bypass = F.linear(F.linear(self.dropout(x).to(a.dtype), a), self.lora_B)
        return h + (self.scaling * bypass).to(h.dtype)

    def lora_linear(self) -> LoRALinear:
        """The same adapter on the *dequantized* base: a :class:`lora_edu.lora.LoRALinear` whose
        frozen weight is Ŵ0 (compute dtype) and whose A, B are copies of this layer's. Its output
        equals this layer's up to rounding — what the tests check."""
        lora = LoRALinear(self.base.linear(), self.r, self.alpha, rslora=self.rslora,
                          generator=torch.Generator())          # A is overwritten below
        lora.dropout = self.dropout
        with torch.no_grad():
            lora.lora_A.copy_(self.lora_A)
            lora.lora_B.copy_(self.lora_B)
        return lora

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """Ŵ0 + s·B·A in float32 (the sum formed in float32 from the dequantized base)."""
        w = self.base.quantized()
        w.dtype = torch.float32
        return torch.addmm(dequantize_4bit(w), self.lora_B.float(), self.lora_A.float(),
                           alpha=self.scaling)

    def merged_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """Merge option (a): a plain ``nn.Linear`` with weight Ŵ0 + s·B·A in ``dtype`` (default:
        the compute dtype, 16 bit in QLoRA), bias b. Outputs equal the unmerged layer's up to the
        rounding of the sum to ``dtype``."""
        dtype = self.compute_dtype if dtype is None else _check_compute_dtype(dtype, "dtype")
        lin = _empty_linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(self.merged_weight())
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin.requires_grad_(False)

    def merged_nf4(self) -> NF4Linear:
        """Merge option (b): Ŵ0 + s·B·A quantized again to NF4 (same block sizes and double
        quantization) in an :class:`NF4Linear`: 4-bit size, plus a new quantization error."""
        lin = _empty_linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.merged_weight())
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return NF4Linear(lin, compute_dtype=self.compute_dtype, blocksize=self.base.blocksize,
                         double_quant=self.base.double_quant, blocksize2=self.base.blocksize2)

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, "
                f"adapter_dtype={self.lora_A.dtype}")


# --------------------------------------------------------------------------- whole models

@dataclass(frozen=True)
class StorageReport:
    """Bytes of a model's tensors by kind, counted from ``numel × element_size`` (each once).

    ``quantized``: the 4-bit weights and their constants (:class:`NF4Linear` buffers, bias
    excluded); ``adapters``: LoRA's A and B of :class:`QLoRALinear` layers; ``trainable``: other
    parameters with ``requires_grad``; ``frozen``: everything else (frozen parameters, 16-bit
    biases, embeddings and norms left unquantized, other buffers).
    """

    quantized: int
    adapters: int
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        """quantized + adapters + trainable + frozen."""
        return self.quantized + self.adapters + self.trainable + self.frozen


def storage_report(model: nn.Module) -> StorageReport:
    """Count ``model``'s parameter and buffer bytes by kind (see :class:`StorageReport`).

    The measured side of source §4.3 (1)'s "store in 4 bit": bytes = Σ numel·element_size over the
    tensors the model holds; a tensor shared by several modules is counted once.
    """
    check_instance("model", model, nn.Module)
    seen: set[int] = set()
    counts = {"quantized": 0, "adapters": 0, "trainable": 0, "frozen": 0}

    def add(kind: str, t: Tensor | None) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        counts[kind] += t.numel() * t.element_size()

    for module in model.modules():
        if isinstance(module, NF4Linear):
            for name, buf in module.named_buffers(recurse=False):
                add("frozen" if name == "bias" else "quantized", buf)
        if isinstance(module, QLoRALinear):
            add("adapters", module.lora_A)
            add("adapters", module.lora_B)
    for p in model.parameters():
        add("trainable" if p.requires_grad else "frozen", p)
    for b in model.buffers():
        add("frozen", b)
    return StorageReport(**counts)


def _check_targets_are_linear(model: nn.Module, targets: tuple[str, ...], name: str) -> list[str]:
    """Every target must select at least one module, and every selected module must be an
    ``nn.Linear``; returns the sorted selected names."""
    selected = []
    modules = [(n, m) for n, m in model.named_modules() if n]
    for t in targets:
        hits = [(n, m) for n, m in modules if n == t or n.endswith("." + t)]
        if not hits:
            raise ValueError(f"{name}: {t!r} matches no module of the model")
        wrong = [(n, type(m).__name__) for n, m in hits if not isinstance(m, nn.Linear)]
        if wrong:
            raise ValueError(f"{name}: {t!r} selects modules that are not nn.Linear: "
                             f"{wrong[:4]}" + (" ..." if len(wrong) > 4 else ""))
        selected.extend(n for n, _ in hits)
    return sorted(set(selected))


def prepare_qlora(model: nn.Module, target_modules: str | Sequence[str], r: int, alpha: float,
                  dropout: float = 0.0, init: str = "gaussian", rslora: bool = False,
                  seed: int | None = None, *, compute_dtype: torch.dtype = torch.bfloat16,
                  blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256,
                  quantize_only: str | Sequence[str] | None = None) -> nn.Module:
    """Turn ``model`` into a QLoRA model in place; returns the model.

    Every ``nn.Linear`` named by ``target_modules`` becomes a :class:`QLoRALinear` (stored in NF4,
    adapter attached); those named by ``quantize_only`` become :class:`NF4Linear` (stored in NF4,
    no adapter — QLoRA quantizes the whole base); every other parameter is frozen (source §4.3 (1):
    冻结基座模型). Names match as in :func:`lora_edu.lora.apply_lora` (exactly or as a dotted
    suffix). With ``seed`` the A matrices come from a generator seeded with it, in sorted-name
    order — the same draws as ``apply_lora(..., seed=seed)`` on the same layers.

    Its bytes before and after come from :func:`storage_report` (call it on both sides), its
    adapted layers from :func:`qlora_layers`. Raises ``ValueError`` naming ``target_modules`` (or
    ``quantize_only``) if a name matches nothing or a module that is not ``nn.Linear``, or if the
    two overlap; ``TypeError``/``ValueError`` naming any bad hyperparameter. The model is unchanged
    on any error.
    """
    check_instance("model", model, nn.Module)
    targets = normalize_targets(target_modules)
    compute_dtype = _check_compute_dtype(compute_dtype)
    blocksize, double_quant, blocksize2 = _check_quant_args(blocksize, double_quant, blocksize2)
    if seed is not None:
        seed = check_seed("seed", seed)
    adapted = _check_targets_are_linear(model, targets, "target_modules")
    only: list[str] = []
    if quantize_only is not None:
        only = _check_targets_are_linear(model, normalize_targets(quantize_only), "quantize_only")
        overlap = sorted(set(only) & set(adapted))
        if overlap:
            raise ValueError(f"quantize_only selects layers that target_modules adapts: "
                             f"{overlap[:4]}")
    # validate the LoRA hyperparameters once, before touching the model
    r, alpha, dropout, init, rslora, _ = check_lora_hparams(r, alpha, dropout, init, rslora)
    modules = dict(model.named_modules())
    for name in adapted:
        check_rank_fits(r, modules[name], f" of {name!r}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    kind = {id(modules[n]): "adapt" for n in adapted}
    kind.update({id(modules[n]): "quantize" for n in only})
    quant = dict(compute_dtype=compute_dtype, blocksize=blocksize, double_quant=double_quant,
                 blocksize2=blocksize2)

    def factory(linear: nn.Linear) -> nn.Module:
        if kind[id(linear)] == "quantize":
            return NF4Linear(linear, **quant)
        return QLoRALinear(linear, r, alpha, dropout=dropout, init=init, rslora=rslora,
                           generator=generator, **quant)

    inject_adapters(model, tuple(adapted + only), factory)   # builds all, then installs
    return model


def qlora_layers(model: nn.Module) -> dict[str, QLoRALinear]:
    """The :class:`QLoRALinear` submodules of ``model`` by qualified name: the layers whose
    h = Ŵ0·x + b + s·B·A·x has a 4-bit Ŵ0 (source §4.3)."""
    check_instance("model", model, nn.Module)
    return {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}


def merge_qlora(model: nn.Module, into: str = "16bit",
                dtype: torch.dtype | None = None, dequantize_rest: bool = False) -> nn.Module:
    """Replace every :class:`QLoRALinear` of ``model`` by its merged layer, in place.

    * ``into="16bit"`` — option (a): an ``nn.Linear`` holding Ŵ0 + s·B·A in ``dtype`` (default:
      each layer's compute dtype). Same outputs as the unmerged model up to 16-bit rounding; the
      merged weights take 16 bits per parameter instead of ≈ 4.127.
    * ``into="nf4"`` — option (b): an :class:`NF4Linear` holding NF4(Ŵ0 + s·B·A). 4-bit size;
      the new rounding is as large as the first quantization's, and a small update ΔW is partly
      rounded away (source §2.2, 2's "merge for zero latency", under quantization).

    ``dequantize_rest=True`` (with ``into="16bit"`` only) also replaces every other
    :class:`NF4Linear` of the model — the layers ``prepare_qlora`` quantized without an adapter —
    by a plain ``nn.Linear`` holding its dequantized weight Ŵ0 (:meth:`NF4Linear.linear`), so that
    no layer dequantizes at inference time any more.

    Returns the model (a bare ``QLoRALinear`` is not replaced: its merged layer is returned).
    Raises ``ValueError`` if the model holds no ``QLoRALinear``.
    """
    check_instance("model", model, nn.Module)
    check_one_of("into", into, MERGE_MODES)
    check_instance("dequantize_rest", dequantize_rest, bool)
    if dtype is not None:
        dtype = _check_compute_dtype(dtype, "dtype")
    if into == "nf4" and dtype is not None:
        raise ValueError("dtype applies to into='16bit' only")
    if into == "nf4" and dequantize_rest:
        raise ValueError("dequantize_rest applies to into='16bit' only")

    def merged(layer: QLoRALinear) -> nn.Module:
        return layer.merged_linear(dtype) if into == "16bit" else layer.merged_nf4()

    if isinstance(model, QLoRALinear):
        return merged(model)
    layers = qlora_layers(model)
    if not layers:
        raise ValueError("model holds no QLoRALinear layer to merge")
    replacements = {name: merged(layer) for name, layer in layers.items()}
    if dequantize_rest:
        adapted = tuple(f"{name}." for name in layers)
        replacements.update({name: m.linear(dtype) for name, m in model.named_modules()
                             if isinstance(m, NF4Linear) and not name.startswith(adapted)})
    for name, new in replacements.items():
        replace_module(model, name, new)
    return model
