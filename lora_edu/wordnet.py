"""Real text for fine-tuning: WordNet 3.0 noun supersenses, a small labelled set shipped offline.

Source §2.3 applies LoRA to the attention matrices of a pretrained language model and trains it on
a downstream task. The task here is a real one with real text: Princeton WordNet 3.0 (Miller 1995;
Fellbaum 1998) files every noun synset under one of 26 *lexicographer files*, ``noun.animal``,
``noun.artifact``, ``noun.person``, … — the noun **supersenses** (Ciaramita & Johnson 2003). Given
the text ``"lemma: gloss"`` of a synset, e.g. ``"transgene: an exogenous gene introduced into the
genome of another organism"``, predict its supersense.

The subset that ships in ``lora_edu/data/wordnet_supersenses.tsv`` (with WordNet's licence, which
the file also carries in its header) was made by :func:`make_supersense_subset` from the
``data.noun`` file of Debian's ``wordnet-base`` package (``scripts/make_wordnet_subset.py``
regenerates it byte for byte):

- the :data:`SUBSET_CLASSES` = 10 largest noun lexicographer files by number of synsets;
- one example per synset: its first lemma (underscores → spaces), ``": "``, and its gloss without
  the example sentences (:func:`gloss_definition`); a synset whose text is not unique is dropped;
- per class, the synsets are ranked by the SHA-256 of ``"{seed}:{offset}"`` (a fixed,
  library-independent shuffle, seed :data:`SUBSET_SEED`); the first 280 are the training split,
  the next 60 validation, the next 60 test (:data:`SPLIT_SIZES`). The splits are disjoint **by
  synset**: no synset (and no text) is in two splits.

:func:`wordnet_supersenses` returns the splits as a :class:`SupersenseData` (validated, cached).
Only the standard library and :mod:`lora_edu.checks` are used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lora_edu.checks import check_instance, check_int, check_seed

__all__ = [
    "NOUN_LEXNAMES",
    "SPLITS",
    "SPLIT_SIZES",
    "SUBSET_CLASSES",
    "SUBSET_SEED",
    "NounSynset",
    "SupersenseData",
    "parse_data_noun",
    "data_noun_notice",
    "gloss_definition",
    "synset_text",
    "make_supersense_subset",
    "parse_supersense_tsv",
    "supersense_file",
    "wordnet_supersenses",
]

#: The 26 noun lexicographer files of WordNet 3.0 by number (lexnames(5WN)): the noun supersenses.
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event",
    12: "noun.feeling", 13: "noun.food", 14: "noun.group", 15: "noun.location",
    16: "noun.motive", 17: "noun.object", 18: "noun.person", 19: "noun.phenomenon",
    20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
}
#: The names of the three splits, in file order.
SPLITS = ("train", "validation", "test")
#: Examples per class in each split (train, validation, test): 400 synsets per class.
SPLIT_SIZES = (280, 60, 60)
#: Number of classes: the largest noun lexicographer files.
SUBSET_CLASSES = 10
#: The seed of the shipped subset's shuffle.
SUBSET_SEED = 0

_FILE_NAME = "wordnet_supersenses.tsv"
_COLUMNS = ("split", "synset", "supersense", "text")
_EXAMPLE = re.compile(r';\s*"')          # where a gloss's quoted example sentences begin


@dataclass(frozen=True)
class NounSynset:
    """One line of WordNet's ``data.noun``: a noun synset.

    ``offset``: the synset's byte offset in ``data.noun`` (its id); ``lexname``: its lexicographer
    file, the supersense (``"noun.animal"``); ``lemmas``: its words as stored (underscores for
    spaces); ``gloss``: the text after ``" | "`` (definition and example sentences).
    """

    offset: int
    lexname: str
    lemmas: tuple[str, ...]
    gloss: str


@dataclass(frozen=True)
class SupersenseData:
    """The supersense task's splits: each a tuple of ``(text, label)`` pairs.

    ``label`` is an index into ``classes`` (the supersense names, e.g. ``"noun.animal"``, sorted).
    ``synsets`` holds the WordNet offsets of ``train``, ``validation`` and ``test`` in the same
    order as the pairs (three tuples), so that disjointness by synset can be checked.
    """

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    validation: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]
    synsets: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _parse_line(line: str, number: int) -> NounSynset:
    """One synset line of data.noun (wndb(5WN)):
    ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id …] p_cnt [ptr …] | gloss``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"text line {number} is not a data.noun synset line ({why}): "
                          f"{line[:80]!r}")

    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise bad("no ' | ' before the gloss")
    fields = head.split()
    if len(fields) < 6:
        raise bad("too few fields")
    offset, lex, ss_type, w_cnt = fields[:4]
    if not (len(offset) == 8 and offset.isdigit()):
        raise bad("the offset must have 8 digits")
    if not (len(lex) == 2 and lex.isdigit() and int(lex) in NOUN_LEXNAMES):
        raise bad(f"lex_filenum {lex!r} is not a noun lexicographer file")
    if ss_type != "n":
        raise bad(f"ss_type {ss_type!r} is not 'n'")
    try:
        n_words = int(w_cnt, 16)
    except ValueError:
        raise bad("w_cnt must be hexadecimal") from None
    if n_words < 1 or len(fields) < 4 + 2 * n_words + 1:
        raise bad("w_cnt does not match the words")
    lemmas = tuple(fields[4:4 + 2 * n_words:2])
    p_cnt = fields[4 + 2 * n_words]
    if not (len(p_cnt) == 3 and p_cnt.isdigit()):
        raise bad("p_cnt must have 3 digits")
    if len(fields) != 4 + 2 * n_words + 1 + 4 * int(p_cnt):
        raise bad("p_cnt does not match the pointers")
    return NounSynset(int(offset), NOUN_LEXNAMES[int(lex)], lemmas, gloss.strip())


