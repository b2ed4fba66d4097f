"""Whether a value read from JSON or TOML has the type a dataclass field is annotated with, and
that type's name for an error message (training/config.py checks config.json field by field)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal


def fits_hint(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON/TOML has the annotated type (a Literal's choice is checked later,
    with the allowed values in its message). bool is not a number, and int is a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return isinstance(value, type(args[0]))
    if origin in (typing.Union, types.UnionType):
        return any(fits_hint(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(fits_hint(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(fits_hint(k, args[0]) and fits_hint(v, args[1]) for k, v in value.items())
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def hint_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(hint_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(hint_name(arg) for arg in args)}]"
    return "Any" if hint is Any else getattr(hint, "__name__", str(hint))
