"""Generate the student notebooks ``assignments/NN_topic.ipynb`` from the teacher's solutions
``assignments/solutions/NN_topic.ipynb``.

In every code cell each region between a line ``# BEGIN SOLUTION`` and a line ``# END SOLUTION``
(markers included) is replaced by ``# TODO: …`` and ``raise NotImplementedError`` at the marker's
indentation: the ``def`` line and the docstring above the marker stay. Outputs are cleared,
execution counts set to None and the execution timing dropped from the cell metadata; everything
else (Markdown, set-up and checker cells, cell ids, notebook metadata) is copied. The JSON is
written stably (sorted keys, ``indent=1``, ``ensure_ascii=False``, a trailing newline), so the
same solutions always give the same bytes.

Usage::

    .venv/bin/python scripts/make_assignments.py          # (re)write the student notebooks
    .venv/bin/python scripts/make_assignments.py --check  # exit 1 if they differ from that

``--check`` writes nothing; it lists every student notebook that is missing, differs from what
would be generated, or has no solution notebook, and exits 1 if there is any (so the student and
teacher versions never drift apart).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
TODO = "# TODO: your code here (see the docstring), then run the checker cells below."


class MarkerError(ValueError):
    """A ``# BEGIN SOLUTION`` without its ``# END SOLUTION`` (or the other way round)."""


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """``source`` with each marked solution region replaced by a TODO; also the region count."""
    out: list[str] = []
    regions = 0
    indent: str | None = None
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        text = line.rstrip("\r\n")
        begin, end = BEGIN.match(text), END.match(text)
        if indent is None:
            if end:
                raise MarkerError(f"{where}, line {number}: '# END SOLUTION' without a BEGIN")
            if begin:
                indent = begin["indent"]
                regions += 1
                continue
            out.append(line)
        elif begin:
            raise MarkerError(f"{where}, line {number}: nested '# BEGIN SOLUTION'")
        elif end:
            out += [f"{indent}{TODO}\n", f"{indent}raise NotImplementedError\n"]
            indent = None
    if indent is not None:
        raise MarkerError(f"{where}: '# BEGIN SOLUTION' without an END")
    text = "".join(out)
    return (text[:-1] if text.endswith("\n") and not source.endswith("\n") else text), regions


def student_notebook(solution: dict, name: str = "notebook") -> dict:
    """The student version of a solution notebook (a new dict; ``solution`` is not changed)."""
    nb = json.loads(json.dumps(solution))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        text, _ = strip_solutions(source, f"{name}, cell {i}")
        cell["source"] = text.splitlines(keepends=True)
        cell["outputs"] = []
        cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    return nb


def dumps(nb: dict) -> str:
    """The stable JSON text of a notebook."""
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def generate(assignments: Path) -> dict[Path, str]:
    """Student notebook path → its text, for every solution notebook."""
    solutions = sorted((assignments / "solutions").glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no solution notebooks in {assignments / 'solutions'}")
    return {assignments / path.name: dumps(student_notebook(json.loads(path.read_text()),
                                                            str(path.relative_to(assignments))))
            for path in solutions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a student notebook is not up to date")
    parser.add_argument("--dir", type=Path, default=ROOT / "assignments",
                        help="the assignments folder (default: assignments/ of this checkout)")
    args = parser.parse_args(argv)
    try:
        wanted = generate(args.dir)
    except (FileNotFoundError, MarkerError) as err:
        print(f"make_assignments: {err}", file=sys.stderr)
        return 1
    if not args.check:
        for path, text in wanted.items():
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(args.dir.parent)}")
        return 0
    problems = [f"{path.name}: missing" for path in wanted if not path.exists()]
    problems += [f"{path.name}: differs from its solution notebook (run "
                 f"scripts/make_assignments.py)" for path, text in wanted.items()
                 if path.exists() and path.read_text() != text]
    problems += [f"{path.name}: no solutions/{path.name}"
                 for path in sorted(args.dir.glob("*.ipynb")) if path not in wanted]
    for problem in problems:
        print(f"make_assignments --check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
