"""Number figures, tables and exercises per chapter: "Figure 4.2", "Exercise 7.3".

Chapter numbers are fixed by the file names (``book/04_nf4.ipynb`` is chapter 4), not by the
position in the table of contents, so they stay right while some chapters are still missing.
Sphinx numbers enumerable nodes across the whole book unless the toctree itself is numbered;
this extension renumbers them inside each chapter after Sphinx has assigned its numbers, so that
``{numref}`` and ``{ref}`` show the per-chapter numbers too.
"""

from __future__ import annotations

import re

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

CHAPTER = re.compile(r"(?:^|/)(\d\d)_[^/]+$")


def renumber(app: Sphinx, env: BuildEnvironment) -> list[str]:
    for docname, by_type in env.toc_fignumbers.items():
        match = CHAPTER.search(docname)
        if not match:
            continue
        chapter = int(match.group(1))
        for numbers in by_type.values():
            ordered = sorted(numbers, key=lambda ident: numbers[ident])
            for i, ident in enumerate(ordered, start=1):
                numbers[ident] = (chapter, i)
    return []


def setup(app: Sphinx) -> dict:
    # after Sphinx's own TocTreeCollector has assigned book-wide numbers (priority 500)
    app.connect("env-get-updated", renumber, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
