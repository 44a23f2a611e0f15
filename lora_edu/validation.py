"""Small argument checks shared by the library's public functions.

Every public function validates its input and raises a ``TypeError`` or ``ValueError`` that names
the bad argument; these helpers keep those messages uniform.
"""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) and ``>= minimum``.

    Raises ``TypeError("<name> must be an int, ...")`` or ``ValueError("<name> must be >= ...")``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
