"""Code listings for the book: the source of a library function as it is now.

The chapters show the lines of ``lora_edu`` that *are* a method (LoRA's forward, AdaLoRA's
importance update, the paging of ``PagedAdamW.step``, …) by printing them from the installed
source, so a page can never show code that differs from what ran. :func:`source_listing` returns
that text without the docstring (the chapter's prose explains what the docstring would), and can
cut out the lines between two markers, so a long function is shown in readable pieces.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type, ``ValueError``
for a wrong value).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable

from lora_edu.checks import check_instance

__all__ = ["source_listing"]


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
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    obj = inspect.unwrap(getattr(obj, "__func__", obj))
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
