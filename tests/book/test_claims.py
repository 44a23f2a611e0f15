"""The claims ledger is built from the evidence: every measured value in a row is pasted from the
chapter that measured it, every anchor and test it names exists, and the ledger page shows what
the rows and the chapters' stored outputs say now."""

from __future__ import annotations

import ast
import json
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import ROOT, toc_files, typed_decimals

sys.path.insert(0, str(ROOT / "book"))
import ledger  # noqa: E402  (book/ledger.py: the ledger page's own loader)

ROWS = ledger.load_claims()

# Every numbered statement of the source note, by section (§1, §2.1 (1)–(3), §2.2 1–4,
# §2.3 (1)–(3), §3.1, §3.2 (1)–(3), §3.3, §4.1, §4.2 (1)–(3), §4.3 and the closing table 总结).
NOTE_SECTIONS = ("§1", "§2.1", "§2.1 (1)", "§2.1 (2)", "§2.1 (3)", "§2.2 (1)", "§2.2 (2)",
                 "§2.2 (3)", "§2.2 (4)", "§2.3 (1)", "§2.3 (2)", "§2.3 (3)", "§3.1", "§3.2 (1)",
                 "§3.2 (2)", "§3.2 (3)", "§3.3", "§4.1", "§4.2 (1)", "§4.2 (2)", "§4.2 (3)", "§4.3",
                 "总结")


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_keys_unique_and_every_section_of_the_note_covered():
    keys = [r["key"] for r in ROWS]
    assert len(keys) == len(set(keys))
    covered = {r["section"] for r in ROWS}
    assert set(NOTE_SECTIONS) <= covered, set(NOTE_SECTIONS) - covered
    assert covered <= set(NOTE_SECTIONS), covered - set(NOTE_SECTIONS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["key"])
def test_every_reference_resolves_to_a_value_its_chapter_glued(row):
    for ev in row["evidence"]:
        for field in ("measured", "band"):
            text = ev[field]
            assert isinstance(text, str) and text.strip(), f"{row['key']}: empty {field}"
            for chapter, _ in ledger.REFERENCE.findall(text):
                assert chapter == ev["chapter"] or f"book/{chapter}" in toc_files(), chapter
            ledger.resolve(text)          # KeyError names a missing chapter or key
    if row.get("why"):
        ledger.resolve(row["why"])


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["key"])
def test_no_measured_number_is_typed_in_a_row(row):
    """Measured values come only through {chapter::key}. A figure the row's ``origin`` quotes
    from a paper may be repeated, since its source stands in the same row."""
    quoted = set(typed_decimals(row["origin"]))
    texts = [row.get("why", "")] + [ev[f] for ev in row["evidence"] for f in ("measured", "band")]
    for text in texts:
        typed = [n for n in typed_decimals(ledger.REFERENCE.sub(" ", text)) if n not in quoted]
        assert not typed, f"{row['key']}: typed {typed} in {text!r}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["key"])
def test_every_anchor_is_a_label_in_its_chapter(row):
    for ev in row["evidence"]:
        assert f"book/{ev['chapter']}" in toc_files(), ev["chapter"]
        number = ledger.section_number(ev["chapter"], ev["anchor"])   # KeyError if missing
        assert number.split(".")[0] == str(int(ev["chapter"][:2])), (row["key"], number)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["key"])
def test_every_named_test_exists(row):
    named = row["mechanism_tests"] + [t for ev in row["evidence"] for t in ev["tests"]]
    for node_id in named:
        file, _, name = node_id.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{row['key']}: {file} does not exist"
        assert name in defined_functions(path), f"{row['key']}: no {name} in {file}"


def test_checked_rows_have_evidence_and_qualified_rows_say_why():
    for r in ROWS:
        if r["verdict"] != "not checked":
            assert r["evidence"], f"{r['key']}: a checked claim names the section with evidence"
        if r["verdict"] == "exact":
            assert r["mechanism_tests"] or any(ev["tests"] for ev in r["evidence"]), r["key"]
        if r["verdict"] in ("partly holds", "does not hold", "not checked"):
            assert r.get("why"), f"{r['key']}: a qualified verdict says why"


def test_real_model_evidence_has_its_own_verdict_and_the_toy_rows_keep_theirs():
    """Chapter 9's evidence (MiniLM-L6 on real text) gives a verdict of its own, shown beside the
    row's; the other chapters' evidence is the row's verdict."""
    real = [(r["key"], ev) for r in ROWS for ev in r["evidence"]
            if ev["chapter"] == "09_real_model"]
    assert len(real) >= 6, "chapter 9 gives real-model evidence for the note's main claims"
    for key, ev in real:
        assert ev.get("verdict") in ledger.EVIDENCE_VERDICTS, key
    for r in ROWS:
        for ev in r["evidence"]:
            if ev["chapter"] != "09_real_model":
                assert "verdict" not in ev, r["key"]


