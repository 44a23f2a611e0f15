"""Presenting results in the chapters: tables that render as tables, numbers for the prose, and
the figure style of the book.

* :class:`Table` — rows of already formatted cells. In a notebook it displays as an HTML table
  (which scrolls inside its own box on a narrow screen, instead of a wide block of monospace
  text); its plain-text form is the same table aligned in columns, for a terminal or a test.
* :func:`percent` — a fraction as a percentage for a sentence: ``percent(0.7083) == "70.8 %"``.
* :data:`BOOK_FIGURE_STYLE` — the matplotlib settings of the book's figures, for
  ``plt.style.use(BOOK_FIGURE_STYLE)``: a figure 6.4 in wide at most, text at 10–11 pt, so that
  a figure shrunk to a phone's 390 px column still has legible labels. Nothing here changes a
  global setting by itself: a chapter applies the style in its set-up cell.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type,
``ValueError`` for a wrong value).
"""

from __future__ import annotations

import html
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from lora_edu.checks import check_instance, check_int

__all__ = ["Table", "percent", "BOOK_FIGURE_STYLE", "PHONE_READABLE_WIDTH_IN"]

#: The widest figure (inches) the book draws: at 100 dpi it is 640 CSS px, so a phone's column
#: of about 350 px shows it at 0.55×, and 10 pt text (14 px) stays about 7.6 px high.
PHONE_READABLE_WIDTH_IN = 6.4

#: matplotlib rc settings of the book's figures (a plain dict: ``plt.style.use`` takes it).
BOOK_FIGURE_STYLE: dict[str, object] = {
    "figure.figsize": (PHONE_READABLE_WIDTH_IN, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9.5,
    "figure.titlesize": 11.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.constrained_layout.use": True,
}


def percent(x: float, decimals: int = 1) -> str:
    """``x`` (a fraction) as a percentage with ``decimals`` digits: ``percent(0.7083) == "70.8 %"``.

    The space before ``%`` follows the book's style (SI: a space between number and unit).
    """
    check_instance("x", x, numbers.Real)
    if isinstance(x, bool):
        raise TypeError("x must be a number, got bool")
    check_int("decimals", decimals, minimum=0)
    return f"{100 * float(x):.{decimals}f} %"


@dataclass(frozen=True)
class Table:
    """A table of strings for a notebook: ``headers`` and ``rows`` of already formatted cells.

    ``align`` gives each column ``"l"`` or ``"r"`` (default: the first column left, the others
    right, as for a label followed by numbers); ``caption`` is an optional line above the table.
    Displayed in Jupyter, ``_repr_html_`` gives an HTML table inside a ``div`` of class
    ``lora-edu-table`` (the book's style sheet lets it scroll sideways on a narrow screen);
    ``str(table)`` gives the same cells as aligned plain text.
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    align: str | None = None
    caption: str | None = None

    def __post_init__(self) -> None:
        check_instance("headers", self.headers, (list, tuple))
        check_instance("rows", self.rows, (list, tuple))
        if not self.headers:
            raise ValueError("headers must name at least one column")
        for i, row in enumerate(self.rows):
            check_instance(f"rows[{i}]", row, (list, tuple))
            if len(row) != len(self.headers):
                raise ValueError(f"rows[{i}] has {len(row)} cells for {len(self.headers)} "
                                 "headers")
        if self.align is not None:
            check_instance("align", self.align, str)
            if len(self.align) != len(self.headers) or set(self.align) - {"l", "r"}:
                raise ValueError(f"align must be one 'l' or 'r' per column "
                                 f"({len(self.headers)}), got {self.align!r}")
        if self.caption is not None:
            check_instance("caption", self.caption, str)

    @property
    def alignment(self) -> str:
        """One ``"l"``/``"r"`` per column (``align`` or the default)."""
        return self.align or "l" + "r" * (len(self.headers) - 1)

    def cells(self) -> list[list[str]]:
        """The header row and the rows, every cell as a string."""
        return [[str(h) for h in self.headers]] + [[str(c) for c in row] for row in self.rows]

    def __str__(self) -> str:
        table = self.cells()
        widths = [max(len(row[j]) for row in table) for j in range(len(self.headers))]

        def line(row: list[str]) -> str:
            cells = zip(row, widths, self.alignment, strict=True)
            return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in cells).rstrip()

        lines = [self.caption] if self.caption else []
        lines += [line(table[0]), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in table[1:]]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        style = {"l": "left", "r": "right"}

        def row_html(row: list[str], tag: str) -> str:
            cells = "".join(f'<{tag} style="text-align:{style[a]}">{html.escape(c)}</{tag}>'
                            for c, a in zip(row, self.alignment, strict=True))
            return f"<tr>{cells}</tr>"

        table = self.cells()
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        body = "".join(row_html(row, "td") for row in table[1:])
        return (f'<div class="lora-edu-table"><table>{caption}<thead>'
                f'{row_html(table[0], "th")}</thead><tbody>{body}</tbody></table></div>')
