"""The student assignments: ``assignments/NN_topic.ipynb`` are generated from the teacher's
``assignments/solutions/`` by ``scripts/make_assignments.py`` and never drift from them; every
solution notebook runs and passes its checkers; every student notebook runs and fails exactly in
the checker cells of the functions the student must write.

Notebooks are run by executing their code cells with ``exec`` in one namespace per notebook
(no kernel: fast, and the cells use no IPython syntax, which :func:`test_cells_are_plain_python`
checks). Nothing here skips: a missing notebook or folder fails.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from lora_edu.grading import HINT_NOT_IMPLEMENTED, Report

ASSIGNMENTS = ROOT / "assignments"
SOLUTIONS = ASSIGNMENTS / "solutions"
SCRIPT = ROOT / "scripts" / "make_assignments.py"
#: The assignments the issue asks for, by chapter, and the checkers each must call.
EXPECTED = {
    "01_low_rank": {"check_rank_r_truncation"},
    "02_lora": {"check_lora_init", "check_lora_forward", "check_lora_merge"},
    "04_nf4": {"check_nf4_code", "check_blockwise_quantize"},
    "05_double_quant": {"check_dq_overhead"},
    "07_adalora": {"check_importance_ema", "check_triplet_score", "check_budget_schedule"},
}
#: How many functions the student writes in each notebook.
FUNCTIONS = {"01_low_rank": 1, "02_lora": 3, "04_nf4": 3, "05_double_quant": 1, "07_adalora": 3}
ALLOWED_IMPORTS = {"torch", "numpy", "math", "fractions", "lora_edu.grading"}
CHAPTER_TITLES = {
    "01": "Low-rank approximation",
    "02": "LoRA: a frozen main path and a low-rank bypass",
    "04": "NF4: the 4-bit NormalFloat",
    "05": "Double quantization: from 0.5 to 0.127 bit per parameter",
    "07": "AdaLoRA: spending the rank where it matters",
}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_assignments", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _run(path: Path) -> list[tuple[int, str, BaseException | None, object]]:
    """Execute the code cells of a notebook in one namespace: (cell index, source, exception or
    None, the ``report`` variable after the cell)."""
    namespace: dict = {"__name__": "__main__"}
    results = []
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        error = None
        try:
            exec(compile(source, f"{path.name}[{i}]", "exec"), namespace)
        except Exception as err:  # recorded, and asserted on by the tests
            error = err
        results.append((i, source, error, namespace.get("report")))
    return results


def test_the_expected_notebooks_exist():
    assert SOLUTIONS.is_dir(), "assignments/solutions/ is missing"
    assert sorted(p.stem for p in SOLUTIONS.glob("*.ipynb")) == sorted(EXPECTED)
    assert sorted(p.stem for p in ASSIGNMENTS.glob("*.ipynb")) == sorted(EXPECTED)
    assert SCRIPT.is_file()


# --------------------------------------------------------------------------- (a) no drift

def test_make_assignments_check_passes():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_check_mode_detects_drift_and_missing_notebooks(tmp_path):
    copy = tmp_path / "assignments"
    shutil.copytree(ASSIGNMENTS, copy, ignore=shutil.ignore_patterns(".*"))
    run = [sys.executable, str(SCRIPT), "--check", "--dir", str(copy)]
    assert subprocess.run(run, capture_output=True).returncode == 0

    student = copy / "02_lora.ipynb"
    student.write_text(student.read_text().replace("raise NotImplementedError",
                                                   "return None", 1))
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 1 and "02_lora.ipynb: differs" in done.stderr

    (copy / "05_double_quant.ipynb").unlink()
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 1 and "05_double_quant.ipynb: missing" in done.stderr

    # writing mode repairs both, and is deterministic
    subprocess.run(run[:2] + ["--dir", str(copy)], check=True, capture_output=True)
    assert subprocess.run(run, capture_output=True).returncode == 0
    for path in ASSIGNMENTS.glob("*.ipynb"):
        assert (copy / path.name).read_bytes() == path.read_bytes()


def test_a_student_notebook_without_solution_is_drift(tmp_path):
    copy = tmp_path / "assignments"
    shutil.copytree(ASSIGNMENTS, copy, ignore=shutil.ignore_patterns(".*"))
    shutil.copy(copy / "01_low_rank.ipynb", copy / "99_orphan.ipynb")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--dir", str(copy)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "99_orphan.ipynb: no solutions/" in done.stderr


def test_strip_solutions_keeps_the_def_and_docstring():
    script = _load_script()
    source = ('def f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n'
              '    # END SOLUTION')
    text, regions = script.strip_solutions(source)
    assert regions == 1
    assert text == ('def f(x):\n    """Doc."""\n    ' + script.TODO
                    + "\n    raise NotImplementedError")
    assert script.strip_solutions("x = 1\n") == ("x = 1\n", 0)
    for bad in ("# BEGIN SOLUTION\nx = 1\n", "x = 1\n# END SOLUTION\n",
                "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n"):
        with pytest.raises(script.MarkerError):
            script.strip_solutions(bad)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_student_notebook_is_the_stripped_solution(name):
    solution = json.loads((SOLUTIONS / f"{name}.ipynb").read_text())
    text = (ASSIGNMENTS / f"{name}.ipynb").read_text()
    student = json.loads(text)
    assert text == json.dumps(student, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    assert len(student["cells"]) == len(solution["cells"])
    regions = 0
    for sol, stu in zip(solution["cells"], student["cells"], strict=True):
        assert sol["id"] == stu["id"] and sol["cell_type"] == stu["cell_type"]
        if sol["cell_type"] == "markdown":
            assert sol["source"] == stu["source"]
            continue
        assert stu["outputs"] == [] and stu["execution_count"] is None
        assert "execution" not in stu.get("metadata", {})
        src, out = _source(sol), _source(stu)
        assert "SOLUTION" not in out
        if "# BEGIN SOLUTION" not in src:
            assert src == out
            continue
        regions += src.count("# BEGIN SOLUTION")
        head = src.split("# BEGIN SOLUTION")[0]
        assert out.startswith(head.rstrip(" "))          # def line and docstring kept
        assert out.rstrip().endswith("raise NotImplementedError")
        assert out.count("# TODO:") == src.count("# BEGIN SOLUTION")
    assert regions == FUNCTIONS[name]


# --------------------------------------------------------------------------- content rules

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_solution_notebook_structure(name):
    cells = _cells(SOLUTIONS / f"{name}.ipynb")
    intro = _source(cells[0])
    number = name[:2]
    assert cells[0]["cell_type"] == "markdown" and intro.startswith("# Assignment ")
    assert f"chapter {int(number)} of the book" in intro
    assert CHAPTER_TITLES[number] in " ".join(intro.split()), "the chapter is named by title"
    assert re.search(r"Estimated time: \d+ minutes", intro)
    code = [(i, _source(c)) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    called = set()
    for position, (i, src) in enumerate(code):
        if "# BEGIN SOLUTION" in src:
            assert src.lstrip().startswith("def "), f"cell {i}: a solution sits in a function"
            tree = ast.parse(src)
            assert ast.get_docstring(tree.body[0]), f"cell {i}: the function has a docstring"
        match = re.fullmatch(r"report = (check_\w+)\((.+)\)\nreport", src)
        if match:
            called.add(match[1])
            assert code[position + 1][1] == "report.raise_if_failed()", (
                f"cell {i}: the checker cell is followed by report.raise_if_failed()")
            assert "# BEGIN SOLUTION" in code[position - 1][1]
    assert called == EXPECTED[name]


@pytest.mark.parametrize("folder", [ASSIGNMENTS, SOLUTIONS], ids=["student", "solution"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cells_are_plain_python_importing_only_allowed_modules(folder, name):
    path = folder / f"{name}.ipynb"
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(_source(cell))  # no magics or shell escapes
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module in ALLOWED_IMPORTS or module.split(".")[0] in {"torch", "numpy"}, (
                    f"{path.name} imports {module}")


def test_readme_lists_every_assignment():
    text = (ASSIGNMENTS / "README.md").read_text()
    for name in EXPECTED:
        assert f"{name}.ipynb" in text
    assert "solutions/" in text and "make_assignments.py" in text


# --------------------------------------------------------------------------- (b) solutions

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_solution_notebook_runs_and_every_checker_passes(name):
    path = SOLUTIONS / f"{name}.ipynb"
    results = _run(path)
    errors = [(i, repr(err)) for i, _, err, _ in results if err is not None]
    assert not errors, errors
    reports = [(i, report) for i, src, _, report in results if src.startswith("report = check_")]
    assert len(reports) == len(EXPECTED[name])
    for i, report in reports:
        assert isinstance(report, Report) and report.passed, f"cell {i}:\n{report}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_solution_notebook_stores_its_executed_outputs(name):
    cells = [c for c in _cells(SOLUTIONS / f"{name}.ipynb") if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        src = _source(cell)
        if src.startswith("report = check_"):
            (output,) = cell["outputs"]
            assert "".join(output["data"]["text/plain"]).startswith("✓ check_")
            assert "text/markdown" in output["data"]
        assert not any(o["output_type"] == "error" for o in cell["outputs"])


# --------------------------------------------------------------------------- (c) students

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_student_notebook_fails_exactly_in_the_checker_cells(name):
    path = ASSIGNMENTS / f"{name}.ipynb"
    results = _run(path)
    expected_failing = [i for i, src, _, _ in results if src == "report.raise_if_failed()"]
    failing = [i for i, _, err, _ in results if err is not None]
    assert failing == expected_failing
    assert len(expected_failing) == len(EXPECTED[name])
    for i, src, err, report in results:
        if src.startswith("report = check_"):
            assert report.hints == [HINT_NOT_IMPLEMENTED], f"cell {i}:\n{report}"
        if err is not None:
            assert isinstance(err, AssertionError | NotImplementedError)
            assert "not written yet" in str(err)
