"""The replica's private schema, its public status views and their migrations.

``PRAGMA application_id`` marks the file as a replica; ``PRAGMA user_version`` is the
schema version. Migrations only move forward; a file written by a newer replicad is
refused rather than guessed at.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable

from replicad.store.names import quote
from replicad.store.tables import rebuild, triggers

APPLICATION_ID = 0x52504C44  # "RPLD"

# Each entry migrates from version i to i + 1; the whole script runs in one transaction.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE _replicad_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;

    -- The daemon inserts a row here inside its own write transactions and deletes it
    -- before commit, so triggers can tell its applies from an app's edits: other
    -- connections never see the row.
    CREATE TABLE _replicad_applying (flag INTEGER PRIMARY KEY);

    CREATE TABLE _replicad_types (
        tbl TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        sync TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE _replicad_fields (
        tbl TEXT NOT NULL,
        field TEXT NOT NULL,
        col TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (tbl, field)
    ) WITHOUT ROWID;

    -- Deleted records keep their last known revision, so a stale update that arrives
    -- after the delete cannot bring the record back.
    CREATE TABLE _replicad_tombstones (
        tbl TEXT NOT NULL,
        id INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        deleted_at TEXT NOT NULL,
        PRIMARY KEY (tbl, id)
    ) WITHOUT ROWID;

    -- Ack keys of committed items, waiting to be sent (batched across pages): one row
    -- per page, the keys as a JSON array, so a page costs one insert, not one per item.
    CREATE TABLE _replicad_pending_acks (
        seq INTEGER PRIMARY KEY,
        connection TEXT NOT NULL,
        keys TEXT NOT NULL,
        n INTEGER NOT NULL
    );

    CREATE TABLE _replicad_quarantine (
        seq INTEGER PRIMARY KEY,
        sync TEXT NOT NULL,
        received_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        ack_key TEXT,
        raw TEXT NOT NULL
    );

    CREATE TABLE _replicad_failed_objects (
        sync TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        times INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (sync, type, id)
    ) WITHOUT ROWID;

    CREATE TABLE _replicad_syncs (
        sync TEXT PRIMARY KEY,
        direction TEXT NOT NULL,
        connection TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'never run',
        last_started TEXT,
        last_success TEXT,
        last_error TEXT,
        last_error_at TEXT,
        items_total INTEGER,
        items_done INTEGER,
        records_applied INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT
    ) WITHOUT ROWID;

    CREATE VIEW replicad_syncs AS
    SELECT s.sync, s.direction, s.connection, s.state, s.last_started, s.last_success,
           s.last_error, s.last_error_at, s.items_total, s.items_done, s.records_applied,
           (SELECT count(*) FROM _replicad_failed_objects f WHERE f.sync = s.sync)
               AS failed_objects,
           (SELECT count(*) FROM _replicad_quarantine q WHERE q.sync = s.sync)
               AS quarantined,
           (SELECT coalesce(sum(n), 0) FROM _replicad_pending_acks a
            WHERE a.connection = s.connection) AS pending_acks
    FROM _replicad_syncs s;

    CREATE VIEW replicad_quarantine AS
    SELECT seq, sync, received_at, reason, ack_key, raw FROM _replicad_quarantine;

    CREATE VIEW replicad_failed_objects AS
    SELECT sync, type, id, first_seen, last_seen, times FROM _replicad_failed_objects;

    CREATE VIEW replicad_tables AS
    SELECT tbl AS name, type, sync, created_at FROM _replicad_types;
    """,
    # v2: local edits. Push sources, the outbox, the conflict journal, field kinds.
    """
    -- The JSON kind of a field's values (boolean, json, scalar) so a pushed value goes
    -- back in the type it came in: 0/1 as a boolean, JSON text as an object or array.
    ALTER TABLE _replicad_fields ADD COLUMN kind TEXT;

    -- Tables a push sync carries upstream, written by the daemon at start-up and read
    -- by the guard triggers at edit time.
    CREATE TABLE _replicad_push (
        tbl TEXT PRIMARY KEY,
        sync TEXT NOT NULL,
        conflict TEXT NOT NULL DEFAULT 'merge',
        can_delete INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    -- One entry per upstream change of a row. pending: never sent; in_flight: sent,
    -- not confirmed (payload and batch fixed, so a resend is identical); confirmed;
    -- rejected (payload and reason kept); cancelled (the remote deleted the record).
    CREATE TABLE _replicad_outbox (
        seq INTEGER PRIMARY KEY,
        tbl TEXT NOT NULL,
        internal_id TEXT NOT NULL,
        op TEXT NOT NULL,
        fields TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        batch TEXT,
        payload TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        sent_at TEXT,
        finished_at TEXT,
        remote_id TEXT,
        transfer_id TEXT,
        sync_id TEXT,
        reason TEXT
    );
    -- Edits coalesce: a row has at most one entry still to be sent.
    CREATE UNIQUE INDEX _replicad_outbox_open ON _replicad_outbox (tbl, internal_id)
        WHERE state IN ('pending', 'rejected');
    CREATE INDEX _replicad_outbox_row ON _replicad_outbox (tbl, internal_id, state);
    CREATE INDEX _replicad_outbox_queue ON _replicad_outbox (state, tbl, seq);

    CREATE TABLE _replicad_conflicts (
        seq INTEGER PRIMARY KEY,
        tbl TEXT NOT NULL,
        internal_id TEXT NOT NULL,
        id INTEGER,
        field TEXT NOT NULL,
        local_value,
        remote_value,
        revision INTEGER,
        resolution TEXT NOT NULL,
        at TEXT NOT NULL
    );

    CREATE VIEW replicad_outbox AS
    SELECT o.seq AS entry, o.tbl AS "table", o.internal_id, o.op, o.state, o.fields,
           o.attempts, o.created_at, o.sent_at, o.finished_at, o.remote_id,
           o.batch AS tracking_id, o.transfer_id, o.sync_id, o.reason, o.payload,
           p.sync
    FROM _replicad_outbox o LEFT JOIN _replicad_push p ON p.tbl = o.tbl;

    CREATE VIEW replicad_conflicts AS
    SELECT seq, tbl AS "table", internal_id, id, field, local_value, remote_value,
           revision, resolution, at FROM _replicad_conflicts;
    """,
    """
    -- A create the destination accepted without naming the record's id (a 202, a
    -- transfer without returned data): confirmed, and waiting for the pull to bring
    -- the record, which then lands on the same row instead of a second one.
    ALTER TABLE _replicad_outbox ADD COLUMN awaiting_id INTEGER NOT NULL DEFAULT 0;

    -- Ids a full pull (a copy's, or `replicad resync`) has brought so far: once it has
    -- drained, rows it did not bring are remote deletes the replica missed.
    CREATE TABLE _replicad_resync_seen (
        tbl TEXT NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (tbl, id)
    ) WITHOUT ROWID;
    CREATE INDEX _replicad_outbox_awaiting ON _replicad_outbox (tbl) WHERE awaiting_id = 1;

    DROP VIEW replicad_outbox;
    CREATE VIEW replicad_outbox AS
    SELECT o.seq AS entry, o.tbl AS "table", o.internal_id, o.op, o.state, o.fields,
           o.attempts, o.created_at, o.sent_at, o.finished_at, o.remote_id,
           o.batch AS tracking_id, o.transfer_id, o.sync_id, o.reason, o.payload,
           p.sync, o.awaiting_id
    FROM _replicad_outbox o LEFT JOIN _replicad_push p ON p.tbl = o.tbl;

    -- `replicad conflicts resolve` closes an entry, saying which side it kept.
    ALTER TABLE _replicad_conflicts ADD COLUMN closed_at TEXT;
    ALTER TABLE _replicad_conflicts ADD COLUMN kept TEXT;
    DROP VIEW replicad_conflicts;
    CREATE VIEW replicad_conflicts AS
    SELECT seq, tbl AS "table", internal_id, id, field, local_value, remote_value,
           revision, resolution, at, closed_at, kept FROM _replicad_conflicts;
    """,
    # v4: Census sync definitions. Push operations, diffed sources, runs and alerts.
    """
    -- The push operation of a captured table, read by its guard triggers at edit time.
    ALTER TABLE _replicad_push ADD COLUMN operation TEXT NOT NULL DEFAULT 'upsert';

    -- 'history': a pull append's <type>_history table (append-only), not a type table.
    ALTER TABLE _replicad_types ADD COLUMN kind TEXT NOT NULL DEFAULT 'table';

    -- Per diffed sync and primary identifier: the values last enqueued (JSON objects
    -- by column name, compared in SQL), the entry's internal id and the remote id
    -- once confirmed.
    -- The key keeps its SQL type (no affinity): 1 and '1' are different rows.
    CREATE TABLE _replicad_diff (
        sync TEXT NOT NULL,
        key NOT NULL,
        vals TEXT NOT NULL,
        internal_id TEXT NOT NULL,
        remote_id TEXT,
        -- 1 once the destination confirmed the row's create (with or without an id):
        -- a vanished key is then deleted upstream, found by its identifier if need be.
        confirmed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sync, key)
    ) WITHOUT ROWID;
    CREATE INDEX _replicad_diff_iid ON _replicad_diff (internal_id);

    -- Per append with a high-water mark: the mark, and the keys already sent at
    -- exactly that mark (ties).
    CREATE TABLE _replicad_diff_syncs (
        sync TEXT PRIMARY KEY,
        mark,
        mark_keys TEXT
    ) WITHOUT ROWID;

    -- One row per cycle of every sync (kept 30 days).
    CREATE TABLE _replicad_runs (
        seq INTEGER PRIMARY KEY,
        sync TEXT NOT NULL,
        direction TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        status TEXT NOT NULL,
        processed INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        not_found INTEGER NOT NULL DEFAULT 0,
        quarantined INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX _replicad_runs_sync ON _replicad_runs (sync, seq);

    CREATE TABLE _replicad_alerts (
        seq INTEGER PRIMARY KEY,
        sync TEXT NOT NULL,
        type TEXT NOT NULL,
        raised_at TEXT NOT NULL,
        resolved_at TEXT,
        message TEXT NOT NULL
    );
    CREATE UNIQUE INDEX _replicad_alerts_open ON _replicad_alerts (sync, type)
        WHERE resolved_at IS NULL;

    CREATE VIEW replicad_runs AS
    SELECT seq AS run, sync, direction, started_at, finished_at, status, processed,
           created, updated, deleted, rejected, not_found, quarantined, skipped, error
    FROM _replicad_runs;

    CREATE VIEW replicad_alerts AS
    SELECT seq AS alert, sync, type, raised_at, resolved_at, message,
           resolved_at IS NULL AS open
    FROM _replicad_alerts;
    """,
    # v5: a create in doubt is a state of its own; one guard trigger per statement kind
    # (HOOKS[4]).
    """
    -- A create whose arrival cannot be told (its answer was lost and the record cannot
    -- be looked up) was kept 'rejected' with awaiting_id = 1. As 'in_doubt' it keeps
    -- what it sent, and leaves its row's one open entry to the edits made since, which
    -- wait until the record is known.
    UPDATE _replicad_outbox SET state = 'in_doubt'
        WHERE op = 'insert' AND awaiting_id = 1 AND state = 'rejected';
    -- One an edit requeued no longer holds what it sent (the edit replaced it), so the
    -- pulled record cannot be matched to it: the operator checks the destination.
    UPDATE _replicad_outbox SET state = 'rejected', awaiting_id = 0,
        reason = 'this create may have reached the destination before the row was ' ||
                 'edited: check there for the record; `replicad retry` posts it again'
        WHERE op = 'insert' AND awaiting_id = 1 AND state = 'pending';
    """,
    # v6: v5's rejected "check the destination" creates are in doubt; whether a push
    # sync's creates may land on records the destination already has (HOOKS[5]).
    """
    -- v5 left such a create 'rejected', which `replicad retry --all` posts again
    -- unchecked, though it may already exist upstream: in doubt, it is posted again only
    -- by `replicad retry ENTRY`, after the operator has checked, and the row's later
    -- edits wait for it as for any create in doubt.
    -- Its payload (if any) holds the edited values, not what was sent: dropped, so no
    -- pulled record is matched to it (a retry reads the row again); a diffed source's
    -- is its only copy of the values (no pulled record is matched to those).
    UPDATE _replicad_outbox SET state = 'in_doubt', awaiting_id = 1,
        payload = CASE WHEN tbl LIKE 'diff:%' THEN payload END,
        reason = 'this create may have reached the destination before the row was ' ||
                 'edited: check there for the record, then `replicad retry ENTRY` ' ||
                 'posts it again'
        WHERE op = 'insert' AND state = 'rejected' AND reason =
            'this create may have reached the destination before the row was ' ||
            'edited: check there for the record; `replicad retry` posts it again';
    """,
]

