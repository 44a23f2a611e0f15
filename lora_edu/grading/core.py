"""What every checker of :mod:`lora_edu.grading` shares: the :class:`Report` it returns, the
hints that are not specific to one function, and the machinery that runs a student's function on
a case and explains a difference.

A checker runs the student's function on random and edge cases, compares each result with the
library's (the formula of the book's chapter, e.g. source §2.1's h = W0·x + s·B·A·x), and on a
difference tries to name the mistake: it computes the typical wrong variants itself and looks for
the one the student's result equals. Every hint is a module constant (``HINT_*``), so that a test
can compare it; a difference no variant explains gets :data:`HINT_UNRECOGNISED` followed by the
first quantity that differs.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lora_edu.checks import check_callable, check_instance, check_int, check_seed

__all__ = [
    "Failure",
    "Report",
    "MAX_LISTED_PER_HINT",
    "HINT_NOT_IMPLEMENTED",
    "HINT_RAISED",
    "HINT_RETURN_TYPE",
    "HINT_SHAPE",
    "HINT_DTYPE",
    "HINT_INPUT_MODIFIED",
    "HINT_UNRECOGNISED",
]

#: A report lists at most this many failures per hint and counts the rest.
MAX_LISTED_PER_HINT = 3

#: A hint of the report; its text is the value.
HINT_NOT_IMPLEMENTED = ("not written yet: the function still raises NotImplementedError; replace "
                        "that line with your code")
#: A hint of the report; its text is the value.
HINT_RAISED = ("the function raised an exception on this case; the message under 'got' says "
               "where to look")
#: A hint of the report; its text is the value.
HINT_RETURN_TYPE = ("the function returns the wrong kind of object; 'expected' says what its "
                    "docstring asks for")
#: A hint of the report; its text is the value.
HINT_SHAPE = "the result has the wrong shape"
#: A hint of the report; its text is the value.
HINT_DTYPE = ("the result has another dtype than the inputs: compute in the inputs' dtype and "
              "return that")
#: A hint of the report; its text is the value.
HINT_INPUT_MODIFIED = ("an input tensor was changed in place (+=, add_, mul_, an assignment into "
                       "it): compute new tensors and leave the caller's inputs as they were")
#: The start of the hint for a difference that none of the known mistakes explains; the rest of
#: the hint names the first quantity that differs.
HINT_UNRECOGNISED = "not one of the typical mistakes this checker knows;"

_SHAPE_WORDS = ("shape", "size", "dimension", "broadcast", "mismatch", "must match")


@dataclass(frozen=True)
class Failure:
    """One failed case: what was run, what the library computes, what the student's function
    returned (or raised), and a hint naming the mistake in plain words."""

    case: str
    expected: str
    got: str
    hint: str


@dataclass
class Report:
    """What a checker returns: ``name`` (what was checked), ``passed``, ``cases_run`` and the
    listed ``failures`` (at most :data:`MAX_LISTED_PER_HINT` per hint).

    ``failure_counts`` maps each hint to the number of failures that carried it, listed or not;
    ``cases_failed`` counts the cases with at least one failure. ``str(report)`` (and
    ``repr``) is a readable text: a ✓/✗ line, then each failure's case, expected, got and hint,
    and how many more failures carried the same hint; in a notebook the report displays as
    Markdown (``_repr_markdown_``). :meth:`raise_if_failed` turns a failed report into an
    ``AssertionError``.
    """

    name: str
    passed: bool
    cases_run: int
    failures: list[Failure] = field(default_factory=list)
    failure_counts: dict[str, int] = field(default_factory=dict)
    cases_failed: int = 0

    def __post_init__(self) -> None:
        check_instance("name", self.name, str)
        check_instance("passed", self.passed, bool)
        check_int("cases_run", self.cases_run, 0)
        check_instance("failures", self.failures, list)
        for i, failure in enumerate(self.failures):
            check_instance(f"failures[{i}]", failure, Failure)
        if self.passed and self.failures:
            raise ValueError("passed must be False when there are failures")
        if not self.failure_counts:
            for failure in self.failures:
                self.failure_counts[failure.hint] = self.failure_counts.get(failure.hint, 0) + 1
        if self.failures and not self.cases_failed:
            self.cases_failed = len({failure.case for failure in self.failures})

    @property
    def hints(self) -> list[str]:
        """The distinct hints of the failures, in the order they first occurred."""
        return list(self.failure_counts)

    @property
    def n_failures(self) -> int:
        """All failures, including those not listed."""
        return sum(self.failure_counts.values())

    def _headline(self) -> str:
        if self.passed:
            return f"✓ {self.name}: all {self.cases_run} cases passed"
        return (f"✗ {self.name}: {self.cases_failed} of {self.cases_run} cases failed "
                f"({self.n_failures} failure{'s' if self.n_failures != 1 else ''})")

    def _grouped(self) -> list[tuple[str, list[Failure], int]]:
        """(hint, listed failures, failures with that hint not listed), by first occurrence."""
        groups = []
        for hint, total in self.failure_counts.items():
            listed = [f for f in self.failures if f.hint == hint]
            groups.append((hint, listed, total - len(listed)))
        return groups

    def __str__(self) -> str:
        lines = [self._headline()]
        number = 0
        for _, listed, hidden in self._grouped():
            for failure in listed:
                number += 1
                lines += [f"{number:>3}. case:     {failure.case}",
                          f"     expected: {failure.expected}",
                          f"     got:      {failure.got}",
                          f"     hint:     {failure.hint}"]
            if hidden:
                lines.append(f"     … and {hidden} more failure{'s' if hidden != 1 else ''} "
                             f"with this hint ({hidden + len(listed)} in all)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        parts = [f"**{_md(self._headline())}**"]
        number = 0
        for _, listed, hidden in self._grouped():
            for failure in listed:
                number += 1
                parts.append(f"{number}. **case** {_code(failure.case)}<br>\n"
                             f"   **expected** {_code(failure.expected)}<br>\n"
                             f"   **got** {_code(failure.got)}<br>\n"
                             f"   **hint** {_md(failure.hint)}")
            if hidden:
                parts.append(f"   *… and {hidden} more with this hint "
                             f"({hidden + len(listed)} in all)*")
        return "\n\n".join(parts) + "\n"

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError(str(self))`` if the report did not pass; else do nothing."""
        if not self.passed:
            raise AssertionError(str(self))


