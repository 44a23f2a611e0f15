"""Sensitivity, the two EMAs and the triplet score (lora_edu.adalora)."""

import pytest
import torch

import lora_edu.adalora
from lora_edu.adalora import (
    ImportanceTracker,
    ema_update,
    sensitivity,
    triplet_scores,
)


def test_sensitivity_is_abs_product():
    w = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([3.0, 1.0, -4.0])
    assert torch.equal(sensitivity(w, g), torch.tensor([3.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="grad"):
        sensitivity(w, g[:2])


def test_uncertainty_uses_updated_mean_by_hand():
    # one element, I_1 = 1, beta = 0.5: Ī_1 = 0.5, Ū_1 = 0.5·|1 − 0.5| = 0.25
    # (with the *old* Ī_0 = 0 it would be 0.5)
    i, u = ema_update(torch.zeros(1), torch.zeros(1), torch.ones(1), 0.5, 0.5)
    assert i.item() == 0.5 and u.item() == 0.25
    # step 2, I_2 = 3: Ī_2 = 0.25 + 1.5 = 1.75; Ū_2 = 0.125 + 0.5·1.25 = 0.75
    i, u = ema_update(i, u, torch.tensor([3.0]), 0.5, 0.5)
    assert i.item() == 1.75 and u.item() == 0.75


def test_tracker_matches_manual_loop():
    gen = torch.Generator().manual_seed(0)
    b1, b2 = 0.85, 0.7
    tracker = ImportanceTracker(b1, b2)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    i_ref = [[0.0] * 4 for _ in range(3)]
    u_ref = [[0.0] * 4 for _ in range(3)]
    for _ in range(6):
        g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        tracker.update("w", w, g)
        for a in range(3):
            for b in range(4):
                s = abs(float(w[a, b]) * float(g[a, b]))
                i_ref[a][b] = b1 * i_ref[a][b] + (1 - b1) * s
                u_ref[a][b] = b2 * u_ref[a][b] + (1 - b2) * abs(s - i_ref[a][b])
    i_ref_t = torch.tensor(i_ref, dtype=torch.float64)
    u_ref_t = torch.tensor(u_ref, dtype=torch.float64)
    torch.testing.assert_close(tracker.i_bar["w"], i_ref_t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(tracker.u_bar["w"], u_ref_t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(tracker.score("w"), i_ref_t * u_ref_t, rtol=1e-12, atol=1e-15)
    assert tracker.n_updates["w"] == 6


def test_tracker_equals_functional_form_and_none_grad():
    tracker = ImportanceTracker(0.8, 0.9)
    w, g = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 4.0])
    tracker.update("w", w, g)
    tracker.update("w", w, None)            # no gradient = zero sensitivity
    i, u = ema_update(torch.zeros(2), torch.zeros(2), sensitivity(w, g), 0.8, 0.9)
    i, u = ema_update(i, u, torch.zeros(2), 0.8, 0.9)
    torch.testing.assert_close(tracker.i_bar["w"], i)
    torch.testing.assert_close(tracker.u_bar["w"], u)
    with pytest.raises(ValueError, match=r"^name=.nope.: no importance recorded"):
        tracker.score("nope")
    with pytest.raises(ValueError, match="shape"):
        tracker.update("w", torch.zeros(3), torch.zeros(3))


def test_triplet_score_constructed():
    # r = 2, d = 3, k = 2
    s_p = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]])    # column means: 2, 2
    s_l = torch.tensor([10.0, 0.5])
    s_q = torch.tensor([[4.0, 0.0], [1.0, 1.0]])                # row means: 2, 1
    assert torch.equal(triplet_scores(s_p, s_l, s_q), torch.tensor([14.0, 3.5]))
    with pytest.raises(ValueError, match="score_P"):
        triplet_scores(s_p[:, :1], s_l, s_q)
    with pytest.raises(ValueError, match="score_lambda"):
        triplet_scores(s_p, s_l[None], s_q)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta1"):
        ImportanceTracker(beta1=beta)
    with pytest.raises(ValueError, match="beta2"):
        ImportanceTracker(beta2=beta)
    with pytest.raises(ValueError, match="beta1"):
        ema_update(torch.zeros(1), torch.zeros(1), torch.zeros(1), beta, 0.5)


def test_beta_zero_is_allowed_and_check_beta_is_gone():
    # β = 0 (no smoothing: Ī = I) is a valid end of [0, 1); the private checker is replaced by
    # lora_edu.checks.check_probability and no longer exported
    tracker = ImportanceTracker(beta1=0.0, beta2=0.0)
    tracker.update("w", torch.tensor([2.0]), torch.tensor([3.0]))
    assert tracker.i_bar["w"].item() == 6.0 and tracker.u_bar["w"].item() == 0.0
    assert not hasattr(lora_edu.adalora, "check_beta")
    assert "check_beta" not in lora_edu.adalora.__all__


def test_update_many_is_update_one_at_a_time_and_checks_every_item_first():
    # several tensors, some without a gradient at some steps: update_many gives exactly what
    # update gives one tensor at a time, and the EMAs written out; a bad item anywhere in the
    # list leaves every tensor's state as it was
    gen = torch.Generator().manual_seed(3)
    shapes = {"P": (40, 6), "lam": (6,), "Q": (6, 30), "P2": (9, 2), "lam2": (2,), "Q2": (2, 7)}
    weights = {n: torch.randn(*s, generator=gen) for n, s in shapes.items()}
    many, one = ImportanceTracker(0.8, 0.7), ImportanceTracker(0.8, 0.7)
    i_ref, u_ref = torch.zeros(40, 6), torch.zeros(40, 6)
    for step in range(6):
        grads = {n: (None if (step, n) in {(1, "lam"), (4, "Q2")} else
                     torch.randn(*s, generator=gen) * 10.0 ** -step) for n, s in shapes.items()}
        many.update_many([(n, weights[n], grads[n]) for n in shapes])
        for n in shapes:
            one.update(n, weights[n], grads[n])
        # the formula: Ī ← β1·Ī + (1−β1)·|w·g|, Ū ← β2·Ū + (1−β2)·|I − Ī|
        i_ref, u_ref = ema_update(i_ref, u_ref, sensitivity(weights["P"], grads["P"]), 0.8, 0.7)
    for n in shapes:
        assert torch.equal(many.i_bar[n], one.i_bar[n])
        assert torch.equal(many.u_bar[n], one.u_bar[n])
        assert many.n_updates[n] == one.n_updates[n] == 6
    torch.testing.assert_close(many.i_bar["P"], i_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(many.u_bar["P"], u_ref, rtol=1e-5, atol=0)
    before = {n: (many.i_bar[n].clone(), many.u_bar[n].clone()) for n in shapes}
    with pytest.raises(ValueError, match="grad"):
        many.update_many([("P", weights["P"], torch.ones(40, 6)),
                          ("Q", weights["Q"], torch.ones(3))])
    with pytest.raises(ValueError, match="twice"):
        many.update_many([("P", weights["P"], None), ("P", weights["P"], None)])
    for n in shapes:
        assert torch.equal(many.i_bar[n], before[n][0]) and torch.equal(many.u_bar[n], before[n][1])
        assert many.n_updates[n] == 6