def test_the_ledger_page_shows_the_rows_and_the_chapters_as_they_are_now():
    """A re-run chapter whose glued values changed, or an edited row, makes the stored ledger
    page stale: this fails until the ledger page is re-executed."""
    cells = json.loads((ROOT / "book" / "claims.ipynb").read_text())["cells"]
    shown = ["".join(o["data"]["text/markdown"]) for c in cells if c["cell_type"] == "code"
             for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert shown == [ledger.ledger_markdown(ROWS)]


def _fake_chapter(book: Path, value: object) -> None:
    glue_output = {"output_type": "display_data", "metadata": {"scrapbook": {"name": "acc",
                   "mime_prefix": ledger.GLUE_MIME.removesuffix("text/plain")}},
                   "data": {ledger.GLUE_MIME: repr(value)}}
    nb = {"cells": [{"cell_type": "code", "source": [], "outputs": [glue_output]}]}
    (book / "99_fake.ipynb").write_text(json.dumps(nb))


def test_resolve_pastes_what_the_chapter_stored_and_follows_a_re_run(tmp_path):
    for stored in ("0.903 ± 0.086 [0.810, 0.979]", "0.911 ± 0.050 [0.870, 0.960]"):
        _fake_chapter(tmp_path, stored)
        assert ledger.resolve("AdaLoRA {99_fake::acc}", tmp_path) == f"AdaLoRA {stored}"
    _fake_chapter(tmp_path, 3)
    assert ledger.resolve("{99_fake::acc} seeds", tmp_path) == "3 seeds"
    with pytest.raises(KeyError, match="missing"):
        ledger.resolve("{99_fake::missing}", tmp_path)
    with pytest.raises(KeyError, match="98_none"):
        ledger.resolve("{98_none::acc}", tmp_path)


def test_bad_rows_are_refused(tmp_path):
    path = tmp_path / "claims.yml"
    path.write_text("- {key: k, section: '§1', zh: 中, en: en, origin: o, verdict: probably}\n")
    with pytest.raises(ValueError, match="verdict"):
        ledger.load_claims(path)
    path.write_text("- {key: k, section: '§1', zh: 中, en: en, verdict: exact}\n")
    with pytest.raises(ValueError, match="origin"):
        ledger.load_claims(path)
    path.write_text("- {key: k, section: '§1', zh: 中, en: en, origin: o, verdict: exact,\n"
                    "   evidence: [{chapter: c, anchor: a, measured: m, band: b, tests: [],\n"
                    "               verdict: maybe}]}\n")
    with pytest.raises(ValueError, match="evidence verdict"):
        ledger.load_claims(path)


def test_exact_rows_agree_with_the_library():
    """The exact figures the ledger pastes from chapters 2 and 5, recomputed from the library."""
    from lora_edu.memory import GPT3_175B, lora_trainable_params, reduction_factor
    from lora_edu.quant import constant_overhead_bits, dq_constant_overhead_bits

    n4 = lora_trainable_params(GPT3_175B, r=4)
    assert n4 == 2 * 96 * (12_288 * 4 + 4 * 12_288)          # W_q, W_v in 96 layers, r = 4
    assert Fraction(constant_overhead_bits(64)) == Fraction(32, 64)
    assert Fraction(dq_constant_overhead_bits(64, 256)) == Fraction(8, 64) + Fraction(32, 64 * 256)
    rows = {r["key"]: r for r in ROWS}
    params = ledger.resolve(rows["params"]["evidence"][-1]["measured"])
    assert f"{n4:,}" in params
    checkpoint = ledger.resolve(rows["checkpoint"]["evidence"][0]["measured"])
    assert f"{round(reduction_factor(GPT3_175B.n_params, n4)):,}" in checkpoint
    assert "65/512" in ledger.resolve(rows["dq"]["evidence"][0]["measured"])


def test_each_named_test_is_shown_with_what_it_checks(tmp_path):
    """The online ledger has no repository beside it: a named test is shown with the first
    sentence of its docstring, or its name in words, before its id."""
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / "test_x.py").write_text(
        'def test_with_doc():\n    """The ``merge`` equals the sum. More detail here."""\n\n\n'
        "def test_scale_is_alpha_over_r():\n    pass\n\n\n"
        "class TestGroup:\n    def test_inner(self):\n"
        '        """Inner: checked!\n\n        Not this."""\n')
    assert ledger.describe_test("tests/test_x.py::test_with_doc", tmp_path) == (
        "The `merge` equals the sum")
    assert ledger.describe_test("tests/test_x.py::test_scale_is_alpha_over_r[4-True]",
                                tmp_path) == "scale is alpha over r"
    assert ledger.describe_test("tests/test_x.py::TestGroup::test_inner", tmp_path) == (
        "Inner: checked!")
    with pytest.raises(KeyError, match="no test_missing"):
        ledger.describe_test("tests/test_x.py::test_missing", tmp_path)
    page = ledger.ledger_markdown(ROWS)
    for row in ROWS:
        for node_id in row["mechanism_tests"] + [t for ev in row["evidence"] for t in ev["tests"]]:
            words = ledger.describe_test(node_id)
            assert words and f"{words} (`{node_id.removeprefix('tests/')}`)" in page
