"""Tests of lora_edu.paged: AdamW bit for bit under any budget, page counts by hand and
deterministic, reserve/eviction, the non-paged failure mode, state dicts, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_edu.paged import BNB_MIN_PAGED_NUMEL, DeviceOutOfMemory, PagedAdamW

SHAPES = [(300, 7), (5,), (64, 64), (1000,), (3, 1, 11)]


def params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def run(make, steps: int = 5, seed: int = 0, dtype: torch.dtype = torch.float32,
        skip: int | None = 1):
    """Train ``params`` with random gradients; parameter ``skip`` gets no gradient on even
    steps (AdamW then leaves it alone)."""
    ps = params(seed, dtype)
    opt = make(ps)
    g = torch.Generator().manual_seed(seed + 1)
    for t in range(steps):
        for i, p in enumerate(ps):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
            p.grad = None if (i == skip and t % 2 == 0) else grad
        opt.step()
    return ps, opt


@pytest.mark.parametrize("budget", [None, 256, 1024, 4096, 20_000, 60_000])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_torch_adamw_exactly(budget, weight_decay):
    kw = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    ref, _ = run(lambda ps: torch.optim.AdamW(ps, foreach=False, **kw))
    ref_default, _ = run(lambda ps: torch.optim.AdamW(ps, **kw))
    out, opt = run(lambda ps: PagedAdamW(ps, **kw, budget_bytes=budget, page_bytes=256,
                                         min_paged_numel=0))
    for a, b, c in zip(ref, ref_default, out, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    if budget is not None and budget < 20_000:
        assert sum(s.faults for s in opt.page_history) > 0   # it really paged


def test_matches_with_groups_float64_and_threshold():
    def groups(ps):
        return [{"params": ps[:2], "lr": 3e-2}, {"params": ps[2:], "weight_decay": 0.0}]

    ref, _ = run(lambda ps: torch.optim.AdamW(groups(ps), lr=1e-2), dtype=torch.float64)
    out, opt = run(lambda ps: PagedAdamW(groups(ps), lr=1e-2, budget_bytes=8192, page_bytes=512,
                                         min_paged_numel=300), dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=True))
    ps = [p for g in opt.param_groups for p in g["params"]]
    paged = {i for i, p in enumerate(ps) if p in opt._paged}
    assert paged == {i for i, s in enumerate(SHAPES) if torch.Size(s).numel() >= 300}
    assert opt.unpaged_bytes == 2 * 8 * (5 + 33)            # (5,) and (3, 1, 11), float64


def test_page_counts_by_hand():
    # two parameters of 16 float32 = 64 bytes: each state is one 64-byte page; room for 3 pages
    p1, p2 = (torch.nn.Parameter(torch.zeros(16)) for _ in range(2))
    opt = PagedAdamW([p1, p2], budget_bytes=3 * 64, page_bytes=64, min_paged_numel=0)
    for _ in range(3):
        p1.grad, p2.grad = torch.ones(16), torch.ones(16)
        opt.step()
    # step 1: p1's m, v and p2's m fill the device; p2's v evicts the oldest page (p1's m).
    # step 2: p1 faults m in (evicting p2's m), p2 faults m in (evicting p1's m): LRU thrashes.
    assert [(s.faults, s.evictions) for s in opt.page_history] == [(0, 1), (2, 2), (2, 2)]
    assert [(s.resident_pages, s.host_pages) for s in opt.page_history] == [(3, 1)] * 3
    assert opt.page_history[1].bytes_in == 2 * 64 == opt.page_history[1].bytes_out


def test_page_counts_are_deterministic():
    def history():
        _, opt = run(lambda ps: PagedAdamW(ps, budget_bytes=3000, page_bytes=256,
                                           min_paged_numel=0), steps=4)
        return opt.page_history

    first = history()
    assert first == history()
    assert sum(s.evictions for s in first) > 0


def test_reserve_pages_out_and_the_step_pages_back_in():
    p = torch.nn.Parameter(torch.zeros(1024))               # 4 KiB per state: 4 pages each
    opt = PagedAdamW([p], budget_bytes=16 * 1024, page_bytes=1024, min_paged_numel=0)
    p.grad = torch.ones(1024)
    opt.step()
    assert opt.resident_pages == 8 and opt.host_pages == 0
    assert opt.reserve(12 * 1024) == 4                       # a spike: half the states go out
    assert (opt.resident_pages, opt.host_pages) == (4, 4)
    opt.reserve(0)                                           # the spike is over
    p.grad = torch.ones(1024)
    opt.step()
    assert (opt.page_history[-1].faults, opt.page_history[-1].evictions) == (4, 4)
    assert (opt.resident_pages, opt.host_pages) == (8, 0)
    with pytest.raises(DeviceOutOfMemory):
        opt.reserve(16 * 1024 + 1)                           # more than the whole device
    assert (opt.resident_pages, opt.host_pages) == (8, 0)    # nothing changed


def test_without_paging_a_spike_is_out_of_memory():
    p = torch.nn.Parameter(torch.zeros(1024))
    opt = PagedAdamW([p], budget_bytes=16 * 1024, page_bytes=1024, min_paged_numel=0,
                     paging=False)
    p.grad = torch.ones(1024)
    opt.step()
    opt.reserve(8 * 1024)                                    # fits: 8 pages + 8 KiB
    with pytest.raises(DeviceOutOfMemory, match="non-paged"):
        opt.reserve(12 * 1024)
    assert (opt.resident_pages, opt.host_pages) == (8, 0)
    small = PagedAdamW([torch.nn.Parameter(torch.zeros(1024))], budget_bytes=4096,
                       page_bytes=1024, min_paged_numel=0, paging=False)
    small.param_groups[0]["params"][0].grad = torch.ones(1024)
    with pytest.raises(DeviceOutOfMemory):
        small.step()                                          # 8 pages do not fit in 4


def test_default_threshold_is_bitsandbytes():
    big = torch.nn.Parameter(torch.zeros(BNB_MIN_PAGED_NUMEL))
    small = torch.nn.Parameter(torch.zeros(BNB_MIN_PAGED_NUMEL - 1))
    opt = PagedAdamW([big, small])
    big.grad, small.grad = torch.ones_like(big), torch.ones_like(small)
    opt.step()
    assert big in opt._paged and small not in opt._paged
    assert set(opt.state[small]) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.equal(opt.paged_state(big, "exp_avg"), torch.full_like(big, 0.1))


def test_state_dict_is_adamw_format_both_ways():
    kw = dict(lr=1e-2, weight_decay=0.05)
    ps, paged = run(lambda ps: PagedAdamW(ps, **kw, budget_bytes=2048, page_bytes=256,
                                          min_paged_numel=0), steps=3)
    ref_ps, ref = run(lambda ps: torch.optim.AdamW(ps, **kw), steps=3)
    sd = paged.state_dict()
    for i, state in sd["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], ref.state_dict()["state"][i][key])
    # AdamW state → a fresh PagedAdamW, and on: both continue identically
    clones = [torch.nn.Parameter(p.detach().clone()) for p in ref_ps]
    cont = PagedAdamW(clones, **kw, budget_bytes=2048, page_bytes=256, min_paged_numel=0)
    cont.load_state_dict(copy.deepcopy(ref.state_dict()))   # (step tensors are shared)
    g = torch.Generator().manual_seed(42)
    for _ in range(2):
        for a, b in zip(ref_ps, clones, strict=True):
            a.grad = torch.randn(a.shape, generator=g, dtype=torch.float64).float()
            b.grad = a.grad.clone()
        ref.step()
        cont.step()
    assert all(torch.equal(a, b) for a, b in zip(ref_ps, clones, strict=True))


BAD = [
    ("budget below one page", dict(budget_bytes=100, page_bytes=128), ValueError,
     "budget_bytes"),
    ("page size zero", dict(page_bytes=0), ValueError, "page_bytes"),
    ("page size negative", dict(page_bytes=-64), ValueError, "page_bytes"),
    ("page size not a power of two", dict(page_bytes=96), ValueError, "page_bytes"),
    ("page size float", dict(page_bytes=64.0), TypeError, "page_bytes"),
    ("budget float", dict(budget_bytes=1e6), TypeError, "budget_bytes"),
    ("negative lr", dict(lr=-1e-3), ValueError, "lr"),
    ("beta of one", dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\]"),
    ("three betas", dict(betas=(0.9, 0.9, 0.9)), ValueError, "betas"),
    ("eps str", dict(eps="tiny"), TypeError, "eps"),
    ("threshold negative", dict(min_paged_numel=-1), ValueError, "min_paged_numel"),
    ("paging str", dict(paging="yes"), TypeError, "paging"),
]


@pytest.mark.parametrize("kwargs, exc, arg", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments(kwargs, exc, arg):
    with pytest.raises(exc, match=rf"^{arg}"):
        PagedAdamW(params(), **kwargs)


def test_bad_params_and_reserve():
    with pytest.raises(TypeError, match=r"^params\[0\]"):
        PagedAdamW([torch.zeros(3, dtype=torch.long)])           # an integer dtype
    with pytest.raises(TypeError, match="^params"):
        PagedAdamW(torch.zeros(3, requires_grad=True))           # a bare tensor
    opt = PagedAdamW(params(), budget_bytes=4096, page_bytes=256)
    with pytest.raises(ValueError, match="^nbytes"):
        opt.reserve(-1)
    with pytest.raises(TypeError, match="^nbytes"):
        opt.reserve(1.5)
    with pytest.raises(ValueError, match="^key"):
        opt.paged_state(opt.param_groups[0]["params"][0], "momentum")
    assert opt._reserved == 0 and opt.resident_pages == 0


@pytest.mark.parametrize("option", ["amsgrad", "maximize", "fused", "foreach", "capturable",
                                    "differentiable"])
def test_adamw_options_it_does_not_implement_are_refused_by_name(option):
    params = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(ValueError, match=rf"^{option}=True is not supported by PagedAdamW"):
        PagedAdamW(params, **{option: True})
    PagedAdamW(params, **{option: None if option in ("fused", "foreach") else False})
