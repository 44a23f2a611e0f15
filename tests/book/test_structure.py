"""Structural checks of the book: toc, stored executions, no re-defined library code."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import toc_files
from packaging.requirements import Requirement
from packaging.version import Version

import lora_edu

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"


def notebooks() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts)


def code_cells(nb: Path) -> list[dict]:
    cells = json.loads(nb.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def exported_names() -> set[str]:
    names: set[str] = set(lora_edu.__all__)
    for info in pkgutil.walk_packages(lora_edu.__path__, "lora_edu."):
        module = importlib.import_module(info.name)
        names.update(getattr(module, "__all__", []))
    return names


def test_every_module_declares_all():
    for info in pkgutil.walk_packages(lora_edu.__path__, "lora_edu."):
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"


def test_there_are_notebooks():
    assert (BOOK / "01_low_rank.ipynb") in notebooks()


def test_every_notebook_is_in_toc_and_every_toc_entry_exists():
    entries = toc_files()
    for entry in entries:
        matches = [p for p in (ROOT / f"{entry}.ipynb", ROOT / f"{entry}.md") if p.exists()]
        assert matches, f"_toc.yml entry {entry!r} has no .ipynb or .md file"
    listed = {ROOT / f"{e}.ipynb" for e in entries}
    for nb in notebooks():
        assert nb in listed, f"{nb.relative_to(ROOT)} is not listed in _toc.yml"


def test_chapter_file_names_follow_fixed_numbering():
    fixed = {"01": "low_rank", "02": "lora", "03": "where_and_rank", "04": "nf4",
             "05": "double_quant", "06": "qlora", "07": "adalora", "08": "comparison",
             "09": "real_model"}
    back_matter = {"claims.ipynb"}          # the claims ledger, after the chapters
    for nb in notebooks():
        if nb.name in back_matter:
            continue
        m = re.fullmatch(r"(\d\d)_(\w+)\.ipynb", nb.name)
        assert m, f"{nb.name} does not follow NN_name.ipynb"
        assert fixed.get(m.group(1)) == m.group(2), f"{nb.name}: chapter {m.group(1)} is fixed"


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_code_cells_executed_in_order(nb):
    counts = [c.get("execution_count") for c in code_cells(nb)]
    assert None not in counts, f"{nb.name}: a code cell has no stored execution"
    assert counts == list(range(1, len(counts) + 1)), f"{nb.name}: not run top to bottom once"


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_first_code_cell_seeds(nb):
    first = "".join(code_cells(nb)[0]["source"])
    assert "seed_everything(" in first, f"{nb.name}: first code cell must call seed_everything"


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_notebook_does_not_redefine_library_code(nb):
    exported = exported_names()
    for cell in code_cells(nb):
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assert node.name not in exported, (
                    f"{nb.name} defines {node.name!r}, which lora_edu exports: import it instead")


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_no_svg_outputs_and_imports_library(nb):
    cells = code_cells(nb)
    assert any("lora_edu" in "".join(c["source"]) for c in cells), f"{nb.name} never imports it"
    for cell in cells:
        for out in cell.get("outputs", []):
            assert "image/svg+xml" not in out.get("data", {}), f"{nb.name}: SVG output"


def test_config_is_jupyter_book_1_with_execution_off():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    for pattern in (".*", "_build", ".venv", "tests", "benchmarks"):
        assert pattern in config["exclude_patterns"]


def requirement_specifiers() -> dict:
    """Package name -> version specifier of every requirement in requirements.txt."""
    specs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            specs[req.name.lower()] = req.specifier
    return specs


def test_requirements_pin_torch_and_jupyter_book_1():
    specs = requirement_specifiers()
    # torch: one exact pin (a range would pull a CUDA build), and it is the torch installed here
    assert [(s.operator, s.version) for s in specs["torch"]] == [("==", "2.13.0")]
    assert specs["torch"].contains(Version(torch.__version__).public)
    # Jupyter Book 1.x: 2.x ignores _config.yml/_toc.yml; the installed one satisfies the range
    jb = specs["jupyter-book"]
    assert not jb.contains("2.0.0") and not jb.contains("2.0.0a1", prereleases=True)
    assert jb.contains(importlib.metadata.version("jupyter-book"))


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    test_cmd = [c.strip() for c in commands if "check.sh" in c]
    assert test_cmd == ["bash scripts/check.sh"], test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["bash scripts/check.sh"]


def test_bibliography_has_the_four_papers():
    bib = (BOOK / "references.bib").read_text()
    for needle in ("2106.09685", "2305.14314", "2303.10512", "houlsby2019parameter",
                   "eckart1936approximation"):
        assert needle in bib


def test_readme_python_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # the example writes adapter files into the current folder
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert examples, "the README has no python example"
    for code in examples:
        exec(compile(code, "README.md", "exec"), {})


# --- what a reader sees: short visible cells, plumbing folded, crisp figures -------------------

#: Tags that fold or hide a code cell's source on the page (MyST-NB / Jupyter Book).
FOLDED = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
MAX_VISIBLE_LINES = 15
MAX_VISIBLE_WIDTH = 88


def visible_code_cells(nb: Path) -> list[tuple[int, list[str]]]:
    """(index, source lines) of each code cell whose source the page shows unfolded."""
    cells = json.loads(nb.read_text())["cells"]
    return [(i, "".join(c["source"]).splitlines()) for i, c in enumerate(cells)
            if c["cell_type"] == "code" and "".join(c["source"]).strip()
            and not FOLDED & set(c.get("metadata", {}).get("tags", []))]


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_visible_code_cells_are_short_and_narrow(nb):
    """Code a reader sees is at most 15 lines of at most 88 characters (plumbing is folded)."""
    problems = []
    for i, lines in visible_code_cells(nb):
        if len(lines) > MAX_VISIBLE_LINES:
            problems.append(f"cell {i}: {len(lines)} lines")
        problems += [f"cell {i}: a line of {len(line)} characters: {line[:40]}…"
                     for line in lines if len(line) > MAX_VISIBLE_WIDTH]
    assert not problems, f"{nb.name}: " + "; ".join(problems)


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.name)
def test_figures_are_stored_at_twice_their_drawn_size_and_phone_sized(nb):
    """Every stored figure is a PNG of 2 pixels per CSS pixel (sharp on a phone's and a
    high-density screen) and at most 6.4 in at 100 dpi wide, so its text stays legible when a
    phone shrinks it to its column."""
    import base64
    import struct

    from lora_edu.report import PHONE_READABLE_WIDTH_IN

    problems = []
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png is None:
                continue
            raw = base64.b64decode(png)
            width_px = struct.unpack(">I", raw[16:20])[0]          # the PNG's IHDR width
            shown = out.get("metadata", {}).get("image/png", {}).get("width")
            if shown is None or width_px < 2 * shown - 1:
                problems.append(f"cell {i}: {width_px} px drawn at {shown} px")
            elif shown > PHONE_READABLE_WIDTH_IN * 100 + 40:          # + tight-bbox margins
                problems.append(f"cell {i}: {shown} px wide")
    assert not problems, f"{nb.name}: " + "; ".join(problems)


def test_no_helper_function_is_defined_in_two_notebooks():
    """A helper two chapters need belongs in the library (one definition, tested)."""
    seen: dict[str, str] = {}
    duplicated = []
    for nb in notebooks():
        for cell in code_cells(nb):
            source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                               if not line.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    body = node.body[1:] if ast.get_docstring(node) else node.body
                    key = ast.dump(ast.Module(body=body, type_ignores=[]))
                    if key in seen and seen[key] != nb.name:
                        duplicated.append(f"{node.name} in {seen[key]} and {nb.name}")
                    seen.setdefault(key, nb.name)
    assert not duplicated, "; ".join(duplicated)
