"""End-to-end harness: the real emulator under uvicorn and the real ``replicad`` CLI.

Both run as subprocesses; the replica is compared with the emulator's state field by
field through the same value encoding the contract fixes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicad.connectors.emulator_control import EmulatorControl
from replicad.store.app_sql import edit_locally
from replicad.store.values import to_sql

BIN = Path(sys.executable).parent
REPLICAD = str(BIN / "replicad")
TOKEN = "e2e-" + "s3cr3t" * 10  # 64 characters, easy to grep for
# The emulator's ways of answering where the seeds leave the wire open: the round
# trips run against both (docs/push-wire.md).
PROFILES = ("standard", "variant")


@dataclass
class Emulator:
    """A running emulator subprocess."""

    url: str
    proc: subprocess.Popen[str]
    control: EmulatorControl


@contextmanager
def emulator(
    records: int = 1000,
    seed: int = 1,
    page_size: int = 100,
    profile: str = "standard",
    latency: str = "0s",
) -> Iterator[Emulator]:
    """Start ``replicad emulator --port 0`` and wait for its listening line."""
    env = {**os.environ, "REPLICAD_EMULATOR_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [REPLICAD, "emulator", "--port", "0", "--records", str(records), "--seed", str(seed),
         "--page-size", str(page_size), "--profile", profile, "--latency", latency],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        url = line.rsplit(" ", 1)[1].strip()
        with EmulatorControl(url) as control:
            yield Emulator(url, proc, control)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_config(
    folder: Path, url: str, *, push: dict[str, Any] | None = None, kind: str = "endgrate",
    **conn: Any,
) -> Path:  # fmt: skip
    """A minimal config (plus connection overrides) in ``folder``; ``push`` adds a push
    sync of ``kind`` (endgrate or cdm) with these settings, to the same emulator."""
    settings = {"max_retries": 4, "retry_backoff": "50ms", "retry_backoff_max": "200ms", **conn}
    lines = [
        "[replica]",
        'path = "replica.db"',
        "[connections.crm]",
        'kind = "sell"',
        f'base_url = "{url}"',
        'token_env = "CRM_TOKEN"',
    ]
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    lines += ["[syncs.mirror]", 'direction = "pull"', 'connection = "crm"', 'interval = "1s"']
    if push is not None:
        lines += [
            "[connections.out]", f'kind = "{kind}"', f'base_url = "{url}"',
            'token_env = "CRM_TOKEN"', "max_retries = 4", 'retry_backoff = "50ms"',
            'retry_backoff_max = "200ms"',
        ]  # fmt: skip
        if kind == "endgrate":
            lines.append('session_id = "e2e-session"')
        lines += ["[syncs.up]", 'direction = "push"', 'connection = "out"']
        for key, value in push.items():
            lines.append(f"{key} = {_toml(value)}")
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def cli_env(token: str = TOKEN) -> dict[str, str]:
    """Environment for the CLI, with the connection's token."""
    return {**os.environ, "CRM_TOKEN": token, "REPLICAD_LOG_LEVEL": "info"}


def replicad(
    *args: str, token: str = TOKEN, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to completion."""
    return subprocess.run(
        [REPLICAD, *args], capture_output=True, text=True, env=cli_env(token), timeout=timeout
    )


def start_replicad(*args: str, token: str = TOKEN) -> subprocess.Popen[str]:
    """Start the real CLI in the background."""
    return subprocess.Popen(
        [REPLICAD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(token),
    )  # fmt: skip


def replica_state(path: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """type → id → {field: stored value} read back through the field→column map."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for tbl, type_ in db.execute("SELECT tbl, type FROM _replicad_types WHERE kind = 'table'"):
            fields = db.execute(
                "SELECT field, col FROM _replicad_fields WHERE tbl = ?", (tbl,)
            ).fetchall()
            cols = ", ".join(f'"{c}"' for _, c in fields)
            rows = {}
            for row in db.execute(f'SELECT id{", " if cols else ""}{cols} FROM "{tbl}"'):
                rows[row[0]] = {f: v for (f, _), v in zip(fields, row[1:], strict=True)}
            out[type_] = rows
        return out
    finally:
        db.close()


def expected_state(remote: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """The emulator's records encoded as the replica must store them."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for type_, records in remote["records"].items():
        out[type_] = {
            int(i): {k: to_sql(v) for k, v in data.items() if k != "id"}
            for i, data in records.items()
        }
    return out


def assert_replica_matches(path: Path, emu: Emulator) -> None:
    """The replica equals the emulator's live records, field by field."""
    want = expected_state(emu.control.state())
    got = replica_state(path)
    for type_ in set(want) | set(got):
        w, g = want.get(type_, {}), got.get(type_, {})
        assert set(g) == set(w), f"{type_}: ids differ ({len(g)} vs {len(w)} rows)"
        for rid, fields in w.items():
            row = {k: v for k, v in g[rid].items() if k in fields or v is not None}
            assert row == fields, f"{type_} {rid} differs"


def app_db(path: Path) -> sqlite3.Connection:
    """A connection as a local app opens it (autocommit, busy timeout)."""
    return sqlite3.connect(path, timeout=10, isolation_level=None)


def app_write(path: Path, *statements: str) -> None:
    """Run statements in one ``BEGIN IMMEDIATE`` transaction, as the README tells apps."""
    edit_locally(path, statements)


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def stored_rows(path: Path) -> int:
    """Rows in every managed table of a replica so far (0 while it is not there): how
    far a sync has got, for tests that kill it at a moment of their choosing."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return sum(
                db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for (t,) in db.execute("SELECT tbl FROM _replicad_types")
            )
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def query_when_ready(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query, or None while the replica is not created yet (no
    file, or the daemon has not committed its schema)."""
    if not path.exists():
        return None
    try:
        return query(path, sql, *args)
    except sqlite3.OperationalError:
        return None


def wait_for(predicate: Any, timeout: float = 30.0, step: float = 0.05) -> None:
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)