# Python steps run after a migration's script, in the same transaction.
HOOKS: dict[int, Callable[[sqlite3.Connection], None]] = {}


def _rebuild_type_tables(db: sqlite3.Connection) -> None:
    """v2 changes the defaults and triggers of every type table."""
    for tbl, sync in db.execute("SELECT tbl, sync FROM _replicad_types").fetchall():
        cols = [
            str(c)
            for (c,) in db.execute(
                "SELECT col FROM _replicad_fields WHERE tbl = ? ORDER BY position", (tbl,)
            )
        ]
        rebuild(db, tbl, sync, cols)
        for col in cols:
            # v1 kept no kinds: JSON text of an object or array is recognisable, a
            # boolean's 0/1 is not (it is learned from the next pulled value).
            sample = db.execute(
                f"SELECT {quote(col)} FROM {quote(tbl)} WHERE {quote(col)} IS NOT NULL LIMIT 1"
            ).fetchone()
            if sample is not None and isinstance(sample[0], str) and sample[0][:1] in "[{":
                kind = "json" if _is_json_container(sample[0]) else "scalar"
                db.execute(
                    "UPDATE _replicad_fields SET kind = ? WHERE tbl = ? AND col = ?",
                    (kind, tbl, col),
                )


def _is_json_container(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict | list)
    except ValueError:
        return False


