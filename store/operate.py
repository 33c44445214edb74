"""What an operator does to a replica from outside the daemon: back up, check, repair,
start a resync, resolve conflicts.

Each function opens the file itself. Backups, checks, resync requests and conflict
resolutions are short transactions (or none) that work while the daemon runs; a
repair needs the replica's lock (the daemon stopped).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicad.store.identity import IDENTITY_KEY, file_identity, request_resync
from replicad.store.local_edits import OPEN_SQL
from replicad.store.lock import ReplicaLock, is_held
from replicad.store.names import quote
from replicad.store.outbox import utcnow
from replicad.store.readonly import open_readonly
from replicad.store.reconcile import reconcile, stale_views
from replicad.store.schema import APPLICATION_ID, SCHEMA_VERSION
from replicad.store.tables import TableCatalog, triggers_by_name

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class OperatorError(ValueError):
    """An operator command cannot go on; the message says why and what to do."""


def connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """A connection to an existing replica of this version (as an app would open it)."""
    if not path.exists():
        raise OperatorError(f"no replica at {path} (run `replicad sync` first)")
    if write:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10,
                             isolation_level=None)  # fmt: skip
    else:
        db = open_readonly(path)
    try:
        app_id, version = (
            db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")
        )
    except sqlite3.DatabaseError as e:
        db.close()
        raise OperatorError(
            f"{path} cannot be read as a replica ({e}); run `replicad doctor`"
        ) from None
    if app_id != APPLICATION_ID:
        db.close()
        raise OperatorError(f"{path} is not a replicad replica")
    if version != SCHEMA_VERSION:
        db.close()
        newer = version > SCHEMA_VERSION
        raise OperatorError(
            f"{path} has schema {version}, this replicad knows {SCHEMA_VERSION}: "
            + ("upgrade replicad" if newer else "run `replicad sync` once to migrate it")
        )
    return db


# --- backup -------------------------------------------------------------------------


def backup(path: Path, dest: Path, progress: Progress | None = None) -> int:
    """A consistent online copy of the replica at ``dest`` (0600); its size in bytes.

    SQLite's backup API copies one snapshot in a single step, while the daemon and
    apps go on (in steps, every commit of another connection would start it over: a
    busy replica might never finish). ``progress`` hears the bytes written so far.
    The copy is marked as one: opened anywhere, even restored over the original's
    file, it takes its own identity and pulls everything again (CONTRACT §8).
    """
    if dest.exists():
        raise OperatorError(f"{dest} exists; choose a new file (a backup never overwrites)")
    if not dest.parent.is_dir():
        raise OperatorError(f"{dest.parent} is not a folder")
    src = connect(path)
    old = os.umask(0o077)
    try:
        out = sqlite3.connect(dest)
    finally:
        os.umask(old)
    done = threading.Event()
    watcher = None
    if progress is not None:
        (pages,) = src.execute("PRAGMA page_count").fetchone()
        (size,) = src.execute("PRAGMA page_size").fetchone()
        watcher = threading.Thread(
            target=_watch_size, args=(dest, int(pages) * int(size), progress, done), daemon=True
        )
        watcher.start()
    try:
        src.backup(out, pages=-1)
        out.execute(
            "INSERT OR REPLACE INTO _replicad_meta (key, value) VALUES (?, ?)",
            (IDENTITY_KEY, BACKUP_IDENTITY),
        )
        out.commit()
    except BaseException:
        out.close()
        dest.unlink(missing_ok=True)
        raise
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
        src.close()
    out.close()
    os.chmod(dest, 0o600)
    if progress is not None:
        size = dest.stat().st_size
        progress(size, size)
    return dest.stat().st_size


# No file has this identity: a backup, wherever it is opened, is a copy.
BACKUP_IDENTITY = "backup"


def _watch_size(dest: Path, total: int, progress: Progress, done: threading.Event) -> None:
    """Report the copy's growth until it is done (the single backup step says nothing)."""
    while not done.wait(0.25):
        try:
            progress(min(dest.stat().st_size, total), total)
        except OSError:
            return


