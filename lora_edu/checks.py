"""Argument checks shared by every public function of the library.

A wrong **type** raises ``TypeError``, a wrong **value** ``ValueError``; both messages start with
the argument's name and say what was expected, e.g. ``"r must be an int >= 1, got 0"``. numpy
integer and float scalars are accepted wherever Python ints and floats are; ``bool`` is never
accepted as a number. Each check returns the value converted to the plain Python type (or the
tensor unchanged), so a caller can write ``r = check_int("r", r, minimum=1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from typing import TypeVar, overload

import torch
from torch import Tensor

__all__ = ["MAX_SEED", "check_seed", "check_callable", "check_int", "check_float",
           "check_probability", "check_power_of_two",
           "check_tensor", "check_one_of", "check_instance", "check_sorted_descending"]


def _describe(value: object) -> str:
    return type(value).__name__


def check_int(name: str, value: object, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """``value`` as an ``int``, checked against ``minimum <= value <= maximum`` (either optional).

    Accepts Python and numpy integers, not ``bool`` and not floats (``2.0`` is a ``TypeError``).
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an int >= {minimum}{upper}, got {value}")
    if maximum is not None and value > maximum:
        lower = f">= {minimum} and " if minimum is not None else ""
        raise ValueError(f"{name} must be an int {lower}<= {maximum}, got {value}")
    return value


_T = TypeVar("_T")

#: The largest seed the library accepts: every random generator it seeds takes [0, 2**32 − 1]
#: (numpy's legacy ``np.random.seed`` is the narrowest; torch's ``manual_seed`` takes 64 bits).
MAX_SEED = 2**32 - 1


def check_seed(name: str, value: object) -> int:
    """A seed: an ``int`` in ``[0, MAX_SEED]`` = ``[0, 2**32 − 1]``, the one range used."""
    return check_int(name, value, 0, MAX_SEED)


def check_float(name: str, value: object, minimum: float | None = None,
                maximum: float | None = None, *, min_inclusive: bool = True,
                max_inclusive: bool = True, finite: bool = True) -> float:
    """``value`` as a ``float``, finite unless ``finite=False``, within the given bounds.

    Accepts Python and numpy reals (ints too), not ``bool``, strings or tensors.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {maximum}, got {value}")
    return value


def check_probability(name: str, value: object) -> float:
    """A number in ``[0, 1)``: an EMA coefficient β, a dropout rate, an energy fraction < 1."""
    return check_float(name, value, 0.0, 1.0, max_inclusive=False)


def check_power_of_two(name: str, value: object, minimum: int = 1) -> int:
    """An ``int >= minimum`` that is a power of two (block sizes, page sizes)."""
    value = check_int(name, value, minimum)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return value


def check_tensor(name: str, value: object, ndim: int | Iterable[int] | None = None, *,
                 floating: bool = False, finite: bool = False) -> Tensor:
    """A ``torch.Tensor``, optionally of a given rank (or one of several), of a floating dtype,
    with only finite entries. Returned unchanged."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimension(s), got shape "
                             f"{tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must hold only finite values (no NaN or inf)")
    return value


def check_one_of(name: str, value: object, options: Iterable[str]) -> str:
    """One of the strings ``options``."""
    options = tuple(options)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {options}, got {_describe(value)}")
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


@overload
def check_instance(name: str, value: object, types: type[_T]) -> _T: ...


@overload
def check_instance(name: str, value: object, types: tuple[type, ...]) -> object: ...


def check_instance(name: str, value: object, types: type | tuple[type, ...]) -> object:
    """``value`` if it is an instance of ``types``, else ``TypeError`` naming what was expected.

    With one type the result is typed as that type (``layer = check_instance("layer", layer,
    nn.Linear)`` is an ``nn.Linear`` to a type checker); with a tuple, as ``object``."""
    if not isinstance(value, types):
        want = (" or ".join(t.__name__ for t in types) if isinstance(types, tuple)
                else types.__name__)
        article = "an" if want[:1].lower() in "aeiou" else "a"
        raise TypeError(f"{name} must be {article} {want}, got {_describe(value)}")
    return value


def check_callable(name: str, value: object) -> Callable:
    """``value`` if it can be called (a function, a module, a class), else ``TypeError``."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {_describe(value)}")
    return value


def check_sorted_descending(name: str, values: Tensor) -> Tensor:
    """A 1-D tensor whose entries never increase (singular values as ``svdvals`` returns them)."""
    check_tensor(name, values, 1)
    if values.numel() > 1 and bool((values[1:] > values[:-1]).any()):
        raise ValueError(f"{name} must be sorted in descending order (as from svdvals)")
    return values
