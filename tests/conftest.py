"""Shared pytest configuration."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test models and tensors are tiny: one intra-op thread is as fast as two and immune to
    oversubscription when other processes share the cores (the notebooks' default too)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
