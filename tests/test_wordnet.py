"""Tests of lora_edu.wordnet and its shipped data: the data.noun parser on hand-written lines, the
subset rule on a small hand-made data.noun, the shipped file (balanced, disjoint by synset, its
licence), the wheel carrying it, and — where WordNet's data.noun is on the machine — its
regeneration byte for byte and each row checked against data.noun itself."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import ROOT, assert_rejected

from lora_edu.wordnet import (
    NOUN_LEXNAMES,
    SPLIT_SIZES,
    SPLITS,
    SUBSET_CLASSES,
    NounSynset,
    SupersenseData,
    data_noun_notice,
    gloss_definition,
    make_supersense_subset,
    parse_data_noun,
    parse_supersense_tsv,
    supersense_file,
    synset_text,
    wordnet_supersenses,
)

DATA = ROOT / "lora_edu" / "data"
SHIPPED = DATA / "wordnet_supersenses.tsv"
LICENSE = DATA / "LICENSE-WordNet-3.0.txt"
SCRIPT = ROOT / "scripts" / "make_wordnet_subset.py"


def read_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """(comment lines, rows after the header) of a subset file, read without the library."""
    lines = text.split("\n")
    assert lines[-1] == ""
    comments = [line for line in lines[:-1] if line.startswith("#")]
    table = [line.split("\t") for line in lines[:-1] if not line.startswith("#")]
    assert table[0] == ["split", "synset", "supersense", "text"]
    return comments, table[1:]


def words(text: str) -> list[str]:
    return text.split()


# --------------------------------------------------------------------------- the parser

HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
          "  2   \n"
          "  3 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n")
TRANSGENE = ("04474035 06 n 01 transgene 0 002 @ 03443371 n 0000 ~ 00012345 n 0000 | an "
             "exogenous gene introduced into the genome of another organism  ")
# 0b = 11 words (w_cnt is hexadecimal), no pointers, a gloss with two quoted examples
BIG_CAT = ('00000011 05 n 0b big_cat 0 b 1 c 0 d 0 e 0 f 0 g 0 h 0 i 0 j 0 k 0 000 | a large '
           'wild cat; "the big cat stalked"; "lions are big cats"  ')


def test_parser_reads_hand_written_lines():
    synsets = parse_data_noun(HEADER + TRANSGENE + "\n" + BIG_CAT + "\n")
    assert synsets == [
        NounSynset(4474035, "noun.artifact", ("transgene",),
                   "an exogenous gene introduced into the genome of another organism"),
        NounSynset(11, "noun.animal", ("big_cat", "b", "c", "d", "e", "f", "g", "h", "i", "j",
                                       "k"),
                   'a large wild cat; "the big cat stalked"; "lions are big cats"'),
    ]
    assert synset_text(synsets[0]) == ("transgene: an exogenous gene introduced into the genome "
                                       "of another organism")
    assert synset_text(synsets[1]) == "big cat: a large wild cat"
    assert data_noun_notice(HEADER + TRANSGENE) == [
        "This software and database is being provided to you, the LICENSEE, by", "",
        "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved."]


@pytest.mark.parametrize("line, why", [
    ("04474035 06 n 01 transgene 0 001 @ 03443371 n 0000 ~ 1 n 0000 | g", "p_cnt"),
    ("04474035 06 n 02 transgene 0 001 @ 03443371 n 0000 | gloss", "p_cnt"),
    ("04474035 06 v 01 transgene 0 000 | gloss", "ss_type"),
    ("04474035 00 n 01 transgene 0 000 | gloss", "lex_filenum"),
    ("04474035 29 n 01 transgene 0 000 | gloss", "lex_filenum"),
    ("04474035 06 n zz transgene 0 000 | gloss", "w_cnt"),
    ("4474035 06 n 01 transgene 0 000 | gloss", "offset"),
    ("04474035 06 n 01 transgene 0 000 gloss without a bar", "' | '"),
])
def test_parser_rejects_malformed_lines(line, why):
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        parse_data_noun(HEADER + TRANSGENE + "\n" + line + "\n")
    assert str(info.value).startswith("text line 5 ")


@pytest.mark.parametrize("gloss, definition", [
    ('a large wild cat; "the big cat stalked"; "lions are big cats"', "a large wild cat"),
    ('a large wild cat;"no space before the quote"', "a large wild cat"),
    ("a fabric; woven of worsted yarns", "a fabric; woven of worsted yarns"),
    ('progress (especially in the phrase "make strides")',
     'progress (especially in the phrase "make strides")'),
    ("a workplace; as in the expression on the job;", "a workplace; as in the expression on the "
     "job"),
    ("  padded  ", "padded"),
])
def test_gloss_definition_drops_only_the_examples(gloss, definition):
    assert gloss_definition(gloss) == definition


# --------------------------------------------------------------------------- the subset rule

def synthetic_data_noun() -> str:
    """A data.noun with 7 animal, 6 plant and 3 food synsets; plants 300 and 301 share a text."""
    lines = []
    for i in range(7):
        lines.append(f"{100 + i:08d} 05 n 01 animal_{i} 0 000 | animal number {i}; \"ex\"  ")
    for i in range(6):
        gloss = "a twin plant" if i in (0, 1) else f"plant number {i}"
        lemma = "twin" if i in (0, 1) else f"plant_{i}"
        lines.append(f"{300 + i:08d} 20 n 01 {lemma} 0 000 | {gloss}  ")
    for i in range(3):
        lines.append(f"{500 + i:08d} 13 n 01 food_{i} 0 000 | food number {i}  ")
    return HEADER + "\n".join(lines) + "\n"


def test_subset_rule_on_a_hand_made_data_noun():
    text = make_supersense_subset(synthetic_data_noun(), n_classes=2, sizes=(2, 1, 1), seed=0)
    comments, rows = read_rows(text)
    assert comments[:3] == ["# This software and database is being provided to you, the "
                            "LICENSEE, by", "#",
                            "# WordNet 3.0 Copyright 2006 by Princeton University.  All rights "
                            "reserved."]
    # the two largest classes; the twin plants (one text, two synsets) are both left out
    assert {r[2] for r in rows} == {"noun.animal", "noun.plant"}
    assert not {"00000300", "00000301"} & {r[1] for r in rows}
    for label, offsets in (("noun.animal", range(100, 107)), ("noun.plant", range(302, 306))):
        # the rule written out again: rank by sha256("seed:offset"), cut 2 / 1 / 1
        ranked = sorted(offsets, key=lambda o: hashlib.sha256(f"0:{o:08d}".encode()).hexdigest())
        expect = {"train": ranked[:2], "validation": ranked[2:3], "test": ranked[3:4]}
        for split, chosen in expect.items():
            got = [int(r[1]) for r in rows if r[0] == split and r[2] == label]
            assert got == sorted(chosen)
    assert all(r[3] == f"animal {int(r[1]) - 100}: animal number {int(r[1]) - 100}"
               for r in rows if r[2] == "noun.animal")
    # rows ordered by split, then supersense, then synset
    order = [(SPLITS.index(r[0]), r[2], r[1]) for r in rows]
    assert order == sorted(order)
    # deterministic; another seed draws another subset
    assert make_supersense_subset(synthetic_data_noun(), 2, (2, 1, 1), 0) == text
    assert make_supersense_subset(synthetic_data_noun(), 2, (2, 1, 1), 1) != text
    data = parse_supersense_tsv(text)
    assert data.classes == ("noun.animal", "noun.plant")
    assert [len(data.train), len(data.validation), len(data.test)] == [4, 2, 2]


def test_subset_needs_enough_synsets_and_the_licence_header():
    with pytest.raises(ValueError, match="sizes ask for 5 synsets of noun.plant, which has 4"):
        make_supersense_subset(synthetic_data_noun(), 2, (3, 1, 1))
    without_header = synthetic_data_noun().split("\n", 3)[3]
    assert_rejected(lambda: make_supersense_subset(without_header, 2, (2, 1, 1)), ValueError,
                    "data_noun")


@pytest.mark.parametrize("call, exc, name", [
    (lambda: parse_data_noun(b"00000001"), TypeError, "text"),
    (lambda: data_noun_notice(None), TypeError, "text"),
    (lambda: gloss_definition(3), TypeError, "gloss"),
    (lambda: synset_text("cat: a cat"), TypeError, "synset"),
    (lambda: make_supersense_subset(None), TypeError, "data_noun"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 1), ValueError, "n_classes"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 2.0), TypeError, "n_classes"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 2, [2, 1, 1]), TypeError, "sizes"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 2, (2, 1)), ValueError, "sizes"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 2, (2, 0, 1)), ValueError, "sizes"),
    (lambda: make_supersense_subset(synthetic_data_noun(), 2, (2, 1, 1), -1), ValueError, "seed"),
    (lambda: parse_supersense_tsv(3), TypeError, "text"),
])
def test_bad_input(call, exc, name):
    assert_rejected(call, exc, name)


def shipped_lines() -> list[str]:
    return SHIPPED.read_text(encoding="utf-8").split("\n")


def corrupt(edit) -> str:
    lines = shipped_lines()
    edit(lines)
    return "\n".join(lines)


def first_row(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith("train\t"))


@pytest.mark.parametrize("edit, match", [
    (lambda ls: ls.pop(first_row(ls) - 1), "header"),
    (lambda ls: ls.__setitem__(first_row(ls), ls[first_row(ls)] + "\textra"), "4 tab-separated"),
    (lambda ls: ls.__setitem__(first_row(ls), "dev" + ls[first_row(ls)][5:]), "split"),
    (lambda ls: ls.__setitem__(first_row(ls), ls[first_row(ls)].replace("noun.act",
                                                                       "noun.actt")), "noun.actt"),
    (lambda ls: ls.__setitem__(first_row(ls), "train\t1234\tnoun.act\tx: y"), "8-digit"),
    (lambda ls: ls.pop(first_row(ls)), "same number"),
    (lambda ls: ls.__setitem__(first_row(ls) + 1, ls[first_row(ls)]), "more than once"),
    (lambda ls: ls.__setitem__(first_row(ls), ls[first_row(ls)].rsplit("\t", 1)[0] + "\t "),
     "empty"),
])
def test_a_corrupted_file_is_refused(edit, match):
    with pytest.raises(ValueError, match=match):
        parse_supersense_tsv(corrupt(edit))


# --------------------------------------------------------------------------- the shipped file

def test_shipped_file_is_balanced_and_disjoint_by_synset():
    comments, rows = read_rows(SHIPPED.read_text(encoding="utf-8"))
    assert len(rows) == SUBSET_CLASSES * sum(SPLIT_SIZES) == 4000
    classes = sorted({r[2] for r in rows})
    assert len(classes) == 10 and set(classes) <= set(NOUN_LEXNAMES.values())
    counts = Counter((r[0], r[2]) for r in rows)
    sizes = dict(zip(SPLITS, (280, 60, 60), strict=True))
    assert counts == {(s, c): n for s, n in sizes.items() for c in classes}
    by_split = {s: {r[1] for r in rows if r[0] == s} for s in SPLITS}
    assert sum(len(v) for v in by_split.values()) == 4000      # no synset twice within a split
    assert not (by_split["train"] & by_split["validation"] or by_split["train"] & by_split["test"]
                or by_split["validation"] & by_split["test"])
    assert len({r[3] for r in rows}) == 4000                    # no text twice either
    for _, offset, _, text in rows:
        assert re.fullmatch(r"\d{8}", offset)
        lemma, sep, definition = text.partition(": ")
        assert sep and lemma.strip() and definition.strip() and "_" not in lemma
        assert '; "' not in definition                          # example sentences removed
    assert SHIPPED.stat().st_size < 500_000


def test_loader_returns_the_file_validated_and_cached():
    data = wordnet_supersenses()
    assert isinstance(data, SupersenseData)
    assert wordnet_supersenses() is data
    _, rows = read_rows(SHIPPED.read_text(encoding="utf-8"))
    classes = tuple(sorted({r[2] for r in rows}))
    assert data.classes == classes
    for split, pairs, offsets in zip(SPLITS, (data.train, data.validation, data.test),
                                     data.synsets, strict=True):
        mine = [r for r in rows if r[0] == split]
        assert list(pairs) == [(r[3], classes.index(r[2])) for r in mine]
        assert list(offsets) == [int(r[1]) for r in mine]
    assert isinstance(data.train, tuple) and isinstance(data.train[0], tuple)
    with pytest.raises(AttributeError):
        data.train = ()                                          # frozen
    assert supersense_file().resolve() == SHIPPED.resolve()


def test_the_licence_ships_beside_the_data_and_in_its_header():
    comments, _ = read_rows(SHIPPED.read_text(encoding="utf-8"))
    licence = LICENSE.read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in licence
    assert "THIS SOFTWARE AND DATABASE IS PROVIDED \"AS IS\"" in licence
    header = " ".join(c.lstrip("#") for c in comments)
    assert " ".join(words(licence)) in " ".join(words(header))


# --------------------------------------------------------------------------- with WordNet itself

def wordnet_source() -> Path | None:
    """Where this machine has WordNet 3.0's data.noun: $WORDNET_DATA_NOUN, an installed
    /usr/share/wordnet, or the wordnet-base .deb in apt's cache."""
    named = os.environ.get("WORDNET_DATA_NOUN")
    if named:
        assert Path(named).exists(), f"WORDNET_DATA_NOUN={named} does not exist"
        return Path(named)
    for candidate in [Path("/usr/share/wordnet/data.noun"),
                      *sorted(Path("/var/cache/apt/archives").glob("wordnet-base_*.deb"))]:
        if candidate.exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def wordnet_tree(tmp_path_factory) -> tuple[Path, Path]:
    """(source given to the script, folder holding data.noun, lexnames and the licence file)."""
    source = wordnet_source()
    if source is None:
        pytest.skip("WordNet's data.noun is not on this machine (set WORDNET_DATA_NOUN, or "
                    "apt-get download wordnet-base into /var/cache/apt/archives)")
    if source.suffix == ".deb":
        tree = tmp_path_factory.mktemp("wordnet")
        subprocess.run(["dpkg-deb", "-x", str(source), str(tree)], check=True)
        return source, tree
    return source, source if source.is_dir() else source.parent


