"""The TOML configuration: parsing, validation with errors that name the key, tokens.

The file is checked whole before anything runs: unknown keys, wrong types and dangling
references are errors naming the key (``syncs.mirror.interval: …``), never surprises
at run time. Tokens are read at the last moment and never kept in the config object's
repr, logs or error messages.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from replicad.connectors.ratelimit import parse_rate
from replicad.daemon.census import (
    PUSH_OPERATIONS,
    AlertRule,
    DiffedSource,
    FieldMapping,
    parse_alerts,
    parse_field_options,
    parse_high_water_mark,
    parse_mappings,
    parse_on_alert,
    parse_pull_mappings,
    parse_source,
    primary_mapping,
)
from replicad.daemon.kinds import KINDS, kind_only_keys, kinds_for
from replicad.daemon.toml_checks import (
    ConfigError,
    check_duration,
    check_keys,
    check_opt,
    check_req,
    check_table,
)
from replicad.store.names import valid_prefix

PULL_OPERATIONS = ("mirror", "upsert", "insert", "update", "append")
CONFLICT_RULES = ("merge", "remote")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

__all__ = ["Config", "ConfigError", "Connection", "Sync", "load_config", "read_token"]


@dataclass(frozen=True, slots=True)
class Connection:
    """A remote account and how to reach it."""

    name: str
    kind: str
    base_url: str
    token_env: str | None = None
    token_file: Path | None = None
    device_uuid: str | None = None
    rate_limit: str | None = None
    timeout: float = 30.0
    max_retries: int = 6
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0
    ack_batch: int = 1000
    session_id: str | None = None  # endgrate


@dataclass(frozen=True, slots=True)
class Association:
    """A column of a pushed row naming a row of another table, pushed along with it."""

    column: str
    source: str
    object: str


@dataclass(frozen=True, slots=True)
class Sync:
    """A declared sync: what flows where, how often."""

    label: str
    direction: str
    connection: str
    operation: str = "mirror"
    interval: float = 30.0
    prefix: str = ""
    paused: bool = False
    max_sessions: int = 4
    # push syncs
    source: str = ""
    object: str = ""
    batch_size: int = 100
    conflict: str = "merge"
    disable_upsert: bool = False
    sample_data: bool = False
    associations: tuple[Association, ...] = ()
    push_to_source: bool = False
    sources: tuple[str, ...] = ()
    natural_key: str | None = None
    updates_need_id: bool = False  # the destination's kind names records by id (kinds.py)
    # A create may land on a record the destination already has (kinds.py).
    creates_may_merge: bool = False
    # Census keys (CONTRACT §7)
    name: str = ""  # ``label = "…"``: a display name (the TOML key stays the label)
    diffed: DiffedSource | None = None
    mappings: tuple[FieldMapping, ...] = ()
    field_behavior: str = "sync_all_properties"
    field_normalization: str = "match_source_names"
    high_water_mark: str | None = None
    alerts: tuple[AlertRule, ...] = ()
    on_alert: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # pull: only these remote types (empty: all)
    # pull: per remote type, remote field → column
    pull_mappings: tuple[tuple[str, tuple[FieldMapping, ...]], ...] = ()

    @property
    def outbox_table(self) -> str:
        """The name its outbox entries are kept under: the captured table, or the
        sync's own name for a diffed source (no table of the replica has a ':')."""
        return self.source if self.diffed is None else f"diff:{self.label}"

    @property
    def key_field(self) -> str | None:
        """The destination field of a diffed source's primary identifier."""
        if self.diffed is None:
            return None
        return next(m.to for m in self.mappings if m.primary)

    @property
    def shown_as(self) -> str:
        """What the sync is called in source descriptions: a diffed source's origin."""
        if self.diffed is None:
            return self.source
        where = str(self.diffed.database) if self.diffed.database else "the replica"
        return f"{self.diffed.table or 'query'} on {where}"


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration file."""

    path: Path
    replica_path: Path
    connections: dict[str, Connection] = field(default_factory=dict)
    syncs: dict[str, Sync] = field(default_factory=dict)


def default_config_path() -> Path:
    """$REPLICAD_CONFIG, else the platform's user config dir."""
    env = os.environ.get("REPLICAD_CONFIG")
    if env:
        return Path(env)
    import platformdirs  # only here: most runs name their paths (saves start-up)

    return Path(platformdirs.user_config_dir("replicad")) / "config.toml"


