"""lora_edu.report: tables that display as HTML tables, percentages, the figure style."""

from __future__ import annotations

import html.parser

import numpy as np
import pytest

from lora_edu.report import BOOK_FIGURE_STYLE, PHONE_READABLE_WIDTH_IN, Table, percent


class _Cells(html.parser.HTMLParser):
    """Collects the text of every th/td, row by row (an independent reading of the HTML)."""

    def __init__(self):
        super().__init__()
        self.rows, self.inside, self.tags = [], False, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("th", "td"):
            self.rows[-1].append("")
            self.inside = True

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.rows[-1][-1] += data


def test_html_table_has_every_cell_escaped_in_order():
    table = Table(["method", "acc"], [["LoRA <r=8>", "0.87"], ["full & all", 1]],
                  caption="test accuracy")
    parser = _Cells()
    parser.feed(table._repr_html_())
    assert parser.rows == [["method", "acc"], ["LoRA <r=8>", "0.87"], ["full & all", "1"]]
    assert parser.tags[:2] == ["div", "table"] and "caption" in parser.tags
    assert 'class="lora-edu-table"' in table._repr_html_()


def test_plain_text_is_aligned_by_column():
    text = str(Table(("name", "n"), [("a", 10), ("bbb", 2)]))
    assert text.splitlines() == ["name   n", "----  --", "a     10", "bbb    2"]
    right = str(Table(("xx", "y"), [("1", "22")], align="rr"))
    assert right.splitlines()[2] == " 1  22"


@pytest.mark.parametrize("kwargs, exc", [
    (dict(headers="ab", rows=[]), TypeError),
    (dict(headers=[], rows=[]), ValueError),
    (dict(headers=["a"], rows=["x"]), TypeError),
    (dict(headers=["a", "b"], rows=[["x"]]), ValueError),
    (dict(headers=["a"], rows=[], align="c"), ValueError),
    (dict(headers=["a"], rows=[], align="lr"), ValueError),
    (dict(headers=["a"], rows=[], caption=3), TypeError),
])
def test_table_rejects_bad_input(kwargs, exc):
    with pytest.raises(exc):
        Table(**kwargs)


def test_percent():
    assert percent(0.7083) == "70.8 %"
    assert percent(np.float32(0.25), 0) == "25 %"
    assert percent(1) == "100.0 %"
    for bad, exc in [("0.5", TypeError), (True, TypeError)]:
        with pytest.raises(exc):
            percent(bad)
    with pytest.raises(ValueError):
        percent(0.5, -1)


def test_figure_style_is_accepted_by_matplotlib_and_phone_sized():
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(BOOK_FIGURE_STYLE):      # matplotlib validates every key
        width_in = Figure().get_size_inches()[0]
    assert width_in == PHONE_READABLE_WIDTH_IN
    # 10 pt text at 100 dpi shrunk from the figure's width to a 350 px column: >= 7 px high
    smallest = min(v for k, v in BOOK_FIGURE_STYLE.items() if k.endswith("size")
                   and isinstance(v, float | int))
    assert smallest * 100 / 72 * 350 / (width_in * 100) >= 7
