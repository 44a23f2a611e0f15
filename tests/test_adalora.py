"""SVDLinear, the orthogonal regulariser, the allocator, apply_adalora (lora_edu.adalora)."""

import math
import warnings
from fractions import Fraction

import pytest
import torch
from torch import nn

from lora_edu.adalora import (
    ImportanceTracker,
    RankAllocator,
    SVDLinear,
    apply_adalora,
    budget_schedule,
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


def _nonzero_lambda(alloc):
    return sum(int(m.lora_lambda.count_nonzero()) for m in alloc.modules.values())


def test_nonzero_lambda_follow_the_cubic_schedule_by_hand():
    # Worked case: 4 layers × r = 3 = 12 triplets pruned to 5; T = 40, t_i = 5, t_f = 10, masking at
    # every step. For 5 < t < 30, b(t) = 5 + ⌊7·((30 − t)/25)³⌋, e.g. t = 6: 7·24³/25³ = 6.19 → 11;
    # t = 10: 7·0.8³ = 3.58 → 8; t = 14: 7·0.64³ = 1.84 → 6; t = 17: 7·0.52³ = 0.98 → 5.
    by_hand = {**{t: 12 for t in range(1, 6)}, 6: 11, 7: 10, 8: 9, 9: 9, 10: 8, 11: 8, 12: 7,
               13: 7, 14: 6, 15: 6, 16: 6, **{t: 5 for t in range(17, 41)}}
    assert all(by_hand[t] == 5 + math.floor(Fraction(7 * (30 - t) ** 3, 25 ** 3))
               for t in range(6, 30))
    model = _stack()
    alloc = RankAllocator(model, target_budget=5, total_steps=40, t_init=5, t_final=10)
    assert alloc.n_triplets == 12
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    counted = {}
    for t in range(1, 41):
        out = model(x)                      # applies the masks decided at step t − 1
        if t > 1:                           # (at t = 1 every λ is still at its zero start)
            counted[t - 1] = _nonzero_lambda(alloc)
        loss = (out - y).pow(2).mean() + orthogonal_penalty(model, 0.1)
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
    model(x)
    counted[40] = _nonzero_lambda(alloc)
    assert counted == by_hand
    for m in alloc.modules.values():   # pruned λ are exactly zero
        assert torch.all(m.lora_lambda[m.rank_mask == 0] == 0)


def test_pruned_lambda_grow_back_between_masking_steps():
    # with ΔT = 5 the masks are applied only every 5th step during pruning: a pruned λ is zeroed by
    # the next forward and then trained again, so it is non-zero until the next masking step
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=40, t_init=5, t_final=10,
                          delta_t=5)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    counted = {}
    for t in range(1, 41):
        out = model(x)
        counted[t] = _nonzero_lambda(alloc)
        loss = (out - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        opt.step()
    b15 = budget_schedule(15, 40, 12, 4, 5, 10)
    assert b15 < 12
    assert counted[16] == b15            # the forward right after the masking step at t = 15
    assert counted[17] == 12             # one optimizer step later every λ is non-zero again
    assert all(counted[t] == 4 for t in range(31, 41))   # final phase: masked at every step


def test_mask_applied_after_optimizer_step():
    model = _stack()
    alloc = RankAllocator(model, target_budget=4, total_steps=10, t_init=0, t_final=2)
    _run(model, alloc, 3)
    layer = next(m for m in alloc.modules.values() if m.active_rank < 3)
    pruned = layer.rank_mask == 0
    with torch.no_grad():
        layer.lora_lambda.fill_(0.7)   # as if the optimizer had moved them
    assert layer.mask_pending
    model(torch.zeros(1, 8))             # next forward zeroes pruned λ first
    assert torch.all(layer.lora_lambda[pruned] == 0)
    assert torch.all(layer.lora_lambda[~pruned] == 0.7)
    assert layer.lora_lambda.requires_grad   # pruned triplets stay trainable


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
        for m in alloc.modules.values():   # the mask is re-applied before every forward
            assert m.mask_pending
    assert all(_run_cont)
    assert alloc.tracker.n_updates == n_updates
    model(torch.zeros(1, 8))
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
    assert steps[:-1] == list(range(2, 20, 2)) and steps[-1] == 20