def default_replica_path() -> Path:
    """$STATE_DIRECTORY (systemd), else the platform's user state dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "replica.db"
    import platformdirs

    return Path(platformdirs.user_state_dir("replicad")) / "replica.db"


def load_config(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path} (pass --config or set REPLICAD_CONFIG)"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate a decoded TOML document."""
    check_keys(raw, "", {"replica", "connections", "syncs"})
    base = path.parent
    replica = check_table(raw, "replica", "replica")
    check_keys(replica, "replica", {"path"})
    rpath = check_opt(replica, "path", str, "replica.path")
    replica_path = _resolve(base, rpath) if rpath else default_replica_path()
    connections = {
        name: _connection(name, check_table(c, None, f"connections.{name}"), base)
        for name, c in check_table(raw, "connections", "connections").items()
    }
    syncs = {
        label: _sync(label, check_table(s, None, f"syncs.{label}"), connections, base)
        for label, s in check_table(raw, "syncs", "syncs").items()
    }
    _cross_checks(syncs)
    _budget_check(syncs, connections)
    return Config(path, replica_path, connections, syncs)


# Keys every kind of connection takes; a kind's own are in its registry entry.
_COMMON_CONNECTION_KEYS = frozenset({
    "kind", "base_url", "token_env", "token_file", "rate_limit", "timeout", "max_retries",
    "retry_backoff", "retry_backoff_max",
})  # fmt: skip


