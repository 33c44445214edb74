"""The Census keys of a sync definition (CONTRACT §7): sources, mappings, alerts.

Parsed into plain data with errors naming the key; what needs the replica or a
source file (columns exist, the identifier is unique) is checked by ``validate`` and
at run time, since the file may not exist yet when the config is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicad.daemon.durations import parse_duration
from replicad.daemon.toml_checks import ConfigError, check_keys, check_opt, check_req
from replicad.store.normalize import STYLES

PUSH_OPERATIONS = ("mirror", "upsert", "insert", "update", "append")
FIELD_BEHAVIORS = ("specific_properties", "sync_all_properties")
ALERT_TYPES = ("failed_run", "rejected_records", "stale")
# Census's default for the deprecated failed_record_notifications_threshold_percent.
DEPRECATED_THRESHOLD = 75


@dataclass(frozen=True, slots=True)
class DiffedSource:
    """A query (or a whole table) diffed each cycle, on the replica or another file."""

    query: str  # the SELECT that is run (a table becomes SELECT * FROM it)
    database: Path | None = None  # None: the replica itself
    table: str | None = None  # when given as a table


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """One Census mapping: a source column (or a constant) to a destination field."""

    to: str
    column: str | None = None
    constant: Any = None
    primary: bool = False


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One of ``alert_attributes``."""

    type: str
    threshold_percent: float = 0.0  # rejected_records
    after: float = 0.0  # stale, seconds


def parse_source(value: Any, k: str, base: Path) -> tuple[str, DiffedSource | None]:
    """``source``: a replica table name (captured), or a diffed source table."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise ConfigError(f"{k}.source: must be a table name or a table like {{ query = … }}")
    check_keys(value, f"{k}.source", {"query", "table", "database"})
    query = check_opt(value, "query", str, f"{k}.source.query")
    table = check_opt(value, "table", str, f"{k}.source.table")
    database = check_opt(value, "database", str, f"{k}.source.database")
    if (query is None) == (table is None):
        raise ConfigError(f"{k}.source: give either query or table")
    if table is not None and not table:
        raise ConfigError(f"{k}.source.table: must not be empty")
    if table is not None and database is None:
        raise ConfigError(
            f"{k}.source.table: a table of the replica is a captured source: write "
            f"source = {table!r}; give database = … for another app's file"
        )
    path = None
    if database is not None:
        path = Path(database).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(f"{k}.source.database: no SQLite file at {path}")
    if query is not None:
        check_query(query, f"{k}.source.query")
    else:
        assert table is not None
        query = 'SELECT * FROM "' + table.replace('"', '""') + '"'
    return "", DiffedSource(query, path, table)


_WRITES = re.compile(
    r"\b(insert|update|delete|replace|create|drop|alter|attach|detach|pragma|vacuum|reindex)\b",
    re.IGNORECASE,
)


def check_query(query: str, key: str) -> None:
    """A source query reads: one SELECT (or WITH … SELECT). It is also run on a
    read-only connection; this only gives the error a key's name early."""
    text = query.strip().rstrip(";").strip()
    if not text:
        raise ConfigError(f"{key}: must not be empty")
    if ";" in text:
        raise ConfigError(f"{key}: must be one statement")
    first = text.split(None, 1)[0].lower()
    if first not in ("select", "with", "values"):
        raise ConfigError(f"{key}: must be a SELECT (a source is only read)")
    if first == "with" and _WRITES.search(text):
        raise ConfigError(f"{key}: must be a SELECT (a source is only read)")


