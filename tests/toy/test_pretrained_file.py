"""The shipped pre-trained toy weights: they are what the training produces, they load without
training, and retraining stays available."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import lora_edu.toy.training as training
from lora_edu.toy import (
    SHIPPED_PRETRAINED_SEEDS,
    ToyConfig,
    clear_pretrained_cache,
    default_pretraining,
    downstream_task,
    evaluate,
    pretrained_file,
    pretrained_toy_model,
    shipped_pretrained_state,
)


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def made_with() -> dict:
    with np.load(pretrained_file(), allow_pickle=False) as data:
        return json.loads(str(data["made_with/settings"]))


@pytest.mark.parametrize("seed", [0, 4])
def test_shipped_weights_are_what_the_training_produces(seed):
    """A fresh one-thread training against the file: bit for bit where the CPU kernels and torch
    are those the file was made with; elsewhere round-off grows over 200 AdamW steps (about 1.5 %
    of a tensor's largest value between this CPU's AVX-512 and the portable kernels, measured),
    so there the weights must agree to 5 % and the predictions on the pre-training test set on
    98 % of its sequences."""
    shipped = shipped_pretrained_state(seed)
    assert shipped is not None
    with one_thread():
        model, task = pretrained_toy_model(seed, retrain=True)
    fresh = model.state_dict()
    assert shipped.keys() == fresh.keys()
    origin = made_with()
    if (origin["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
            and origin["torch"] == torch.__version__):
        assert all(torch.equal(shipped[k], fresh[k]) for k in fresh)
    for k in fresh:
        assert (shipped[k] - fresh[k]).abs().max() <= 0.05 * fresh[k].abs().max(), k
    loaded, _ = pretrained_toy_model(seed)
    with torch.no_grad():
        loaded.eval()
        model.eval()
        agree = (loaded(task.x_test).argmax(-1) == model(task.x_test).argmax(-1)).float().mean()
    assert agree >= 0.98


def test_every_shipped_seed_loads_without_training(monkeypatch):
    clear_pretrained_cache()

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained_toy_model trained instead of loading the shipped weights")

    monkeypatch.setattr(training, "train", no_training)
    down = downstream_task(n_train=1, n_test=512)
    try:
        for seed in SHIPPED_PRETRAINED_SEEDS:
            model, task = pretrained_toy_model(seed)
            assert evaluate(model, task) > 0.95          # it learnt its own task
            assert evaluate(model, down) < 0.4           # and not the downstream one (chance 0.25)
            assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        clear_pretrained_cache()


def test_the_file_records_its_settings():
    assert set(SHIPPED_PRETRAINED_SEEDS) == {0, 1, 2, 3, 4}
    with np.load(pretrained_file(), allow_pickle=False) as data:
        for seed in SHIPPED_PRETRAINED_SEEDS:
            settings = json.loads(str(data[f"seed{seed}/settings"]))
            assert settings == default_pretraining(seed)
            assert settings["config"] == ToyConfig(vocab_size=settings["config"]["vocab_size"]
                                                   ).to_dict()
            assert data[f"seed{seed}/head.weight"].dtype == np.float32
    assert made_with()["threads"] == 1
    # the defaults of pretrained_toy_model are the settings the file is used for
    assert default_pretraining(3) == dict(seed=3, config=ToyConfig(vocab_size=48).to_dict(),
                                          steps=200, lr=3e-3, batch_size=64)


def test_other_settings_are_trained_and_retrain_bypasses_the_cache(monkeypatch):
    clear_pretrained_cache()
    calls = []
    real_train = training.train

    def counting(*args, **kwargs):
        calls.append(kwargs.get("steps"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting)
    try:
        assert shipped_pretrained_state(7) is None           # not shipped: trained
        pretrained_toy_model(seed=7, steps=2, batch_size=16)
        pretrained_toy_model(seed=0, steps=3, batch_size=16)  # a shipped seed, other settings
        assert calls == [2, 3]
        pretrained_toy_model(seed=0, steps=3, batch_size=16, retrain=True)
        assert calls == [2, 3, 3]
        assert clear_pretrained_cache() == 2                   # retrain= left the cache alone
    finally:
        clear_pretrained_cache()


def test_shipped_state_is_a_fresh_copy():
    a, b = shipped_pretrained_state(1), shipped_pretrained_state(1)
    a["head.weight"].zero_()
    assert b["head.weight"].abs().sum() > 0
    assert shipped_pretrained_state(1)["head.weight"].abs().sum() > 0


def test_bad_input():
    with pytest.raises(TypeError, match="retrain"):
        pretrained_toy_model(0, retrain="yes")
    with pytest.raises(ValueError, match="seed"):
        shipped_pretrained_state(-1)
    with pytest.raises(TypeError, match="seed"):
        default_pretraining(1.5)
