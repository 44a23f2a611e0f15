"""SVDLinear, the orthogonal regulariser, the allocator, apply_adalora (lora_edu.adalora)."""

import copy
import math
import random
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.adalora import (
    ImportanceTracker,
    RankAllocator,
    SVDLinear,
    apply_adalora,
    budget_schedule,
    ema_update,
    find_svd_modules,
    orthogonal_penalty,
    orthogonal_regularizer,
)
from lora_edu.toy import TinyTransformer, ToyConfig, downstream_task, train

# ---------------------------------------------------------------------------------- SVDLinear


def _layer(d=6, k=5, r=3, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return SVDLinear(nn.Linear(k, d, dtype=dtype), r, **kw)


def test_output_equals_base_at_init():
    layer = _layer()
    assert torch.count_nonzero(layer.lora_lambda) == 0
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(layer(x), layer.base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0


def test_shapes_scaling_and_frozen_base():
    layer = _layer(d=6, k=5, r=3, alpha=6.0)
    assert layer.lora_P.shape == (6, 3) and layer.lora_lambda.shape == (3,)
    assert layer.lora_Q.shape == (3, 5)
    assert layer.scaling == 2.0
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_P", "lora_lambda", "lora_Q"}


def test_forward_is_P_diag_lambda_Q():
    layer = _layer(alpha=1.5)
    with torch.no_grad():
        layer.lora_lambda.copy_(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    dw = layer.scaling * layer.lora_P @ torch.diag(layer.lora_lambda) @ layer.lora_Q
    torch.testing.assert_close(layer.delta_weight(), dw, rtol=1e-12, atol=1e-14)
    x = torch.randn(7, 5, dtype=torch.float64)
    ref = x @ (layer.base.weight + dw).t() + layer.base.bias
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_gradients_at_init_flow_to_lambda_only():
    layer = _layer()
    layer(torch.randn(8, 5, dtype=torch.float64)).pow(2).sum().backward()
    assert torch.count_nonzero(layer.lora_lambda.grad) == 3   # λ learns first
    assert torch.count_nonzero(layer.lora_P.grad) == 0        # ∂/∂P ∝ λ = 0
    assert torch.count_nonzero(layer.lora_Q.grad) == 0
    assert layer.base.weight.grad is None


def test_gaussian_init_std():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(400, 300), 50, init_std=0.05)
    for t in (layer.lora_P, layer.lora_Q):
        assert abs(float(t.detach().std()) - 0.05) < 0.002
        assert abs(float(t.detach().mean())) < 0.002


def test_init_is_seeded_and_drawn_in_float64():
    # P and Q are float64 Gaussian draws cast to the layer's dtype (bit-identical on every CPU)
    gen = torch.Generator().manual_seed(7)
    layer = SVDLinear(nn.Linear(5, 6), 3, init_std=0.05, generator=torch.Generator().manual_seed(7))
    P = (torch.randn(6, 3, dtype=torch.float64, generator=gen) * 0.05).float()
    Q = (torch.randn(3, 5, dtype=torch.float64, generator=gen) * 0.05).float()
    assert layer.lora_P.dtype == torch.float32
    assert torch.equal(layer.lora_P.detach(), P) and torch.equal(layer.lora_Q.detach(), Q)


def test_apply_adalora_seed():
    def factors(seed):
        model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4))
        state = torch.get_rng_state()
        apply_adalora(model, ["0", "1"], r=2, seed=seed)
        assert torch.equal(torch.get_rng_state(), state)   # the global generator is untouched
        return [t.detach().clone() for m in (model[0], model[1]) for t in (m.lora_P, m.lora_Q)]

    a, b, c = factors(3), factors(3), factors(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(a, c, strict=True))
    with pytest.raises(TypeError, match="seed"):
        apply_adalora(nn.Sequential(nn.Linear(5, 6)), ["0"], r=2, seed=1.5)
    with pytest.raises(TypeError, match="generator"):
        SVDLinear(nn.Linear(5, 6), 2, generator=3)


