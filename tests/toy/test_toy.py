"""Tests of the toy transformer, the synthetic tasks and the training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_edu.inject import inject_adapters
from lora_edu.toy import (
    CLS,
    Task,
    TinyTransformer,
    ToyConfig,
    batch_order,
    downstream_task,
    evaluate,
    key_token,
    make_field_task,
    pretrain_task,
    pretrained_toy_model,
    train,
    vocab_size_for,
)


def test_model_shapes_and_names():
    cfg = ToyConfig(vocab_size=20, d_model=32, n_heads=4, n_layers=3, d_ff=64, max_len=12,
                    n_classes=5)
    model = TinyTransformer(cfg, seed=0)
    x = torch.randint(0, 20, (7, 12))
    assert model(x).shape == (7, 5)
    assert len(model.blocks) == 3
    for block in model.blocks:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert type(getattr(block.attn, name)) is nn.Linear
        assert block.mlp.fc1.weight.shape == (64, 32)
        assert block.mlp.fc2.weight.shape == (32, 64)


def test_model_seed_is_deterministic_and_leaves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = TinyTransformer(seed=5)
    assert torch.equal(torch.rand(3), expected)  # global generator untouched
    b = TinyTransformer(seed=5)
    c = TinyTransformer(seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_model_attends_beyond_position_zero():
    model = TinyTransformer(seed=0)
    x = torch.zeros(1, 8, dtype=torch.long)
    y = x.clone()
    y[0, 5] = 7
    assert not torch.allclose(model(x), model(y))


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="d_model"):
        ToyConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_classes"):
        ToyConfig(n_classes=1)
    with pytest.raises(ValueError, match="dropout"):
        ToyConfig(dropout=1.0)
    with pytest.raises(TypeError, match="config"):
        TinyTransformer({"d_model": 8})
    model = TinyTransformer(seed=0)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 4))


def test_task_layout():
    task = make_field_task(1, n_train=300, n_test=100, seq_len=10, seed=3)
    assert task.x_train.shape == (300, 10) and task.x_test.shape == (100, 10)
    assert task.n_classes == 4 and task.seq_len == 10
    x = torch.cat([task.x_train, task.x_test])
    y = torch.cat([task.y_train, task.y_test])
    assert (x[:, 0] == CLS).all() and (x[:, 1:] != CLS).all()
    assert int(x.max()) < vocab_size_for()
    for row, label in zip(x, y, strict=True):
        keys0 = [t for t in row.tolist() if 1 <= t < 9]
        keys1 = [t for t in row.tolist() if 9 <= t < 17]
        assert len(keys0) == 1 and len(keys1) == 1
        assert keys1[0] in (key_token(1, int(label), 0), key_token(1, int(label), 1))
    # determinism and seed dependence
    again = make_field_task(1, n_train=300, n_test=100, seq_len=10, seed=3)
    assert torch.equal(again.x_train, task.x_train)
    other = make_field_task(1, n_train=300, n_test=100, seq_len=10, seed=4)
    assert not torch.equal(other.x_train, task.x_train)
    # labels roughly balanced, and the two fields' classes independent
    counts = torch.bincount(y, minlength=4).float() / y.numel()
    assert (counts - 0.25).abs().max() < 0.08


def test_task_bad_arguments():
    with pytest.raises(ValueError, match="field"):
        make_field_task(2)
    with pytest.raises(ValueError, match="seq_len"):
        make_field_task(0, seq_len=2)
    with pytest.raises(TypeError, match="seed"):
        make_field_task(0, seed=0.5)
    with pytest.raises(ValueError, match="y_train"):
        Task(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 5]),
             torch.zeros(1, 3, dtype=torch.long), torch.tensor([0]), 4, "bad")


def test_batch_order_is_seeded_permutation():
    order = batch_order(10, steps=4, batch_size=5, seed=1)
    assert order.shape == (4, 5)
    assert sorted(order[:2].flatten().tolist()) == list(range(10))
    assert torch.equal(order, batch_order(10, 4, 5, seed=1))
    assert not torch.equal(order, batch_order(10, 4, 5, seed=2))


def test_train_is_deterministic_and_calls_hooks():
    task = make_field_task(0, n_train=256, n_test=128, seed=0)
    calls = []

    def after(step, model):
        assert model.head.weight.grad is not None
        calls.append(step)

    def run():
        model = TinyTransformer(seed=0)
        hist = train(model, task, steps=6, lr=1e-3, batch_size=32, eval_every=3,
                     after_backward=after, extra_loss=lambda m: m.head.weight.pow(2).sum() * 0)
        return model, hist

    m1, h1 = run()
    assert calls == [1, 2, 3, 4, 5, 6]
    m2, h2 = run()
    assert h1.loss == h2.loss and len(h1.loss) == 6
    assert h1.eval_steps == [0, 3, 6] and h1.test_accuracy == h2.test_accuracy
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters(), strict=True))


def test_extra_loss_is_added():
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    h0 = train(TinyTransformer(seed=0), task, steps=1, lr=1e-3)
    h1 = train(TinyTransformer(seed=0), task, steps=1, lr=1e-3,
               extra_loss=lambda m: torch.tensor(2.5))
    assert h1.loss[0] == pytest.approx(h0.loss[0] + 2.5)


def test_train_only_given_params_change():
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    model = TinyTransformer(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, task, steps=3, lr=1e-2, params=model.head.parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("head."), n


def test_train_bad_arguments():
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    model = TinyTransformer(seed=0)
    with pytest.raises(ValueError, match="steps"):
        train(model, task, steps=-1, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        train(model, task, steps=1, lr=0.0)
    with pytest.raises(TypeError, match="task"):
        train(model, "task", steps=1, lr=1e-3)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="params"):
        train(model, task, steps=1, lr=1e-3)


def test_pretrained_model_solves_pretraining_not_downstream():
    model, task = pretrained_toy_model(seed=0)
    assert task.name.startswith("pretrain")
    assert evaluate(model, task) > 0.95
    down = downstream_task()
    assert evaluate(model, down) < 0.4  # labels independent of what it learnt: near chance 0.25
    again, _ = pretrained_toy_model(seed=0)
    assert again is not model
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(),
                                                 strict=True))


def test_downstream_needs_more_than_a_new_head():
    """Frozen body + fresh head stays near chance; a small trainable q,v bypass does not."""
    down = downstream_task(n_train=1024, n_test=512)
    frozen, _ = pretrained_toy_model(seed=0)
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.reset_head(seed=0)
    acc_frozen = train(frozen, down, steps=150, lr=1e-2).final_accuracy

    class Bypass(nn.Module):  # rank-2 update, B = 0 at init (LoRA itself is tested elsewhere)
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = nn.Parameter(torch.randn(2, base.in_features) / 8)
            self.b = nn.Parameter(torch.zeros(base.out_features, 2))

        def forward(self, x):
            return self.base(x) + (x @ self.a.T) @ self.b.T

    adapted, _ = pretrained_toy_model(seed=0)
    torch.manual_seed(0)
    inject_adapters(adapted, ["q_proj", "v_proj"], Bypass)
    adapted.reset_head(seed=0)
    acc_adapted = train(adapted, down, steps=150, lr=1e-2).final_accuracy
    assert acc_frozen < 0.35
    assert acc_adapted > acc_frozen + 0.3


def test_pretrain_task_is_field_zero():
    t = pretrain_task(n_train=50, n_test=10)
    keys = torch.where((t.x_train >= 1) & (t.x_train < 9), t.x_train, torch.zeros_like(t.x_train))
    assert torch.equal((keys.sum(1) - 1) % 4, t.y_train)


def test_seed_stats_against_numpy():
    import numpy as np

    from lora_edu.toy import SeedStats
    vals = (0.91, 0.95, 0.87, 0.99)
    st = SeedStats((0, 1, 2, 3), vals)
    assert st.n == 4
    assert abs(st.mean - np.mean(vals)) < 1e-15
    assert abs(st.std - np.std(vals, ddof=1)) < 1e-15
    assert (st.min, st.max) == (0.87, 0.99) and abs(st.spread - 0.12) < 1e-15
    assert st.fmt(2) == "0.93 ± 0.05 [0.87, 0.99]"
    assert SeedStats((5,), (0.5,)).std == 0.0
    with pytest.raises(ValueError, match="seeds"):
        SeedStats((0, 1), (0.5,))
    with pytest.raises(ValueError, match="values"):
        SeedStats((0,), (float("nan"),))
    with pytest.raises(ValueError, match="decimals"):
        st.fmt(-1)


def test_run_seeds_calls_each_seed_once_and_collects():
    from lora_edu.toy import SeedStats, run_seeds
    calls = []

    def fn(seed):
        calls.append(seed)
        return seed * 0.5

    st = run_seeds(fn, seeds=[3, 1, 2])
    assert calls == [3, 1, 2]
    assert isinstance(st, SeedStats) and st.seeds == (3, 1, 2) and st.values == (1.5, 0.5, 1.0)
    many = run_seeds(lambda s: {"acc": s / 10, "loss": 1.0 - s / 10}, seeds=range(3))
    assert set(many) == {"acc", "loss"} and many["loss"].values == (1.0, 0.9, 0.8)
    with pytest.raises(TypeError, match="fn"):
        run_seeds(3)
    with pytest.raises(ValueError, match="seeds"):
        run_seeds(fn, seeds=[])
    with pytest.raises(ValueError, match="seeds"):
        run_seeds(fn, seeds=[1, 1])
    with pytest.raises(TypeError, match="seeds"):
        run_seeds(fn, seeds=[1.0])
    with pytest.raises(ValueError, match="keys"):
        run_seeds(lambda s: {"a": 1.0} if s else {"b": 1.0}, seeds=[0, 1])


def test_run_seeds_of_a_real_training_is_deterministic():
    from lora_edu.toy import run_seeds

    def fn(seed):
        model = TinyTransformer(ToyConfig(vocab_size=vocab_size_for()), seed=seed)
        task = downstream_task()
        return train(model, task, steps=3, lr=1e-3, seed=seed, eval_every=0).final_accuracy

    a, b = run_seeds(fn, seeds=(0, 1)), run_seeds(fn, seeds=(0, 1))
    assert a == b


def test_compare_seeds_needs_separated_ranges():
    from lora_edu.toy import SeedStats, compare_seeds
    hi = SeedStats((0, 1, 2), (0.90, 0.92, 0.95))
    lo = SeedStats((0, 1, 2), (0.80, 0.85, 0.89))
    overlap = SeedStats((0, 1, 2), (0.70, 0.91, 0.99))
    assert compare_seeds(hi, lo) == 1 and compare_seeds(lo, hi) == -1
    assert compare_seeds(hi, overlap) == 0 and compare_seeds(overlap, lo) == 0
    assert compare_seeds(hi, lo, margin=0.02) == 0          # 0.90 - 0.89 < 0.02
    with pytest.raises(TypeError, match="a"):
        compare_seeds(0.9, lo)
    with pytest.raises(ValueError, match="margin"):
        compare_seeds(hi, lo, margin=-1)


# --- no hidden global state -------------------------------------------------------------------

def _global_state() -> dict:
    import random

    import numpy as np
    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
    }


def _assert_same_state(before: dict, after: dict) -> None:
    import numpy as np
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"])
    for key in ("python_rng", "threads", "interop", "deterministic", "warn_only", "grad",
                "dtype"):
        assert before[key] == after[key], key


@pytest.fixture
def no_accelerator_seeding(monkeypatch):
    """Record every call that would (lazily) reseed a CUDA/MPS/XPU generator: torch.manual_seed
    makes them, and fork_rng(devices=[]) does not undo them."""
    calls = []
    for module, name in ((torch.cuda, "manual_seed_all"), (torch.cuda, "manual_seed"),
                         (torch.mps, "manual_seed"), (torch.xpu, "manual_seed_all")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    yield calls
    assert calls == [], f"global accelerator generators were seeded: {calls}"


@pytest.mark.parametrize("start_mode", [True, False])
def test_train_leaves_global_state_and_model_mode_as_it_found_them(start_mode,
                                                                   no_accelerator_seeding):
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    model = TinyTransformer(ToyConfig(dropout=0.1), seed=0)
    model.train(start_mode)
    model.blocks[0].mlp.train(not start_mode)  # a mixed state must survive too
    modes = {name: m.training for name, m in model.named_modules()}
    torch.default_generator.manual_seed(1234)  # (torch.manual_seed would trip the fixture)
    before = _global_state()
    train(model, task, steps=3, lr=1e-3, batch_size=16, eval_every=2)
    _assert_same_state(before, _global_state())
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_train_restores_state_after_an_error(no_accelerator_seeding):
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    model = TinyTransformer(ToyConfig(dropout=0.1), seed=0).eval()
    before = _global_state()

    def boom(step, m):
        assert m.training and torch.is_grad_enabled()  # training mode and grads inside
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(model, task, steps=3, lr=1e-3, after_backward=boom)
    _assert_same_state(before, _global_state())
    assert not any(m.training for m in model.modules())


def test_train_under_no_grad_trains_and_leaves_grad_mode_off():
    task = make_field_task(0, n_train=64, n_test=32, seed=0)
    model = TinyTransformer(seed=0)
    w = model.head.weight.detach().clone()
    with torch.no_grad():
        train(model, task, steps=2, lr=1e-2)
        assert not torch.is_grad_enabled()
    assert not torch.equal(model.head.weight, w)


def test_dropout_is_seeded_by_train_seed():
    task = make_field_task(0, n_train=64, n_test=32, seed=0)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # the caller's generator must not matter
        return train(TinyTransformer(ToyConfig(dropout=0.2), seed=0), task, steps=3, lr=1e-3,
                     seed=seed, eval_every=0).loss

    assert run(0, 1) == run(0, 2)
    assert run(0, 1) != run(1, 1)


def test_evaluate_restores_mixed_modes_and_grad_mode():
    task = make_field_task(0, n_train=16, n_test=16, seed=0)
    model = TinyTransformer(seed=0)
    model.blocks[1].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    before = _global_state()
    evaluate(model, task, batch_size=5)
    _assert_same_state(before, _global_state())
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_seeded_model_and_head_touch_no_global_generator(no_accelerator_seeding):
    before = _global_state()
    model = TinyTransformer(seed=3)
    model.reset_head(n_classes=3, seed=4)
    _assert_same_state(before, _global_state())
    again = TinyTransformer(seed=3)
    again.reset_head(n_classes=3, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(),
                                                 strict=True))


def test_unseeded_model_draws_from_the_global_generator():
    torch.manual_seed(0)
    a, b = TinyTransformer(), TinyTransformer()
    assert not torch.equal(a.head.weight, b.head.weight)  # the generator advanced between them
    torch.manual_seed(0)
    assert torch.equal(TinyTransformer().head.weight, a.head.weight)


def test_pretrained_cache_returns_independent_copies_and_can_be_cleared(no_accelerator_seeding):
    from lora_edu.toy import clear_pretrained_cache
    kwargs = dict(seed=7, steps=2, batch_size=16)
    before = _global_state()
    model, task = pretrained_toy_model(**kwargs)
    _assert_same_state(before, _global_state())
    x0 = task.x_train.clone()
    task.x_train.zero_()                        # vandalise the returned copies ...
    with torch.no_grad():
        model.head.weight.zero_()
    model2, task2 = pretrained_toy_model(**kwargs)
    assert torch.equal(task2.x_train, x0)       # ... the cache is unaffected
    assert model2.head.weight.abs().sum() > 0
    assert clear_pretrained_cache() >= 1
    assert clear_pretrained_cache() == 0
    model3, _ = pretrained_toy_model(**kwargs)  # trained again: the same weights
    assert all(torch.equal(p, q) for p, q in zip(model2.parameters(), model3.parameters(),
                                                 strict=True))


def test_numpy_scalars_accepted_by_toy():
    import numpy as np
    cfg = ToyConfig(vocab_size=np.int64(48), d_model=np.int32(32), dropout=np.float32(0.0))
    assert type(cfg.vocab_size) is int and type(cfg.dropout) is float
    assert cfg == ToyConfig(vocab_size=48, d_model=32)
    task = make_field_task(np.int64(0), n_train=np.int64(64), n_test=32, seed=np.uint8(1))
    model = TinyTransformer(cfg, seed=np.int64(0))
    hist = train(model, task, steps=np.int64(2), lr=np.float64(1e-3), batch_size=np.int32(16),
                 seed=np.int64(1), eval_every=np.int64(1))
    assert hist.eval_steps == [0, 1, 2]
    assert evaluate(model, task, batch_size=np.int64(7)) == hist.final_accuracy
    assert key_token(np.int64(1), np.int64(2)) == key_token(1, 2)
    assert batch_order(np.int64(10), 2, 5).shape == (2, 5)


def test_task_validation():
    x, y = torch.zeros(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 3])
    assert Task(x, y, x, y, 4, "ok").seq_len == 3
    with pytest.raises(TypeError, match="y_train must hold integer class ids"):
        Task(x, y.float(), x, y, 4, "bad")
    with pytest.raises(ValueError, match="y_test must have one label per row of x_test"):
        Task(x, y, x, y[:3], 4, "bad")
    with pytest.raises(ValueError, match="x_test must have as many columns as x_train"):
        Task(x, y, x[:, :2], y, 4, "bad")
    with pytest.raises(ValueError, match="x_train must hold at least one example"):
        Task(x[:0], y[:0], x, y, 4, "bad")
    with pytest.raises(TypeError, match="name must be a str"):
        Task(x, y, x, y, 4, None)
