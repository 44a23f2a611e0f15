"""Tests of lora_edu.placement: the placements, equal budgets counted from the model's tensors,
deterministic fine-tuning runs, what a run returns, bad input."""


import numpy as np
import pytest
import torch
from helpers import assert_rejected

from lora_edu.lora import apply_lora
from lora_edu.lowrank import factorization_params, numerical_rank
from lora_edu.placement import (
    FULL_FINE_TUNING,
    PAPER_BUDGET,
    PAPER_TABLE5,
    PAPER_TABLE6,
    PLACEMENTS,
    adapter_parameter_count,
    budget_ranks,
    finetune,
    rank_for_budget,
)
from lora_edu.toy import TinyTransformer, ToyConfig, downstream_task, vocab_size_for

TOY = ToyConfig(vocab_size=vocab_size_for())
# a cheap set-up for the runs: 3 pre-training steps, a few fine-tuning steps
FAST = dict(steps=3, batch_size=16, pretrain_steps=3)


@pytest.fixture(scope="module")
def task():
    return downstream_task(n_train=96, n_test=32)


def test_the_seven_placements_of_table_5():
    assert list(PLACEMENTS) == ["W_q", "W_k", "W_v", "W_o", "W_q,W_k", "W_q,W_v",
                                "W_q,W_k,W_v,W_o"]
    assert PLACEMENTS["W_q,W_v"] == ("q_proj", "v_proj")
    assert set(PAPER_TABLE5["WikiSQL"]) == set(PLACEMENTS) == set(PAPER_TABLE5["MultiNLI"])
    assert set(PAPER_TABLE6["WikiSQL"]) == {"W_q", "W_q,W_v", "W_q,W_k,W_v,W_o"}
    with pytest.raises(TypeError):
        PLACEMENTS["W_q"] = ("k_proj",)        # read-only


def test_gpt3_budget_gives_the_paper_ranks_exactly():
    """18M on GPT-3 (d_model 12,288, 96 layers): 8/8/8/8/4/4/2, each exactly 18,874,368."""
    d, layers = PAPER_BUDGET["d_model"], PAPER_BUDGET["n_layers"]
    ranks = budget_ranks(18_874_368, d, d, layers)
    assert ranks == dict(PAPER_BUDGET["ranks"])
    for name, r in ranks.items():
        assert len(PLACEMENTS[name]) * layers * factorization_params(d, d, r) == 18_874_368


def test_rank_for_budget_rounds_down_and_checks_its_bounds():
    assert rank_for_budget(2048, 1, 64, 64, 2) == 8
    assert rank_for_budget(2047, 1, 64, 64, 2) == 7
    assert rank_for_budget(256, 1, 64, 64, 2) == 1
    assert rank_for_budget(64 * 256, 1, 64, 64, 2) == 64
    with pytest.raises(ValueError, match=r"budget must be >= 256"):
        rank_for_budget(255, 1, 64, 64, 2)
    with pytest.raises(ValueError, match=r"budget must be <= 16384"):
        rank_for_budget(65 * 256, 1, 64, 64, 2)


def lora_numbers(model):
    """LoRA numbers counted by parameter name, independently of adapter_parameter_count."""
    return sum(p.numel() for name, p in model.named_parameters()
               if name.endswith(("lora_A", "lora_B")))


def test_fixed_budget_configurations_have_equal_parameter_counts():
    """Counted from the model's tensors: every placement at its budget rank holds 2,048 LoRA
    numbers on the toy transformer (d = k = 64, 2 layers), and the trainable count agrees."""
    ranks = budget_ranks(2048, TOY.d_model, TOY.d_model, TOY.n_layers)
    assert [ranks[p] for p in PLACEMENTS] == [8, 8, 8, 8, 4, 4, 2]
    counts = {}
    for name, r in ranks.items():
        model = TinyTransformer(TOY, seed=0)
        apply_lora(model, PLACEMENTS[name], r=r, alpha=r, seed=0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts[name] = (lora_numbers(model), adapter_parameter_count(model), trainable)
    assert set(counts.values()) == {(2048, 2048, 2048)}, counts


def test_adapter_count_of_a_plain_model_is_zero():
    assert adapter_parameter_count(TinyTransformer(TOY, seed=0)) == 0


def test_finetune_is_deterministic(task):
    kwargs = dict(task=task, alpha=8.0, n_val=32, rslora=True, keep_weights=True, **FAST)
    one = finetune("W_q,W_v", 2, 5, **kwargs)
    two = finetune("W_q,W_v", 2, 5, **kwargs)
    assert (one.test_accuracy, one.val_accuracy) == (two.test_accuracy, two.val_accuracy)
    for name, arrays in one.layers.items():
        for key, value in arrays.items():
            assert np.array_equal(value, two.layers[name][key]), (name, key)
    other = finetune("W_q,W_v", 2, 6, **kwargs)
    assert not np.array_equal(other.layers["blocks.0.attn.q_proj"]["A"],
                              one.layers["blocks.0.attn.q_proj"]["A"])


def test_finetune_returns_what_the_model_held(task):
    res = finetune("W_q,W_v", 2, 0, task=task, alpha=4.0, keep_weights=True, **FAST)
    assert res.val_accuracy is None and 0.0 <= res.test_accuracy <= 1.0
    assert res.adapter_params == 2 * 2 * factorization_params(64, 64, 2)   # 2 layers, q and v
    assert res.trainable == res.adapter_params + 64 * 4 + 4                 # + the new head
    assert sorted(res.layers) == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj",
                                  "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]
    from lora_edu.toy import pretrained_toy_model
    base, _ = pretrained_toy_model(seed=0, steps=FAST["pretrain_steps"])
    for name, arrays in res.layers.items():
        assert arrays["A"].shape == (2, 64) and arrays["delta_w"].shape == (64, 64)
        assert numerical_rank(arrays["delta_w"]) <= 2
        assert np.array_equal(arrays["w0"], base.get_submodule(name).weight.detach().numpy())
    assert res.r == 2 and res.alpha == 4.0 and res.steps == FAST["steps"]


def test_validation_rows_are_held_back(task):
    """With n_val, the validation accuracy is measured on rows the run never trained on and the
    test accuracy on the task's own test split."""
    res = finetune("W_v", 8, 1, task=task, n_val=32, **FAST)
    assert res.val_accuracy is not None
    assert res.val_accuracy * 32 == round(res.val_accuracy * 32)      # a fraction of 32 rows
    assert res.test_accuracy * 32 == round(res.test_accuracy * 32)    # ... and of the 32 test rows
    with pytest.raises(ValueError, match="n_val must be < the number of training rows"):
        finetune("W_v", 8, 1, task=task, n_val=96, **FAST)


def test_full_fine_tuning_trains_every_weight(task):
    res = finetune(FULL_FINE_TUNING, None, 0, task=task, lr=1e-3, keep_weights=True, **FAST)
    total = sum(p.numel() for p in TinyTransformer(TOY, seed=0).parameters())
    assert res.trainable == total and res.layers == {} and res.r is None and res.alpha is None


def test_finetune_changes_no_global_setting(task):
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    finetune("W_q", 1, 3, task=task, **FAST)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)