# --- doctor -------------------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """One thing the doctor checked: ok, or what is wrong and what to run."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(slots=True)
class Diagnosis:
    """Every check of a replica."""

    path: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Whether every check passed."""
        return all(f.ok for f in self.findings)

    def add(self, check: str, ok: bool, detail: str, fix: str = "") -> None:
        """Record one check."""
        self.findings.append(Finding(check, ok, detail, "" if ok else fix))


def diagnose(path: Path) -> Diagnosis:
    """Check the replica without changing it (works while the daemon runs)."""
    d = Diagnosis(str(path))
    if not path.exists():
        d.add("file", False, f"no replica at {path}", "run `replicad sync`")
        return d
    pid = is_held(path)
    d.add("lock", True, f"held by replicad process {pid}" if pid else "free (no daemon runs)")
    try:
        db = open_readonly(path)
        problems = [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as e:
        d.add("integrity", False, f"the file cannot be read: {e}", "run `replicad doctor --repair`")
        return d
    try:
        ok = problems == ["ok"]
        d.add("integrity", ok, "ok" if ok else "; ".join(problems[:3]),
              "run `replicad doctor --repair` (with the daemon stopped)")  # fmt: skip
        if not ok:
            return d
        app_id, version = (
            db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")
        )
        if app_id != APPLICATION_ID:
            d.add("replica", False, "not a replicad replica", "choose another [replica] path")
            return d
        d.add("schema", version == SCHEMA_VERSION, f"version {version} (this replicad: "
              f"{SCHEMA_VERSION})", "run `replicad sync` once to migrate" if version <
              SCHEMA_VERSION else "upgrade replicad")  # fmt: skip
        if version != SCHEMA_VERSION:
            return d
        _check_views(db, d)
        _check_tables(db, d)
        _check_identity(db, path, d)
        _check_outbox(db, d)
    finally:
        db.close()
    return d


def _check_views(db: sqlite3.Connection, d: Diagnosis) -> None:
    bad = stale_views(db)
    d.add("views", not bad, "all present and current" if not bad else
          f"missing or changed: {', '.join(bad)}", "run `replicad doctor --repair`")  # fmt: skip


def _check_tables(db: sqlite3.Connection, d: Diagnosis) -> None:
    """What reconcile would repair: columns apps renamed or dropped, replicad triggers
    missing or changed (read only)."""
    catalog = TableCatalog()
    catalog.load(db)
    problems: list[str] = []
    for tbl, info in catalog.tables.items():
        actual = {str(r[1]).lower() for r in db.execute(f"PRAGMA table_info({quote(tbl)})")}
        if not actual:
            problems.append(f"table {tbl} is gone")
            continue
        problems += [
            f"{tbl}.{col} is missing" for col in info.columns.values() if col.lower() not in actual
        ]
        have = {
            str(n): str(s)
            for n, s in db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                (tbl,),
            )
        }
        wanted = triggers_by_name(tbl, info.sync, list(info.columns.values()), history=info.history)
        for name, sql in wanted.items():
            if have.get(name) != sql:
                problems.append(f"trigger {name} {'changed' if name in have else 'missing'}")
    detail = "; ".join(problems[:3]) if problems else f"{len(catalog.tables)} type tables, current"
    fix = "run `replicad doctor --repair` (the daemon also repairs this when it starts)"
    d.add("tables and triggers", not problems, detail, fix)


def _check_identity(db: sqlite3.Connection, path: Path, d: Diagnosis) -> None:
    row = db.execute("SELECT value FROM _replicad_meta WHERE key = ?", (IDENTITY_KEY,)).fetchone()
    same = row is None or row[0] == file_identity(path)
    d.add("identity", True, "this is the file the replica was created as" if same else
          "this file is a copy: when replicad next opens it, it takes its own device "
          "identity and pulls everything again")  # fmt: skip


def _check_outbox(db: sqlite3.Connection, d: Diagnosis) -> None:
    stuck = db.execute(
        "SELECT count(*) FROM _replicad_outbox WHERE state = 'in_flight' AND "
        "(payload IS NULL OR batch IS NULL)"
    ).fetchone()[0]
    orphans = 0
    for (tbl,) in db.execute(
        f"SELECT DISTINCT tbl FROM _replicad_outbox WHERE {OPEN_SQL}"
    ).fetchall():
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (tbl,)
        ).fetchone()
        if exists is None:
            orphans += db.execute(
                f"SELECT count(*) FROM _replicad_outbox WHERE tbl = ? AND {OPEN_SQL}", (tbl,)
            ).fetchone()[0]
    counts = dict(db.execute("SELECT state, count(*) FROM _replicad_outbox GROUP BY state"))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty"
    ok = stuck == 0 and orphans == 0
    detail = summary if ok else (
        f"{summary}; {stuck} in flight without their sent values, {orphans} for tables "
        "that no longer exist")  # fmt: skip
    hint = (
        "see replicad_outbox; `replicad retry --all` requeues rejected ones, `replicad "
        "retry ENTRY` a create in doubt (check the destination first)"
    )
    d.add("outbox", ok, detail, hint)


# --- repair -------------------------------------------------------------------------


@dataclass(slots=True)
class RepairReport:
    """What ``repair`` did, and what it could not recover."""

    done: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def repair(path: Path) -> RepairReport:
    """Rebuild what can be rebuilt without losing local edits (daemon stopped).

    A readable file gets its views and triggers back (and renamed columns followed).
    A corrupt one is rebuilt: a fresh file with the same schema takes every row that
    can still be read, outbox entries first; the damaged file is kept beside it, and
    the new file (another file: a copy) pulls everything again on its next sync.
    """
    lock = ReplicaLock(path)
    lock.acquire()  # ReplicaBusy names the daemon's pid: stop it first
    try:
        report = RepairReport()
        if not _readable(path):
            _rebuild(path, report)
            return report
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            if not _indexes_sound(db, report):
                db.close()
                _rebuild(path, report)
                return report
            catalog = TableCatalog()
            catalog.load(db)
            report.done += reconcile(db, catalog)
        finally:
            db.close()
        return report
    finally:
        lock.release()


def _indexes_sound(db: sqlite3.Connection, report: RepairReport) -> bool:
    """The full integrity check, past the quick one: an index that disagrees with its
    table (the quick check does not compare them) is rebuilt; False if the file is
    still not sound after that."""
    if _integrity(db) == ["ok"]:
        return True
    try:
        db.execute("REINDEX")
    except sqlite3.IntegrityError:
        # A unique index that lost entries let duplicates in: it cannot be rebuilt
        # over them. The full rebuild keeps one row of each (the resync then fixes it).
        return False
    if _integrity(db) != ["ok"]:
        return False
    report.done.append("indexes rebuilt (REINDEX): the integrity check passes")
    return True


def _integrity(db: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]


def _readable(path: Path) -> bool:
    try:
        db = open_readonly(path)
        try:
            return [str(r[0]) for r in db.execute("PRAGMA quick_check(1)")] == ["ok"]
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False


def _rebuild(path: Path, report: RepairReport) -> None:
    """Salvage a corrupt file into a fresh one (see ``repair``)."""
    fresh = path.with_name(path.name + ".rebuilding")
    for p in (fresh, *_sidecars(fresh)):
        p.unlink(missing_ok=True)
    old = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    old.execute("PRAGMA writable_schema = ON")  # read what can be read of a damaged schema
    umask = os.umask(0o077)
    try:
        new = sqlite3.connect(fresh, isolation_level=None)
    finally:
        os.umask(umask)
    try:
        try:
            schema = old.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 "
                "WHEN 'index' THEN 1 ELSE 2 END"
            ).fetchall()
            version = old.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise OperatorError(
                f"{path}: even the schema is unreadable ({e}); nothing can be salvaged — "
                "restore a backup, or move the file away and run `replicad sync` to pull "
                "everything into a new replica"
            ) from None
        new.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        new.execute("PRAGMA journal_mode = WAL")
        new.execute("BEGIN")
        tables = [(str(n), str(s)) for t, n, _, s in schema if t == "table"]
        for _, sql in tables:
            new.execute(sql)
        # Outbox and conflicts first: they are the only copy of local edits.
        order = sorted(tables, key=lambda t: (t[0] not in _PRECIOUS, t[0]))
        for name, _ in order:
            copied, lost = _copy_rows(old, new, name)
            report.done.append(f"{name}: {copied} rows salvaged")
            if lost:
                report.lost.append(f"{name}: {lost}")
        for t, _, _, sql in schema:
            if t in ("index", "trigger", "view"):
                try:
                    new.execute(str(sql))
                except sqlite3.DatabaseError as e:
                    report.lost.append(f"{t} not recreated ({e}); the next start repairs it")
        # Acks of the damaged file's identity must not be sent from the new one.
        new.execute("DELETE FROM _replicad_pending_acks")
        new.execute(f"PRAGMA user_version = {int(version)}")
        new.execute("COMMIT")
    finally:
        old.close()
        new.close()
    kept = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, kept)
    for side in _sidecars(path):
        if side.exists():
            os.replace(side, side.with_name(kept.name + side.name[len(path.name) :]))
    os.replace(fresh, path)
    report.done.append(f"the damaged file is kept as {kept.name}")
    report.done.append("the new file pulls everything again on its next sync (a new identity)")


_PRECIOUS = ("_replicad_outbox", "_replicad_conflicts", "_replicad_meta")


def _copy_rows(old: sqlite3.Connection, new: sqlite3.Connection, table: str) -> tuple[int, str]:
    """Copy every readable row, by rowid ranges so one bad page costs only its rows."""
    q = quote(table)
    try:
        cols = [str(r[1]) for r in old.execute(f"PRAGMA table_info({q})")]
        by_rowid = not _without_rowid(old, table)
    except sqlite3.DatabaseError as e:
        return 0, f"unreadable ({e})"
    select = ", ".join(quote(c) for c in cols)
    insert = f"INSERT OR IGNORE INTO {q} ({select}) VALUES ({', '.join('?' * len(cols))})"
    if not by_rowid:
        try:
            rows = old.execute(f"SELECT {select} FROM {q}").fetchall()
        except sqlite3.DatabaseError as e:
            return 0, f"unreadable ({e})"
        new.executemany(insert, rows)
        return len(rows), ""
    copied, failed, last = 0, 0, 0
    step = 256
    try:
        top = old.execute(f"SELECT max(rowid) FROM {q}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = 1 << 40
    while last <= top:
        try:
            rows = old.execute(
                f"SELECT rowid, {select} FROM {q} WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
                (last, last + step),
            ).fetchall()
        except sqlite3.DatabaseError:
            failed += 1
            rows = []
        new.executemany(
            f"INSERT OR IGNORE INTO {q} (rowid, {select}) VALUES "
            f"({', '.join('?' * (len(cols) + 1))})",
            rows,
        )
        copied += len(rows)
        last += step
        if failed > 4096:
            break
    lost = f"{failed} ranges of {step} rows were unreadable" if failed else ""
    return copied, lost


def _without_rowid(db: sqlite3.Connection, table: str) -> bool:
    row = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return row is not None and "WITHOUT ROWID" in str(row[0]).upper()


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm")]


def entry_state(path: Path, entry: int) -> str | None:
    """The state of an outbox entry, None when there is no such entry."""
    db = connect(path)
    try:
        row = db.execute("SELECT state FROM _replicad_outbox WHERE seq = ?", (entry,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


def in_doubt_entries(path: Path) -> list[int]:
    """The outbox entries of creates in doubt (``replicad retry`` names them)."""
    db = connect(path)
    try:
        rows = db.execute("SELECT seq FROM _replicad_outbox WHERE state = 'in_doubt' ORDER BY seq")
        return [int(r[0]) for r in rows]
    finally:
        db.close()


def unsent_edits(path: Path) -> int:
    """Local edits of the replica that no destination has confirmed yet."""
    db = connect(path)
    try:
        return int(
            db.execute(f"SELECT count(*) FROM _replicad_outbox WHERE {OPEN_SQL}").fetchone()[0]
        )
    finally:
        db.close()


# --- resync and conflicts ------------------------------------------------------------


def resync_at(path: Path, connections: Sequence[str]) -> list[str]:
    """Start a full pull of these connections (works while the daemon runs)."""
    db = connect(path, write=True)
    try:
        return request_resync(db, connections, utcnow())
    finally:
        db.close()


def device_of(path: Path, connection: str) -> str | None:
    """The device UUID the connection pulls with now (None: none yet, or no replica)."""
    if not path.exists():
        return None
    db = connect(path)
    try:
        row = db.execute(
            "SELECT value FROM _replicad_meta WHERE key = ?", (f"device_uuid.{connection}",)
        ).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def conflicts(path: Path, *, closed: bool = False) -> list[dict[str, Any]]:
    """The conflict journal's open entries (or all), oldest first."""
    db = connect(path)
    try:
        db.row_factory = sqlite3.Row
        where = "" if closed else " WHERE closed_at IS NULL"
        return [
            dict(r) for r in db.execute(f"SELECT * FROM replicad_conflicts{where} ORDER BY seq")
        ]
    finally:
        db.close()