def data_noun_of(tree: Path) -> Path:
    for candidate in (tree / "usr" / "share" / "wordnet" / "data.noun", tree / "data.noun"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"no data.noun under {tree}")


def test_regeneration_reproduces_the_shipped_file(wordnet_tree, tmp_path):
    source, _ = wordnet_tree
    out = tmp_path / "subset.tsv"
    run = subprocess.run([sys.executable, str(SCRIPT), str(source), "--output", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == SHIPPED.read_bytes()
    check = subprocess.run([sys.executable, str(SCRIPT), "--check", str(source)], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "identical" in check.stdout, check.stdout + check.stderr


def test_every_row_agrees_with_data_noun(wordnet_tree):
    """Each row read back from data.noun at its byte offset (the synset id), independently of
    the library's parser; the classes are the 10 largest lexicographer files."""
    _, tree = wordnet_tree
    raw = data_noun_of(tree).read_bytes()
    lex_count = Counter(line.split(b" ")[1] for line in raw.split(b"\n")
                        if line and not line.startswith(b"  "))
    _, rows = read_rows(SHIPPED.read_text(encoding="utf-8"))
    for _, offset, label, text in rows:
        start = int(offset)
        line = raw[start:raw.index(b"\n", start)].decode()
        fields = line.split(" ")
        assert fields[0] == offset and fields[2] == "n"
        assert NOUN_LEXNAMES[int(fields[1])] == label
        gloss = line.split(" | ", 1)[1]
        lemma, definition = text.split(": ", 1)
        assert lemma == fields[4].replace("_", " ")
        assert gloss.startswith(definition)
    largest = [int(k) for k, _ in lex_count.most_common(10)]
    assert sorted(NOUN_LEXNAMES[n] for n in largest) == sorted({r[2] for r in rows})
    assert lex_count.most_common(11)[9][1] > lex_count.most_common(11)[10][1]   # no tie at 10th


def test_lexnames_and_licence_match_the_package(wordnet_tree):
    _, tree = wordnet_tree
    man = tree / "usr" / "share" / "man" / "man5" / "lexnames.5WN.gz"
    copyright_file = tree / "usr" / "share" / "doc" / "wordnet-base" / "copyright"
    if not (man.is_file() and copyright_file.is_file()):
        pytest.skip("the lexnames page and the copyright file come with the .deb only")
    entries = re.findall(r"^(\d\d)\s+(noun\.\w+)", gzip.decompress(man.read_bytes()).decode(),
                         re.M)
    assert {int(n): name for n, name in entries} == NOUN_LEXNAMES
    text = copyright_file.read_text(encoding="utf-8")
    paragraph = text.split("License: WordNet3.0\n", 1)[1].split("\n\n", 1)[0]
    expected = "\n".join("" if line == " ." else line[1:] for line in paragraph.split("\n"))
    assert LICENSE.read_text(encoding="utf-8") == expected.rstrip("\n") + "\n"
