"""SQL as a local app runs it against the replica, for the demo and the tests.

What the README tells apps to do: one ``BEGIN IMMEDIATE`` transaction per change and a
busy timeout, from their own connection (no replica lock needed). The edits go through
the capture triggers like any app's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def edit_locally(path: Path, statements: Sequence[str]) -> None:
    """Run ``statements`` in one ``BEGIN IMMEDIATE`` transaction, as an app would."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for sql in statements:
            db.execute(sql)
        db.execute("COMMIT")
    finally:
        db.close()


def read_row(path: Path, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    """The first row of a query, as an app would read it (None when there is none)."""
    db = sqlite3.connect(path, timeout=10)
    try:
        row = db.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None
    finally:
        db.close()