def resolve(path: Path, seqs: Sequence[int], keep: str) -> list[str]:
    """Close conflict entries, keeping the local or the remote value of each.

    The kept value is written to the row as an app's edit would be (captured and
    pushed) when the row does not hold it already; an entry whose row is gone
    (deleted remotely) can only be closed keeping the remote side.
    """
    if keep not in ("local", "remote"):
        raise OperatorError(f"--keep must be local or remote, not {keep!r}")
    db = connect(path, write=True)
    done: list[str] = []
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for seq in seqs:
                done.append(_resolve_one(db, seq, keep))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
    return done


def _resolve_one(db: sqlite3.Connection, seq: int, keep: str) -> str:
    row = db.execute(
        "SELECT tbl, internal_id, field, local_value, remote_value, closed_at "
        "FROM _replicad_conflicts WHERE seq = ?",
        (seq,),
    ).fetchone()
    if row is None:
        raise OperatorError(f"conflict {seq} does not exist (see `replicad conflicts`)")
    tbl, iid, col, local, remote, closed = row
    if closed is not None:
        raise OperatorError(f"conflict {seq} is already closed")
    value = local if keep == "local" else remote
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (tbl,)
    ).fetchone()
    live = None
    if exists is not None and col not in ("_internal_id",):
        cols = {str(r[1]) for r in db.execute(f"PRAGMA table_info({quote(tbl)})")}
        if col in cols:
            live = db.execute(
                f"SELECT {quote(col)} FROM {quote(tbl)} WHERE _internal_id = ?", (iid,)
            ).fetchone()
    if live is None and keep == "local":
        raise OperatorError(
            f"conflict {seq}: the row is gone (deleted remotely or merged); only "
            "--keep remote can close it"
        )
    action = "already holds it"
    if live is not None and live[0] != value:
        # As an app's edit: captured by the triggers and pushed upstream.
        db.execute(f"UPDATE {quote(tbl)} SET {quote(col)} = ? WHERE _internal_id = ?", (value, iid))
        action = "written to the row (pushed upstream)"
    db.execute(
        "UPDATE _replicad_conflicts SET closed_at = ?, kept = ? WHERE seq = ?",
        (utcnow(), keep, seq),
    )
    return f"conflict {seq} ({tbl}.{col}): kept {keep}; {action}"