def parse_data_noun(text: str) -> list[NounSynset]:
    """Every synset of a WordNet ``data.noun`` file, in file order.

    ``text``: the file's contents (or any of its lines). Lines that begin with two spaces are the
    licence header and are skipped; every other non-empty line must be a synset line, else a
    ``ValueError`` names it.
    """
    check_instance("text", text, str)
    synsets = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith("  ") or not line.strip():
            continue
        synsets.append(_parse_line(line, number))
    return synsets


def data_noun_notice(text: str) -> list[str]:
    """The copyright notice and licence at the head of ``data.noun``, one string per line.

    The header lines look like ``"  14 WordNet 3.0 Copyright 2006 by Princeton University. …"``;
    the leading line numbers and trailing spaces are removed (an empty header line stays empty).
    """
    check_instance("text", text, str)
    notice = []
    for line in text.split("\n"):
        if not line.startswith("  "):
            break
        notice.append(re.sub(r"^\s*\d+ ?", "", line).rstrip())
    return notice


def gloss_definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: the text before its first quoted example.

    A gloss is ``definition; "example"; "example"``; the definition ends where ``;`` followed by
    ``"`` first occurs. Surrounding spaces and a trailing ``;`` are removed. (A handful of
    WordNet's 82,115 noun glosses introduce an example otherwise, e.g. with ``: "``; they are kept
    as written.)
    """
    check_instance("gloss", gloss, str)
    return _EXAMPLE.split(gloss, maxsplit=1)[0].strip().rstrip(";").rstrip()


def synset_text(synset: NounSynset) -> str:
    """The example text of a synset: ``"{first lemma}: {definition}"``, underscores → spaces."""
    check_instance("synset", synset, NounSynset)
    return f"{synset.lemmas[0].replace('_', ' ')}: {gloss_definition(synset.gloss)}"


def _rank_key(seed: int, offset: int) -> str:
    return hashlib.sha256(f"{seed}:{offset:08d}".encode("ascii")).hexdigest()


def make_supersense_subset(data_noun: str, n_classes: int = SUBSET_CLASSES,
                           sizes: tuple[int, int, int] = SPLIT_SIZES,
                           seed: int = SUBSET_SEED) -> str:
    """The contents of the shipped TSV file, made from the text of WordNet's ``data.noun``.

    Takes the ``n_classes`` largest noun lexicographer files (ties by name), one example per
    synset (:func:`synset_text`; synsets whose text occurs twice among these classes are dropped),
    ranks each class's synsets by ``sha256(f"{seed}:{offset:08d}")`` and cuts the first
    ``sum(sizes)`` into train / validation / test (:data:`SPLITS`). The file starts with the
    database's own notice (:func:`data_noun_notice`) as ``#`` comment lines, then a header row
    ``split synset supersense text`` and one tab-separated row per example, ordered by split,
    supersense (sorted) and offset; ``\\n`` line ends. Deterministic: the same ``data.noun`` gives
    the same bytes.
    """
    check_instance("data_noun", data_noun, str)
    n_classes = check_int("n_classes", n_classes, 2, len(NOUN_LEXNAMES))
    check_instance("sizes", sizes, tuple)
    if len(sizes) != len(SPLITS):
        raise ValueError(f"sizes must hold {len(SPLITS)} ints (train, validation, test), got "
                         f"{sizes!r}")
    sizes = tuple(check_int("sizes", s, 1) for s in sizes)
    seed = check_seed("seed", seed)
    notice = data_noun_notice(data_noun)
    if not any("WordNet 3.0 Copyright" in line for line in notice):
        raise ValueError("data_noun must be WordNet 3.0's data.noun, with its licence header")
    synsets = parse_data_noun(data_noun)
    counts = Counter(s.lexname for s in synsets)
    classes = sorted(sorted(counts, key=lambda name: (-counts[name], name))[:n_classes])
    chosen = [s for s in synsets if s.lexname in classes]
    texts = Counter(synset_text(s) for s in chosen)
    rows: list[tuple[int, str, int, str]] = []
    for label in classes:
        pool = [s for s in chosen if s.lexname == label and texts[synset_text(s)] == 1]
        if len(pool) < sum(sizes):
            raise ValueError(f"sizes ask for {sum(sizes)} synsets of {label}, which has "
                             f"{len(pool)}")
        pool.sort(key=lambda s: _rank_key(seed, s.offset))
        start = 0
        for split, size in enumerate(sizes):
            rows += [(split, label, s.offset, synset_text(s)) for s in pool[start:start + size]]
            start += size
    rows.sort()
    lines = [f"# {line}".rstrip() for line in notice]
    lines.append(f"# Derived from WordNet 3.0 data.noun by scripts/make_wordnet_subset.py: "
                 f"{n_classes} supersenses x {'/'.join(map(str, sizes))} synsets, seed {seed}.")
    lines.append("\t".join(_COLUMNS))
    lines += [f"{SPLITS[split]}\t{offset:08d}\t{label}\t{text}"
              for split, label, offset, text in rows]
    return "\n".join(lines) + "\n"


def parse_supersense_tsv(text: str) -> SupersenseData:
    """Read and validate the contents of a subset file made by :func:`make_supersense_subset`.

    Checks the header row, four fields per row, known split and supersense names, no synset or
    text twice, and a balanced split (every class has the same number of examples in a split);
    a ``ValueError`` names the first problem (and its line). Labels index the sorted class names.
    """
    check_instance("text", text, str)
    rows: list[tuple[str, int, str, str]] = []
    header_seen = False
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith("#") or not line:
            continue
        fields = line.split("\t")
        if not header_seen:
            if tuple(fields) != _COLUMNS:
                raise ValueError(f"text line {number} must be the header {_COLUMNS}, got "
                                 f"{tuple(fields)}")
            header_seen = True
            continue
        if len(fields) != len(_COLUMNS):
            raise ValueError(f"text line {number} must have {len(_COLUMNS)} tab-separated "
                             f"fields, got {len(fields)}")
        split, synset, label, example = fields
        if split not in SPLITS:
            raise ValueError(f"text line {number}: split must be one of {SPLITS}, got {split!r}")
        if not (len(synset) == 8 and synset.isdigit()):
            raise ValueError(f"text line {number}: synset must be an 8-digit offset, got "
                             f"{synset!r}")
        if label not in NOUN_LEXNAMES.values():
            raise ValueError(f"text line {number}: supersense {label!r} is not a noun "
                             f"lexicographer file")
        if not example.strip():
            raise ValueError(f"text line {number}: the text is empty")
        rows.append((split, int(synset), label, example))
    if not rows:
        raise ValueError("text holds no examples")
    for what, index in (("synset", 1), ("text", 3)):
        repeated = [v for v, c in Counter(r[index] for r in rows).items() if c > 1]
        if repeated:
            raise ValueError(f"text holds the {what} {repeated[0]!r} more than once")
    classes = tuple(sorted({r[2] for r in rows}))
    for split in SPLITS:
        per_class = Counter(r[2] for r in rows if r[0] == split)
        if len(set(per_class[c] for c in classes)) != 1 or per_class[classes[0]] == 0:
            raise ValueError(f"text's {split} split must hold the same number (≥ 1) of examples "
                             f"of every class, got {dict(per_class)}")
    index = {name: i for i, name in enumerate(classes)}
    parts = {split: [r for r in rows if r[0] == split] for split in SPLITS}
    pairs = [tuple((r[3], index[r[2]]) for r in parts[split]) for split in SPLITS]
    offsets = tuple(tuple(r[1] for r in parts[split]) for split in SPLITS)
    return SupersenseData(classes, *pairs, synsets=offsets)


def supersense_file() -> Path:
    """Path of the shipped subset file ``wordnet_supersenses.tsv`` (package data of lora_edu)."""
    return Path(str(importlib.resources.files("lora_edu").joinpath("data", _FILE_NAME)))


@functools.lru_cache(maxsize=1)
def wordnet_supersenses() -> SupersenseData:
    """The shipped WordNet supersense task: 10 classes × (280 train, 60 validation, 60 test).

    Read from :func:`supersense_file` and validated by :func:`parse_supersense_tsv` on first
    call; later calls return the same (immutable) object. Texts are ``"lemma: definition"``
    (e.g. ``"transgene: an exogenous gene introduced into the genome of another organism"``),
    labels index ``classes`` (``noun.act``, ``noun.animal``, …, sorted).
    """
    data = parse_supersense_tsv(supersense_file().read_text(encoding="utf-8"))
    if len(data.classes) != SUBSET_CLASSES:
        raise ValueError(f"{supersense_file()} must hold {SUBSET_CLASSES} classes, got "
                         f"{len(data.classes)}")
    sizes = tuple(len(split) // SUBSET_CLASSES
                  for split in (data.train, data.validation, data.test))
    if sizes != SPLIT_SIZES:
        raise ValueError(f"{supersense_file()} must hold {SPLIT_SIZES} examples per class, got "
                         f"{sizes}")
    return data