def test_update_many_matches_the_ema_and_rejects_duplicates():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (3, 5)]
    weights = [torch.randn(*sh, generator=gen) for sh in shapes]
    grads = [[torch.randn(*sh, generator=gen) for sh in shapes] for _ in range(3)]
    grads[1][0] = None                                # "took no part in the loss": zero gradient
    one, many = ImportanceTracker(0.8, 0.7), ImportanceTracker(0.8, 0.7)
    for step_grads in grads:
        for i, (w, g) in enumerate(zip(weights, step_grads, strict=True)):
            one.update(str(i), w, g)
        many.update_many([(str(i), w, g)
                          for i, (w, g) in enumerate(zip(weights, step_grads, strict=True))])
    # the EMAs written out for tensor 0: Ī ← β1·Ī + (1−β1)·I ;  Ū ← β2·Ū + (1−β2)·|I − Ī|
    i_bar, u_bar = torch.zeros(4, 3), torch.zeros(4, 3)
    for step_grads in grads:
        g = step_grads[0]
        sens = torch.zeros(4, 3) if g is None else (weights[0] * g).abs()
        i_bar = 0.8 * i_bar + 0.2 * sens
        u_bar = 0.7 * u_bar + 0.3 * (sens - i_bar).abs()
    torch.testing.assert_close(many.i_bar["0"], i_bar)
    torch.testing.assert_close(many.u_bar["0"], u_bar)
    for i in range(3):
        assert torch.equal(many.i_bar[str(i)], one.i_bar[str(i)])
        assert torch.equal(many.u_bar[str(i)], one.u_bar[str(i)])
    assert many.n_updates == {"0": 3, "1": 3, "2": 3}
    with pytest.raises(ValueError, match="twice"):
        many.update_many([("a", weights[1], None), ("a", weights[1], None)])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(r=0), ValueError, "r must"),
    (dict(r=-2), ValueError, "r must"),
    (dict(r=6), ValueError, "r must"),          # > min(d, k) = 5
    (dict(r=2.0), TypeError, "r must"),
    (dict(r=2, alpha=0.0), ValueError, "alpha"),
    (dict(r=2, init_std=-1.0), ValueError, "init_std"),
])
def test_svdlinear_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SVDLinear(nn.Linear(5, 6), **kwargs)


def test_svdlinear_base_must_be_linear():
    with pytest.raises(TypeError, match="base"):
        SVDLinear(nn.Conv1d(3, 3, 1), 2)


# ---------------------------------------------------------------------------- the regulariser


def test_regularizer_zero_for_orthonormal():
    gen = torch.Generator().manual_seed(1)
    P, _ = torch.linalg.qr(torch.randn(8, 3, generator=gen, dtype=torch.float64))
    Qt, _ = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    assert float(orthogonal_regularizer(P, Qt.t())) < 1e-24
    assert float(orthogonal_regularizer(2 * P, Qt.t())) > 1.0


def test_regularizer_by_hand():
    P = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])   # PᵀP − I = diag(3, 0)
    Q = torch.tensor([[1.0, 1.0], [0.0, 1.0]])               # QQᵀ − I = [[1, 1], [1, 0]]
    assert float(orthogonal_regularizer(P, Q)) == 9.0 + 3.0


def test_regularizer_gradcheck():
    gen = torch.Generator().manual_seed(2)
    P = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    Q = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(orthogonal_regularizer, (P, Q))
    # and the closed form ∇_P = 4·P·(PᵀP − I)
    orthogonal_regularizer(P, Q).backward()
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(P.grad, 4 * P.detach() @ (P.detach().t() @ P.detach() - eye))


