"""Tests of lora_edu.memory: the paper's GPT-3 figures exactly, and the byte measurements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_edu.lora import apply_lora
from lora_edu.memory import (
    GPT3_175B,
    PAPER,
    MemoryBreakdown,
    TransformerShape,
    adapter_checkpoint_bytes,
    full_checkpoint_bytes,
    implied_bytes_per_param,
    lora_matrix_params,
    lora_trainable_params,
    measure_activation_bytes,
    measure_state_bytes,
    memory_saving,
    reduction_factor,
    throughput_gain,
    time_per_token_saving,
    training_memory,
)
from lora_edu.toy import TinyTransformer


def test_gpt3_trainable_parameter_counts():
    # by hand: GPT-3 175B has 96 blocks of width 12,288; LoRA on W_q and W_v (two 12288×12288
    # matrices per block) trains r·(d + k) = r·24,576 parameters per matrix
    d, n_blocks = 12_288, 96
    for r in (1, 4, 8):
        assert lora_trainable_params(GPT3_175B, r=r) == n_blocks * 2 * r * (d + d)
    assert lora_trainable_params(GPT3_175B, r=64, matrices_per_layer=4) == n_blocks * 4 * 64 * 2 * d
    assert 2 * 96 * lora_matrix_params(12_288, 12_288, 4) == n_blocks * 2 * 4 * (d + d)


def test_reduction_factor_is_9285_not_10000():
    f = reduction_factor(GPT3_175B.n_params, lora_trainable_params(GPT3_175B, r=4))
    assert round(f) == 9_285
    assert f < PAPER["document_checkpoint_factor"]


@pytest.mark.parametrize("r, denominator", [(8, 4_643), (16, 2_321), (64, 580)])
def test_fractions_of_full_fine_tuning(r, denominator):
    frac = lora_trainable_params(GPT3_175B, r=r) / GPT3_175B.n_params
    assert round(1 / frac) == denominator


def test_checkpoint_sizes():
    lora = adapter_checkpoint_bytes(lora_trainable_params(GPT3_175B, r=4))
    assert lora == 2 * 96 * 2 * 4 * (12_288 + 12_288)  # 16-bit: 37.7 MB, the paper's "35 MB"
    full = full_checkpoint_bytes(GPT3_175B)
    assert full == 2 * GPT3_175B.n_params == 350_511_600_000  # 16-bit: the paper's "350 GB"
    assert round(full / lora) == 9_285


def test_paper_memory_and_speed_figures():
    saving = memory_saving(PAPER["vram_full"], PAPER["vram_lora"])
    assert round(saving, 3) == 0.708
    assert saving > 2 / 3
    assert round(throughput_gain(32.5, 43.1), 3) == 0.326
    assert round(time_per_token_saving(32.5, 43.1), 3) == 0.246
    assert round(implied_bytes_per_param(1.2e12, GPT3_175B.n_params), 2) == 6.85


def test_training_memory_model():
    full = training_memory(1000, 1000)
    assert (full.weights, full.gradients, full.optimizer, full.total) == (2000, 2000, 8000, 12000)
    lora = training_memory(1010, 10, activation_bytes=5)
    assert lora.total == 2020 + 20 + 80 + 5
    # GPT-3 under fp16 weights/grads + fp32 Adam moments: LoRA ≈ the fp16 weights alone
    n = GPT3_175B.n_params
    big = training_memory(n, n)
    small = training_memory(n + 18_874_368, 18_874_368)
    assert big.total == 12 * n
    assert small.total == pytest.approx(full_checkpoint_bytes(GPT3_175B), rel=1e-3)
    assert memory_saving(big.total, small.total) == pytest.approx(1 - 2 / 12, abs=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="r"):
        lora_trainable_params(GPT3_175B, r=0)
    with pytest.raises(TypeError, match="shape"):
        lora_trainable_params((12288, 96), r=4)
    with pytest.raises(ValueError, match="n_trainable"):
        training_memory(10, 11)
    with pytest.raises(ValueError, match="weight_bytes"):
        training_memory(10, 1, weight_bytes=-2)
    with pytest.raises(ValueError, match="full"):
        memory_saving(0, 1)
    with pytest.raises(ValueError, match="base"):
        throughput_gain(0, 1)
    with pytest.raises(TypeError, match="d"):
        lora_matrix_params(1.5, 3, 2)
    assert TransformerShape("x", 8, 2, 100).d_model == 8


def test_measure_state_bytes_full_vs_lora():
    torch.manual_seed(0)
    x = torch.randint(0, 48, (8, 12))
    y = torch.randint(0, 4, (8,))

    def one_step(model):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return measure_state_bytes(model, opt)

    full_model = TinyTransformer(seed=0)
    n = sum(p.numel() for p in full_model.parameters())
    full = one_step(full_model)
    n_params = len(list(full_model.parameters()))
    assert full.weights == 4 * n and full.gradients == 4 * n
    assert full.optimizer == 8 * n + 4 * n_params  # exp_avg, exp_avg_sq + a float32 step each

    lora_model = apply_lora(TinyTransformer(seed=0), ["q_proj", "v_proj"], r=4, alpha=8, seed=0)
    n_lora = 4 * 4 * 128
    lora = one_step(lora_model)
    assert lora.weights == 4 * (n + n_lora)
    assert lora.gradients == 4 * n_lora
    assert lora.optimizer == 8 * n_lora + 4 * 8


def test_measure_activation_bytes():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(32, 16)
    got = measure_activation_bytes(lin, lambda m: m(x).pow(2).sum())
    # linear saves its input (32×16 floats) for the weight gradient; pow saves its input (32×8)
    assert got == 4 * (32 * 16 + 32 * 8)
    lin.requires_grad_(False)
    assert measure_activation_bytes(lin, lambda m: m(x).pow(2).sum()) == 0  # nothing to train
    big = measure_activation_bytes(lin.requires_grad_(True), lambda m: m(torch.cat([x, x])).sum())
    assert big == 4 * 64 * 16


def test_numpy_scalars_accepted_and_ints_stay_exact():
    import numpy as np
    assert lora_matrix_params(np.int64(12_288), np.int32(12_288), np.int64(4)) == 98_304
    assert lora_trainable_params(GPT3_175B, r=np.int64(4)) == 18_874_368
    ck = adapter_checkpoint_bytes(np.int64(1000), np.int64(2))
    assert ck == 2000 and type(ck) is int          # exact bytes print as exact ints
    assert adapter_checkpoint_bytes(1000, np.float32(0.5)) == 500.0
    mem = training_memory(np.int64(10), np.int64(4))
    assert (mem.weights, mem.gradients, mem.optimizer) == (20, 8, 32)
    assert memory_saving(np.float64(4.0), 1) == 0.75
    shape = TransformerShape("x", np.int64(8), np.int32(2), np.int64(100))
    assert type(shape.d_model) is int and shape == TransformerShape("x", 8, 2, 100)


def test_paper_figures_are_read_only():
    with pytest.raises(TypeError):
        PAPER["vram_full"] = 1.0  # a caller cannot change what a later one reads
    assert PAPER["vram_full"] == 1.2e12


def test_each_argument_is_named():
    with pytest.raises(ValueError, match="new must be > 0"):
        throughput_gain(32.5, 0)
    with pytest.raises(ValueError, match="base must be > 0"):
        time_per_token_saving(-1.0, 43.1)
    with pytest.raises(TypeError, match="base must be a real number"):
        throughput_gain("32.5", 43.1)
    with pytest.raises(ValueError, match="lora must be >= 0"):
        memory_saving(1.0, -1.0)
    with pytest.raises(TypeError, match="n_trainable must be an int"):
        training_memory(10, 1.0)
    with pytest.raises(TypeError, match="optimizer must be an? Optimizer"):
        measure_state_bytes(nn.Linear(2, 2), optimizer="adam")
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        measure_activation_bytes(nn.Linear(2, 2), loss_fn=None)
    with pytest.raises(ValueError, match="d_model must be an int >= 1"):
        TransformerShape("x", 0, 2, 100)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        MemoryBreakdown(-1, 0, 0)
