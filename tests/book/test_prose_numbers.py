"""Every number the prose states comes from the run that measured it.

A decimal number in a Markdown cell (or a Markdown page) is either pasted from the chapter's
stored outputs by a MyST-NB glue role (``{glue:text}`key` ``), or it is a quotation — a figure of
the note or of a paper, a constant of a method — listed with its source in
``book/quoted_numbers.yml``. Anything else is a typed copy of a measurement, which a re-run would
leave behind, and fails here.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

import pytest
import yaml
from helpers import ROOT, markdown_blocks, page_path, toc_files, typed_decimals

sys.path.insert(0, str(ROOT / "book"))
import ledger  # noqa: E402  (book/ledger.py reads glued values as MyST-NB's glue role does)

QUOTED = ROOT / "book" / "quoted_numbers.yml"
MAX_QUOTED_PER_PAGE = 20    # a short list: most numbers belong in a glue role


def quoted() -> dict[str, list[dict]]:
    data = yaml.safe_load(QUOTED.read_text()) or {}
    return {page: entries or [] for page, entries in data.items()}


@pytest.mark.parametrize("page", toc_files())
def test_every_typed_decimal_is_glued_or_a_quoted_constant(page: str):
    allowed = {str(e["number"]) for e in quoted().get(page, [])}
    typed = [(n, block) for block in markdown_blocks(page) for n in typed_decimals(block)]
    stray = sorted({n for n, _ in typed if n not in allowed})
    assert not stray, (
        f"{page}: decimal numbers typed in the prose that are neither glued nor quoted "
        f"constants with a source in book/quoted_numbers.yml: {stray}")


def test_quoted_constants_are_few_sourced_and_used():
    entries = quoted()
    pages = set(toc_files())
    for page, listed in entries.items():
        assert page in pages, f"{page} in quoted_numbers.yml is not a page of the book"
        assert len(listed) <= MAX_QUOTED_PER_PAGE, f"{page}: {len(listed)} quoted numbers"
        numbers = Counter(str(e["number"]) for e in listed)
        assert max(numbers.values(), default=1) == 1, f"{page}: listed twice: {numbers}"
        typed = {n for block in markdown_blocks(page) for n in typed_decimals(block)}
        for e in listed:
            assert set(e) == {"number", "source"}, f"{page}: {e}"
            assert isinstance(e["number"], str), f"{page}: quote {e['number']!r} as a string"
            assert len(e["source"].split()) >= 3, f"{page}: {e['number']} needs its source"
            assert e["number"] in typed, f"{page}: {e['number']} is listed but not in the prose"


def test_glue_roles_name_values_stored_on_the_same_page():
    """Every ``{glue:...}`key` `` of a notebook pastes a key that the notebook glued."""
    role = re.compile(r"\{glue(?::\w+)?\}`([^`]*)`")
    for page in toc_files():
        path = page_path(page)
        if path.suffix != ".ipynb":
            continue
        keys = set(ledger.glued_values(path.stem, path.parent))
        for block in markdown_blocks(page):
            for ref in role.findall(block):
                key = ref.rsplit(":", 1)[0] if re.search(r":[^:]*[a-zA-Z%]$", ref) else ref
                assert "::" not in key, f"{page}: {ref} pastes from another page"
                assert key in keys, f"{page}: glue key {key!r} is not stored in the notebook"


def test_the_scanner_sees_typed_numbers_and_skips_what_is_not_one():
    text = ("## 2.4 Title\nSee section 2.5 and sections 2.4 and 2.5, §4.2 (3), torch 2.13.0, "
            "{glue:text}`acc:.3f` and {numref}`fig-2.1`; measured 0.903 ± 0.086 [0.810, 0.979] "
            "and 3.10 %, $0.25\\cdot 8$, 1,234.5.")
    assert typed_decimals(text) == ["0.903", "0.086", "0.810", "0.979", "3.10", "0.25", "1,234.5"]
