"""Constants in the library reference (book/api/): their documentation and their values.

A package re-exports its submodules' names (``lora_edu.quant.NF4_OFFSET`` is defined in
``lora_edu/quant/codes.py``) and is documented under that one import path. autodoc reads a
constant's ``#:`` comment from the module it documents, so for a package it would find none, and
would then show the docstring of the constant's *type* (``int``'s, ``tuple``'s, a dataclass's)
as if it described the constant; and it leaves out a module's constant without a ``#:`` comment
altogether. This extension replaces autodoc's data documenter by one that

* documents every constant a module's ``__all__`` lists,
* reads the ``#:`` comment from the module that defines the constant (the submodule whose
  ``__all__`` lists it) when the documented module has none,
* shows no text rather than the docstring of the constant's type, and
* leaves out the ``= value`` of a constant whose value is longer than ``MAX_VALUE_CHARS``
  characters (the paper tables, the figure style): such a value would be one unreadable line;
* keeps napoleon from taking the words before a colon in the first line of a constant's,
  attribute's or property's documentation for its type.

It also keeps the reference pages' stored doctrees small: MyST parses an ``{eval-rst}`` block as
a separate docutils document, and the nodes made there keep a reference to it — and through its
settings to the whole build environment, which Sphinx then pickled into every reference page's
doctree (megabytes each, unpickled again on every read: seconds of build time).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.ext.autodoc import DataDocumenter, ModuleDocumenter
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.inspect import object_description

#: A constant whose value is printed in more characters than this is shown without its value.
MAX_VALUE_CHARS = 100


def _defining_comment(package: str, name: str) -> list[str] | None:
    """The ``#:`` comment of ``name`` in the submodule of ``package`` whose ``__all__`` lists it
    (a submodule the package has imported: the one its name comes from)."""
    for modname, module in sorted(sys.modules.items()):
        if modname.startswith(package + ".") and name in getattr(module, "__all__", ()):
            analyzer = ModuleAnalyzer.for_module(modname)
            analyzer.analyze()
            comment = analyzer.attr_docs.get(("", name))
            return list(comment) if comment else None
    return None


class ConstantDocumenter(DataDocumenter):
    """autodoc's module-level data documenter, with the changes of the module docstring."""

    @classmethod
    def can_document_member(cls, member: Any, membername: str, isattr: bool, parent: Any) -> bool:
        # autodoc takes a module's constant for data only if the documented module's source has a
        # ``#:`` comment for it, and otherwise leaves it out silently: every constant of a
        # package, and every uncommented one, would be missing from the reference.
        return isinstance(parent, ModuleDocumenter) and (isattr or not (
            inspect.isroutine(member) or inspect.isclass(member) or inspect.ismodule(member)))

    def get_module_comment(self, attrname: str) -> list[str] | None:
        return super().get_module_comment(attrname) or _defining_comment(self.modname, attrname)

    def get_doc(self) -> list[list[str]] | None:
        comment = self.get_module_comment(self.objpath[-1])
        if comment:
            return [comment]
        own = getattr(self.object, "__doc__", None)
        if own is None or own == getattr(type(self.object), "__doc__", None):
            return []
        return super().get_doc()

    def should_suppress_value_header(self) -> bool:
        if super().should_suppress_value_header():
            return True
        try:
            return len(object_description(self.object)) > MAX_VALUE_CHARS
        except ValueError:
            return True


#: The kinds of object whose documentation napoleon must leave as written: its "type: text" reading
#: of a first line would take the prose before a colon for a type (the library's types are
#: annotations, shown by autodoc).
PLAIN_KINDS = ("data", "attribute", "property")
_as_written: dict[tuple[str, str], list[str]] = {}


def remember_text(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                  lines: list[str]) -> None:
    if what in PLAIN_KINDS:
        _as_written[what, name] = list(lines)


def restore_text(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                 lines: list[str]) -> None:
    if what in PLAIN_KINDS and (what, name) in _as_written:
        lines[:] = _as_written.pop((what, name))


def adopt_nested_nodes(app: Sphinx, doctree: nodes.document) -> None:
    """Point every node that an ``{eval-rst}`` block made at the page's own document."""
    for node in doctree.findall():
        if node.__dict__.get("_document") not in (None, doctree):
            node.document = doctree


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.autodoc")
    app.add_autodocumenter(ConstantDocumenter, override=True)
    app.connect("doctree-read", adopt_nested_nodes)
    # around napoleon (priority 500), which would turn a constant's "text: more" into a type
    app.connect("autodoc-process-docstring", remember_text, priority=400)
    app.connect("autodoc-process-docstring", restore_text, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
