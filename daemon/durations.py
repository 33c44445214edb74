"""Human durations in the config: "500ms", "30s", "5m", "1h" (or a number of seconds)."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from "500ms" / "30s" / "5m" / "1h" or a non-negative number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _SCALE[m.group(2)]
    raise ValueError(f"{value!r} is not a duration like '500ms', '30s', '5m' or '1h'")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for messages."""
    for unit in ("h", "m", "s"):
        n = seconds / _SCALE[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{round(seconds * 1000)}ms"
