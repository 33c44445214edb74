"""doctor --repair on a file whose pages read fine but whose index disagrees with its
table (the quick check at open does not compare them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from replicad.store import Replica
from replicad.store.operate import diagnose, repair
from tests.store.conftest import TARGET, page, up


async def _with_index_redefined(path: Path, rows: int, index: str, built: str, said: str) -> None:
    """A replica of ``rows`` contacts with an app's ``index`` built over column
    ``built`` whose schema entry is then rewritten to say it covers ``said``: the index
    disagrees with its table, which only the full integrity check sees."""
    replica = await Replica.open(path)
    await replica.register_sync("mirror", "pull", "crm")
    contacts = (up("contact", i, 1, name=f"n{i}") for i in range(rows))
    await replica.apply_page(TARGET, page(*contacts))
    await replica.close()
    name = index.split()[-1]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"CREATE {index} ON contact ({built})")
    db.execute("PRAGMA writable_schema = ON")
    db.execute(
        "UPDATE sqlite_master SET sql = ? WHERE name = ?",
        (f"CREATE {index} ON contact ({said})", name),
    )
    db.close()


async def test_an_index_that_disagrees_with_its_table_is_rebuilt(tmp_path: Path) -> None:
    """An index made to cover another column than its entries hold: doctor reports it,
    --repair rebuilds the indexes (no full rebuild), and the file is sound again."""
    path = tmp_path / "r.db"
    await _with_index_redefined(path, 50, "INDEX app_by_name", "name", "_internal_id")
    bad = diagnose(path)
    assert not bad.healthy
    report = repair(path)
    assert report.done[0] == "indexes rebuilt (REINDEX): the integrity check passes"
    assert diagnose(path).healthy
    assert not list(tmp_path.glob("r.db.corrupt-*"))  # not rebuilt from scratch


async def test_a_unique_index_that_let_duplicates_in_falls_back_to_a_rebuild(
    tmp_path: Path,
) -> None:
    """A unique index whose rows are not unique (here: made to cover a column every row
    shares): REINDEX cannot rebuild it, so --repair rebuilds the file instead of
    stopping with an error."""
    path = tmp_path / "r.db"
    await _with_index_redefined(path, 5, "UNIQUE INDEX app_names", "name", "_revision")
    assert not diagnose(path).healthy
    report = repair(path)
    assert list(tmp_path.glob("r.db.corrupt-*"))  # rebuilt, the damaged file kept
    assert diagnose(path).healthy, report
