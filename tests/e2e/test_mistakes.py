"""A corpus of user mistakes, each through the real CLI: one clear line, the documented
exit code, no traceback, nothing lost.

Config, command line, files and permissions, and remote answers. Where a replica
exists, its user tables and outbox are compared before and after the failed command.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import TOKEN, app_write, cli_env, emulator, replicad

GOOD_CONN = """
[connections.crm]
kind = "sell"
base_url = "{url}"
token_env = "CRM_TOKEN"
max_retries = 1
retry_backoff = "10ms"
"""
GOOD_PULL = """
[syncs.mirror]
direction = "pull"
connection = "crm"
"""
PUSH_CONN = """
[connections.out]
kind = "endgrate"
base_url = "{url}"
token_env = "CRM_TOKEN"
session_id = "s"
"""


def cfg(*parts: str, replica: str = 'path = "replica.db"') -> str:
    return "[replica]\n" + replica + "\n" + "".join(parts)


def push(**keys: str) -> str:
    body = {"direction": '"push"', "connection": '"out"', "source": '"contact"',
            "object": '"crm-contact"', **keys}  # fmt: skip
    return "\n[syncs.up]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v)


@dataclass
class Case:
    """One mistake: the config (None: none written), the command, what must come out."""

    name: str
    config: str | None
    args: tuple[str, ...]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # name: (text, mode)
    replica: bool = False  # start from a synced replica with an unsent local edit


SYNC = ("sync", "--once", "--no-progress")
DIFFED = '{ query = "SELECT 1 AS a" }'
KEYED = '[{ from = "mail", to = "email", is_primary_identifier = true }]'
CASES = [
    # -- the config file ----------------------------------------------------------------
    Case("no config file", None, SYNC, 2, "no config file"),
    Case("invalid TOML", "[replica\npath=", SYNC, 2, "invalid TOML"),
    Case("unknown top-level key", cfg(GOOD_CONN, GOOD_PULL, "\n[extra]\nx = 1\n"), SYNC, 2,
         "extra: unknown key"),
    Case("unknown connection key", cfg(GOOD_CONN + "colour = 1\n", GOOD_PULL), SYNC, 2,
         "connections.crm.colour: unknown key"),
    Case("missing kind", cfg(GOOD_CONN.replace('kind = "sell"\n', ""), GOOD_PULL), SYNC, 2,
         "connections.crm.kind: required"),
    Case("unknown kind", cfg(GOOD_CONN.replace('"sell"', '"salesforce"'), GOOD_PULL), SYNC,
         2, "is not one of"),
    Case("base_url not a URL", cfg(GOOD_CONN.replace('"{url}"', '"api.getbase.com"'),
         GOOD_PULL), SYNC, 2, "is not an http(s) URL"),
    Case("plain http to another host", cfg(GOOD_CONN.replace('"{url}"',
         '"http://api.example.com"'), GOOD_PULL), SYNC, 2, "plain http is only allowed"),
    Case("base_url with /v2", cfg(GOOD_CONN.replace('"{url}"', '"{url}/v2"'), GOOD_PULL),
         SYNC, 2, "leave out the /v2"),
    Case("token_env and token_file", cfg(GOOD_CONN + 'token_file = "t"\n', GOOD_PULL), SYNC,
         2, "set token_env or token_file, not both"),
    Case("no token at all", cfg(GOOD_CONN.replace('token_env = "CRM_TOKEN"\n', ""),
         GOOD_PULL), SYNC, 2, "set token_env or token_file"),
    Case("token variable not set", cfg(GOOD_CONN.replace("CRM_TOKEN", "NOT_SET_ANYWHERE"),
         GOOD_PULL), SYNC, 2, "environment variable NOT_SET_ANYWHERE is not set"),
    Case("token file missing", cfg(GOOD_CONN.replace('token_env = "CRM_TOKEN"',
         'token_file = "missing.token"'), GOOD_PULL), SYNC, 2, "cannot read"),
    Case("token file readable by others", cfg(GOOD_CONN.replace('token_env = "CRM_TOKEN"',
         'token_file = "t"'), GOOD_PULL), SYNC, 2, "chmod 600", files={"t": (TOKEN, 0o644)}),
    Case("token file empty", cfg(GOOD_CONN.replace('token_env = "CRM_TOKEN"',
         'token_file = "t"'), GOOD_PULL), SYNC, 2, "is empty", files={"t": ("\n", 0o600)}),
    Case("endgrate without session_id", cfg(GOOD_CONN, GOOD_PULL,
         PUSH_CONN.replace('session_id = "s"\n', ""), push()), SYNC, 2,
         "session_id: required"),
    Case("session_id on a cdm connection", cfg(GOOD_CONN, GOOD_PULL,
         PUSH_CONN.replace('"endgrate"', '"cdm"'), push(object='"contact"')), SYNC, 2,
         "session_id: not used by cdm"),
    Case("device_uuid on a push connection", cfg(GOOD_CONN, GOOD_PULL,
         PUSH_CONN + 'device_uuid = "d"\n', push()), SYNC, 2, "device_uuid: not used by"),
    Case("pull from a push connection", cfg(GOOD_CONN, PUSH_CONN,
         GOOD_PULL.replace('"crm"', '"out"')), SYNC, 2, "pull syncs need a 'sell'"),
    Case("push to a pull connection", cfg(GOOD_CONN, GOOD_PULL,
         push(connection='"crm"')), SYNC, 2, "push syncs need an endgrate or cdm"),
    Case("dangling connection", cfg(GOOD_CONN, GOOD_PULL.replace('"crm"', '"nope"')), SYNC,
         2, "no connection named 'nope'"),
    Case("unknown direction", cfg(GOOD_CONN, GOOD_PULL.replace('"pull"', '"both"')), SYNC,
         2, "is not 'pull' or 'push'"),
    Case("interval 0s", cfg(GOOD_CONN, GOOD_PULL + 'interval = "0s"\n'), SYNC, 2,
         "shorter than the minimum of 1s"),
    Case("interval not a duration", cfg(GOOD_CONN, GOOD_PULL + 'interval = "soon"\n'), SYNC,
         2, "syncs.mirror.interval"),
    Case("schedule over the budget", cfg(GOOD_CONN + 'rate_limit = "10/h"\n',
         GOOD_PULL + 'interval = "1m"\n'), SYNC, 2, "more requests than"),
    Case("bad rate_limit", cfg(GOOD_CONN + 'rate_limit = "fast"\n', GOOD_PULL), SYNC, 2,
         "connections.crm.rate_limit"),
    Case("max_sessions 0", cfg(GOOD_CONN, GOOD_PULL + "max_sessions = 0\n"), SYNC, 2,
         "must be at least 1"),
    Case("wrong type", cfg(GOOD_CONN, GOOD_PULL + "paused = 1\n"), SYNC, 2,
         "syncs.mirror.paused: must be true or false, not an integer"),
    Case("bad prefix", cfg(GOOD_CONN, GOOD_PULL + 'prefix = "1-x"\n'), SYNC, 2,
         "syncs.mirror.prefix"),
    Case("unknown pull operation", cfg(GOOD_CONN, GOOD_PULL + 'operation = "sideways"\n'),
         SYNC, 2, "not supported for pull syncs"),
    Case("unsupported push operation", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(operation='"teleport"')), SYNC, 2, "is not one of mirror, upsert"),
    Case("push source not a name", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source='"con tact"')), SYNC, 2, "is not a table name"),
    Case("push source typo", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN, push(source='"contacts"')),
         SYNC, 2, "did you mean 'contact'", replica=True),
    Case("push source no pull makes, new replica", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source='"payments"')), SYNC, 2, "no pull sync makes one of that name"),
    Case("unknown conflict rule", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(conflict='"mine"')), SYNC, 2, "syncs.up.conflict"),
    Case("replica under a file", cfg(GOOD_CONN, GOOD_PULL,
         replica='path = "afile/replica.db"'), SYNC, 2, "cannot create the replica's files",
         files={"afile": ("x", 0o600)}),
    # -- the command line ---------------------------------------------------------------
    Case("unknown command", cfg(GOOD_CONN, GOOD_PULL), ("frobnicate",), 2, "invalid choice"),
    Case("unknown option", cfg(GOOD_CONN, GOOD_PULL), ("sync", "--fast"), 2,
         "unrecognized arguments"),
    Case("bad --log-level", cfg(GOOD_CONN, GOOD_PULL), ("--log-level", "loud", "status"), 2,
         "--log-level: 'loud'"),
    Case("bad REPLICAD_LOG_LEVEL", cfg(GOOD_CONN, GOOD_PULL), ("status",), 2,
         "REPLICAD_LOG_LEVEL", env={"REPLICAD_LOG_LEVEL": "chatty"}),
    Case("retry an entry that does not exist", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN, push()),
         ("retry", "99"), 1, "outbox entry 99 does not exist", replica=True),
    Case("retry a pending entry", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN, push()),
         ("retry", "1"), 1, "is pending, not rejected", replica=True),
    Case("resync an unknown sync", cfg(GOOD_CONN, GOOD_PULL), ("resync", "nope"), 2,
         "no sync named 'nope'", replica=True),
    Case("resync a push sync", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN, push()),
         ("resync", "up"), 2, "is a push sync", replica=True),
    Case("backup over an existing file", cfg(GOOD_CONN, GOOD_PULL), ("backup", "exists.db"),
         2, "a backup never overwrites", replica=True, files={"exists.db": ("x", 0o600)}),
    Case("backup into a missing folder", cfg(GOOD_CONN, GOOD_PULL),
         ("backup", "no/such/dir/b.db"), 2, "is not a folder", replica=True),
    Case("backup before any sync", cfg(GOOD_CONN, GOOD_PULL), ("backup", "b.db"), 2,
         "no replica at"),
    Case("resolve a conflict that does not exist", cfg(GOOD_CONN, GOOD_PULL),
         ("conflicts", "resolve", "7", "--keep", "local"), 2, "conflict 7 does not exist",
         replica=True),
    Case("resolve without --keep", cfg(GOOD_CONN, GOOD_PULL), ("conflicts", "resolve", "7"),
         2, "--keep"),
    Case("demo over someone's config", None, ("demo", "--dir", "."), 2,
         "was not written by the demo", files={"config.toml": ("[replica]\n", 0o600)}),
    # -- the remote -----------------------------------------------------------------------
    Case("token refused", cfg(GOOD_CONN, GOOD_PULL), SYNC, 3, "token rejected",
         env={"CRM_TOKEN": "wrong-token"}, replica=True),
    Case("remote unreachable", cfg(GOOD_CONN.replace('"{url}"', '"http://127.0.0.1:9"'),
         GOOD_PULL), SYNC, 4, "gave up after 1 retries", replica=True),
    # -- Census sync definitions (CONTRACT §7) ----------------------------------------
    Case("mirror on endgrate", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(operation='"mirror"')), SYNC, 2, "cannot delete records"),
    Case("update on endgrate", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(operation='"update"')), SYNC, 2, "syncs.up.operation: 'update' is not possible"),
    Case("two primary identifiers", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source=DIFFED, mappings='[{ from = "a", to = "x", is_primary_identifier = true '
              '}, { from = "b", to = "y", is_primary_identifier = true }]')), SYNC, 2,
         "exactly one mapping with is_primary_identifier"),
    Case("diffed source without identifier", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source=DIFFED, mappings='[{ from = "a", to = "x" }]')), SYNC, 2,
         "syncs.up.mappings: a diffed source needs exactly one"),
    Case("mapped column missing from the source", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source='{ query = "SELECT 1 AS mail", database = "app.db" }',
              mappings='[{ from = "mail", to = "email", is_primary_identifier = true }, '
              '{ from = "nope", to = "y" }]')), SYNC, 2,
         "syncs.up.mappings[1].from: source has no column 'nope'",
         files={"app.db": ("", 0o600)}),
    Case("high-water mark on upsert", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source=DIFFED, mappings=KEYED, high_water_mark_attributes='{ column = "t" }')),
         SYNC, 2, "syncs.up.high_water_mark_attributes: only for operation = 'append'"),
    Case("a source query that writes", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source='{ query = "DELETE FROM contact" }', mappings=KEYED)), SYNC, 2,
         "syncs.up.source.query: must be a SELECT"),
    Case("source file missing", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(source='{ table = "t", database = "nowhere.db" }', mappings=KEYED)), SYNC, 2,
         "syncs.up.source.database: no SQLite file at"),
    Case("constant of a type JSON lacks", cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN,
         push(mappings='[{ from = { type = "constant_value", data = 2026-01-01 }, to = "d" }]')),
         SYNC, 2, "syncs.up.mappings[0].from.data: a constant must be"),
    Case("a pull type misspelled", cfg(GOOD_CONN, GOOD_PULL + 'types = ["contacts"]\n'), SYNC,
         2, "syncs.mirror.types[0]: unknown type 'contacts'; did you mean 'contact'?"),
    Case("a pull mapping to a reserved column", cfg(GOOD_CONN, GOOD_PULL
         + '[syncs.mirror.mappings]\ncontact = [{ from = "name", to = "_revision" }]\n'),
         SYNC, 2, "syncs.mirror.mappings.contact[0].to: '_revision' is one of replicad's own"),
    Case("two pull mappings to one column", cfg(GOOD_CONN, GOOD_PULL
         + '[syncs.mirror.mappings]\ncontact = [{ from = "a", to = "x" }, { from = "b", '
         'to = "X" }]\n'), SYNC, 2, "syncs.mirror.mappings.contact[1].to: column 'X' is mapped"),
    Case("a pull mapping for a type not kept", cfg(GOOD_CONN, GOOD_PULL + 'types = ["deal"]\n'
         '[syncs.mirror.mappings]\ncontact = [{ from = "a", to = "x" }]\n'), SYNC, 2,
         "syncs.mirror.mappings.contact: type 'contact' is not among types (deal)"),
    Case("specific properties without mappings", cfg(GOOD_CONN, GOOD_PULL
         + 'field_behavior = "specific_properties"\n'), SYNC, 2,
         "syncs.mirror.field_behavior: 'specific_properties' stores only mapped fields"),
    Case("bad alert", cfg(GOOD_CONN, GOOD_PULL + 'alert_attributes = [{ type = "rejected_records"'
         ' }]\n'), SYNC, 2, "alert_attributes[0].threshold_percent: required"),
]  # fmt: skip


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One emulator, and a replica synced from it holding one unsent local insert."""
    base = tmp_path_factory.mktemp("base")
    with emulator(records=60) as emu:
        (base / "config.toml").write_text(
            cfg(GOOD_CONN, GOOD_PULL, PUSH_CONN, push()).format(url=emu.url)
        )
        done = replicad("sync", "--once", "--no-progress", "--config", str(base / "config.toml"))
        assert done.returncode == 0, done.stderr
        app_write(
            base / "replica.db",
            "INSERT INTO contact (first_name, email) VALUES ('Unsent', 'u@example.org')",
        )
        con = sqlite3.connect(base / "replica.db")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        yield emu.url, base / "replica.db"