def test_regularizer_bad_shapes():
    with pytest.raises(ValueError, match="Q"):
        orthogonal_regularizer(torch.zeros(4, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="P"):
        orthogonal_regularizer(torch.zeros(4), torch.zeros(2, 4))


def test_penalty_sums_layers_times_gamma():
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4))
    torch.manual_seed(0)
    apply_adalora(model, ["0", "1"], r=2)
    expected = sum(orthogonal_regularizer(m.lora_P, m.lora_Q) for m in (model[0], model[1]))
    torch.testing.assert_close(orthogonal_penalty(model, 0.1), 0.1 * expected)
    with pytest.raises(ValueError, match="gamma"):
        orthogonal_penalty(model, -1.0)
    with pytest.raises(ValueError, match="no SVD adapter"):
        orthogonal_penalty(nn.Linear(2, 2))


# ------------------------------------------------------------------------------ the allocator


def _stack(n_layers=4, width=8, r=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh())
                            for _ in range(n_layers)])
    return apply_adalora(model, [f"{i}.0" for i in range(n_layers)], r=r, alpha=float(r))


def _run(model, alloc, steps, lr=1e-2, seed=0, check=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=gen)
    y = torch.randn(32, 8, generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for t in range(1, steps + 1):
        loss = (model(x) - y).pow(2).mean() + orthogonal_penalty(model, 0.1)
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
        if check is not None:
            check(t)


def _used_triplets(alloc):
    """Triplets the forward pass really computes with, measured from its output: for every layer,
    the rank of layer(I) − base(I) = (s·P·diag(λ_used)·Q)ᵀ, independent of how masking is done."""
    total = 0
    with torch.no_grad():
        for m in alloc.modules.values():
            eye = torch.eye(m.in_features, dtype=m.lora_P.dtype)
            delta = m(eye) - m.base(eye)
            total += int(torch.linalg.matrix_rank(delta, rtol=1e-6))
    return total


def _stack64(**kw):
    return _stack(**kw).double()


@pytest.mark.parametrize("mask_between_steps", [True, False])
def test_nonzero_lambda_follow_the_cubic_schedule_by_hand(mask_between_steps):
    # Worked case: 4 layers × r = 3 = 12 triplets pruned to 5; T = 40, t_i = 5, t_f = 10, masking at
    # every step. For 5 < t < 30, b(t) = 5 + ⌊7·((30 − t)/25)³⌋, e.g. t = 6: 7·24³/25³ = 6.19 → 11;
    # t = 10: 7·0.8³ = 3.58 → 8; t = 14: 7·0.64³ = 1.84 → 6; t = 17: 7·0.52³ = 0.98 → 5.
    by_hand = {**{t: 12 for t in range(1, 6)}, 6: 11, 7: 10, 8: 9, 9: 9, 10: 8, 11: 8, 12: 7,
               13: 7, 14: 6, 15: 6, 16: 6, **{t: 5 for t in range(17, 41)}}
    assert all(by_hand[t] == 5 + math.floor(Fraction(7 * (30 - t) ** 3, 25 ** 3))
               for t in range(6, 30))
    model = _stack64()
    alloc = RankAllocator(model, target_budget=5, total_steps=40, t_init=5, t_final=10,
                          mask_between_steps=mask_between_steps)
    assert alloc.n_triplets == 12
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    counted, measured = {}, {}
    for t in range(1, 41):
        out = model(x)                      # uses the masks decided at step t − 1
        if t > 1:                           # (at t = 1 every λ is still at its zero start)
            counted[t - 1] = alloc.nonzero_lambdas()
            measured[t - 1] = _used_triplets(alloc)
        loss = (out - y).pow(2).mean() + orthogonal_penalty(model, 0.1)
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
    counted[40], measured[40] = alloc.nonzero_lambdas(), _used_triplets(alloc)
    assert counted == by_hand and measured == by_hand
    alloc.apply_masks()
    for m in alloc.modules.values():   # written into the parameter only now, on request
        assert torch.all(m.lora_lambda[m.rank_mask == 0] == 0)
        assert torch.all(m.lora_lambda[m.rank_mask == 1] != 0)


def _train_counting(mask_between_steps, steps=40, delta_t=5, target=4):
    """Train a float64 stack with ΔT = 5; per step: the budget the allocator reports when the
    forward pass runs, and the triplets that forward pass used (measured from its output)."""
    model = _stack64()
    alloc = RankAllocator(model, target_budget=target, total_steps=steps, t_init=5, t_final=10,
                          delta_t=delta_t, mask_between_steps=mask_between_steps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    reported, used, counted = {}, {}, {}
    for t in range(1, steps + 1):
        out = model(x)
        reported[t] = sum(alloc.ranks(warn=False).values())
        used[t], counted[t] = _used_triplets(alloc), alloc.nonzero_lambdas()
        loss = (out - y).pow(2).mean() + orthogonal_penalty(model, 0.1)
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
    return alloc, reported, used, counted


def test_masks_held_between_steps_use_exactly_the_reported_budget():
    # the default: the forward of every step computes with exactly the triplets the allocator
    # reports as active (from step 2 on: at step 1 every λ is still at its zero start)
    alloc, reported, used, counted = _train_counting(mask_between_steps=True)
    # no masking in the warm-up (t <= t_i = 5): the first masking step is 10
    assert alloc.mask_between_steps and [t for t, _ in alloc.history][:3] == [10, 15, 20]
    assert min(reported.values()) == 4 and reported[16] == budget_schedule(15, 40, 12, 4, 5, 10)
    assert all(used[t] == reported[t] == counted[t] for t in range(2, 41)), (used, reported)
    for m in alloc.modules.values():   # the parameters were never written: pruned λ kept
        assert not m.mask_pending
        assert torch.all(m.lora_lambda != 0)


def test_reference_mode_lets_pruned_lambda_grow_back():
    # mask_between_steps=False (authors' code, PEFT): a pruned λ is zeroed once, after the optimizer
    # step of the masking iteration, then trained again until the next masking step
    alloc, reported, used, counted = _train_counting(mask_between_steps=False)
    b15 = budget_schedule(15, 40, 12, 4, 5, 10)
    assert b15 < 12
    assert used == counted
    assert used[16] == reported[16] == b15     # the forward right after the masking step at t = 15
    assert used[17] == 12 > reported[17]       # one optimizer step later every λ is non-zero again
    regrown = [t for t in range(6, 30) if used[t] > reported[t]]
    assert len(regrown) >= 10                  # between every two masking steps of the pruning
    assert all(used[t] == reported[t] == 4 for t in range(31, 41))   # final phase: every step


@pytest.mark.parametrize("mask_between_steps", [True, False])
def test_pruned_lambda_zero_in_the_next_forward_written_only_by_the_allocator(mask_between_steps):
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=10, t_init=0, t_final=2,
                          mask_between_steps=mask_between_steps)
    _run(model, alloc, 3)
    layer = next(m for m in alloc.modules.values() if m.active_rank < 3)
    pruned = layer.rank_mask == 0
    with torch.no_grad():
        layer.lora_lambda.fill_(0.7)   # as if the optimizer had moved them
    version = layer.lora_lambda._version
    x = torch.randn(5, 8)
    h = layer(x)                       # the next forward: pruned triplets count as zero
    used = 0.7 * (~pruned)
    ref = layer.base(x) + layer.scaling * (x @ layer.lora_Q.t() * used) @ layer.lora_P.t()
    torch.testing.assert_close(h, ref)
    assert layer.lora_lambda._version == version          # ... but nothing was written
    assert torch.all(layer.lora_lambda == 0.7)
    assert torch.all(layer.effective_lambda()[pruned] == 0)
    assert layer.mask_pending == (not mask_between_steps)
    alloc.step(4)                      # the allocator's next call writes the zero (reference mode)
    assert torch.all(layer.lora_lambda[pruned] == (0.7 if mask_between_steps else 0.0))
    assert layer.lora_lambda.requires_grad   # pruned triplets stay trainable


@pytest.mark.parametrize("mask_between_steps", [True, False])
def test_forward_never_invalidates_a_pending_backward(mask_between_steps):
    # a loss that saves λ (here ΔW = s·P·diag(λ)·Q, as a merge or a penalty on ΔW would), a
    # masking step, another forward (an evaluation, the next micro-batch), then backward on both:
    # a forward that zeroed λ in place broke this with "modified by an inplace operation"
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=10, t_init=0, t_final=2,
                          mask_between_steps=mask_between_steps)
    _run(model, alloc, 2)
    layers = list(alloc.modules.values())
    x = torch.randn(6, 8)
    lambdas = [m.lora_lambda for m in layers]
    loss1 = model(x).pow(2).mean() + sum(m.delta_weight().pow(2).sum() for m in layers)
    g1 = torch.autograd.grad(loss1, lambdas, retain_graph=True)
    kept_before = sum(alloc.ranks(warn=False).values())   # b(2) = 4 + ⌊8·(6/8)³⌋ = 7
    alloc.mask_to_budget(5)
    versions = [m.lora_lambda._version for m in layers]
    with torch.no_grad():
        model(x)                                  # an evaluation in between
    loss2 = model(x).pow(2).mean()
    assert [m.lora_lambda._version for m in layers] == versions
    g2 = torch.autograd.grad(loss2, lambdas, retain_graph=True)
    for m in layers:
        m.lora_lambda.grad = None
    (loss1 + loss2).backward()                    # the pending graph of loss1 is still valid
    for m, a, b in zip(layers, g1, g2, strict=True):
        torch.testing.assert_close(m.lora_lambda.grad, a + b)
    # held masks: only the kept triplets get a gradient; the reference gives every λ the gradient
    # it would have as a parameter holding 0
    assert kept_before == 7
    assert sum(int(a.count_nonzero()) for a in g1) == (7 if mask_between_steps else 12)
    assert sum(int(b.count_nonzero()) for b in g2) == (5 if mask_between_steps else 12)


