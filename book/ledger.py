"""The claims ledger of the book: rows in ``claims.yml``, measured values from the chapters.

Each row of ``claims.yml`` is one checkable statement of *LoRA方法详解*: its section, its words
(``zh``) and an English rendering (``en``), where it comes from (``origin``), a ``verdict`` and,
where the verdict is qualified, ``why``. Its support is split in two:

* ``evidence``: for each chapter that measures the claim, the section that holds the evidence
  (``anchor``, a MyST label in the chapter), what was measured (``measured``) and what the
  chapter asserts on every run (``band``), plus the tests that measure the claim itself
  (``tests``, often none: the chapter is the measurement);
* ``mechanism_tests``: tests of the mechanism the claim rests on (a formula, a schedule).

``measured`` and ``band`` never type a measured number: they name values that the chapter glued
into its stored outputs, as ``{02_lora::lora_qv_acc}``. :func:`resolve` pastes them, exactly as
MyST-NB's ``{glue:text}`` role pastes them into the chapter's own prose, so the ledger and the
chapter cannot disagree. The ledger page (``claims.ipynb``) renders :func:`ledger_markdown`; the
tests (``tests/book/test_claims.py``) check every reference, anchor and test name.

A reader of the online book has no repository at hand, so each test a row names is shown with
what it checks (:func:`describe_test`: the first sentence of its docstring, or else its name in
words) before its id.
"""

from __future__ import annotations

import ast
import json
import re
from ast import literal_eval
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent

#: The verdicts, from strongest to weakest evidence, with the badge colour of each.
VERDICTS = {
    "exact": "success",
    "reproduced at toy scale": "primary",
    "partly holds": "warning",
    "does not hold": "danger",
    "not checked": "secondary",
}

#: The verdict of one piece of evidence on a real pretrained network (chapter 9), shown beside
#: the row's verdict: the toy's verdicts are the rows' own.
EVIDENCE_VERDICTS = {
    "holds": "primary",
    "partly holds": "warning",
    "does not hold": "danger",
}

#: A reference to a glued value: ``{chapter::key}``.
REFERENCE = re.compile(r"\{([0-9A-Za-z_]+)::([^{}:]+)\}")

GLUE_MIME = "application/papermill.record/text/plain"


def glued_values(chapter: str, book: Path = BOOK) -> dict[str, str]:
    """Every value the notebook ``book/<chapter>.ipynb`` glued, as the text the glue role pastes.

    MyST-NB stores a glued value as a display output whose metadata names it; its text/plain
    form is ``repr(value)``, which the ``{glue:text}`` role turns back into text with
    ``ast.literal_eval`` (so a glued string pastes without its quotes). This does the same.
    """
    cells = json.loads((book / f"{chapter}.ipynb").read_text())["cells"]
    values: dict[str, str] = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if not name:
                continue
            data = output.get("data", {})
            text = data.get(GLUE_MIME, data.get("text/plain"))
            if text is None:
                continue
            text = "".join(text) if isinstance(text, list) else text
            if name in values:
                raise ValueError(f"{chapter}: glue key {name!r} stored twice")
            try:
                values[name] = str(literal_eval(text))
            except (SyntaxError, ValueError):
                values[name] = text
    return values


def resolve(template: str, book: Path = BOOK, _cache: dict | None = None) -> str:
    """``template`` with every ``{chapter::key}`` replaced by the value the chapter glued.

    A reference to a chapter or key that does not exist raises ``KeyError`` naming it.
    """
    cache = {} if _cache is None else _cache

    def paste(match: re.Match) -> str:
        chapter, key = match.groups()
        if chapter not in cache:
            if not (book / f"{chapter}.ipynb").is_file():
                raise KeyError(f"no chapter {chapter!r} for {match.group()}")
            cache[chapter] = glued_values(chapter, book)
        if key not in cache[chapter]:
            raise KeyError(f"{chapter} glued no value {key!r}")
        return cache[chapter][key]

    return REFERENCE.sub(paste, template)