def _md(text: str) -> str:
    """Plain text for Markdown: HTML escaped, Markdown's emphasis and code characters escaped."""
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def _code(text: str) -> str:
    """Text as an inline code span (HTML, so that any character survives)."""
    return f"<code>{html.escape(text)}</code>"


# --------------------------------------------------------------------------- running cases

class _Grader:
    """Collects the cases and failures of one checker run and builds the :class:`Report`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases_run = 0
        self.failed_cases: set[int] = set()
        self.failures: list[Failure] = []
        self.counts: dict[str, int] = {}

    def start_case(self) -> None:
        self.cases_run += 1

    def fail(self, case: str, expected: str, got: str, hint: str) -> None:
        self.failed_cases.add(self.cases_run)
        listed = sum(1 for f in self.failures if f.hint == hint)
        self.counts[hint] = self.counts.get(hint, 0) + 1
        if listed < MAX_LISTED_PER_HINT:
            self.failures.append(Failure(case, expected, got, hint))

    def report(self) -> Report:
        return Report(name=self.name, passed=not self.counts, cases_run=self.cases_run,
                      failures=list(self.failures), failure_counts=dict(self.counts),
                      cases_failed=len(self.failed_cases))


def _start(checker: str, seed: object, **functions: object) -> tuple[_Grader, torch.Generator]:
    """Validate the checker's arguments; return its grader and the seeded generator."""
    names = []
    for arg, fn in functions.items():
        check_callable(arg, fn)
        names.append(getattr(fn, "__name__", type(fn).__name__))
    seed = check_seed("seed", seed)
    return (_Grader(f"{checker}({', '.join(names)})"),
            torch.Generator().manual_seed(seed))


@dataclass
class _Outcome:
    """The result of calling the student's function: ``value`` or the ``error`` it raised."""

    value: object = None
    error: Exception | None = None


def _call(fn: Callable, *args: object) -> _Outcome:
    try:
        return _Outcome(value=fn(*args))
    except Exception as err:  # the student's bug is reported, never raised
        return _Outcome(error=err)


def _describe_error(err: Exception) -> str:
    message = " ".join(str(err).split())
    if len(message) > 160:
        message = message[:157] + "…"
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _error_hint(err: Exception, shape_hint: str | None = None) -> str:
    """The hint for an exception: not written yet, a shape error (the checker's hint for it), or
    the generic one."""
    if isinstance(err, NotImplementedError):
        return HINT_NOT_IMPLEMENTED
    message = str(err).lower()
    if shape_hint is not None and any(w in message for w in _SHAPE_WORDS):
        return shape_hint
    return HINT_RAISED


def _fail_error(grader: _Grader, case: str, expected: str, err: Exception,
                shape_hint: str | None = None) -> None:
    grader.fail(case, expected, _describe_error(err), _error_hint(err, shape_hint))


# --------------------------------------------------------------------------- formatting

