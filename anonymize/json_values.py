"""The one JSON cleaner: every report, card, ledger entry and budget record passes its figures through it.

In the lowest layer (stdlib only, duck-typed for numpy and pandas) so that `anonymize` reports and
`privmodel` artifacts share it; strict `json.dumps(allow_nan=False)` then never fails on a figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_ready(obj: object) -> Any:
    """Plain JSON values: keys to str, tuples/sets/arrays to lists, numpy scalars to Python, NaN/inf to None.

    Duck-typed (no numpy import) so any module can use it; strict `json.dumps(allow_nan=False)` then
    never fails on a figure.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, set | frozenset):
        return [json_ready(v) for v in sorted(obj, key=str)]
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and not isinstance(obj, bytes | bytearray):  # numpy array or scalar
        return json_ready(obj.tolist())
    if type(obj).__name__ in ("NAType", "NaTType"):
        return None
    return str(obj)
