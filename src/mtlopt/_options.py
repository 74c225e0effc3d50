"""One vocabulary for options: the choices of an option are the values of its ``Literal`` type.

Methods declare each option's type once (``Solver = Literal["auto", "pgd", ...]``); :func:`choices` reads
the values from it (for the command line, the docs and the error messages) and :func:`check_choice`
refuses anything else with one line naming the option, the bad value and what was expected.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

__all__ = ["check_choice", "choices"]


def choices(kind: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type (nested Literals flattened), in declaration order."""
    if get_origin(kind) is not Literal:
        raise TypeError(f"expected a typing.Literal type, got {kind!r}")
    values: list[Any] = []
    for arg in get_args(kind):
        values.extend(choices(arg) if get_origin(arg) is Literal else [arg])
    return tuple(values)


def check_choice(owner: str, option: str, value: object, kind: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is one of the values of the ``Literal`` type ``kind``."""
    allowed = choices(kind)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{owner} {option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