def snapshot(db: Path) -> Any:
    """User tables and outbox, to compare before and after a failed command."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            t: con.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall()
            for t in ("contact", "deal", "lead", "_replicad_outbox")
        }
    finally:
        con.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mistake(case: Case, remote: tuple[str, Path], tmp_path: Path) -> None:
    """Exit code, exactly one line on stderr besides log lines, no traceback, nothing lost."""
    url, base = remote
    work = tmp_path / "w"
    work.mkdir()
    for name, (text, mode) in case.files.items():
        (work / name).write_text(text)
        os.chmod(work / name, mode)
    config = work / "config.toml"
    if case.config is not None:
        config.write_text(case.config.replace("{url}", url))
    if case.replica:
        shutil.copy(base, work / "replica.db")
        before = snapshot(work / "replica.db")
    args = list(case.args)
    if args[0] != "demo" and "--log-level" not in args and case.name != "unknown command":
        args += ["--config", str(config)]
    env = {**cli_env(), "REPLICAD_LOG_LEVEL": "warning", **case.env}
    import subprocess

    from tests.e2e.harness import REPLICAD

    done = subprocess.run([REPLICAD, *args], capture_output=True, text=True, env=env,
                          cwd=work, timeout=60)  # fmt: skip
    assert done.returncode == case.code, done.stderr
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.strip() and not x.startswith("{")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("replicad: ") and case.says in lines[0], lines[0]
    if case.replica:
        assert snapshot(work / "replica.db") == before
