"""lora_edu.parallel.parallel_map: the same results, in order, as a plain loop."""

from __future__ import annotations

import os

import pytest
import torch

from lora_edu.parallel import can_fork, parallel_map


def short_training(seed: int) -> list[float]:
    """A seeded AdamW run on a tiny regression; its losses, bit for bit reproducible."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 5, generator=gen), torch.randn(32, 1, generator=gen)
    model = torch.nn.Linear(5, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 5, generator=gen))
        model.bias.zero_()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def worker_pid(_job: int) -> int:
    return os.getpid()


def test_results_equal_a_plain_loop_in_order():
    seeds = [3, 0, 2, 1, 4]
    assert parallel_map(short_training, seeds) == [short_training(s) for s in seeds]
    assert parallel_map(short_training, seeds, processes=1) == [short_training(s) for s in seeds]


@pytest.mark.skipif(not can_fork(), reason="this platform does not fork")
def test_jobs_run_in_other_processes():
    pids = set(parallel_map(worker_pid, range(6)))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert parallel_map(worker_pid, [0], processes=2) == [os.getpid()]   # one job: no pool


def test_empty_jobs_and_bad_arguments():
    assert parallel_map(short_training, []) == []
    with pytest.raises(TypeError):
        parallel_map(3, [1])
    with pytest.raises(TypeError):
        parallel_map(short_training, [1], processes=2.0)
    with pytest.raises(ValueError):
        parallel_map(short_training, [1], processes=0)