def _connection(name: str, c: dict[str, Any], base: Path) -> Connection:
    k = f"connections.{name}"
    check_keys(c, k, _COMMON_CONNECTION_KEYS.union(*(x.connection_keys for x in KINDS.values())))
    kind = check_req(c, "kind", str, f"{k}.kind")
    if kind not in KINDS:
        raise ConfigError(f"{k}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    spec = KINDS[kind]
    others = frozenset().union(*(x.connection_keys for x in KINDS.values())) - spec.connection_keys
    for key in sorted(others & c.keys()):
        raise ConfigError(f"{k}.{key}: not used by {kind} connections")
    for key in sorted(spec.required_keys - c.keys()):
        raise ConfigError(f"{k}.{key}: required for {kind} connections")
    base_url = check_req(c, "base_url", str, f"{k}.base_url")
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{k}.base_url: {base_url!r} is not an http(s) URL")
    tail = spec.appended_path
    if tail and url.path.rstrip("/").lower().endswith(tail):
        # The client appends it: the URL would name it twice and every request 404.
        suggested = base_url.rstrip("/")[: -len(tail)]
        raise ConfigError(
            f"{k}.base_url: leave out the {tail} (replicad appends it): use {suggested!r}"
        )
    if url.scheme == "http" and url.hostname not in LOOPBACK:
        # The token would cross the network in clear text.
        raise ConfigError(f"{k}.base_url: plain http is only allowed to loopback; use https")
    token_env = check_opt(c, "token_env", str, f"{k}.token_env")
    token_file = check_opt(c, "token_file", str, f"{k}.token_file")
    if token_env and token_file:
        raise ConfigError(f"{k}: set token_env or token_file, not both")
    if not token_env and not token_file and not _credential_path(name):
        raise ConfigError(f"{k}: set token_env or token_file")
    session_id = check_opt(c, "session_id", str, f"{k}.session_id")
    if "session_id" in c and not session_id:
        raise ConfigError(f"{k}.session_id: must not be empty")
    # Unset: Sell's documented budget for sell connections, none for the others.
    rate = check_opt(c, "rate_limit", str, f"{k}.rate_limit")
    try:
        if rate is not None:
            parse_rate(rate)
    except ValueError as e:
        raise ConfigError(f"{k}.rate_limit: {e}") from None
    return Connection(
        name=name,
        kind=kind,
        base_url=base_url,
        token_env=token_env,
        token_file=_resolve(base, token_file) if token_file else None,
        device_uuid=check_opt(c, "device_uuid", str, f"{k}.device_uuid"),
        rate_limit=rate,
        timeout=check_duration(c, "timeout", 30.0, k),
        max_retries=_count(c, "max_retries", 6, k, minimum=0),
        retry_backoff=check_duration(c, "retry_backoff", 0.5, k),
        retry_backoff_max=check_duration(c, "retry_backoff_max", 30.0, k),
        ack_batch=_count(c, "ack_batch", 1000, k, minimum=1),
        session_id=session_id,
    )


_CENSUS_KEYS = {"label", "alert_attributes", "on_alert", "failed_record_notifications_enabled",
                "failed_record_notifications_threshold_percent",
                "failed_run_notifications_enabled"}  # fmt: skip
_PULL_KEYS = {"direction", "connection", "operation", "interval", "prefix", "paused",
              "max_sessions", "types", "mappings", "field_behavior",
              "field_normalization"} | _CENSUS_KEYS  # fmt: skip
_PUSH_KEYS = {"direction", "connection", "operation", "interval", "paused", "source", "object",
              "batch_size", "conflict", "disable_upsert", "sample_data", "associations",
              "push_to_source", "sources", "natural_key", "mappings", "field_behavior",
              "field_normalization", "high_water_mark_attributes"} | _CENSUS_KEYS  # fmt: skip
# Keys of Census's definition that only push syncs take in this version.
_PUSH_ONLY = _PUSH_KEYS - _PULL_KEYS - {"source", "object", "batch_size", "conflict",
                                         "disable_upsert", "sample_data", "associations",
                                         "push_to_source", "sources", "natural_key",
                                         "types"}  # fmt: skip


def _sync(label: str, s: dict[str, Any], connections: dict[str, Connection], base: Path) -> Sync:
    k = f"syncs.{label}"
    direction = check_req(s, "direction", str, f"{k}.direction")
    if direction not in ("pull", "push"):
        raise ConfigError(f"{k}.direction: {direction!r} is not 'pull' or 'push'")
    if direction == "pull":
        for key in sorted(_PUSH_ONLY & s.keys()):
            raise ConfigError(f"{k}.{key}: not supported for pull syncs by this version")
    # A key of the other direction: say so, rather than "unknown".
    for key in sorted((_PUSH_KEYS - _PULL_KEYS if direction == "pull" else set()) & s.keys()):
        raise ConfigError(f"{k}.{key}: only push syncs take this key; this sync pulls")
    for key in sorted((_PULL_KEYS - _PUSH_KEYS if direction == "push" else set()) & s.keys()):
        raise ConfigError(f"{k}.{key}: only pull syncs take this key; this sync pushes")
    check_keys(s, k, _PULL_KEYS if direction == "pull" else _PUSH_KEYS)
    conn = check_req(s, "connection", str, f"{k}.connection")
    if conn not in connections:
        raise ConfigError(f"{k}.connection: no connection named {conn!r} in [connections]")
    if direction == "push":
        return _push_sync(label, s, connections[conn], base)
    if KINDS[connections[conn].kind].direction != "pull":
        names = " or ".join(repr(n) for n in kinds_for("pull"))
        raise ConfigError(f"{k}.connection: pull syncs need a {names} connection")
    operation = check_opt(s, "operation", str, f"{k}.operation") or "mirror"
    if operation not in PULL_OPERATIONS:
        raise ConfigError(
            f"{k}.operation: {operation!r} is not supported for pull syncs "
            f"(use {' or '.join(PULL_OPERATIONS)})"
        )
    types = _types(s, k, KINDS[connections[conn].kind].known_types)
    behavior, style = parse_field_options(s, k, "sync_all_properties")
    if behavior == "specific_properties" and "mappings" not in s:
        raise ConfigError(
            f"{k}.field_behavior: 'specific_properties' stores only mapped fields; give "
            "mappings (per type) or leave it out"
        )
    prefix = check_opt(s, "prefix", str, f"{k}.prefix") or ""
    if not valid_prefix(prefix):
        raise ConfigError(f"{k}.prefix: {prefix!r} must be letters, digits and _")
    return Sync(
        label=label,
        direction=direction,
        connection=conn,
        operation=operation,
        interval=_interval(s, 30.0, k),
        prefix=prefix,
        paused=bool(check_opt(s, "paused", bool, f"{k}.paused")),
        max_sessions=_count(s, "max_sessions", 4, k, minimum=1),
        types=types,
        pull_mappings=parse_pull_mappings(s, k, types),
        field_behavior=behavior,
        field_normalization=style,
        name=_name(s, k),
        alerts=parse_alerts(s, k),
        on_alert=parse_on_alert(s, k),
    )


def _types(s: dict[str, Any], k: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """``types``: the remote types a pull keeps (others are acknowledged, skipped)."""
    raw = check_opt(s, "types", list, f"{k}.types")
    if raw is None:
        return ()
    if not raw:
        raise ConfigError(f"{k}.types: must name at least one type (leave it out for all)")
    for n, t in enumerate(raw):
        if not isinstance(t, str) or not valid_prefix(t) or not t:
            raise ConfigError(f"{k}.types[{n}]: {t!r} is not a type name")
        if t not in known:
            close = difflib.get_close_matches(t, known, n=1, cutoff=0.75)
            if close:
                raise ConfigError(f"{k}.types[{n}]: unknown type {t!r}; did you mean {close[0]!r}?")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{k}.types: a type is named twice")
    return tuple(raw)


def _name(s: dict[str, Any], k: str) -> str:
    name = check_opt(s, "label", str, f"{k}.label")
    if name is not None and not name.strip():
        raise ConfigError(f"{k}.label: must not be empty")
    return name or ""


def _push_sync(label: str, s: dict[str, Any], conn: Connection, base: Path) -> Sync:
    k = f"syncs.{label}"
    spec = KINDS[conn.kind]
    if spec.direction != "push":
        raise ConfigError(
            f"{k}.connection: push syncs need an {' or '.join(kinds_for('push'))} connection, "
            f"{conn.name!r} is {conn.kind!r}"
        )
    for key in sorted((kind_only_keys() - spec.sync_keys) & s.keys()):
        raise ConfigError(f"{k}.{key}: not used by {conn.kind} connections")
    operation = check_opt(s, "operation", str, f"{k}.operation") or "upsert"
    if operation not in PUSH_OPERATIONS:
        raise ConfigError(
            f"{k}.operation: {operation!r} is not one of {', '.join(PUSH_OPERATIONS)}"
        )
    if operation not in spec.push_operations:
        why = dict(spec.cannot).get(operation, f"{conn.kind} destinations cannot")
        raise ConfigError(f"{k}.operation: {operation!r} is not possible here: {why}")
    if "source" not in s:
        raise ConfigError(f"{k}.source: required")
    source, diffed = parse_source(s["source"], k, base)
    if diffed is None and (not valid_prefix(source) or not source):
        raise ConfigError(f"{k}.source: {source!r} is not a table name")
    mappings = parse_mappings(s, k)
    behavior, style = parse_field_options(
        s, k, "specific_properties" if mappings else "sync_all_properties"
    )
    if diffed is not None:
        primary_mapping(mappings, k)
        for key in ("associations", "conflict"):
            if key in s:
                raise ConfigError(
                    f"{k}.{key}: only for a captured source (a replica table); this "
                    "sync's source is diffed"
                )
    elif any(m.primary for m in mappings):
        raise ConfigError(
            f"{k}.mappings: is_primary_identifier is for diffed sources; a captured "
            "table's rows are known by their id"
        )
    hwm = parse_high_water_mark(s, k, operation)
    if hwm is not None and diffed is None:
        raise ConfigError(
            f"{k}.high_water_mark_attributes: only for a diffed source (source = {{ query "
            "= … }}); a captured table pushes every edit"
        )
    obj = check_req(s, "object", str, f"{k}.object")
    if not obj:
        raise ConfigError(f"{k}.object: must not be empty")
    conflict = check_opt(s, "conflict", str, f"{k}.conflict") or "merge"
    if conflict not in CONFLICT_RULES:
        raise ConfigError(f"{k}.conflict: {conflict!r} is not 'merge' or 'remote'")
    sources = check_opt(s, "sources", list, f"{k}.sources") or []
    if not all(isinstance(x, str) and x and "," not in x for x in sources):
        raise ConfigError(f"{k}.sources: must be a list of names (no commas)")
    no_upsert = bool(check_opt(s, "disable_upsert", bool, f"{k}.disable_upsert"))
    return Sync(
        label=label,
        direction="push",
        connection=conn.name,
        operation=operation,
        # A push interval only paces looks at the local outbox (file events wake the
        # daemon anyway): no remote budget at stake, so no minimum.
        interval=check_duration(s, "interval", 5.0, k),
        paused=bool(check_opt(s, "paused", bool, f"{k}.paused")),
        source=source,
        object=obj,
        # A kind that writes one record per request (CDM: its answer is the only proof
        # it arrived) takes one entry per batch, so an entry is never in flight unsent.
        batch_size=_count(s, "batch_size", 100, k, minimum=1) if spec.batches else 1,
        conflict=conflict,
        disable_upsert=no_upsert,
        sample_data=bool(check_opt(s, "sample_data", bool, f"{k}.sample_data")),
        associations=_associations(s, k),
        push_to_source=bool(check_opt(s, "push_to_source", bool, f"{k}.push_to_source")),
        sources=tuple(sources),
        natural_key=check_opt(s, "natural_key", str, f"{k}.natural_key"),
        updates_need_id=spec.updates_need_id,
        # insert and append create, never merge (as the kinds' clients send them).
        creates_may_merge=spec.creates_may_merge
        and not no_upsert
        and operation not in ("insert", "append"),
        name=_name(s, k),
        diffed=diffed,
        mappings=mappings,
        field_behavior=behavior,
        field_normalization=style,
        high_water_mark=hwm,
        alerts=parse_alerts(s, k),
        on_alert=parse_on_alert(s, k),
    )


def _associations(s: dict[str, Any], k: str) -> tuple[Association, ...]:
    out = []
    for column, spec in check_table(s, "associations", f"{k}.associations").items():
        where = f"{k}.associations.{column}"
        spec = check_table(spec, None, where)
        check_keys(spec, where, {"source", "object"})
        source = check_req(spec, "source", str, f"{where}.source")
        if not valid_prefix(source) or not source:
            raise ConfigError(f"{where}.source: {source!r} is not a table name")
        out.append(Association(column, source, check_req(spec, "object", str, f"{where}.object")))
    return tuple(out)


def _cross_checks(syncs: dict[str, Sync]) -> None:
    pushed: dict[str, str] = {}
    for s in syncs.values():
        if s.direction != "push" or s.diffed is not None:
            continue
        if s.source in pushed:
            raise ConfigError(
                f"syncs.{s.label}.source: table {s.source!r} is already pushed by sync "
                f"{pushed[s.source]!r}; one push sync per table"
            )
        pushed[s.source] = s.label
    pulls = [s for s in syncs.values() if s.direction == "pull"]
    seen_prefix: dict[str, str] = {}
    seen_conn: dict[str, str] = {}
    for s in pulls:
        if s.prefix in seen_prefix:
            raise ConfigError(
                f"syncs.{s.label}.prefix: syncs {seen_prefix[s.prefix]!r} and {s.label!r} "
                f"would fill the same tables (prefix {s.prefix!r}); give one a prefix"
            )
        if s.connection in seen_conn:
            raise ConfigError(
                f"syncs.{s.label}.connection: connection {s.connection!r} is already pulled "
                f"by sync {seen_conn[s.connection]!r}"
            )
        seen_prefix[s.prefix] = s.label
        seen_conn[s.connection] = s.label


def _credential_path(name: str) -> Path | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / name).is_file():
        return Path(creds) / name
    return None


def read_token(conn: Connection) -> str:
    """The connection's token: systemd credential, token_file or token_env.

    Raises ConfigError (never including the token itself).
    """
    k = f"connections.{conn.name}"
    cred = _credential_path(conn.name)
    if cred is not None:
        # systemd owns the credential's mode; it is private to the service.
        return _read_secret_file(cred, f"{k} (systemd credential)", check_mode=False)
    if conn.token_file is not None:
        return _read_secret_file(conn.token_file, f"{k}.token_file")
    assert conn.token_env is not None
    value = os.environ.get(conn.token_env, "").strip()
    if not value:
        raise ConfigError(f"{k}.token_env: environment variable {conn.token_env} is not set")
    return value


def _read_secret_file(path: Path, key: str, *, check_mode: bool = True) -> str:
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(f"{key}: cannot read {path}") from None
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{key}: {path} is readable by group or others; run: chmod 600 {path}")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{key}: cannot read {path}") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