HOOKS[1] = _rebuild_type_tables


def _regenerate_triggers(db: sqlite3.Connection) -> None:
    """v4 guards edits by push operation and captures deletes: new triggers (no history
    table exists before v4)."""
    for tbl, sync in db.execute("SELECT tbl, sync FROM _replicad_types").fetchall():
        _replace_triggers(db, str(tbl), str(sync))


HOOKS[3] = _regenerate_triggers


def _merged_guards(db: sqlite3.Connection) -> None:
    """v5 checks each statement kind in one BEFORE trigger: every type table's
    triggers are made again (history tables keep theirs)."""
    for tbl, sync in db.execute(
        "SELECT tbl, sync FROM _replicad_types WHERE kind = 'table'"
    ).fetchall():
        _replace_triggers(db, str(tbl), str(sync))


def _replace_triggers(db: sqlite3.Connection, tbl: str, sync: str) -> None:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (tbl,)
    ).fetchone()
    if exists is None:
        return  # an app dropped it: reconcile makes it again, triggers and all
    cols = [
        str(c)
        for (c,) in db.execute(
            "SELECT col FROM _replicad_fields WHERE tbl = ? ORDER BY position", (tbl,)
        )
    ]
    old = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
        "AND name LIKE '\\_replicad\\_%' ESCAPE '\\'",
        (tbl,),
    ).fetchall()
    for (name,) in old:
        db.execute(f"DROP TRIGGER {quote(str(name))}")
    for trigger in triggers(tbl, sync, cols):
        db.execute(trigger)


