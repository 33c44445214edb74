"""How JSON values are stored in SQLite cells, and read back.

Scalars are stored as they came (integers, reals, text), booleans as 0/1, null as
NULL, objects and arrays as compact JSON text. Data columns carry no declared type,
so SQLite applies no affinity and '007' stays a string.
"""

from __future__ import annotations

import json
from typing import Any

SQLValue = int | float | str | None
_INT64 = (-(2**63), 2**63 - 1)


def to_sql(value: Any) -> SQLValue:
    """Encode one JSON value for a cell."""
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        # SQLite integers are 64-bit; larger ones survive as their decimal text.
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def dumps_raw(value: Any) -> str:
    """Compact JSON for quarantined items; never fails on odd input."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)