def test_forward_twice_then_backward_on_both_outputs():
    layer = _layer(alpha=3.0)
    with torch.no_grad():
        layer.lora_lambda.copy_(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    x = torch.randn(4, 5, dtype=torch.float64)
    out1 = layer(x)
    layer.rank_mask[1] = 0.0                 # the allocator prunes triplet 1
    out2 = layer(x)
    (out1.sum() + out2.sum()).backward()
    g = layer.lora_lambda.grad.clone()
    # by hand: ∂/∂λ_i Σ out = s·(Σ_rows P_{*i})·(Σ_n Q_{i*}·x_n), once per output that used λ_i
    per = layer.scaling * layer.lora_P.detach().sum(0) * (x @ layer.lora_Q.detach().t()).sum(0)
    torch.testing.assert_close(g, per * torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64))
    assert layer.lora_lambda[1].item() == -2.0     # the parameter itself is untouched


@pytest.mark.parametrize("grad_enabled, deterministic", [(True, False), (False, True)])
def test_allocator_changes_no_global_setting(grad_enabled, deterministic):
    def settings():
        return dict(grad=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled(),
                    det=torch.are_deterministic_algorithms_enabled(),
                    det_warn=torch.is_deterministic_algorithms_warn_only_enabled(),
                    threads=torch.get_num_threads(), interop=torch.get_num_interop_threads(),
                    dtype=torch.get_default_dtype(), anomaly=torch.is_anomaly_enabled(),
                    matmul=torch.get_float32_matmul_precision(),
                    torch_rng=torch.get_rng_state(), np_rng=np.random.get_state()[1].copy(),
                    py_rng=random.getstate())

    def same(a, b):
        return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else
                   np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]
                   for k in a)

    old_grad = torch.is_grad_enabled()
    old_det = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())
    model = _stack()
    x = torch.randn(16, 8)
    try:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        before = settings()
        alloc = RankAllocator(model, target_budget=4, total_steps=12, t_init=2, t_final=3,
                              delta_t=2)
        assert same(settings(), before)
        for t in range(1, 13):
            with torch.enable_grad():
                model(x).pow(2).mean().backward()
            torch.set_grad_enabled(grad_enabled)
            before = settings()
            alloc.step(t)                              # every phase: warm-up, pruning, final
            alloc.scores()
            alloc.nonzero_lambdas()
            alloc.ranks(warn=False)
            assert same(settings(), before), t
        alloc.mask_to_budget(6)
        alloc.apply_masks()
        alloc.remove_hooks()
        assert same(settings(), before)
    finally:
        torch.set_grad_enabled(old_grad)
        torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])