def parse_mappings(s: dict[str, Any], k: str) -> tuple[FieldMapping, ...]:
    """``mappings``: Census's shape, with the ``from = "col"`` shorthand."""
    raw = check_opt(s, "mappings", list, f"{k}.mappings")
    if raw is None:
        return ()
    out: list[FieldMapping] = []
    seen: set[str] = set()
    for n, m in enumerate(raw):
        where = f"{k}.mappings[{n}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: must be a table like {{ from = …, to = … }}")
        check_keys(m, where, {"from", "to", "is_primary_identifier"})
        to = check_req(m, "to", str, f"{where}.to")
        if not to:
            raise ConfigError(f"{where}.to: must not be empty")
        if to in seen:
            raise ConfigError(f"{where}.to: {to!r} is mapped twice")
        seen.add(to)
        primary = bool(
            check_opt(m, "is_primary_identifier", bool, f"{where}.is_primary_identifier")
        )
        if "from" not in m:
            raise ConfigError(f"{where}.from: required")
        src = m["from"]
        if isinstance(src, str):
            src = {"type": "column", "data": src}
        if not isinstance(src, dict):
            raise ConfigError(f"{where}.from: must be a column name or {{ type = …, data = … }}")
        check_keys(src, f"{where}.from", {"type", "data"})
        kind = check_req(src, "type", str, f"{where}.from.type")
        if "data" not in src:
            raise ConfigError(f"{where}.from.data: required")
        if kind == "column":
            column = check_req(src, "data", str, f"{where}.from.data")
            if not column:
                raise ConfigError(f"{where}.from.data: must not be empty")
            out.append(FieldMapping(to, column=column, primary=primary))
        elif kind == "constant_value":
            value = src["data"]
            if not _json_value(value):
                raise ConfigError(
                    f"{where}.from.data: a constant must be a string, number, boolean, "
                    "array or table (dates and times cannot be sent as JSON)"
                )
            if primary:
                raise ConfigError(f"{where}.is_primary_identifier: a constant cannot identify rows")
            out.append(FieldMapping(to, constant=value))
        else:
            raise ConfigError(f"{where}.from.type: {kind!r} is not 'column' or 'constant_value'")
    return tuple(out)


def _json_value(value: Any) -> bool:
    if isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(x, str) and _json_value(v) for x, v in value.items())
    return False


def parse_field_options(s: dict[str, Any], k: str, default_behavior: str) -> tuple[str, str]:
    """``field_behavior`` and ``field_normalization``."""
    behavior = check_opt(s, "field_behavior", str, f"{k}.field_behavior") or default_behavior
    if behavior not in FIELD_BEHAVIORS:
        raise ConfigError(
            f"{k}.field_behavior: {behavior!r} is not one of {', '.join(FIELD_BEHAVIORS)}"
        )
    style = check_opt(s, "field_normalization", str, f"{k}.field_normalization")
    if style is not None and style not in STYLES:
        raise ConfigError(f"{k}.field_normalization: {style!r} is not one of {', '.join(STYLES)}")
    if style is not None and behavior != "sync_all_properties":
        raise ConfigError(
            f"{k}.field_normalization: names automatic mappings, which only "
            'field_behavior = "sync_all_properties" makes'
        )
    return behavior, style or "match_source_names"


def parse_high_water_mark(s: dict[str, Any], k: str, operation: str) -> str | None:
    """``high_water_mark_attributes = { column = "updated_at" }`` (append only)."""
    raw = check_opt(s, "high_water_mark_attributes", dict, f"{k}.high_water_mark_attributes")
    if raw is None:
        return None
    where = f"{k}.high_water_mark_attributes"
    if operation != "append":
        raise ConfigError(
            f"{where}: only for operation = 'append' (this sync is {operation!r}); other "
            "operations diff by primary identifier"
        )
    check_keys(raw, where, {"column"})
    column = check_req(raw, "column", str, f"{where}.column")
    if not column:
        raise ConfigError(f"{where}.column: must not be empty")
    return str(column)


def parse_alerts(s: dict[str, Any], k: str) -> tuple[AlertRule, ...]:
    """``alert_attributes``, or the deprecated Census keys translated (the new key wins
    when both are present, as Census documents)."""
    deprecated = _deprecated_alerts(s, k)
    raw = check_opt(s, "alert_attributes", list, f"{k}.alert_attributes")
    if raw is None:
        return deprecated
    out: list[AlertRule] = []
    for n, a in enumerate(raw):
        where = f"{k}.alert_attributes[{n}]"
        if not isinstance(a, dict):
            raise ConfigError(f"{where}: must be a table like {{ type = 'failed_run' }}")
        kind = check_req(a, "type", str, f"{where}.type")
        if kind == "failed_run":
            check_keys(a, where, {"type"})
            out.append(AlertRule(kind))
        elif kind == "rejected_records":
            check_keys(a, where, {"type", "threshold_percent"})
            pct = a.get("threshold_percent")
            if pct is None:
                raise ConfigError(f"{where}.threshold_percent: required")
            if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct < 100:
                raise ConfigError(f"{where}.threshold_percent: must be between 0 and 100")
            out.append(AlertRule(kind, threshold_percent=float(pct)))
        elif kind == "stale":
            check_keys(a, where, {"type", "after"})
            try:
                after = parse_duration(check_req(a, "after", str, f"{where}.after"))
            except ValueError as e:
                raise ConfigError(f"{where}.after: {e}") from None
            out.append(AlertRule(kind, after=after))
        else:
            raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(ALERT_TYPES)}")
    if len({a.type for a in out}) != len(out):
        raise ConfigError(f"{k}.alert_attributes: each type at most once")
    return tuple(out)


