"""Checks of scalar arguments (names, paths, integers, flags) before they reach the core: wrong
types are refused with `DtypeError` rather than truncated or coerced."""

from __future__ import annotations

import operator
import os
from typing import Any

import numpy as np

from .exceptions import DtypeError, InvalidValueError, UnknownLayerError

_INT64 = range(-(2**63), 2**63)


def name(value: Any) -> str:
    """A document name: a non-empty string of valid Unicode."""
    if not isinstance(value, str):
        raise DtypeError(f"document names must be strings, got {value!r}")
    if not value:
        raise InvalidValueError("document names must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file name or manifest entry can hold it
        raise InvalidValueError(f"document names must be valid Unicode, got {value!r}") from None
    return value


def path(value: Any) -> str:
    """A store path as the core takes it; NUL and unencodable characters are refused here,
    named as given (the OS would cut the name or report another one)."""
    p = os.fsdecode(os.fspath(value))
    if "\0" in p:
        raise InvalidValueError(f"path {p!r} contains a NUL character")
    try:
        os.fsencode(p)
    except UnicodeEncodeError:
        raise InvalidValueError(f"path {p!r} cannot be encoded as a file name") from None
    return p


def integer(value: Any, what: str, out_of_range: type[Exception] = InvalidValueError) -> int:
    """An integer argument; floats, strings and bools are refused rather than truncated, and
    values beyond 64 bits raise `out_of_range` (the core takes 64-bit integers)."""
    if isinstance(value, bool):
        raise DtypeError(f"{what} must be an integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise DtypeError(f"{what} must be an integer, got {value!r}") from None
    if n not in _INT64:
        raise out_of_range(f"{what} {n} is out of range (beyond 64 bits)")
    return n


def layer(value: Any) -> int:
    return integer(value, "layer", UnknownLayerError)


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise DtypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)