def test_keeps_the_top_scores():
    model = _stack(n_layers=3)
    alloc = RankAllocator(model, target_budget=2, total_steps=10, t_init=1, t_final=2)
    # plant scores: s(λ) only, P and Q zero
    planted = {"0.0": [0.5, 9.0, 0.1], "1.0": [0.2, 0.3, 4.0], "2.0": [7.0, 0.0, 0.6]}
    for name, m in alloc.modules.items():
        for attr in ("lora_P", "lora_Q"):
            alloc.tracker.i_bar[f"{name}.{attr}"] = torch.zeros_like(getattr(m, attr))
            alloc.tracker.u_bar[f"{name}.{attr}"] = torch.zeros_like(getattr(m, attr))
        alloc.tracker.i_bar[f"{name}.lora_lambda"] = torch.tensor(planted[name])
        alloc.tracker.u_bar[f"{name}.lora_lambda"] = torch.ones(3)
    assert alloc.mask_to_budget(4) == {"0.0": 1, "1.0": 1, "2.0": 2}
    pattern = alloc.rank_pattern(warn=False)
    assert pattern["0.0"] == [False, True, False]
    assert pattern["1.0"] == [False, False, True]
    assert pattern["2.0"] == [True, False, True]


def test_ties_keep_exactly_budget():
    model = _stack(n_layers=2)
    alloc = RankAllocator(model, target_budget=1, total_steps=10, t_init=1, t_final=2)
    # no importance yet: every score is 0, a "<= threshold" rule would prune everything
    ranks = alloc.mask_to_budget(4)
    assert sum(ranks.values()) == 4
    assert alloc.rank_pattern(warn=False) == {"0.0": [True, True, True],
                                              "1.0": [True, False, False]}


