"""JSON conversion shared by the analysis result dataclasses."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PER_NEURON = {"per_neuron": True}  # field metadata: a per-neuron array, left out by to_dict(per_neuron=False)


class Result:
    """Base of the frozen result dataclasses: `to_dict()` gives a JSON-ready dict of the fields."""

    def to_dict(self, per_neuron: bool = True) -> dict:
        """Fields as lists/ints/floats/str/None (NaN -> None); per_neuron=False drops [F]-sized arrays."""
        out = {}
        for field in dataclasses.fields(self):
            if field.metadata.get("per_neuron") and not per_neuron:
                continue
            out[field.name] = jsonable(getattr(self, field.name), per_neuron)
        return out


def jsonable(value, per_neuron: bool = True):
    """Convert numpy arrays/scalars, results, dicts and sequences to plain JSON values."""
    if isinstance(value, Result):
        return value.to_dict(per_neuron)
    if isinstance(value, dict):
        return {str(key): jsonable(item, per_neuron) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), per_neuron)
    if isinstance(value, (list, tuple)):
        return [jsonable(item, per_neuron) for item in value]
    if isinstance(value, np.generic):
        return jsonable(value.item(), per_neuron)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"cannot convert {type(value).__name__} to JSON; results hold only arrays, numbers and str")