# --- bad input ----------------------------------------------------------------------------------

TASK = downstream_task(n_train=64, n_test=16)

CASES = [
    ("budget 0", lambda: rank_for_budget(0, 1, 64, 64), ValueError, "budget"),
    ("budget a float", lambda: rank_for_budget(2048.0, 1, 64, 64), TypeError, "budget"),
    ("budget too small", lambda: rank_for_budget(100, 1, 64, 64), ValueError, "budget"),
    ("budget too large", lambda: rank_for_budget(10**6, 1, 64, 64), ValueError, "budget"),
    ("n_matrices 0", lambda: rank_for_budget(2048, 0, 64, 64), ValueError, "n_matrices"),
    ("d negative", lambda: budget_ranks(2048, -64, 64), ValueError, "d"),
    ("k a str", lambda: budget_ranks(2048, 64, "64"), TypeError, "k"),
    ("n_layers 0", lambda: budget_ranks(2048, 64, 64, 0), ValueError, "n_layers"),
    ("count model None", lambda: adapter_parameter_count(None), TypeError, "model"),
    ("placement unknown", lambda: finetune("W_q,W_o", 4, 0, task=TASK, **FAST), ValueError,
     "placement"),
    ("placement a tuple", lambda: finetune(("q_proj",), 4, 0, task=TASK, **FAST), TypeError,
     "placement"),
    ("r None for LoRA", lambda: finetune("W_q", None, 0, task=TASK, **FAST), TypeError, "r"),
    ("r 0", lambda: finetune("W_q", 0, 0, task=TASK, **FAST), ValueError, "r"),
    ("r > min(d, k)", lambda: finetune("W_q", 65, 0, task=TASK, **FAST), ValueError, "r"),
    ("r for full", lambda: finetune(FULL_FINE_TUNING, 4, 0, task=TASK, **FAST), ValueError,
     "r"),
    ("alpha for full", lambda: finetune(FULL_FINE_TUNING, None, 0, task=TASK, alpha=2.0,
                                        **FAST), ValueError, "alpha"),
    ("alpha 0", lambda: finetune("W_q", 4, 0, task=TASK, alpha=0.0, **FAST), ValueError,
     "alpha"),
    ("alpha a str", lambda: finetune("W_q", 4, 0, task=TASK, alpha="8", **FAST), TypeError,
     "alpha"),
    ("seed negative", lambda: finetune("W_q", 4, -1, task=TASK, **FAST), ValueError, "seed"),
    ("task an array", lambda: finetune("W_q", 4, 0, task=np.zeros(3), **FAST), TypeError,
     "task"),
    ("lr 0", lambda: finetune("W_q", 4, 0, task=TASK, lr=0.0, **FAST), ValueError, "lr"),
    ("steps 0", lambda: finetune("W_q", 4, 0, task=TASK, steps=0, batch_size=8,
                                 pretrain_steps=3), ValueError, "steps"),
    ("batch_size 0", lambda: finetune("W_q", 4, 0, task=TASK, steps=2, batch_size=0,
                                      pretrain_steps=3), ValueError, "batch_size"),
    ("n_val negative", lambda: finetune("W_q", 4, 0, task=TASK, n_val=-1, **FAST), ValueError,
     "n_val"),
    ("n_val too large", lambda: finetune("W_q", 4, 0, task=TASK, n_val=64, **FAST), ValueError,
     "n_val"),
    ("rslora an int", lambda: finetune("W_q", 4, 0, task=TASK, rslora=1, **FAST), TypeError,
     "rslora"),
    ("init unknown", lambda: finetune("W_q", 4, 0, task=TASK, init="zeros", **FAST), ValueError,
     "init"),
    ("pretrained_seed a float", lambda: finetune("W_q", 4, 0, task=TASK, pretrained_seed=0.0,
                                                 **FAST), TypeError, "pretrained_seed"),
    ("pretrain_steps negative", lambda: finetune("W_q", 4, 0, task=TASK, steps=2,
                                                 pretrain_steps=-1), ValueError,
     "pretrain_steps"),
    ("keep_weights a str", lambda: finetune("W_q", 4, 0, task=TASK, keep_weights="yes",
                                            **FAST), TypeError, "keep_weights"),
]


@pytest.mark.parametrize("call, exc, name", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_rejected_naming_the_argument(call, exc, name):
    assert_rejected(call, exc, name)