def _num(x: float) -> str:
    if x != x:
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _fmt_tensor(t: object, max_values: int = 4) -> str:
    """``tensor (5, 6) float64 [0.1234, -1.5, 2, 0.25, …]``, or the type of a non-tensor."""
    if not isinstance(t, Tensor):
        return _fmt_object(t)
    flat = t.detach().reshape(-1)
    shown = ", ".join(_num(float(v)) for v in flat[:max_values].tolist())
    more = ", …" if flat.numel() > max_values else ""
    dtype = str(t.dtype).replace("torch.", "")
    return f"tensor {tuple(t.shape)} {dtype} [{shown}{more}]"


def _fmt_object(value: object) -> str:
    if isinstance(value, Tensor):
        return _fmt_tensor(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_fmt_object(v) if isinstance(v, Tensor) else repr(v)[:40]
                          for v in value[:3])
        more = ", …" if len(value) > 3 else ""
        return f"a {type(value).__name__} of {len(value)}: ({inner}{more})"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _max_diff(expected: Tensor, got: Tensor) -> str:
    """``max |diff| = 0.75 at (2, 3)`` for two tensors of one shape."""
    diff = (got.detach().double() - expected.detach().double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    if diff.numel() == 0:
        return "max |diff| = 0"
    flat_index = int(diff.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), diff.shape))
    return f"max |diff| = {float(diff.reshape(-1)[flat_index]):.3g} at {index}"


def _got_tensor(expected: Tensor, got: Tensor) -> str:
    text = _fmt_tensor(got)
    if isinstance(got, Tensor) and got.shape == expected.shape:
        text += f"; {_max_diff(expected, got)}"
    return text


def _first_difference(name: str, expected: Tensor, got: Tensor, ok: Tensor) -> str:
    """The generic hint: which quantity differs first, where, and by how much."""
    bad = (~ok).reshape(-1).nonzero()
    if bad.numel() == 0:
        return f"{HINT_UNRECOGNISED} {name} differs from the library's"
    i = int(bad[0])
    index = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), expected.shape))
    e = float(expected.reshape(-1)[i])
    g = float(got.reshape(-1)[i])
    return (f"{HINT_UNRECOGNISED} {name} differs first at index {index}: expected {_num(e)}, "
            f"got {_num(g)}; compare your steps with the formula in the docstring")


# --------------------------------------------------------------------------- comparing

def _close_mask(got: Tensor, expected: Tensor, rtol: float, atol: float) -> Tensor:
    """Element-wise ``|got − expected| ≤ atol + rtol·|expected|`` in float64 (NaN never close)."""
    g = got.detach().double()
    e = expected.detach().double()
    return ((g - e).abs() <= atol + rtol * e.abs()) | ((g == e) & torch.isinf(e))


def _same_mask(got: Tensor, variant: Tensor, rtol: float, atol: float) -> Tensor:
    """Like :func:`_close_mask`, but NaN equals NaN: a wrong variant may hold NaN (0/0) where the
    student's result does too."""
    return _close_mask(got, variant, rtol, atol) | (torch.isnan(got.detach().double())
                                                    & torch.isnan(variant.detach().double()))


def _close(got: object, expected: Tensor | None, rtol: float, atol: float) -> bool:
    if expected is None or not isinstance(got, Tensor) or got.shape != expected.shape:
        return False
    if got.is_complex() or got.dtype == torch.bool:
        return False
    return bool(_close_mask(got, expected, rtol, atol).all())


def _match(got: object, variants: Sequence[tuple[str, Tensor | None]], rtol: float,
           atol: float) -> str | None:
    """The hint of the first wrong variant that ``got`` equals (within tolerance), or None."""
    if not isinstance(got, Tensor) or got.is_complex() or got.dtype == torch.bool:
        return None
    for hint, variant in variants:
        if variant is not None and got.shape == variant.shape and bool(
                _same_mask(got, variant, rtol, atol).all()):
            return hint
    return None


def _snapshot(**tensors: Tensor) -> dict[str, Tensor]:
    return {name: t.clone() for name, t in tensors.items()}


def _changed(passed: dict[str, Tensor], originals: dict[str, Tensor]) -> list[str]:
    """Names of the tensors the student's function modified (``passed`` vs the saved copies)."""
    return [name for name, t in passed.items()
            if t.shape != originals[name].shape or not torch.equal(t, originals[name])]


def _check_unchanged(grader: _Grader, case: str, passed: dict[str, Tensor],
                     originals: dict[str, Tensor], hint: str = HINT_INPUT_MODIFIED) -> None:
    """One failure if the student's function changed any input tensor in place."""
    changed = _changed(passed, originals)
    if changed:
        name = changed[0]
        detail = (_max_diff(originals[name], passed[name])
                  if passed[name].shape == originals[name].shape else "shape changed")
        grader.fail(case, f"{', '.join(passed)} unchanged after the call",
                    f"{', '.join(changed)} changed in place ({name}: {detail})", hint)
