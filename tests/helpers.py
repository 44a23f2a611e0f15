"""Helpers shared by several test modules (imported as ``helpers``; pytest puts ``tests/`` on the
path): the table of contents of the book, and the bad-input assertion of the parametrised tables."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    """Every file entry of ``_toc.yml``, the root first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return files


def assert_rejected(call: Callable[[], object], exc: type[Exception], name: str) -> None:
    """``call()`` raises exactly ``exc`` and the message starts with the argument's ``name``."""
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc
    assert re.match(rf"{re.escape(name)}\b", str(info.value)), str(info.value)


def page_path(entry: str) -> Path:
    """The file of a toc entry (``book/02_lora`` → ``book/02_lora.ipynb`` or ``.md``)."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{entry}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"no .ipynb or .md for toc entry {entry!r}")


def markdown_blocks(entry: str) -> list[str]:
    """The Markdown a reader reads on a page: every Markdown cell of a notebook, or a whole .md."""
    path = page_path(entry)
    if path.suffix == ".md":
        return [path.read_text()]
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


NBVAL_NOT_COMPARED = ("# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP")


def compared_cells(nb: Path) -> list[tuple[int, dict]]:
    """(index, cell) of every code cell whose stored outputs nbval compares."""
    cells = json.loads(nb.read_text())["cells"]
    out = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]).lstrip()
        tags = cell.get("metadata", {}).get("tags", [])
        skipped_by_tag = {"nbval-ignore-output", "nbval-skip"} & set(tags)
        if source.startswith(NBVAL_NOT_COMPARED) or skipped_by_tag:
            continue
        out.append((i, cell))
    return out


def output_texts(cell: dict) -> list[str]:
    """Every text an output of ``cell`` shows or stores: streams, and each text-like MIME entry
    (glued values included)."""
    texts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            texts.append("".join(output["text"]))
        for mime, value in output.get("data", {}).items():
            if mime.endswith(("text/plain", "text/markdown", "text/html", "text/latex")):
                texts.append("".join(value) if isinstance(value, list) else str(value))
    return texts


# What a reader sees as a typed number, and what is not one (a section number, a version, a
# value pasted from a stored output by a glue role, a cross-reference).
_NOT_NUMBERS = [
    re.compile(r"\{glue(?::\w+)?\}`[^`]*`"),                       # {glue:text}`key:.3f`
    re.compile(r"\{(?:numref|ref|eq|doc|cite(?::\w+)?|download|term)\}`[^`]*`"),
    re.compile(r"^#{1,6}[ \t]+\d+(?:\.\d+)*", re.M),                # "## 2.4 Title"
    re.compile(r"(?:§|\b[Ss]ections?[ \t\n]+|\bchapters?[ \t\n]+)\d+(?:\.\d+)*"
               r"(?:[ \t\n]*(?:,|and|or|to|–|-)[ \t\n]*\d+(?:\.\d+)*)*"),
    re.compile(r"(?<![\w.])v?\d+\.\d+\.\d+(?:\.\d+)*(?!\w|\.\d)"),     # versions: torch 2.13.0
    re.compile(r"\]\([^)]*\)"),                                     # link targets
    re.compile(r"^\(\S+\)=\s*$", re.M),                             # MyST labels
]
_DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?!\w|\.\d)")


def typed_decimals(markdown: str) -> list[str]:
    """Every decimal number typed in ``markdown``, after removing what is not a typed number
    (glued values, cross-references, section numbers, versions, link targets)."""
    for pattern in _NOT_NUMBERS:
        markdown = pattern.sub(" ", markdown)
    return _DECIMAL.findall(markdown)


#: Set by scripts/check.sh (and so by CI): the pinned test-only requirements must be importable,
#: so a test that compares with them fails instead of skipping when one is missing.
REQUIRE_ENV = "LORA_EDU_REQUIRE_TEST_DEPS"


def require(module: str) -> object:
    """Import ``module`` (a pinned test-only requirement such as ``peft`` or ``bitsandbytes``).

    Outside the check script a missing module skips the calling test (a reader's plain
    ``pytest`` without the optional peers); under ``LORA_EDU_REQUIRE_TEST_DEPS=1`` — what
    scripts/check.sh and CI set — it fails, so the comparison with the peer library cannot
    silently disappear.
    """
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError as err:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{module} is a pinned test requirement (requirements.txt) and cannot be "
                        f"imported: {err}", pytrace=False)
        pytest.skip(f"{module} is not installed ({err})", allow_module_level=True)
