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


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """The library's wheel, built once per test session from this checkout (no build isolation:
    setuptools comes from requirements.txt)."""
    import subprocess
    import sys

    from helpers import ROOT

    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("lora_edu-*.whl")
    return wheel
