"""``replicad validate [--json]``: check everything a cycle would need; change nothing.

Like Census's ``validate_only`` (CONTRACT §7): the config was already parsed whole by
the time this runs. Here each connection's token is read and, where the remote is
reachable, tried against a read-only request (push connections too); each diffed
source's query is prepared on a read-only connection, its mapped columns looked up
and its primary identifier checked for duplicates; mapped columns of a captured
table are looked up in the replica. The replica is never opened for writing.

Exit 0 valid, 2 invalid, 3 credentials refused, 4 a remote unreachable. ``--json``
answers ``{"status": "success" | "error", "data": {"connections": …, "syncs": …}}``.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import replace
from typing import Any

import anyio

from replicad.connectors.errors import AuthRefused, ConnectorError
from replicad.connectors.retry import RetryPolicy
from replicad.daemon import exits
from replicad.daemon.config import Config, ConfigError, Connection, Sync
from replicad.daemon.engine import check_push_sources, connection_token, pull_client
from replicad.daemon.kinds import KINDS
from replicad.daemon.mapping import mapped_columns
from replicad.daemon.push import diff_spec
from replicad.store.diff import SourceError, check_source, source_connection
from replicad.store.status import read_status, seen_fields

QUICK = RetryPolicy(max_retries=1, base=0.2, cap=1.0)
# Worst first: the exit code is the worst finding's.
_SEVERITY = {exits.OK: 0, exits.UNREACHABLE: 1, exits.AUTH: 2, exits.USAGE: 3}


async def validate(config: Config, as_json: bool = False) -> int:
    """Run every check; print lines (or one JSON document); the exit code."""
    conns = {c.name: await _connection(c, config) for c in config.connections.values()}
    tables: set[str] | None = None
    if config.replica_path.exists():
        tables = {t["name"] for t in read_status(config.replica_path)["tables"]}
    syncs = {}
    for s in config.syncs.values():
        syncs[s.label] = await anyio.to_thread.run_sync(_sync, s, config, tables)
    codes: list[int] = [int(r["code"]) for r in [*conns.values(), *syncs.values()]]
    code = max(codes or [exits.OK], key=_SEVERITY.__getitem__)
    if as_json:
        data = {
            "config": str(config.path),
            "replica": str(config.replica_path),
            "connections": {n: _public(c) for n, c in conns.items()},
            "syncs": {n: _public(s) for n, s in syncs.items()},
        }
        status = "success" if code == exits.OK else "error"
        json.dump({"status": status, "data": data}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    print(
        f"config {config.path}: ok ({len(config.connections)} connections, "
        f"{len(config.syncs)} syncs)"
    )
    print(f"replica {config.replica_path}")
    for kind, found in (("connection", conns), ("sync", syncs)):
        for name, r in found.items():
            text = f"{kind} {name}: {r['message']}"
            print(text, file=sys.stderr if r["code"] != exits.OK else sys.stdout)
    return code


def _public(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("code", "message")}
    key = "error" if r["code"] != exits.OK else "message"
    return {"status": "success" if r["code"] == exits.OK else "error", **out, key: r["message"]}


async def _connection(conn: Connection, config: Config) -> dict[str, Any]:
    """Token read, and tried remotely where the remote answers."""
    spec = KINDS[conn.kind]
    try:
        connection_token(conn)
    except ConfigError as e:
        return {"kind": conn.kind, "code": exits.USAGE, "message": str(e)}
    quick = replace(conn, timeout=min(conn.timeout, 10.0))
    try:
        if spec.pull_client is not None:
            # The device UUID is irrelevant to the read-only check; the replica stays closed.
            device = conn.device_uuid or str(uuid.UUID(int=0))
            client = pull_client(quick, device, QUICK)
            try:
                await client.check_credentials()
            finally:
                await client.aclose()
        elif spec.push_client is not None:
            users = [s for s in config.syncs.values() if s.connection == conn.name]
            if not users:
                return {"kind": conn.kind, "code": exits.OK, "message": "token found (unused)"}
            factory = spec.push_client
            pusher = factory(quick, users[0], connection_token(conn), QUICK, None)
            try:
                await pusher.check_credentials(users[0].object)
            finally:
                await pusher.aclose()
    except AuthRefused as e:
        return {"kind": conn.kind, "code": exits.AUTH, "message": str(e)}
    except ConnectorError as e:
        return {
            "kind": conn.kind,
            "code": exits.UNREACHABLE,
            "message": f"not reachable now, credentials unchecked ({e})",
        }
    return {"kind": conn.kind, "code": exits.OK, "message": "credentials accepted"}


def _sync(s: Sync, config: Config, tables: set[str] | None) -> dict[str, Any]:
    """A sync's own checks: its source, mapped columns and operation."""
    base: dict[str, Any] = {"direction": s.direction, "operation": s.operation}
    if s.name:
        base["label"] = s.name
    if s.direction == "pull":
        message = f"{s.operation} from {s.connection}"
        if s.pull_mappings and config.replica_path.exists():
            # Not an error: the column stays NULL until the field arrives. Say which have not.
            seen = seen_fields(config.replica_path, s.label)
            unseen = [
                f"{type_}.{m.column}"
                for type_, ms in s.pull_mappings
                for m in ms
                if m.column is not None and m.column not in seen.get(type_, set())
            ]
            if unseen:
                base["unseen_fields"] = unseen
                message += f"; mapped field(s) with no value received yet: {', '.join(unseen)}"
        return {**base, "code": exits.OK, "message": message}
    what = f"{s.operation} to {KINDS[config.connections[s.connection].kind].name} {s.object!r}"
    if s.diffed is not None:
        spec = diff_spec(s)
        if spec.database is None and not config.replica_path.exists():
            return {
                **base,
                "code": exits.OK,
                "message": f"{what}; query unchecked (no replica yet)",
            }
        try:
            with source_connection(spec, config.replica_path) as src:
                cols = check_source(src, spec)
        except SourceError as e:
            return {**base, "code": exits.USAGE, "message": f"source {s.shown_as}: {e}"}
        return {**base, "code": exits.OK, "columns": cols, "message": f"{what}; source ok"}
    present = tables or set()
    try:
        check_push_sources(config, present, s.label)
    except ConfigError as e:
        return {**base, "code": exits.USAGE, "message": str(e)}
    if tables is None:
        return {**base, "code": exits.OK, "message": f"{what}; table made by the first pull"}
    if s.source not in tables:
        # Not an error: the pull may bring that type later. But a misspelt name would
        # leave the real table pull-only (its edits refused): say it plainly.
        shown = ", ".join(sorted(tables)) or "none yet"
        return {
            **base,
            "code": exits.OK,
            "warning": f"no table {s.source!r} in the replica",
            "message": f"{what}; WARNING: the replica has no table {s.source!r} yet (its "
            f"edits can be pushed once the pull brings that type; tables: {shown})",
        }
    wanted = mapped_columns(s) or ()
    if wanted:
        have = set(_columns(config, s.source))
        missing = [c for c in wanted if c not in have]
        if missing:
            return {
                **base,
                "code": exits.USAGE,
                "message": f"mapped column(s) {', '.join(missing)} not in table {s.source}",
            }
    return {**base, "code": exits.OK, "message": f"{what}; source table ok"}


def _columns(config: Config, table: str) -> list[str]:
    for t in read_status(config.replica_path)["tables"]:
        if t["name"] == table:
            return list(t.get("columns", []))
    return []