HOOKS[4] = _merged_guards


def _creates_may_merge(db: sqlite3.Connection) -> None:
    """v6: whether a push sync's creates may land on a record the destination has
    (``PushSource.creates_may_merge``): as the push sync is configured (until the
    daemon registers its push syncs again, as it does at every start: yes, the rule
    before this version), and as it was when an entry was sent (NULL: sent before)."""
    for table, column in (
        ("_replicad_push", "creates_may_merge INTEGER NOT NULL DEFAULT 1"),
        ("_replicad_outbox", "creates_may_merge INTEGER"),
    ):
        columns = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
        if "creates_may_merge" not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


HOOKS[5] = _creates_may_merge

SCHEMA_VERSION = len(MIGRATIONS)


def current_views() -> dict[str, str]:
    """The public views as the latest migrations define them (name → CREATE VIEW)."""
    views: dict[str, str] = {}
    for script in MIGRATIONS:
        for m in _VIEW.finditer(script):
            views[m.group(1)] = m.group(0).rstrip(";").strip()
    return views


_VIEW = re.compile(r"CREATE VIEW (\w+) AS\s.*?;", re.DOTALL)


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Move the file from ``version`` to the current schema, one transaction per step."""
    for target in range(version, SCHEMA_VERSION):
        try:
            # executescript leaves the BEGIN open: the hook and the version bump
            # commit with the script.
            db.executescript("BEGIN IMMEDIATE;\n" + MIGRATIONS[target])
            hook = HOOKS.get(target)
            if hook is not None:
                hook(db)
            db.execute(f"PRAGMA user_version = {target + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
