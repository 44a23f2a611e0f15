"""The pinned test-only peers cannot silently disappear, and the library installs and runs as the
README says in a fresh virtual environment."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import REQUIRE_ENV, ROOT, require


def test_require_skips_outside_the_check_script_and_fails_under_it(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        require("lora_edu_no_such_module")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="pinned test requirement"):
        require("lora_edu_no_such_module")
    assert require("json").dumps([1]) == "[1]"


def test_no_test_skips_a_missing_peer_on_its_own():
    """``pytest.importorskip`` would skip a comparison with PEFT or bitsandbytes even in CI; every
    test imports its peers through ``helpers.require`` instead."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "importorskip"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def readme_example() -> str:
    """The Python block of the README's section "Using `lora_edu` in your own code"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using `lora_edu` in your own code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section must hold exactly one python example"
    return blocks[0]


def pinned(name: str) -> str:
    """The requirement line of ``name`` in requirements.txt (e.g. ``torch==2.13.0``)."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if re.match(rf"{name}\s*[=<>!~]", line):
            return line.split("#")[0].strip()
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_readme_example(tmp_path):
    """Build the wheel, install it into an empty virtual environment (torch first, the pinned
    build, as the README says; everything else only from the wheel's declared dependencies), and
    run the README's example there. It fails if the library imports a package it does not
    declare (it did: ``export_peft`` needs safetensors), or if the example is out of date."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("lora_edu-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", pinned("torch"),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    for peer in ("peft", "bitsandbytes", "transformers", "matplotlib"):
        assert f"\n{peer}==" not in "\n" + listed, f"{peer} was installed by the wheel"
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text(readme_example())
    run = subprocess.run([str(python), str(script)], cwd=work, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "adapter.pt").is_file()
    assert (work / "adapter_peft" / "adapter_model.safetensors").is_file()
    # the library came from the wheel, not from this checkout
    where = subprocess.run([str(python), "-c", "import lora_edu; print(lora_edu.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where and str(ROOT) not in where
    assert Path(where.strip()).parent.joinpath("lora", "__init__.py").is_file()
