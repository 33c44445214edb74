"""The replica: opening, migrating and locking the SQLite file, and its small state.

``Replica`` is the daemon's only handle on the file. Every write transaction it runs
is short (a page, an ack batch) so local apps reading or writing through their own
connections are never starved.

Small operations go through aiosqlite. Applying a page is the hot path: it runs as
one plain function on a dedicated writer connection in a worker thread, one thread
hop per page instead of one per statement.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiosqlite
import anyio
import anyio.to_thread

from replicad.store import identity, outbox, runs
from replicad.store.apply import apply_page
from replicad.store.diff import DiffCounts, DiffSpec
from replicad.store.diff_enqueue import run_diff
from replicad.store.identity import CHECKPOINT_KEY, check_identity
from replicad.store.lock import ReplicaLock, create_private
from replicad.store.model import (
    ApplyResult,
    OutboxBatch,
    Outcome,
    OutcomeCounts,
    PageBatch,
    PullTarget,
    PushSource,
)
from replicad.store.naming import (
    STYLE_KEY,
    Naming,
    add_mapped,
    naming_changes,
    rename_and_drop,
)
from replicad.store.naming import Change as NamingChange
from replicad.store.outbox import utcnow
from replicad.store.reconcile import reconcile
from replicad.store.runs import Run
from replicad.store.schema import APPLICATION_ID, SCHEMA_VERSION, migrate
from replicad.store.status import BUDGET_WAIT_KEY
from replicad.store.tables import TableCatalog

BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")


@dataclass(slots=True)
class AckBatch:
    """Checkpoint tokens to confirm (Sell: ack keys), and the pending rows they came
    from, oldest first."""

    connection: str = ""
    seqs: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


OnWait = Callable[[str], None]


def _missing_column(e: sqlite3.OperationalError) -> bool:
    """An app changed the schema under the daemon: reconcile repairs it."""
    text = str(e)
    return any(s in text for s in ("no such column", "has no column named", "no such table"))


class ReplicaRefused(RuntimeError):
    """The file is not a replica this version can use (foreign, or newer schema)."""


class ReplicaCorrupt(ReplicaRefused):
    """SQLite found the file damaged: nothing more is synced into (or acknowledged
    from) it until ``replicad doctor`` has looked at it."""


def as_corruption(error: BaseException, path: Path | None = None) -> ReplicaCorrupt | None:
    """The corruption an error reports (SQLITE_CORRUPT, SQLITE_NOTADB), if it does."""
    if isinstance(error, ReplicaCorrupt):
        return error
    if not isinstance(error, sqlite3.DatabaseError) or isinstance(
        error, sqlite3.OperationalError | sqlite3.IntegrityError
    ):
        return None
    text = str(error)
    if "malformed" not in text and "not a database" not in text:
        return None
    where = f"{path} " if path is not None else "the replica "
    return ReplicaCorrupt(
        f"{where}is corrupt ({text}); nothing more is synced into it: run `replicad doctor`"
    )


class Replica:
    """An open, locked replica."""

    def __init__(self, path: Path, db: aiosqlite.Connection, lock: ReplicaLock) -> None:
        self.path = path
        self.db = db
        self._lock = lock
        self.catalog = TableCatalog()
        self._writer: sqlite3.Connection | None = None
        # One page at a time on the writer connection.
        self._writer_limiter = anyio.CapacityLimiter(1)
        # Whether pages may have been committed without an fsync since the last one.
        # True at start: a previous process may have left such pages behind.
        self._unsynced_pages = True
        # What reconcile repaired of the schema since the daemon last logged it.
        self.repairs: list[str] = []
        self.on_wait: OnWait | None = None
        # Set when this file turned out to be a copy (see store.identity).
        self.copy_notes: list[str] = []

    @classmethod
    async def open(
        cls, path: Path, on_wait: OnWait | None = None, *, daemon: bool = False
    ) -> Replica:
        """Lock, open and migrate the replica at ``path`` (created if missing);
        ``daemon``: the lock says the holder is the daemon (it takes signals).

        While another program holds the file's write lock (an app's long transaction),
        opening waits with backoff instead of failing; ``on_wait`` hears what it waits
        for, and later registrations (config reloads) wait the same way.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = ReplicaLock(path, daemon)
            lock.acquire()
        except OSError as e:
            raise ReplicaRefused(
                f"cannot create the replica's files in {path.parent} ({e.strerror}); "
                "choose a writable [replica] path or fix the folder's permissions"
            ) from None
        try:
            # Created private (SQLite gives the WAL and shared-memory files the same
            # mode): the replica holds account data.
            create_private(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            lock.release()
            raise
        replica = cls(path, db, lock)
        replica.on_wait = on_wait
        try:
            await replica.while_busy("open the replica", replica._prepare)
        except BaseException as e:
            await replica.close()
            corrupt = as_corruption(e, path)
            if corrupt is not None and corrupt is not e:
                raise corrupt from None
            raise
        return replica

    async def while_busy(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run ``write``, waiting with backoff while another program holds the write
        lock (each attempt already waits the busy timeout); other errors propagate."""
        delay = 1.0
        while True:
            try:
                return await write()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if self.on_wait is not None:
                    self.on_wait(
                        f"waiting to {what}: another program holds the write lock of "
                        f"{self.path.name}; retrying in {delay:.0f}s"
                    )
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def __aenter__(self) -> Replica:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections, then release the lock."""
        try:
            if self._writer is not None:
                self._writer.close()
            await self.db.close()
        finally:
            self._lock.release()

    async def _prepare(self) -> None:
        db = self.db
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        app_id = await self._pragma("application_id")
        version = await self._pragma("user_version")
        if app_id == 0 and version == 0:
            rows = await db.execute_fetchall("SELECT count(*) FROM sqlite_master")
            if next(iter(rows))[0]:
                raise ReplicaRefused(
                    f"{self.path} is an SQLite file that replicad did not create; "
                    "choose another [replica] path"
                )
            await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        elif app_id != APPLICATION_ID:
            raise ReplicaRefused(f"{self.path} is not a replicad replica (application_id)")
        if version > SCHEMA_VERSION:
            raise ReplicaRefused(
                f"{self.path} was written by a newer replicad (schema {version}, this "
                f"version knows {SCHEMA_VERSION}); upgrade replicad"
            )
        await db.execute("PRAGMA journal_mode = WAL")
        # A damaged file is never synced further. quick_check reads every page once
        # without cross-checking indexes: 0.16 s on a 1M-record (240 MB) replica.
        problems = [str(row[0]) for row in await db.execute_fetchall("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise ReplicaCorrupt(
                f"{self.path} is corrupt ({problems[0]}); nothing more is synced into it: "
                "run `replicad doctor`"
            )
        # FULL: every commit is durable (fsynced) before it returns, so what the
        # daemon tells a remote about it (a push sent, a batch confirmed) survives a
        # power cut. Page applies are the one exception, see apply_page.
        await db.execute("PRAGMA synchronous = FULL")
        if self._writer is not None:  # an earlier attempt that found the file busy
            self._writer.close()
        self._writer = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        await anyio.to_thread.run_sync(migrate, self._writer, version)
        self._writer.execute("PRAGMA synchronous = FULL")
        # A page cache of 4 MiB (SQLite's default is 2): the hot index pages of a pull
        # stay in it, and memory stays flat however big the account (pages the pull
        # writes are never read again; a larger cache only fills with them — 64 MiB
        # of them once this connection became the only writer).
        self._writer.execute("PRAGMA cache_size = -4096")
        self.catalog.load(self._writer)
        self.repairs += await anyio.to_thread.run_sync(reconcile, self._writer, self.catalog)
        self.copy_notes += await anyio.to_thread.run_sync(
            check_identity, self._writer, self.path, utcnow()
        )

    async def _pragma(self, name: str) -> int:
        rows = await self.db.execute_fetchall(f"PRAGMA {name}")
        return int(next(iter(rows))[0])

    async def meta(self, key: str) -> str | None:
        """A value of the replica's private key/value table."""
        rows = list(
            await self.db.execute_fetchall("SELECT value FROM _replicad_meta WHERE key = ?", (key,))
        )
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value of the replica's private key/value table."""
        await self.db.execute(
            "INSERT OR REPLACE INTO _replicad_meta (key, value) VALUES (?, ?)", (key, value)
        )

    async def device_uuid(self, connection: str, configured: str | None = None) -> str:
        """The connection's device UUID: configured, else generated once and kept
        (and generated anew while a full pull waits for a new device, where a device
        the config pinned before was kept)."""
        key = f"device_uuid.{connection}"
        stored = await self.meta(key)
        if configured is not None:
            if stored != configured:
                await self.set_meta(key, configured)
            return configured
        if stored is not None and stored != await self.resync_device(connection):
            return stored
        new = str(uuid.uuid4())
        await self.set_meta(key, new)
        return new

    async def apply_page(self, target: PullTarget, batch: PageBatch) -> ApplyResult:
        """Apply one page in one transaction (see ``store.apply``).

        The commit is atomic and survives the process being killed, but is not fsynced
        on its own: ``pending_acks`` makes all pages durable with one fsync before
        their ack keys can be sent. Nothing is acknowledged that a power cut could
        take back, and an initial sync pays one fsync per ack batch instead of one per
        page.

        The worker thread is not abandoned on cancellation: a page being applied when
        the daemon stops commits or rolls back before this returns.
        """
        _, result = await self.decode_and_apply(target, lambda: (None, batch))
        return result

    async def decode_and_apply(
        self, target: PullTarget, decode: Callable[[], tuple[T, PageBatch]]
    ) -> tuple[T, ApplyResult]:
        """``decode()`` a page, then apply its batch as ``apply_page`` does, in one hop
        to the writer thread.

        The pull hands over the page's undecoded body: decoding next to applying keeps
        the two pieces of CPU work in one thread, one after the other, instead of two
        threads taking the GIL from each other. An error of ``decode`` propagates with
        nothing written. A page with nothing in it writes nothing.
        """
        writer = self._writer
        assert writer is not None

        def run() -> tuple[T, ApplyResult]:
            decoded, batch = decode()
            if not (batch.changes or batch.bad_items or batch.failed_objects):
                return decoded, ApplyResult()
            return decoded, self._apply_sync(writer, target, batch)

        return await anyio.to_thread.run_sync(run, limiter=self._writer_limiter)

    def _apply_sync(
        self, writer: sqlite3.Connection, target: PullTarget, batch: PageBatch
    ) -> ApplyResult:
        # WAL with synchronous NORMAL: atomic and consistent, durable at the next
        # checkpoint or FULL commit. Not settable inside a transaction; apply_page
        # always ends its own.
        writer.execute("PRAGMA synchronous = NORMAL")

        def apply() -> ApplyResult:
            try:
                return apply_page(writer, self.catalog, target, batch, utcnow())
            except OverflowError:
                # An integer past 64 bits (rolled back): bind it as its text.
                self.catalog.load(writer)
                return apply_page(writer, self.catalog, target, batch, utcnow(), exact=True)

        try:
            try:
                result = apply()
            except sqlite3.OperationalError as e:
                if not _missing_column(e):
                    raise
                # An app renamed or dropped a column while the daemon ran: put the
                # schema back in order, then apply the page once more.
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
                self.repairs += reconcile(writer, self.catalog)
                result = apply()
        except BaseException as e:
            corrupt = as_corruption(e, self.path)
            if corrupt is not None:
                raise corrupt from e
            # A rolled-back ALTER must not linger in the cached catalog.
            self.catalog.load(writer)
            raise
        finally:
            self._unsynced_pages = True
            if writer.in_transaction:
                # apply_page's own ROLLBACK failed: nothing of the page may stay open
                # for the next user of the writer (it would see uncommitted ack keys).
                writer.execute("ROLLBACK")
            writer.execute("PRAGMA synchronous = FULL")
        return result

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store function on the writer connection in the worker thread."""
        writer = self._writer
        assert writer is not None

        def run() -> T:
            try:
                return fn(writer, *args)
            except BaseException as e:
                corrupt = as_corruption(e, self.path)
                if corrupt is not None:
                    raise corrupt from e
                self.catalog.load(writer)
                raise

        return await anyio.to_thread.run_sync(run, limiter=self._writer_limiter)

    async def register_push(self, sources: list[PushSource]) -> None:
        """Make exactly these tables writable by apps (their edits are captured); waits
        while busy."""
        await self.while_busy(
            "register the push syncs", lambda: self._write(outbox.register_push, sources)
        )

    async def take_push_batch(
        self, source: PushSource, limit: int, busy: set[str] | None = None
    ) -> OutboxBatch | None:
        """The next outbox batch of a push sync (an unconfirmed one first), none of
        ``busy`` (batches being sent) nor of their rows. The batch taken joins ``busy``
        in the same step: takes are serialized on the writer, so the next take (of
        another sender) already leaves it alone. The caller removes it when done."""

        def take(db: sqlite3.Connection) -> OutboxBatch | None:
            out = outbox.take_batch(
                db, self.catalog, source, limit, utcnow(), frozenset(busy or ())
            )
            if out is not None and busy is not None:
                busy.add(out.tracking_id)
            return out

        return await self._write(take)

    async def record_push(self, table: str, outcomes: Sequence[Outcome]) -> OutcomeCounts:
        """Record what the destination said about a batch's entries."""
        return await self._write(outbox.record_outcomes, self.catalog, table, outcomes, utcnow())

    async def naming_changes(self, sync: str, naming: Naming) -> list[NamingChange]:
        """What a pull's column naming would move or drop in its tables."""
        # Unrecorded: the columns were named as the fields are (the default style); a
        # column named otherwise is left alone by the comparison anyway.
        old_style = await self.meta(STYLE_KEY + sync) or "match_source_names"
        return naming_changes(self.catalog, sync, naming, old_style)

    async def add_mapped_columns(self, sync: str, naming: Naming) -> list[str]:
        """Columns for mapped fields the sync's tables do not have yet (waits while
        busy: it runs at start and reload)."""
        return await self.while_busy(
            "add mapped columns",
            lambda: self._write(add_mapped, self.catalog, sync, naming, utcnow()),
        )

    async def naming_applied(self, sync: str, naming: Naming) -> None:
        """Remember the field_normalization the sync's columns are now named in."""
        if await self.meta(STYLE_KEY + sync) != naming.style:
            await self.while_busy(
                "register the syncs", lambda: self.set_meta(STYLE_KEY + sync, naming.style)
            )

    async def apply_naming(self, changes: list[NamingChange]) -> None:
        """Rename or drop those columns (``replicad resync`` asked for it); waits
        while busy."""
        await self.while_busy(
            "rename mapped columns", lambda: self._write(rename_and_drop, self.catalog, changes)
        )

    async def record_run(self, run: Run) -> None:
        """Keep a finished cycle in ``replicad_runs``."""
        await self._write(runs.record_run, run)

    async def raise_alert(self, sync: str, type_: str, message: str) -> bool:
        """Open an alert (True), unless one of that type is already open."""
        return await self._write(runs.raise_alert, sync, type_, message, utcnow())

    async def resolve_alert(self, sync: str, type_: str) -> str | None:
        """Close an open alert; its message, or None if none was open."""
        return await self._write(runs.resolve_alert, sync, type_, utcnow())

    async def open_alerts(self) -> list[tuple[str, str, str, str]]:
        """(sync, type, raised_at, message) of the open alerts."""
        return await self._write(runs.open_alerts)

    async def last_success(self, sync: str) -> str | None:
        """When the sync last finished a cycle without error."""
        return await self._write(runs.last_success, sync)

    async def diff_source(self, spec: DiffSpec) -> DiffCounts:
        """Run a diffed sync's source query and enqueue what changed (``store.diff``)."""
        return await self._write(run_diff, self.path, spec, utcnow)

    async def has_outbox_work(self, source: PushSource) -> bool:
        """Whether a push source has entries to send (pending and not held back, or in
        flight unconfirmed).

        A read only: the push loop's answer to a wake-up, so the daemon's own commits
        (which wake it too) cost an index probe and never a write. An edit held until
        its record is known is not work: the loop sleeps until something changes.
        """
        rows = await self.db.execute_fetchall(outbox.work_query(source), (source.table,))
        return bool(next(iter(rows))[0])

    async def requeue_rejected(self, entry: int | None) -> int:
        """Rejected outbox entries and creates in doubt (one, or all) back to pending."""
        return await self._write(outbox.requeue, entry, utcnow())

    async def pending_acks(self, connection: str, limit: int) -> AckBatch:
        """Committed ack keys not yet acknowledged upstream: whole pages, oldest first,
        until at least ``limit`` keys (one page may overshoot it).

        Every page holding a returned key is on stable storage: the keys are read on
        the writer, after a durability barrier, with no page apply in between.
        """
        return await self._write(self._durable_pending_acks, connection, limit)

    def _durable_pending_acks(
        self, writer: sqlite3.Connection, connection: str, limit: int
    ) -> AckBatch:
        if writer.in_transaction:
            # Keys must come from committed pages only, and the barrier must commit.
            raise RuntimeError("the replica's writer was left inside a transaction")
        if self._unsynced_pages:
            # One FULL commit: its fsync of the WAL covers every page committed before.
            writer.execute(
                "INSERT OR REPLACE INTO _replicad_meta (key, value) VALUES ('durable_at', ?)",
                (utcnow(),),
            )
            self._unsynced_pages = False
        batch = AckBatch(connection)
        rows = writer.execute(
            "SELECT seq, keys FROM _replicad_pending_acks WHERE connection = ? ORDER BY seq",
            (connection,),
        )
        try:
            for seq, keys in rows:
                batch.seqs.append(int(seq))
                batch.keys.extend(json.loads(keys))
                if len(batch.keys) >= limit:
                    break
        finally:
            rows.close()
        return batch

    async def count_pending_acks(self, connection: str) -> int:
        """How many ack keys wait to be sent for a connection."""
        rows = await self.db.execute_fetchall(
            "SELECT coalesce(sum(n), 0) FROM _replicad_pending_acks WHERE connection = ?",
            (connection,),
        )
        return int(next(iter(rows))[0])

    async def forget_acks(self, batch: AckBatch) -> None:
        """Drop tokens the remote has confirmed; the newest becomes the connection's
        checkpoint (``checkpoint``), in the same transaction."""
        await self._write(_forget_acks, batch)

    async def note_budget_wait(self, sync: str, seconds: float) -> None:
        """Remember until when a sync waits for its rate budget (``status`` says so);
        best effort: a busy replica must not delay the wait's own end."""
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        stamp = until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with contextlib.suppress(sqlite3.OperationalError):
            await self.set_meta(BUDGET_WAIT_KEY + sync, stamp)

    async def checkpoint(self, connection: str) -> str | None:
        """The newest token the connection's remote has confirmed (a cursor kind
        starts its next session there); None after a resync or before any."""
        return await self.meta(CHECKPOINT_KEY + connection)

    async def resync_since(self, connection: str) -> str | None:
        """When the connection's full pull (a copy's, or ``resync``) started, if one runs."""
        return await self._write(identity.resync_since, connection)

    async def finish_resync(self, target: PullTarget) -> int | None:
        """A full pull drained: remove the rows it did not bring; how many (None: none
        could be, see ``store.identity.finish_resync``)."""
        if target.resync is None:
            return None
        return await self._write(
            identity.finish_resync, target.sync, target.connection, target.resync,
            target.apply_deletes, utcnow(),
        )  # fmt: skip

    async def resync_request(self, connection: str) -> str | None:
        """What identifies the connection's running full pull request, if one runs
        (a pull started under it hands it over as ``PullTarget.resync``)."""
        return await self._write(identity.resync_request, connection)

    async def resync_device(self, connection: str) -> str | None:
        """The device the connection drained before its running full pull was asked
        for: that pull must not run under it (see ``store.identity``)."""
        return await self._write(identity.resync_device, connection)

    async def register_sync(self, sync: str, direction: str, connection: str) -> None:
        """Make a configured sync visible in ``replicad_syncs`` (waits while busy)."""

        async def write() -> None:
            await self.db.execute(
                "INSERT INTO _replicad_syncs (sync, direction, connection, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (sync) DO UPDATE SET "
                "direction = excluded.direction, connection = excluded.connection",
                (sync, direction, connection, utcnow()),
            )

        await self.while_busy("register the syncs", write)

    async def sync_started(self, sync: str, total: int | None) -> None:
        """Record the start of a cycle (and the queue size when known)."""
        now = utcnow()
        await self.db.execute(
            "UPDATE _replicad_syncs SET state = 'syncing', last_started = ?, "
            "items_total = ?, items_done = 0, updated_at = ? WHERE sync = ?",
            (now, total, now, sync),
        )

    async def sync_stopped(self, sync: str) -> None:
        """Record that a cycle was stopped before it finished (not an error)."""
        await self.db.execute(
            "UPDATE _replicad_syncs SET state = 'stopped', updated_at = ? WHERE sync = ?",
            (utcnow(), sync),
        )

    async def sync_finished(self, sync: str, error: str | None) -> None:
        """Record the outcome of a cycle; an error keeps the last success visible, a
        success clears the last error."""
        now = utcnow()
        if error is None:
            await self.db.execute(
                "UPDATE _replicad_syncs SET state = 'idle', last_success = ?, "
                "last_error = NULL, last_error_at = NULL, updated_at = ? WHERE sync = ?",
                (now, now, sync),
            )
        else:
            await self.db.execute(
                "UPDATE _replicad_syncs SET state = 'failing', last_error = ?, "
                "last_error_at = ?, updated_at = ? WHERE sync = ?",
                (error, now, now, sync),
            )


def _forget_acks(db: sqlite3.Connection, batch: AckBatch) -> None:
    # One transaction, on the writer (several pull syncs flush at once): in autocommit
    # mode each row deleted apart would be its own (fsynced) transaction.
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "DELETE FROM _replicad_pending_acks WHERE seq IN (SELECT value FROM json_each(?))",
            (json.dumps(batch.seqs),),
        )
        if batch.keys:
            db.execute(
                "INSERT OR REPLACE INTO _replicad_meta (key, value) VALUES (?, ?)",
                (CHECKPOINT_KEY + batch.connection, batch.keys[-1]),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
