"""The claims ledger points at real tests and chapters, covers every section of the note, and its
exact rows agree with the library."""

from __future__ import annotations

import ast
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import toc_files

from lora_edu.claims import CLAIMS, VERDICTS, Claim, verdict_counts

ROOT = Path(__file__).resolve().parents[1]

# Every numbered statement of the source note, by section (the note itself is not in this
# repository; its sections are: §1, §2.1 (1)–(3), §2.2 1–4, §2.3 (1)–(3), §3.1, §3.2 (1)–(3),
# §3.3, §4.1, §4.2 (1)–(3), §4.3 and the closing table 总结).
NOTE_SECTIONS = ("§1", "§2.1", "§2.1 (1)", "§2.1 (2)", "§2.1 (3)", "§2.2 (1)", "§2.2 (2)",
                 "§2.2 (3)", "§2.2 (4)", "§2.3 (1)", "§2.3 (2)", "§2.3 (3)", "§3.1", "§3.2 (1)",
                 "§3.2 (2)", "§3.2 (3)", "§3.3", "§4.1", "§4.2 (1)", "§4.2 (2)", "§4.2 (3)", "§4.3",
                 "总结")


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.key)
def test_every_named_test_exists(claim: Claim):
    for node_id in claim.tests:
        file, _, name = node_id.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{claim.key}: {file} does not exist"
        assert name in defined_functions(path), f"{claim.key}: no {name} in {file}"


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.key)
def test_every_named_chapter_is_in_the_toc(claim: Claim):
    entries = set(toc_files())
    for chapter in claim.chapters:
        assert chapter in entries, f"{claim.key}: {chapter} is not in _toc.yml"


def test_keys_unique_and_every_section_of_the_note_covered():
    keys = [c.key for c in CLAIMS]
    assert len(keys) == len(set(keys))
    covered = {c.section for c in CLAIMS}
    assert set(NOTE_SECTIONS) <= covered, set(NOTE_SECTIONS) - covered
    assert covered <= set(NOTE_SECTIONS), covered - set(NOTE_SECTIONS)


def test_checked_rows_name_a_chapter_and_a_test_and_qualified_rows_say_why():
    for c in CLAIMS:
        assert "TODO" not in c.value, c.key
        if c.verdict != "not checkable on a CPU":
            assert c.chapters, f"{c.key}: a checked claim names the chapter that checks it"
        if c.verdict in ("exact",):
            assert c.tests, f"{c.key}: an exact claim names a test"
        if c.verdict in ("partly holds", "does not hold", "not checkable on a CPU"):
            assert c.why, f"{c.key}: a qualified verdict says why"


def test_verdict_counts_add_up():
    counts = verdict_counts()
    assert list(counts) == list(VERDICTS)
    assert sum(counts.values()) == len(CLAIMS)
    assert verdict_counts(CLAIMS[:1]) == {v: int(v == CLAIMS[0].verdict) for v in VERDICTS}


def test_bad_claims_are_refused():
    with pytest.raises(ValueError, match="verdict"):
        Claim("k", "§1", "中", "en", "o", (), (), "v", "probably")
    with pytest.raises(TypeError, match="claims"):
        verdict_counts([CLAIMS[0]])
    with pytest.raises(TypeError, match=r"claims\[0\]"):
        verdict_counts(("not a claim",))


def test_exact_rows_agree_with_the_library():
    """The numbers quoted by the exact and partly-holds rows, recomputed."""
    from lora_edu.memory import GPT3_175B, lora_trainable_params, reduction_factor
    from lora_edu.quant import constant_overhead_bits, dq_constant_overhead_bits

    n4 = lora_trainable_params(GPT3_175B, r=4)
    assert n4 == 18_874_368 and "18,874,368" in _row("params").value
    assert f"{round(reduction_factor(GPT3_175B.n_params, n4)):,}" in _row("checkpoint").value
    for r, text in ((8, "1/4,643"), (16, "1/2,321"), (64, "1/580")):
        assert f"1/{round(GPT3_175B.n_params / lora_trainable_params(GPT3_175B, r=r)):,}" == text
        assert text in _row("fraction").value
    assert constant_overhead_bits(64) == Fraction(1, 2)
    assert dq_constant_overhead_bits(64, 256) == Fraction(65, 512)
    assert "65/512" in _row("dq").value


def _row(key: str) -> Claim:
    (claim,) = [c for c in CLAIMS if c.key == key]
    return claim
