"""A paged AdamW optimizer you can watch: optimizer states in fixed-size pages of a bounded pool.

Source §4.2 (3): 分页优化器：借鉴虚拟内存思想，显存不足时将优化器状态分页到CPU，避免OOM — the paged
optimizer borrows the idea of virtual memory: when GPU memory runs short, the optimizer states are
paged out to CPU memory, avoiding an out-of-memory error; §4.3 (3): 分页优化器管控显存峰值 — it
keeps the memory *peak* under control.

**What the hardware does.** bitsandbytes' paged optimizers (QLoRA, Dettmers et al. 2023, §3)
allocate every state tensor of at least 10⁵ elements with ``cudaMallocManaged`` (CUDA unified
memory); smaller ones are ordinary GPU tensors. The driver moves unified-memory pages between GPU
and CPU on demand: when other allocations (a long batch's activations) need the GPU memory, pages
of the optimizer states go to the CPU, and before each parameter's update the optimizer prefetches
its states back to the GPU (``prefetch_tensor``).

**What this module is.** A *model of that policy*, not of the hardware: on a CPU-only machine
"device" and "host" are two pools in the same RAM, and what is counted is what a GPU would move.

* Every state tensor (``exp_avg``, ``exp_avg_sq``) with ``numel >= min_paged_numel`` lives in
  pages of ``page_bytes`` bytes (the last page of a tensor is partly unused, as a real page is).
* The device holds ``budget_bytes``. Other allocations are declared with :meth:`PagedAdamW.reserve`
  (weights, gradients, activations); small unpaged states are always on the device. What is left,
  in whole pages, is the pool's capacity.
* When the pool is over capacity, the least-recently-used pages move to the host (*evictions*,
  *bytes out*); a page on the host that an update needs moves back (*page faults*, *bytes in*).
  Before a parameter is updated, all pages of its states are brought in (the prefetch).
* ``paging=False`` models a plain optimizer with the same budget: states must stay resident, and
  running short raises :class:`DeviceOutOfMemory` instead of paging.

**The update is AdamW, bit for bit.** For each parameter the states are handed to the same sequence
of tensor operations as ``torch.optim.AdamW`` with ``foreach=False`` (the default on a CPU),
on whole tensors of the parameter's shape: a view into the pool when the tensor's pages sit in
consecutive slots, else a gathered copy that is written back. Paging changes where the numbers are,
never what they are (the tests compare with ``torch.optim.AdamW`` exactly, for several budgets).

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value, naming the argument).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from lora_edu.checks import check_float, check_instance, check_int, check_probability

__all__ = ["PagedAdamW", "PageStats", "DeviceOutOfMemory", "BNB_MIN_PAGED_NUMEL",
           "DEFAULT_PAGE_BYTES"]

#: bitsandbytes pages a state tensor only if it has at least 10⁵ elements
#: (``Optimizer8bit.get_state_buffer``: ``if not self.is_paged or p.numel() < 1e5``).
BNB_MIN_PAGED_NUMEL = 100_000

#: Default page size: 2 MiB, a large GPU page. The hardware's unit of migration varies (4 KiB to
#: 2 MiB); the policy modelled here does not depend on it.
DEFAULT_PAGE_BYTES = 2**21

_STATE_KEYS = ("exp_avg", "exp_avg_sq")


class DeviceOutOfMemory(RuntimeError):
    """The modelled device cannot hold what is asked of it (the analogue of CUDA's OOM error)."""


@dataclass(frozen=True)
class PageStats:
    """Page traffic of one optimizer step (source §4.2 (3): states paged to CPU memory and back).

    Counted from the end of the previous :meth:`PagedAdamW.step` to the end of this one, so the
    evictions that a long batch's activations cause (declared with :meth:`PagedAdamW.reserve`
    during its forward pass) belong to the step of that batch. ``faults`` pages moved host →
    device, ``evictions`` pages device → host, ``bytes_in``/``bytes_out`` = pages × page_bytes;
    ``resident_pages``/``host_pages`` are the pool's state at the end of the step.
    """

    step: int
    faults: int
    evictions: int
    bytes_in: int
    bytes_out: int
    resident_pages: int
    host_pages: int


@dataclass
class _PagedTensor:
    """One paged state tensor: its shape and dtype, and the ids of its pages in order."""

    shape: torch.Size
    dtype: torch.dtype
    numel: int
    pages: list[int]


def _check_betas(betas: object) -> tuple[float, float]:
    check_instance("betas", betas, (tuple, list))
    if len(betas) != 2:
        raise ValueError(f"betas must hold two numbers (β1, β2), got {len(betas)}")
    return (check_probability("betas[0]", betas[0]), check_probability("betas[1]", betas[1]))


class PagedAdamW(torch.optim.Optimizer):
    """AdamW whose large state tensors live in pages of a bounded device pool (source §4.2 (3)).

    The update of each parameter θ with gradient g at step t is AdamW's (Loshchilov & Hutter),
    computed exactly as ``torch.optim.AdamW(foreach=False)`` computes it::

        θ ← θ·(1 − lr·λ);  m ← lerp(m, g, 1 − β1);  v ← β2·v + (1 − β2)·g²
        θ ← θ − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

    Parameters
    ----------
    params:
        Parameters or parameter groups, as for any ``torch.optim`` optimizer.
    lr, betas, eps, weight_decay:
        As for ``torch.optim.AdamW`` (defaults 10⁻³, (0.9, 0.999), 10⁻⁸, 10⁻²); lr, eps and
        weight_decay ≥ 0, each β in [0, 1).
    budget_bytes:
        Bytes of the modelled device (an int ≥ ``page_bytes``), or ``None`` for an unbounded
        device (nothing is ever evicted).
    page_bytes:
        Size of a page in bytes: a power of two ≥ 16 (default :data:`DEFAULT_PAGE_BYTES`).
    min_paged_numel:
        State tensors with fewer elements are ordinary device tensors, never paged (default
        :data:`BNB_MIN_PAGED_NUMEL` = 10⁵, bitsandbytes' threshold; 0 pages everything).
    paging:
        ``True``: evict least-recently-used pages to the host when the device runs short.
        ``False``: a plain optimizer under the same budget — :class:`DeviceOutOfMemory` instead.
    amsgrad, maximize, foreach, fused, capturable, differentiable:
        ``torch.optim.AdamW``'s other options. Only their defaults are accepted: any other value
        raises ``ValueError`` naming the option, since this optimizer implements the plain
        AdamW update alone.

    Notes
    -----
    Traffic is in :attr:`page_history` (one :class:`PageStats` per step). :meth:`state_dict`
    returns the format of ``torch.optim.AdamW`` (the states gathered into tensors), and
    :meth:`load_state_dict` accepts it.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, budget_bytes: int | None = None,
                 page_bytes: int = DEFAULT_PAGE_BYTES,
                 min_paged_numel: int = BNB_MIN_PAGED_NUMEL, paging: bool = True,
                 amsgrad: bool = False, maximize: bool = False, foreach: bool | None = None,
                 fused: bool | None = None, capturable: bool = False,
                 differentiable: bool = False) -> None:
        # torch.optim.AdamW's other options, refused by name rather than ignored: this optimizer
        # implements the plain AdamW update only (no AMSGrad, no maximisation, one code path).
        for name, value, plain in (("amsgrad", amsgrad, False), ("maximize", maximize, False),
                                   ("foreach", foreach, None), ("fused", fused, None),
                                   ("capturable", capturable, False),
                                   ("differentiable", differentiable, False)):
            if value is not plain and value is not False:
                raise ValueError(f"{name}={value!r} is not supported by PagedAdamW (it implements "
                                 f"the plain AdamW update); leave {name} at its default")
        lr = check_float("lr", lr, 0.0)
        betas = _check_betas(betas)
        eps = check_float("eps", eps, 0.0)
        weight_decay = check_float("weight_decay", weight_decay, 0.0)
        page_bytes = check_int("page_bytes", page_bytes, 16)
        if page_bytes & (page_bytes - 1):
            raise ValueError(f"page_bytes must be a power of two, got {page_bytes}")
        if budget_bytes is not None:
            budget_bytes = check_int("budget_bytes", budget_bytes)
            if budget_bytes < page_bytes:
                raise ValueError(f"budget_bytes must hold at least one page (page_bytes = "
                                 f"{page_bytes}), got {budget_bytes}")
        min_paged_numel = check_int("min_paged_numel", min_paged_numel, 0)
        check_instance("paging", paging, bool)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors or parameter groups, got a "
                            "Tensor")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if not p.is_floating_point():
                    raise TypeError(f"params[{i}] must have a floating-point dtype, got "
                                    f"{p.dtype}")
                if p.device.type != "cpu":
                    raise ValueError(f"params[{i}] must be on the CPU (the pools model a device "
                                     f"in RAM), got {p.device}")
        self.budget_bytes = budget_bytes
        self.page_bytes = page_bytes
        self.min_paged_numel = min_paged_numel
        self.paging = paging
        self.page_history: list[PageStats] = []
        self._reserved = 0
        self._unpaged = 0
        self._paged: dict[Tensor, dict[str, _PagedTensor]] = {}
        self._page_owner: list[_PagedTensor] = []          # page id → its tensor
        self._slot_of: dict[int, int] = {}                 # resident page id → device slot
        self._host: dict[int, Tensor] = {}                 # page id → its bytes on the host
        self._spare: dict[int, Tensor] = {}                # host buffers of resident pages, reused
        self._lru: OrderedDict[int, None] = OrderedDict()  # resident pages, least recent first
        self._free_slots: list[int] = []
        self._device = torch.empty((0, page_bytes), dtype=torch.uint8)
        self._counts = [0, 0]                              # faults, evictions since last step
        self._n_steps = 0

    # ------------------------------------------------------------------ the pool

    @property
    def unpaged_bytes(self) -> int:
        """Bytes of the small state tensors kept as ordinary device tensors (never paged)."""
        return self._unpaged

    @property
    def capacity_pages(self) -> int | None:
        """Pages the pool may hold now: ⌊(budget − reserved − unpaged states) / page_bytes⌋
        (``None`` for an unbounded device; may be negative when the device is over-full)."""
        if self.budget_bytes is None:
            return None
        return (self.budget_bytes - self._reserved - self.unpaged_bytes) // self.page_bytes

    @property
    def resident_pages(self) -> int:
        """Pages on the device now."""
        return len(self._lru)

    @property
    def host_pages(self) -> int:
        """Pages on the host now."""
        return len(self._host)

    def reserve(self, nbytes: int) -> int:
        """Declare that other tensors now take ``nbytes`` of the device; return pages evicted.

        What a training loop declares before a forward pass (weights + gradients + that batch's
        activations) and after it (the activations freed). If the pool no longer fits, the
        least-recently-used pages go to the host (or, with ``paging=False``, or if even an
        empty pool would not fit, :class:`DeviceOutOfMemory` is raised and nothing changes).
        ``nbytes`` is an int ≥ 0.
        """
        nbytes = check_int("nbytes", nbytes, 0)
        if self.budget_bytes is None:
            self._reserved = nbytes
            return 0
        free = self.budget_bytes - nbytes - self.unpaged_bytes
        if free < 0:
            raise DeviceOutOfMemory(
                f"the device holds {self.budget_bytes:,} bytes; {nbytes:,} reserved for other "
                f"tensors and {self.unpaged_bytes:,} for unpaged optimizer states do not fit")
        capacity = free // self.page_bytes
        excess = len(self._lru) - capacity
        if excess > 0 and not self.paging:
            raise DeviceOutOfMemory(
                f"the device holds {self.budget_bytes:,} bytes: {nbytes:,} for other tensors "
                f"leave room for {capacity} pages, and the optimizer states take "
                f"{len(self._lru)} pages that a non-paged optimizer cannot move out")
        self._reserved = nbytes
        for _ in range(max(excess, 0)):
            self._evict(pinned=())
        return max(excess, 0)

    def _evict(self, pinned: Iterable[int]) -> None:
        """Move the least-recently-used resident page not in ``pinned`` (or, if every resident
        page is pinned, the least-recently-used one) to the host."""
        pinned = set(pinned)
        victim = next((pg for pg in self._lru if pg not in pinned), None)
        if victim is None:
            victim = next(iter(self._lru))
        slot = self._slot_of.pop(victim)
        del self._lru[victim]
        buffer = self._spare.pop(victim, None)
        if buffer is None:
            buffer = torch.empty(self.page_bytes, dtype=torch.uint8)
        self._host[victim] = buffer.copy_(self._device[slot])
        self._free_slots.append(slot)
        self._counts[1] += 1

    def _slot(self, pinned: Iterable[int]) -> int:
        """A free device slot, growing the pool or evicting if needed."""
        capacity = self.capacity_pages
        if capacity is not None and capacity < 1:
            raise DeviceOutOfMemory(
                f"the device holds {self.budget_bytes:,} bytes, of which {self._reserved:,} are "
                f"reserved and {self.unpaged_bytes:,} hold unpaged states: no room for one page "
                f"of {self.page_bytes:,} bytes")
        if capacity is not None and len(self._lru) >= capacity:
            if not self.paging:
                raise DeviceOutOfMemory(
                    f"the optimizer states need more than the {capacity} pages the device has "
                    f"room for, and a non-paged optimizer cannot move pages out")
            self._evict(pinned)
        if not self._free_slots:
            n = self._device.shape[0]
            grow = max(1, n) if capacity is None else max(1, min(n, capacity - n))
            self._device = torch.cat([self._device, torch.empty((grow, self.page_bytes),
                                                                 dtype=torch.uint8)])
            self._free_slots.extend(range(n + grow - 1, n - 1, -1))
        return self._free_slots.pop()

    def _add_unpaged(self, need: int, shape: tuple[int, ...]) -> None:
        """Room on the device for ``need`` bytes of unpaged states (evicting pages if allowed)."""
        if self.budget_bytes is not None:
            if self._reserved + self._unpaged + need > self.budget_bytes:
                raise DeviceOutOfMemory(f"no room on the device for the {need:,} bytes of "
                                        f"unpaged states of a parameter of shape {shape}")
            over = (self._reserved + self._unpaged + need + len(self._lru) * self.page_bytes
                    - self.budget_bytes)
            if over > 0 and not self.paging:
                raise DeviceOutOfMemory(f"no room on the device for the {need:,} bytes of "
                                        f"unpaged states of a parameter of shape {shape}, and "
                                        f"a non-paged optimizer cannot move pages out")
            for _ in range(max(0, math.ceil(over / self.page_bytes))):
                self._evict(pinned=())
        self._unpaged += need

    def _touch(self, page: int, pinned: Iterable[int]) -> None:
        """Make ``page`` resident (a page fault if it is on the host) and most recently used."""
        if page in self._lru:
            self._lru.move_to_end(page)
            return
        slot = self._slot(pinned)
        buffer = self._host.pop(page)
        self._device[slot].copy_(buffer)
        self._spare[page] = buffer
        self._slot_of[page] = slot
        self._lru[page] = None
        self._counts[0] += 1

    def _allocate(self, p: Tensor) -> _PagedTensor:
        """A new zero state tensor shaped like ``p``, in freshly allocated device pages."""
        nbytes = p.numel() * p.element_size()
        if self.page_bytes % p.element_size():
            raise ValueError(f"page_bytes ({self.page_bytes}) must be a multiple of the element "
                             f"size of {p.dtype}")
        paged = _PagedTensor(p.shape, p.dtype, p.numel(), [])
        for _ in range(max(1, math.ceil(nbytes / self.page_bytes))):
            page = len(self._page_owner)
            self._page_owner.append(paged)
            slot = self._slot(pinned=paged.pages)
            self._device[slot].zero_()
            self._slot_of[page] = slot
            self._lru[page] = None
            paged.pages.append(page)
        return paged

    def _view(self, t: _PagedTensor) -> Tensor | None:
        """The state as a view into the pool if its pages sit in consecutive slots, else None."""
        slots = [self._slot_of.get(pg) for pg in t.pages]
        if None in slots or slots != list(range(slots[0], slots[0] + len(slots))):
            return None
        nbytes = t.numel * torch.empty((), dtype=t.dtype).element_size()
        start = slots[0] * self.page_bytes
        flat = self._device.view(-1)[start:start + nbytes]
        return flat.view(t.dtype).view(t.shape)

    def _location(self, page: int) -> Tensor:
        slot = self._slot_of.get(page)
        return self._device[slot] if slot is not None else self._host[page]

    def _gather(self, t: _PagedTensor) -> Tensor:
        """A contiguous copy of the state, read page by page from wherever each page is."""
        out = torch.empty(t.shape, dtype=t.dtype)
        raw = out.view(-1).view(torch.uint8)
        for i, page in enumerate(t.pages):
            lo = i * self.page_bytes
            hi = min(lo + self.page_bytes, raw.numel())
            raw[lo:hi].copy_(self._location(page)[:hi - lo])
        return out

    def _scatter(self, t: _PagedTensor, values: Tensor) -> None:
        raw = values.reshape(-1).view(torch.uint8)
        for i, page in enumerate(t.pages):
            lo = i * self.page_bytes
            hi = min(lo + self.page_bytes, raw.numel())
            self._location(page)[:hi - lo].copy_(raw[lo:hi])

    # ------------------------------------------------------------------ the update

    def _states(self, p: Tensor) -> tuple[dict, list[_PagedTensor]]:
        """The state of ``p`` (created on first use) and its paged tensors, prefetched."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            if p.numel() >= self.min_paged_numel:
                self._paged[p] = {k: self._allocate(p) for k in _STATE_KEYS}
            else:
                self._add_unpaged(2 * _nbytes(p), tuple(p.shape))
                for k in _STATE_KEYS:
                    state[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        paged = list(self._paged.get(p, {}).values())
        pinned = [pg for t in paged for pg in t.pages]
        for t in paged:                       # the prefetch: every page of both states
            for page in t.pages:
                self._touch(page, pinned)
        return state, paged

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW update of every parameter with a gradient; records a :class:`PageStats`.

        ``closure`` (optional) re-evaluates the model and returns the loss, as for any
        ``torch.optim`` optimizer. Per parameter: prefetch its state pages, then update on
        whole tensors (source §4.3 (3): 分页优化器管控显存峰值).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PagedAdamW does not support sparse gradients")
                state, paged = self._states(p)
                if paged:
                    views = [self._view(t) for t in paged]
                    tensors = [v if v is not None else self._gather(t)
                               for v, t in zip(views, paged, strict=True)]
                else:
                    tensors = [state[k] for k in _STATE_KEYS]
                _adamw_update(p, p.grad, tensors[0], tensors[1], state["step"], lr, beta1,
                              beta2, eps, weight_decay)
                if paged:
                    for v, t, values in zip(views, paged, tensors, strict=True):
                        if v is None:
                            self._scatter(t, values)
        self._n_steps += 1
        faults, evictions = self._counts
        self.page_history.append(PageStats(
            step=self._n_steps, faults=faults, evictions=evictions,
            bytes_in=faults * self.page_bytes, bytes_out=evictions * self.page_bytes,
            resident_pages=len(self._lru), host_pages=len(self._host)))
        self._counts = [0, 0]
        return loss

    # ------------------------------------------------------------------ inspection, state

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state by place: ``{"device_pages", "host_pages", "unpaged",
        "used"}`` — whole pages on each side, the small unpaged tensors, and the bytes the state
        tensors really use (the unused tail of each tensor's last page excluded)."""
        used = self.unpaged_bytes + sum(
            t.numel * torch.empty((), dtype=t.dtype).element_size()
            for states in self._paged.values() for t in states.values())
        return {"device_pages": len(self._lru) * self.page_bytes,
                "host_pages": len(self._host) * self.page_bytes,
                "unpaged": self.unpaged_bytes, "used": used}

    def paged_state(self, p: Tensor, key: str) -> Tensor:
        """A copy of state ``key`` ("exp_avg" or "exp_avg_sq") of parameter ``p``, read from
        its pages wherever they are (no page moves)."""
        check_instance("p", p, Tensor)
        if key not in _STATE_KEYS:
            raise ValueError(f"key must be one of {_STATE_KEYS}, got {key!r}")
        if p in self._paged:
            return self._gather(self._paged[p][key])
        if p in self.state and key in self.state[p]:
            return self.state[p][key].clone()
        raise ValueError("p has no optimizer state yet (it is created by the first step)")

    def state_dict(self) -> dict:
        """``torch.optim.AdamW``'s format: the paged states gathered into ordinary tensors."""
        sd = super().state_dict()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p in self._paged:
                    for k, t in self._paged[p].items():
                        sd["state"][index][k] = self._gather(t)
                index += 1
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an AdamW-format state (from this class or ``torch.optim.AdamW``); the large
        states go into freshly allocated pages (earlier pages of those parameters are freed)."""
        super().load_state_dict(state_dict)
        self._unpaged = sum(_nbytes(s[k]) for p, s in self.state.items()
                            if p.numel() < self.min_paged_numel for k in _STATE_KEYS if k in s)
        for p, state in self.state.items():
            if p.numel() < self.min_paged_numel or "exp_avg" not in state:
                continue
            old = self._paged.pop(p, None)
            if old is not None:
                self._release(old)
            values = {k: state.pop(k) for k in _STATE_KEYS}
            self._paged[p] = {k: self._allocate(p) for k in _STATE_KEYS}
            for k, t in self._paged[p].items():
                self._scatter(t, values[k].to(t.dtype).contiguous())

    def _release(self, states: dict[str, _PagedTensor]) -> None:
        for t in states.values():
            for page in t.pages:
                if page in self._slot_of:
                    self._free_slots.append(self._slot_of.pop(page))
                    del self._lru[page]
                self._host.pop(page, None)
                self._spare.pop(page, None)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                  step_t: Tensor, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float) -> None:
    """One AdamW step on whole tensors, the operations of ``torch.optim.AdamW(foreach=False)``.

    m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g²; θ ← θ·(1 − lr·λ) − (lr/(1 − β1^t))·m /
    (√v/√(1 − β2^t) + ε). The step counter is a float32 0-d tensor, as torch keeps it.
    """
    step_t += 1
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = step_t.item()
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
