"""A pull's column naming applied to existing tables: mapped columns, style changes."""

from __future__ import annotations

from dataclasses import replace

from replicad.store import Replica
from replicad.store.naming import Change, Naming
from tests.store.conftest import TARGET, page, rows, up


async def test_mapped_fields_have_columns_before_they_arrive(replica: Replica) -> None:
    """A mapped field gets its column with the table, NULL until the field arrives."""
    naming = Naming(mapped={"contact": {"nickname": "nick"}})
    await replica.apply_page(replace(TARGET, naming=naming), page(up("contact", 1, 1, name="A")))
    assert (await rows(replica, "contact"))[1]["nick"] is None
    later = Naming(mapped={"contact": {"nickname": "nick", "phone": "tel"}})
    assert await replica.add_mapped_columns("mirror", later) == ["contact.tel"]
    assert await replica.add_mapped_columns("mirror", later) == []
    assert (await rows(replica, "contact"))[1]["tel"] is None


async def test_a_new_style_renames_automatic_columns_clear_of_the_others(
    replica: Replica,
) -> None:
    """Under a new style the automatic columns move, a clash gets a suffix, values
    follow their fields, and once applied nothing more is asked."""
    old = Naming(style="match_source_names")
    item = up("deal", 1, 1, **{"Stage Id": 7, "stage_id": 8, "Name": "won"})
    await replica.apply_page(replace(TARGET, naming=old), page(item))
    before = (await rows(replica, "deal"))[1]
    assert (before["Stage_Id"], before["stage_id_2"]) == (7, 8)  # clash: a suffix
    await replica.naming_applied("mirror", old)
    new = Naming(style="snake_case")
    changes = await replica.naming_changes("mirror", new)
    assert {c.column: c.new for c in changes} == {"Stage_Id": "stage_id", "Name": "name"}
    assert {c.key for c in changes} == {"field_normalization"}
    await replica.apply_naming(changes)
    await replica.naming_applied("mirror", new)
    after = (await rows(replica, "deal"))[1]
    assert (after["stage_id"], after["stage_id_2"], after["name"]) == (7, 8, "won")
    assert await replica.naming_changes("mirror", new) == []


async def test_columns_trading_names_are_renamed_without_a_clash(replica: Replica) -> None:
    """Renames go through temporary names, so two columns may swap names."""
    await replica.apply_page(TARGET, page(up("deal", 1, 1, p="P", q="Q")))
    swap = [Change("deal", "p", "p", "q"), Change("deal", "q", "q", "p")]
    await replica.apply_naming(swap)
    after = (await rows(replica, "deal"))[1]
    assert (after["q"], after["p"]) == ("P", "Q")
    assert replica.catalog.tables["deal"].columns == {"p": "q", "q": "p"}
