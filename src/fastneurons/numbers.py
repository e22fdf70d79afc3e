"""Numbers in settings, handled exactly: finite floats only, rates as the fractions they are written as,
and ceil(n * rate) in integers, so that a 95% threshold compares counts without float rounding."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np


def require_finite(config) -> None:
    """Refuse NaN and infinity in every float field of a settings dataclass, naming the flag.

    A NaN passes every ``<``/``>`` range check (all comparisons are false), so it is refused first."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{item.name.replace('_', '-')} {value}: must be a finite number")


def exact_fraction(value: float, name: str = "fraction") -> Fraction:
    """The decimal a rate parameter is written as (0.95 -> 19/20), so thresholds compare integers exactly."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return Fraction(repr(value)).limit_denominator(10**6)


def ceil_fraction(values: np.ndarray, fraction: Fraction) -> np.ndarray:
    """ceil(values * fraction) in exact integer arithmetic, for int64 `values >= 0` and fraction <= 1."""
    num, den = fraction.numerator, fraction.denominator
    values = np.asarray(values, dtype=np.int64)
    quotient, remainder = np.divmod(values, den)
    return quotient * num + (remainder * num + den - 1) // den
