"""The replica's private schema, its public status views and their migrations.

``PRAGMA application_id`` marks the file as a replica; ``PRAGMA user_version`` is the
schema version. Migrations only move forward; a file written by a newer replicad is
refused rather than guessed at.
"""

from __future__ import annotations

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
]

SCHEMA_VERSION = len(MIGRATIONS)