def test_final_pattern_frozen():
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=30, t_init=3, t_final=10)
    patterns = {}

    def check(t):
        patterns[t] = alloc.rank_pattern()

    _run(model, alloc, 20, check=check)
    assert alloc.frozen and alloc.history[-1] == (20, 4)
    n_updates = dict(alloc.tracker.n_updates)
    # keep training on different data: the pattern must not move, importance is not updated
    _run_cont = []

    def check2(t):
        _run_cont.append(alloc.rank_pattern() == patterns[20])

    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen) * 10
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for t in range(21, 31):
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
        check2(t)
        assert alloc.nonzero_lambdas() == 4      # the mask holds in every forward
    assert all(_run_cont)
    assert alloc.tracker.n_updates == n_updates
    alloc.apply_masks()
    for m in alloc.modules.values():
        assert torch.all(m.lora_lambda[m.rank_mask == 0] == 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_budget=13), "target_budget"),
    (dict(init_budget=13, target_budget=4), "init_budget"),
    (dict(target_budget=4, t_init=5, t_final=5), "t_init"),
    (dict(target_budget=4, beta1=1.0), "beta1"),
    (dict(target_budget=4, beta2=-0.5), "beta2"),
    (dict(target_budget=4, delta_t=0), "delta_t"),
])
def test_allocator_bad_input(kwargs, match):
    args = dict(total_steps=10, t_init=2, t_final=2)
    with pytest.raises(ValueError, match=match):
        RankAllocator(_stack(), **{**args, **kwargs})


