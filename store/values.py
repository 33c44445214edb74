"""How JSON values are stored in SQLite cells, and read back.

Scalars are stored as they came (integers, reals, text), booleans as 0/1, null as
NULL, objects and arrays as compact JSON text. Data columns carry no declared type,
so SQLite applies no affinity and '007' stays a string.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any

import orjson

SQLValue = int | float | str | None
_INT64 = (-(2**63), 2**63 - 1)


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON (no ASCII escaping) for nested values, built once.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which is most of the
    cost for the small objects a record nests (an address, a tag list) and runs for
    hundreds of values per page. The C encoder is reused directly where the running
    Python has it; its output is the same as ``JSONEncoder.encode``'s.
    """
    fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    make = getattr(_encoder, "c_make_encoder", None)
    escape = getattr(_encoder, "c_encode_basestring", None)
    if make is None or escape is None:
        return fallback
    try:
        # markers=None skips the circular-reference check: values come from
        # json.loads, which cannot produce cycles. The default hook raises the usual
        # TypeError. The arguments are the ones JSONEncoder.iterencode passes.
        c_encode = make(
            None, json.JSONEncoder().default, escape, None, ":", ",", False, False, True
        )

        def encode(value: Any) -> str:
            return "".join(c_encode(value, 0))

        probe = {"é": [1, 2.5, None, True, "\n", {"k": -0.0}], "b": 1e300}
        if encode(probe) == fallback(probe):
            return encode
    except (TypeError, ValueError):
        pass
    # A Python whose private C encoder differs: the public (slower) one.
    return fallback


_COMPACT = _compact_encoder()


def _encode(value: Any) -> str:
    """Compact JSON of a nested value: orjson's (several times faster than json's C
    encoder on the small objects records nest; the same text but for how some floats
    spell their exponent, 1e-7 for 1e-07, 1e17 for 1e+17), else json's for what
    orjson refuses (an integer past 64 bits, a lone surrogate) or cannot write (any
    other type: the usual TypeError). orjson would write NaN and ±Infinity as null: none reaches it
    (the page decoder quarantines them; outbox payloads refuse them)."""
    try:
        return _ORJSON_DUMPS(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _COMPACT(value)


_ORJSON_DUMPS = orjson.dumps
_ENCODE = _encode

# Pulled values are bound as they came: sqlite3 binds str, int, float, None and bool
# (as 0/1) itself, in C, and hands objects and arrays to these adapters. That spares
# a Python call per field of every record pulled (``to_sql`` is the same rule, for
# the rare page that needs it: an integer past 64 bits, which binding refuses with
# OverflowError — see ``store.replica``). Process-wide, as sqlite3's adapters are: no
# code of the daemon binds a dict or a list any other way.
sqlite3.register_adapter(dict, _ENCODE)
sqlite3.register_adapter(list, _ENCODE)


def to_sql(value: Any) -> SQLValue:
    """Encode one JSON value for a cell."""
    # Exact type checks first: this runs for every field of every record pulled.
    kind = type(value)
    if kind is str or kind is float or value is None:
        return value  # type: ignore[no-any-return]
    if kind is int:
        # SQLite integers are 64-bit; larger ones survive as their decimal text.
        big = not _INT64[0] <= value <= _INT64[1]
        return str(value) if big else value
    if kind is bool:
        return int(value)
    if isinstance(value, dict | list):
        return _ENCODE(value)
    return to_sql_slow(value)


def spellings(value: Any) -> tuple[SQLValue, ...]:
    """Every cell a JSON value may be found stored as: ``to_sql``'s, and for an object
    or array also json's text, which this version's orjson differs from only in how
    some floats spell their exponent (1e-07 for 1e-7, 1e+17 for 1e17). Rows stored by
    an earlier version, which used json's encoder, keep its spelling until pulled
    again."""
    cell = to_sql(value)
    if isinstance(value, dict | list):
        try:
            older = _COMPACT(value)
        except (TypeError, ValueError):
            return (cell,)
        if older != cell:
            return cell, older
    return (cell,)


def to_sql_slow(value: Any) -> SQLValue:
    """Subclasses of the JSON types (rare): same rules, with isinstance."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value) if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return float(value)
    return _ENCODE(value)


def from_sql(value: SQLValue, kind: str | None) -> Any:
    """Decode a cell back to the JSON type its field came in (the inverse of to_sql).

    ``kind`` is the field's kind learned from pulled values: 0/1 of a boolean field
    becomes a boolean, the JSON text of an object or array field becomes the object
    or array again. Anything else (or a value an app wrote that does not fit the
    kind) goes as stored.
    """
    if kind == "boolean" and type(value) is int and value in (0, 1):
        return bool(value)
    if kind == "json" and isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, dict | list) else value
    return value
