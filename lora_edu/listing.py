"""Code listings for the book: the source of a library function as it is now.

The chapters show the lines of ``lora_edu`` that *are* a method (LoRA's forward, AdaLoRA's
importance update, the paging of ``PagedAdamW.step``, …) by printing them from the installed
source, so a page can never show code that differs from what ran. :func:`source_listing` returns
that text without the docstring (the chapter's prose explains what the docstring would), and can
cut out the lines between two markers, so a long function is shown in readable pieces.
:func:`show_source` wraps it for a notebook: a :class:`Listing` displays as a highlighted Python
block under the name of what it shows, and records that name and the markers in the output's
metadata, so a test can check that every listing stored in a chapter is still the library's source.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from lora_edu.checks import check_instance

__all__ = ["source_listing", "show_source", "resolve_listing_name", "Listing",
           "LISTING_METADATA_KEY"]

#: The key under which a displayed :class:`Listing` stores what it shows in the output metadata.
LISTING_METADATA_KEY = "lora_edu.listing"


def _drop_docstring(source: str) -> str:
    """``source`` (one dedented def or class) without the docstring of that def or class."""
    node = ast.parse(source).body[0]
    body = node.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        lines = source.splitlines()
        del lines[body[0].lineno - 1:body[0].end_lineno]
        return "\n".join(lines)
    return source.rstrip("\n")


def source_listing(obj: Callable | type, *, docstring: bool = False, start: str | None = None,
                   stop: str | None = None) -> str:
    """The source of ``obj`` as it is in the installed library, dedented, as one string.

    Parameters
    ----------
    obj:
        A function, a method (bound or not, ``staticmethod`` and ``classmethod`` included, or
        ``property``'s getter) or a class defined in a Python file.
    docstring:
        A bool: keep the docstring (default: drop it; comments stay).
    start, stop:
        Optional strings: keep only the lines from the first one containing ``start`` (default:
        the first line) through the first line after it containing ``stop`` (default: the last
        line). ``ValueError`` if a marker is not in the listing.

    Returns
    -------
    str
        The lines, without a trailing newline. The first line of a full listing is the
        ``def``/``class`` line (decorators above it included).
    """
    obj = _target(obj)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        raise TypeError(f"obj must be a function, method or class, got {type(obj).__name__}")
    check_instance("docstring", docstring, bool)
    for name, marker in (("start", start), ("stop", stop)):
        if marker is not None:
            check_instance(name, marker, str)
            if not marker:
                raise ValueError(f"{name} must be a non-empty string")
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise ValueError(f"no source file for {obj.__qualname__}: {exc}") from None
    text = source.rstrip("\n") if docstring else _drop_docstring(source)
    lines = text.splitlines()
    first = 0
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"start {start!r} is not in the listing of {obj.__qualname__}")
    last = len(lines) - 1
    if stop is not None:
        last = next((i for i in range(first, len(lines)) if stop in lines[i]), None)
        if last is None:
            raise ValueError(f"stop {stop!r} is not in the listing of {obj.__qualname__} "
                             f"after {start!r}")
    return textwrap.dedent("\n".join(lines[first:last + 1]))


@dataclass(frozen=True)
class Listing:
    """A code listing for a notebook: ``code`` is the source of ``name`` (module + qualified
    name), cut between ``start`` and ``stop`` (``None``: from the first line / to the last).

    Displayed in Jupyter it is Markdown — a line naming the module and the function, then the code
    as a fenced ``python`` block, which the book highlights — with ``name``, ``start`` and ``stop``
    in the output's metadata under :data:`LISTING_METADATA_KEY`. Its plain-text form is the code.
    """

    name: str
    code: str
    start: str | None = None
    stop: str | None = None

    @property
    def module(self) -> str:
        """The module the listed object is defined in (the ``name`` up to the qualified name)."""
        return self.name.split(":")[0]

    @property
    def qualname(self) -> str:
        """The listed object's qualified name inside its module, e.g. ``LoRALinear.forward``."""
        return self.name.split(":")[1]

    def _repr_markdown_(self) -> tuple[str, dict]:
        part = "" if self.start is None and self.stop is None else " (excerpt)"
        text = (f"`{self.qualname}` from `{self.module}`{part}\n\n"
                f"```python\n{self.code}\n```\n")
        meta = {LISTING_METADATA_KEY: {"name": self.name, "start": self.start, "stop": self.stop}}
        return text, meta

    def __repr__(self) -> str:
        return self.code


def show_source(obj: Callable | type, *, start: str | None = None,
                stop: str | None = None) -> Listing:
    """The :class:`Listing` of ``obj`` as the installed library has it now, docstring dropped.

    ``start`` and ``stop`` are :func:`source_listing`'s markers; the listing's ``name`` is
    ``"module:qualname"`` (e.g. ``"lora_edu.lora.layer:LoRALinear.forward"``), which
    :func:`resolve_listing_name` turns back into the object.
    """
    code = source_listing(obj, start=start, stop=stop)
    target = _target(obj)
    return Listing(f"{target.__module__}:{target.__qualname__}", code, start, stop)


def _target(obj: object) -> Callable | type:
    """The function or class whose source :func:`source_listing` reads for ``obj``."""
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return inspect.unwrap(getattr(obj, "__func__", obj))


def resolve_listing_name(name: str) -> Callable | type:
    """The object a :class:`Listing` name ``"module:qualname"`` refers to."""
    import importlib

    check_instance("name", name, str)
    if name.count(":") != 1:
        raise ValueError(f"name must be 'module:qualname', got {name!r}")
    module_name, qualname = name.split(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    return obj
