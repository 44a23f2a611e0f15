"""The pinned test-only peers cannot silently disappear, and the library installs and runs as the
README says in a fresh virtual environment."""

from __future__ import annotations

import ast
import re
import subprocess
import venv
import zipfile
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


def link_installed_torch(target: Path) -> list[str]:
    """Symlink the installed torch distribution and the closure of its requirements (package
    folders and ``.dist-info`` metadata) into ``target``; return the distributions linked.

    The fresh environment then sees this torch build as installed (pip reads the metadata), the
    way a reader who installed the CPU torch first has it, without copying a 700 MB wheel."""
    import importlib.metadata as md

    seen: list[str] = []
    todo = ["torch"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.append(key)
        dist = md.distribution(name)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9_.\-]+", req).group(0))
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
            src = Path(str(dist.locate_file(top)))
            if top in ("..", "__pycache__") or top.endswith(".pth") or not src.exists():
                continue
            if not (target / top).exists():
                (target / top).symlink_to(src)
    return seen


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_readme_example(tmp_path, built_wheel):
    """Build the wheel, install it into an empty virtual environment that has only torch (this
    environment's pinned build, linked in: the README installs torch first), so that every other
    package comes from the wheel's declared dependencies, and run the README's example there. It
    fails if the library imports a package it does not declare (it did: ``export_peft`` needs
    safetensors), or if the example is out of date."""
    wheel = built_wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(python), "-c", purelib], capture_output=True, text=True,
                          check=True).stdout.strip()
    linked = tmp_path / "torch_only"
    linked.mkdir()
    assert "torch" in link_installed_torch(linked)
    Path(site, "installed_torch.pth").write_text(f"{linked}\n")
    # --no-compile: the example imports a small part of scipy; compiling all of it costs ~20 s
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-compile",
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    for peer in ("peft", "bitsandbytes", "transformers", "matplotlib"):
        assert f"\n{peer}==" not in "\n" + listed, f"{peer} was installed by the wheel"
    for needed in ("numpy", "scipy", "safetensors", "tokenizers"):   # from the wheel's metadata
        assert f"\n{needed}==" in "\n" + listed, f"{needed} was not installed by the wheel"
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


# The wheel is built once per session (tests/conftest.py); its two tests sit in this one file so
# that the checks' parallel run (pytest-xdist, --dist loadfile) builds it in one worker only.
def test_the_wheel_carries_the_data(built_wheel):
    with zipfile.ZipFile(built_wheel) as zf:
        names = set(zf.namelist())
        for path in ("wordnet_supersenses.tsv", "LICENSE-WordNet-3.0.txt", "README.md",
                     "toy_pretrained.npz"):
            member = f"lora_edu/data/{path}"
            assert member in names
            assert zf.read(member) == (ROOT / "lora_edu" / "data" / path).read_bytes()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert re.search(r"^Requires-Dist: tokenizers", zf.read(metadata).decode(), re.M)
