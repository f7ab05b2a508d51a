"""Numeric settings: the ranges they must lie in, and reading a number as a setting takes it.

The run config (``boxsup.config``) checks every numeric key with these, and so do the libraries that
own settings of their own (``boxsup.evaluation.crf.CRFParams``), so that both say the same one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from boxsup.errors import BoxSupError


@dataclass(frozen=True)
class Range:
    """Numbers a key accepts: ``low``/``high`` bounds (None: unbounded), each inclusive unless ``*_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        return f"must lie in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)


def as_number(value: Any) -> float | None:
    """A finite float from a YAML number or a string such as '1e-3' (YAML 1.1 reads that as a string); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def checked_number(key: str, value: Any, default: float | int) -> float | int:
    """``value`` as the setting ``key``, whose default is ``default``, takes it: a float setting any finite
    number (as a float), an int setting a whole number (never a bool); else one line naming ``key``."""
    if isinstance(default, float):
        if (number := as_number(value)) is not None:
            return number
        raise BoxSupError(f"config key {key}: expected a finite float, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise BoxSupError(f"config key {key}: expected {type(default).__name__}, got {value!r}")
