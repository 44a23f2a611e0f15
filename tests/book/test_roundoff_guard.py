"""Compared outputs print nothing that another CPU would print differently.

nbval compares the stored outputs of every cell not marked ``# NBVAL_IGNORE_OUTPUT`` with a fresh
run, on whatever CPU the reader has. A value that is pure round-off (a residual of 1e-31, an
orthogonality error of 4e-17) has digits that change with the order of a float sum, so a compared
output must print it as a bound (``< 1e-20``), never as digits. The same holds for a float
printed with more significant digits than a float64 computation can keep across kernels.
Running the notebooks under two kernel settings (scripts/check.sh) catches some of these; this
static guard catches every one, on any machine.
"""

from __future__ import annotations

import re

import pytest
from helpers import compared_cells, output_texts, page_path, toc_files

TINY = 1e-10            # below this, a printed nonzero float is round-off, not a result
MAX_SIGNIFICANT = 12    # float64 keeps ~16 digits; a sum in another order keeps fewer

_SCI = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?[eE][-+]?\d+(?![\w.])")
_LONG = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w]|\.\d)")
_BOUND = re.compile(r"(?:[<≤]|\bbelow|\bunder|\bwithin)\s*$")


def roundoff_prints(text: str) -> list[str]:
    """The floats in ``text`` that are round-off printed as digits: nonzero values below
    ``TINY`` in magnitude, unless written as a bound (``< 4e-20``, ``below 1e-12``) or as a
    power of ten (``1e-12``: a tolerance, not a measurement), and floats with more than
    ``MAX_SIGNIFICANT`` significant digits."""
    found = []
    for m in _SCI.finditer(text):
        value = float(m.group())
        is_tolerance = re.fullmatch(r"[-+]?1(?:\.0*)?", m.group().lower().split("e")[0])
        if (value != 0 and abs(value) < TINY and not is_tolerance
                and not _BOUND.search(text[: m.start()])):
            found.append(m.group())
    for m in _LONG.finditer(text):
        digits = m.group().lstrip("+-").replace(".", "").lstrip("0")
        if len(digits.rstrip("0")) > MAX_SIGNIFICANT:
            found.append(m.group())
    return found


NOTEBOOKS = [p for p in map(page_path, toc_files()) if p.suffix == ".ipynb"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_compared_outputs_print_no_roundoff(nb):
    bad = []
    for index, cell in compared_cells(nb):
        for text in output_texts(cell):
            bad += [f"cell {index}: {v}" for v in roundoff_prints(text)]
    assert not bad, (f"{nb.name}: compared outputs print round-off as digits (print a bound "
                     f"such as '< 1e-20', or mark the cell # NBVAL_IGNORE_OUTPUT): {bad}")


def test_the_guard_finds_roundoff_and_passes_results():
    assert roundoff_prints("R(orthonormal P, Q) = 3.91e-31") == ["3.91e-31"]
    assert roundoff_prints("residual -4.4e-17 and 1e-12 relative") == ["-4.4e-17"]
    assert roundoff_prints("0.30000000000000004") == ["0.30000000000000004"]
    assert roundoff_prints("error < 1e-20, lr 1e-3, 65/512 = 0.126953125, 2.5e+06 values") == []
    assert roundoff_prints("max |ours - ref| <= 1e-12; 0.0 exactly") == []
    assert roundoff_prints("orthogonality error 4e-17, below 5e-16 is fine") == ["4e-17"]
