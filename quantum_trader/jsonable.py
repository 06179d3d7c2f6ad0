"""Plain JSON values from what reports and metadata hold: numpy scalars and arrays, timestamps, paths."""

import math
from pathlib import Path

import numpy as np


def jsonable(value, nan_as_null: bool = False):
    """`value` with dict keys as strings and every leaf JSON-encodable.

    `nan_as_null` writes non-finite floats as null, so the file is strict JSON (json.dumps would write NaN).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, nan_as_null) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, nan_as_null) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), nan_as_null)
    if isinstance(value, np.generic):
        value = value.item()
    if nan_as_null and isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