# Shorter pull intervals only burn the remote's budget: a cycle is at least one request.
MIN_INTERVAL = 1.0


def _interval(d: dict[str, Any], default: float, where: str) -> float:
    value = check_duration(d, "interval", default, where)
    if value < MIN_INTERVAL:
        raise ConfigError(
            f"{where}.interval: {d['interval']!r} is shorter than the minimum of 1s "
            "(each cycle costs requests against the remote's hourly budget)"
        )
    return value


def _budget_check(syncs: dict[str, Sync], connections: dict[str, Connection]) -> None:
    """A pull schedule must fit the connection's budget: each cycle costs at least one
    request, so cycles per hour may not exceed the requests the budget allows."""
    for s in syncs.values():
        if s.direction != "pull" or s.paused:
            continue
        conn = connections[s.connection]
        rate_text = conn.rate_limit or KINDS[conn.kind].default_rate_limit
        if rate_text is None:
            continue
        per_hour = parse_rate(rate_text).per_second * 3600
        cycles = 3600 / s.interval
        if cycles > per_hour:
            raise ConfigError(
                f"syncs.{s.label}.interval: every {s.interval:g}s is {cycles:.0f} cycles an "
                f"hour, more requests than connections.{conn.name}.rate_limit allows "
                f"({rate_text}); pull less often"
            )


def _count(d: dict[str, Any], key: str, default: int, where: str, *, minimum: int) -> int:
    value = check_opt(d, key, int, f"{where}.{key}")
    if value is None:
        return default
    if value < minimum:
        raise ConfigError(f"{where}.{key}: must be at least {minimum}")
    return int(value)