def test_allocator_bad_step_and_model():
    alloc = RankAllocator(_stack(), target_budget=4, total_steps=10, t_init=2, t_final=2)
    with pytest.raises(ValueError, match="step"):
        alloc.step(0)
    with pytest.raises(ValueError, match="step"):
        alloc.step(11)
    with pytest.raises(ValueError, match="no SVD adapter"):
        RankAllocator(nn.Linear(3, 3), target_budget=1, total_steps=10, t_init=1, t_final=1)
    with pytest.raises(TypeError, match="SVD adapter"):
        find_svd_modules([nn.Linear(3, 3)])
    with pytest.raises(ValueError, match="budget"):
        alloc.mask_to_budget(13)


def test_warns_when_never_stepped():
    model = _stack()
    RankAllocator(model, target_budget=4, total_steps=5, t_init=1, t_final=1)
    x = torch.randn(4, 8)
    with pytest.warns(RuntimeWarning, match="never stepped"):
        for _ in range(5):
            model(x).sum().backward()
    with warnings.catch_warnings():   # warns once only
        warnings.simplefilter("error")
        model(x).sum().backward()
    alloc2 = RankAllocator(_stack(), target_budget=4, total_steps=5, t_init=1, t_final=1)
    with pytest.warns(RuntimeWarning, match="plain LoRA"):
        alloc2.ranks()


def test_no_warning_when_stepped():
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=6, t_init=1, t_final=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, alloc, 6)
        alloc.ranks()


# --------------------------------------------------------------------- on the toy transformer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def test_apply_adalora_wraps_named_modules():
    model = TinyTransformer(ToyConfig(vocab_size=48), seed=0)
    apply_adalora(model, TARGETS, r=4, alpha=4.0)
    names = list(find_svd_modules(model))
    assert len(names) == 12 and names[0] == "blocks.0.attn.q_proj"
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_P", "lora_lambda", "lora_Q"}


def test_apply_adalora_bad_input_leaves_model_unchanged():
    model = TinyTransformer(ToyConfig(vocab_size=48), seed=0)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="r must"):
        apply_adalora(model, TARGETS, r=0)
    with pytest.raises(ValueError, match="r must"):
        apply_adalora(model, TARGETS, r=65)     # > d_model
    with pytest.raises(ValueError, match="target_modules"):
        apply_adalora(model, ["nothing"], r=2)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not any(isinstance(m, SVDLinear) for m in model.modules())