def _deprecated_alerts(s: dict[str, Any], k: str) -> tuple[AlertRule, ...]:
    records = check_opt(
        s, "failed_record_notifications_enabled", bool, f"{k}.failed_record_notifications_enabled"
    )
    pct = check_opt(
        s,
        "failed_record_notifications_threshold_percent",
        int,
        f"{k}.failed_record_notifications_threshold_percent",
    )
    runs = check_opt(
        s, "failed_run_notifications_enabled", bool, f"{k}.failed_run_notifications_enabled"
    )
    if pct is not None and not 0 < pct < 100:
        raise ConfigError(
            f"{k}.failed_record_notifications_threshold_percent: must be between 0 and 100"
        )
    out: list[AlertRule] = []
    # Census's defaults are true for both: a definition without any alert key alerts
    # on failed runs and on 75 % rejected records.
    if runs is not False:
        out.append(AlertRule("failed_run"))
    if records is not False:
        out.append(
            AlertRule("rejected_records", threshold_percent=float(pct or DEPRECATED_THRESHOLD))
        )
    return tuple(out)


def parse_on_alert(s: dict[str, Any], k: str) -> tuple[str, ...]:
    """``on_alert``: a command (argv) that gets each alert as JSON on stdin."""
    raw = check_opt(s, "on_alert", list, f"{k}.on_alert")
    if raw is None:
        return ()
    if not raw or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{k}.on_alert: must be a command as a non-empty array of strings")
    return tuple(raw)


def primary_mapping(mappings: tuple[FieldMapping, ...], k: str) -> FieldMapping:
    """The one primary identifier of a diffed push."""
    primaries = [m for m in mappings if m.primary]
    if len(primaries) != 1:
        found = (
            "none" if not primaries else f"{len(primaries)} ({', '.join(m.to for m in primaries)})"
        )
        raise ConfigError(
            f"{k}.mappings: a diffed source needs exactly one mapping with "
            f"is_primary_identifier = true (found {found})"
        )
    return primaries[0]


RESERVED_COLUMNS = ("id", "_internal_id", "_revision", "_synced_at", "_pending", "_seq",
                    "_event_type", "_received_at", "rowid", "oid", "_rowid_")  # fmt: skip


def parse_pull_mappings(
    s: dict[str, Any], k: str, types: tuple[str, ...]
) -> tuple[tuple[str, tuple[FieldMapping, ...]], ...]:
    """A pull's ``mappings``: per remote type, ``from`` a remote field ``to`` a column."""
    raw = check_opt(s, "mappings", dict, f"{k}.mappings")
    if raw is None:
        return ()
    out: list[tuple[str, tuple[FieldMapping, ...]]] = []
    for type_, entries in raw.items():
        where = f"{k}.mappings.{type_}"
        if types and type_ not in types:
            raise ConfigError(f"{where}: type {type_!r} is not among types ({', '.join(types)})")
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: must be an array of {{ from = …, to = … }}")
        seen_to: set[str] = set()
        seen_from: set[str] = set()
        mapped: list[FieldMapping] = []
        for n, m in enumerate(entries):
            at = f"{where}[{n}]"
            if not isinstance(m, dict):
                raise ConfigError(f"{at}: must be a table like {{ from = …, to = … }}")
            check_keys(m, at, {"from", "to"})
            src = m.get("from")
            if isinstance(src, dict):
                check_keys(src, f"{at}.from", {"type", "data"})
                if src.get("type") != "column":
                    raise ConfigError(f"{at}.from.type: a pull maps remote fields ('column')")
                src = src.get("data")
            if not isinstance(src, str) or not src:
                raise ConfigError(f"{at}.from: must name a remote field")
            to = check_req(m, "to", str, f"{at}.to")
            if to.lower() in RESERVED_COLUMNS:
                raise ConfigError(f"{at}.to: {to!r} is one of replicad's own columns")
            if not _COLUMN.match(to):
                raise ConfigError(f"{at}.to: {to!r} is not a column name (letters, digits, _)")
            if to.lower() in seen_to:
                raise ConfigError(f"{at}.to: column {to!r} is mapped twice")
            if src in seen_from or src == "id":
                raise ConfigError(f"{at}.from: field {src!r} is mapped twice (or is the id)")
            seen_to.add(to.lower())
            seen_from.add(src)
            mapped.append(FieldMapping(to, column=src))
        out.append((type_, tuple(mapped)))
    return tuple(out)


_COLUMN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
