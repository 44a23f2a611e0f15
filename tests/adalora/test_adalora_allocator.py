"""RankAllocator's schedule of masking steps: nothing is masked during the warm-up, and the masks
are PEFT's, step for step, when both allocators see the same parameters and gradients
(lora_edu.adalora)."""

import copy

import pytest
import torch
from helpers import require
from torch import nn

from lora_edu.adalora import (
    RankAllocator,
    apply_adalora,
    budget_schedule,
    find_svd_modules,
    orthogonal_penalty,
)

N_LAYERS, WIDTH, R = 4, 8, 3          # 12 triplets


def _base(seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(N_LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).double()


TARGETS = [str(2 * i) for i in range(N_LAYERS)]


def _train(model, alloc, steps, after_step=None, seed=0):
    """Adam on a regression task; the allocator between backward and the optimizer step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, WIDTH, generator=gen, dtype=torch.float64)
    y = torch.randn(32, WIDTH, generator=gen, dtype=torch.float64)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for t in range(1, steps + 1):
        loss = (model(x) - y).pow(2).mean() + orthogonal_penalty(model, 0.1)
        opt.zero_grad()
        loss.backward()
        alloc.step(t)
        if after_step is not None:
            after_step(t)
        opt.step()


@pytest.mark.parametrize("mask_between_steps", [True, False])
@pytest.mark.parametrize("delta_t, first_mask", [(1, 6), (4, 8)])
def test_nothing_is_masked_during_the_warm_up(mask_between_steps, delta_t, first_mask):
    # b(0) = 8 of 12 triplets, t_i = 5: during steps 1 … 5 the scores are still near zero (λ starts
    # at 0), and the paper's schedule and PEFT mask nothing; the first masking step is the first
    # multiple of ΔT after t_i, and it keeps b(t) < 12 triplets
    model = apply_adalora(_base(), TARGETS, r=R, alpha=float(R), seed=0)
    alloc = RankAllocator(model, target_budget=4, total_steps=40, t_init=5, t_final=10,
                          delta_t=delta_t, init_budget=8, mask_between_steps=mask_between_steps)
    layers = list(alloc.modules.values())
    seen = {}

    def after_step(t):
        seen[t] = (sum(alloc.ranks(warn=False).values()), list(alloc.history),
                   all(bool(m.rank_mask.all()) for m in layers),
                   any(m.mask_pending for m in layers))

    _train(model, alloc, first_mask, after_step)
    for t in range(1, first_mask):
        assert seen[t] == (12, [], True, False), (t, seen[t])
    b = budget_schedule(first_mask, 40, 8, 4, 5, 10)
    assert b < 8 < 12
    assert seen[first_mask][:2] == (b, [(first_mask, b)])
    assert alloc.tracker.n_updates[f"{TARGETS[0]}.lora_P"] == first_mask   # scored at every step


def _to_peft(ours, theirs):
    """Copy P, λ, Q of every SVDLinear and their gradients into PEFT's lora_B, lora_E, lora_A."""
    with torch.no_grad():
        for name, layer in find_svd_modules(ours).items():
            peft_layer = theirs.get_submodule(name)
            for mine, other in ((layer.lora_P, peft_layer.lora_B["default"]),
                                (layer.lora_lambda, peft_layer.lora_E["default"]),
                                (layer.lora_Q, peft_layer.lora_A["default"])):
                other.copy_(mine.reshape(other.shape))
                other.grad = mine.grad.reshape(other.shape).clone()


@pytest.mark.parametrize("mask_between_steps, delta_t", [(True, 1), (False, 1), (False, 3)])
def test_masks_equal_peft_step_for_step(mask_between_steps, delta_t):
    # Both allocators see the same P, λ, Q and gradients at every step, between backward and the
    # optimizer step (the order of the paper's Algorithm 1): PEFT's importance averages equal
    # ours, and PEFT masks at the same steps (none in the warm-up) and keeps the same triplets.
    peft = require("peft")
    T, t_init, t_final, target_r = 40, 5, 10, 1
    base = _base(seed=1)
    ours = apply_adalora(copy.deepcopy(base), TARGETS, r=R, alpha=float(R), seed=1)
    config = peft.AdaLoraConfig(target_modules=TARGETS, init_r=R, target_r=target_r,
                                tinit=t_init, tfinal=t_final, deltaT=delta_t, total_step=T,
                                beta1=0.85, beta2=0.85, orth_reg_weight=0.0)
    theirs = peft.get_peft_model(copy.deepcopy(base), config).base_model   # AdaLoraModel
    theirs.double()
    alloc = RankAllocator(ours, target_budget=target_r * N_LAYERS, total_steps=T, t_init=t_init,
                          t_final=t_final, delta_t=delta_t, mask_between_steps=mask_between_steps)
    peft_config, masked_at = theirs.peft_config["default"], []

    def after_step(t):
        _to_peft(ours, theirs.model)
        if t < T - t_final:
            peft_config.rank_pattern = None         # set again only by a masking step
        theirs.update_and_allocate(t)
        pattern = peft_config.rank_pattern
        masked_now = bool(alloc.history) and alloc.history[-1][0] == t
        if t < T - t_final:
            assert (pattern is not None) == masked_now, t
            for name in TARGETS:                    # Ī and Ū of every element, as PEFT's
                for mine, other in (("lora_P", "lora_B"), ("lora_lambda", "lora_E"),
                                    ("lora_Q", "lora_A")):
                    key = f"{name}.{other}.default"
                    for ema, peft_ema in ((alloc.tracker.i_bar, theirs.rankallocator.exp_avg_ipt),
                                          (alloc.tracker.u_bar, theirs.rankallocator.exp_avg_unc)):
                        torch.testing.assert_close(ema[f"{name}.{mine}"].reshape(-1),
                                                   peft_ema[key].reshape(-1),
                                                   rtol=1e-12, atol=0)
        if pattern is not None:
            mine = alloc.rank_pattern(warn=False)
            assert {n: pattern[f"{n}.lora_E.default"] for n in TARGETS} == mine, t
        if masked_now:
            masked_at.append(t)

    _train(ours, alloc, T, after_step, seed=1)
    pruning = [t for t in range(t_init + 1, T - t_final) if t % delta_t == 0]
    assert masked_at == pruning + [T - t_final]
    assert sum(alloc.ranks().values()) == target_r * N_LAYERS
    # after the final masking PEFT re-applies its pattern: its λ are zero exactly where ours are
    # masked
    for name, layer in alloc.modules.items():
        peft_lambda = theirs.model.get_submodule(name).lora_E["default"].reshape(-1)
        assert torch.equal(peft_lambda != 0, layer.rank_mask.bool())