def test_with_training_loop_hooks():
    torch.manual_seed(0)
    task = downstream_task(n_train=256, n_test=128)
    model = TinyTransformer(ToyConfig(vocab_size=48, d_model=32, d_ff=64), seed=0)
    apply_adalora(model, TARGETS, r=4, alpha=4.0)
    alloc = RankAllocator(model, target_budget=16, total_steps=30, t_init=5, t_final=10,
                          delta_t=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        hist = train(model, task, steps=30, lr=1e-2, batch_size=32, eval_every=0,
                     extra_loss=lambda m: orthogonal_penalty(m, 0.1),
                     after_backward=alloc.after_backward)
    assert len(hist.loss) == 30 and alloc.steps_taken == 30 and alloc.frozen
    assert sum(alloc.ranks().values()) == 16
    steps = [t for t, _ in alloc.history]
    # masking every ΔT = 2 steps after the warm-up (t > t_i = 5), then once at T − t_f = 20
    assert steps[:-1] == list(range(6, 20, 2)) and steps[-1] == 20


def test_vectorised_scores_equal_the_per_layer_formula():
    # (the name is the one book/claims.yml cites; the scores are no longer vectorised)
    # the allocator's triplet scores against the formula written out element by element
    # (S = Ī·Ū from the EMAs of |w·g|; S_i = S(λ_i) + mean_j S(P_ji) + mean_j S(Q_ij)), over
    # layers of different shapes, and the masks keep the top b of exactly these scores
    torch.manual_seed(0)
    dims = [(8, 8, 3), (8, 8, 3), (8, 16, 4), (16, 8, 2), (12, 12, 6), (8, 8, 3)]
    layers = [SVDLinear(nn.Linear(k, d, dtype=torch.float64), r, alpha=float(r))
              for d, k, r in dims]
    alloc = RankAllocator(layers, target_budget=9, total_steps=10, t_init=1, t_final=2,
                          beta1=0.8, beta2=0.7)
    gen = torch.Generator().manual_seed(1)
    ref = {}                              # (layer, factor) -> (Ī, Ū), by the formula
    for _ in range(4):
        for i, m in enumerate(layers):
            with torch.no_grad():
                m.lora_lambda.normal_(generator=gen)
            for f, p in enumerate((m.lora_P, m.lora_lambda, m.lora_Q)):
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                zero = torch.zeros_like(p)
                i_bar, u_bar = ref.get((i, f), (zero, zero))
                ref[i, f] = ema_update(i_bar, u_bar, (p.detach() * p.grad).abs(), 0.8, 0.7)
        alloc.update_importance()
    expected = []
    for i, (d, k, r) in enumerate(dims):
        s_p, s_l, s_q = (ref[i, f][0] * ref[i, f][1] for f in range(3))
        expected.append([float(s_l[j]) + sum(float(v) for v in s_p[:, j]) / d
                         + sum(float(v) for v in s_q[j, :]) / k for j in range(r)])
    got = alloc.scores()
    assert list(got) == [str(i) for i in range(len(dims))]
    for i, name in enumerate(got):
        torch.testing.assert_close(got[name], torch.tensor(expected[i], dtype=torch.float64),
                                   rtol=1e-12, atol=0)
    # keep the 9 best: by hand, a sort of (score, position) pairs
    flat = [(s, i, j) for i, row in enumerate(expected) for j, s in enumerate(row)]
    best = sorted(flat, key=lambda e: -e[0])[:9]
    ranks = alloc.mask_to_budget(9)
    assert ranks == {str(i): sum(1 for _, li, _ in best if li == i) for i in range(len(dims))}
    pattern = alloc.rank_pattern(warn=False)
    assert {(i, j) for _, i, j in best} == {(i, j) for i, name in enumerate(pattern)
                                            for j, kept in enumerate(pattern[name]) if kept}


def test_merge_adalora_folds_p_lambda_q_and_drops_pruned_triplets():
    from lora_edu.adalora import merge_adalora
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6)).double()
    apply_adalora(model, ["0", "2"], r=4, alpha=8.0, seed=0)
    with torch.no_grad():
        for layer in find_svd_modules(model).values():
            layer.lora_lambda.normal_()
        model[0].rank_mask[1] = 0.0                        # one pruned triplet
    x = torch.randn(5, 10, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        w = model[0].base.weight + model[0].scaling * sum(
            model[0].lora_lambda[i] * torch.outer(model[0].lora_P[:, i], model[0].lora_Q[i])
            for i in (0, 2, 3))                            # triplet 1 left out, by hand
    merged = merge_adalora(copy.deepcopy(model))
    assert all(type(m) is nn.Linear for m in (merged[0], merged[2]))
    assert not any(isinstance(m, SVDLinear) for m in merged.modules())
    assert torch.allclose(merged[0].weight, w, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(merged(x), expected, rtol=0, atol=1e-12)
    bare = merge_adalora(copy.deepcopy(model[2]))
    assert type(bare) is nn.Linear
    with pytest.raises(ValueError, match="no SVDLinear"):
        merge_adalora(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model"):
        merge_adalora("model")