def load_claims(path: Path = BOOK / "claims.yml") -> list[dict]:
    """The rows of ``claims.yml``, checked for the fields every row needs."""
    rows = yaml.safe_load(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path.name} must hold a list of rows")
    required = {"key", "section", "zh", "en", "origin", "verdict"}
    allowed = required | {"why", "evidence", "mechanism_tests"}
    for row in rows:
        missing, unknown = required - set(row), set(row) - allowed
        if missing or unknown:
            raise ValueError(f"row {row.get('key')!r}: missing {missing or '-'}, unknown "
                             f"{unknown or '-'}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"row {row['key']!r}: verdict must be one of {list(VERDICTS)}")
        row["evidence"] = row.get("evidence") or []
        row["mechanism_tests"] = row.get("mechanism_tests") or []
        for ev in row["evidence"]:
            if set(ev) - {"verdict"} != {"chapter", "anchor", "measured", "band", "tests"}:
                raise ValueError(f"row {row['key']!r}: evidence fields {sorted(ev)}")
            if "verdict" in ev and ev["verdict"] not in EVIDENCE_VERDICTS:
                raise ValueError(f"row {row['key']!r}: an evidence verdict must be one of "
                                 f"{list(EVIDENCE_VERDICTS)}")
            ev["tests"] = ev["tests"] or []
    return rows


def section_number(chapter: str, anchor: str, book: Path = BOOK) -> str:
    """The number of the section that the label ``(anchor)=`` in ``chapter`` stands above
    (``"2.5"`` for ``## 2.5 Measured at toy scale``); ``KeyError`` if there is no such label."""
    cells = json.loads((book / f"{chapter}.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    match = re.search(rf"^\({re.escape(anchor)}\)=\s*\n+#+\s+(\d+(?:\.\d+)*)\s", text, re.M)
    if match is None:
        raise KeyError(f"{chapter}: no label ({anchor})= above a numbered heading")
    return match.group(1)


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows have each verdict, in the order of :data:`VERDICTS`."""
    return {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}


def describe_test(test_id: str, root: Path = BOOK.parent) -> str:
    """What the test ``test_id`` (``tests/FILE.py::NAME`` or ``::CLASS::NAME``, parameters in
    brackets allowed) checks, in words: the first sentence of its docstring, or else its name
    without the ``test_`` prefix and with spaces for underscores. KeyError if there is no such
    test function in the file."""
    path, *names = test_id.split("::")
    names[-1] = names[-1].split("[")[0]
    body = ast.parse((root / path).read_text(encoding="utf-8")).body
    node = None
    for name in names:
        node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.ClassDef)
                     and n.name == name), None)
        if node is None:
            raise KeyError(f"{test_id}: no {name} in {path}")
        body = node.body
    doc = ast.get_docstring(node) or ""
    first = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0] if doc else ""
    if not first:
        first = names[-1].removeprefix("test_").replace("_", " ")
    return first.replace("``", "`").rstrip(".:")


def _tests_line(tests: list[str]) -> str:
    return "; ".join(f"{describe_test(t)} (`{t.removeprefix('tests/')}`)" for t in tests) or "none"


def ledger_markdown(rows: list[dict], book: Path = BOOK) -> str:
    """The ledger as one MyST list-table: the note's section, the claim (中文 and English) with
    its details in a drop-down, a verdict badge, and links to the sections holding the evidence.
    Every measured value is pasted from the chapters' stored outputs."""
    cache: dict = {}
    lines = ["```{list-table}", ":header-rows: 1", ":widths: 9 55 22 14", ":class: ledger",
             "", "* - §", "  - Claim", "  - Verdict", "  - Evidence"]
    for row in rows:
        details = [f"**Source:** {row['origin']}."]
        for ev in row["evidence"]:
            where = f"§{section_number(ev['chapter'], ev['anchor'], book)}"
            details.append(f"**Measured ({where}):** {resolve(ev['measured'], book, cache)}.")
            details.append(f"**Asserted on every run:** {resolve(ev['band'], book, cache)}.")
            if ev["tests"]:
                details.append(f"**Tests that measure it:** {_tests_line(ev['tests'])}.")
        if row["mechanism_tests"]:
            details.append(f"**Mechanism tested by:** {_tests_line(row['mechanism_tests'])}.")
        if row.get("why"):
            details.append(f"**Why this verdict:** {resolve(row['why'], book, cache)}")
        links = "; ".join(
            f"{{ref}}`§{section_number(ev['chapter'], ev['anchor'], book)} <{ev['anchor']}>`"
            for ev in row["evidence"]) or "—"
        badge = f"{{bdg-{VERDICTS[row['verdict']]}}}`{row['verdict']}`"
        for ev in row["evidence"]:
            if "verdict" in ev:
                where = f"§{section_number(ev['chapter'], ev['anchor'], book)}"
                badge += (f" {{bdg-{EVIDENCE_VERDICTS[ev['verdict']]}-line}}"
                          f"`MiniLM ({where}): {ev['verdict']}`")
        lines += [f"* - {row['section']}",
                  f"  - {row['zh']}",
                  "",
                  f"    *{row['en']}*",
                  "",
                  "    :::{dropdown} Details",
                  *(f"    {d}\n" for d in details),
                  "    :::",
                  f"  - {badge}",
                  f"  - {links}"]
    lines.append("```")
    return "\n".join(lines)
