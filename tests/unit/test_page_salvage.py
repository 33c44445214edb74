"""Quarantine per item, never per page: the items around an unstorable one are kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replicad.connectors.salvage import NotAPage, ack_key_in, split_page
from replicad.connectors.sell_protocol import ProtocolError, decode_page


def good(id_: int) -> dict[str, Any]:
    sync = {"event_type": "updated", "ack_key": f"C-{id_}", "revision": 1}
    return {"data": {"id": id_, "name": f"n{id_}"}, "meta": {"type": "contact", "sync": sync}}


def page_text(*items: str) -> str:
    meta = '{"type": "collection", "count": 3, "count_left": 0, "failed_objects": []}'
    return '{"items": [' + ", ".join(items) + '], "meta": ' + meta + "}"


def deep_item(ack: str, depth: int = 990) -> str:
    nested = "[" * depth + "]" * depth
    return (
        '{"data": {"id": 7, "x": ' + nested + "}, "
        '"meta": {"type": "contact", "sync": {"ack_key": "' + ack + '", "revision": 1}}}'
    )


def ids(content: bytes) -> tuple[list[int], list[tuple[str, str | None]]]:
    page = decode_page(content)
    return (
        [c.id for c in page.batch.changes],
        [(b.reason, b.ack_key) for b in page.batch.bad_items],
    )


def test_an_item_nested_too_deeply_is_quarantined_alone() -> None:
    """One item nested ~990 levels deep: the items around it are applied."""
    body = page_text(json.dumps(good(1)), deep_item("C-7"), json.dumps(good(2)))
    assert ids(body.encode()) == ([1, 2], [("item nested too deeply to decode", "C-7")])


def test_invalid_utf8_quarantines_only_its_item() -> None:
    """A body with invalid UTF-8 in one item keeps the others; the bad item's raw text
    is storable (the bytes are escaped)."""
    bad = json.dumps(good(3)).replace('"n3"', '"caf\\u00e9"').encode()
    bad = bad.replace(b"caf\\u00e9", b"caf\xe9")  # Latin-1, not UTF-8
    body = page_text(json.dumps(good(1)), "@@", json.dumps(good(2))).encode()
    body = body.replace(b"@@", bad)
    page = decode_page(body)
    assert [c.id for c in page.batch.changes] == [1, 2]
    (quarantined,) = page.batch.bad_items
    assert quarantined.ack_key == "C-3" and "Unicode" in quarantined.reason
    quarantined.raw.encode("utf-8")  # storable as text
    assert "\\udce9" in quarantined.raw or "\\xe9" in quarantined.raw


@pytest.mark.parametrize("where", ["value", "field"])
def test_a_lone_surrogate_quarantines_its_item(where: str) -> None:
    """A \\ud800 escape (a lone surrogate) in a value or a field name cannot be stored."""
    item = json.dumps(good(4))
    item = (
        item.replace('"n4"', '"\\ud800"')
        if where == "value"
        else item.replace('"name"', '"na\\udfffme"')
    )
    emoji = json.dumps(good(5)).replace('"n5"', '"\\ud83d\\ude00"')  # a valid pair
    body = page_text(json.dumps(good(1)), item, emoji).encode()
    assert ids(body) == ([1, 5], [("item text is not valid Unicode", "C-4")])


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("id", 2**63, "item id does not fit a 64-bit integer"),
        ("id", -(2**63) - 1, "item id does not fit a 64-bit integer"),
        ("revision", 2**64, "item revision does not fit a 64-bit integer"),
    ],
)
def test_numbers_sqlite_cannot_store_are_quarantined(field: str, value: int, reason: str) -> None:
    """An id or revision outside 64 bits is quarantined, not retried forever."""
    item = good(6)
    if field == "id":
        item["data"]["id"] = value
    else:
        item["meta"]["sync"]["revision"] = value
    body = page_text(json.dumps(good(1)), json.dumps(item)).encode()
    assert ids(body) == ([1], [(reason, "C-6")])


def test_a_broken_item_is_quarantined_and_a_cut_body_is_a_lost_page() -> None:
    """A syntax error inside one item costs that item; a body cut short is lost whole."""
    body = page_text(json.dumps(good(1)), '{"data": {"id": 8}, "meta": {"sync": '
                     '{"ack_key": "C-8", "revision": tru}}}')  # fmt: skip
    assert ids(body.encode()) == ([1], [("item is not valid JSON", "C-8")])
    with pytest.raises(ProtocolError):
        decode_page(body.encode()[:-10])


def test_split_page_finds_items_and_meta_only_at_the_top() -> None:
    """Brackets and commas inside strings and nested values do not split items."""
    items, meta = split_page('{"meta": {"x": [1, 2]}, "items": [[1, 2], {"items": [9]}, "a,]"]}')
    assert items == ["[1, 2]", '{"items": [9]}', '"a,]"'] and meta == '{"x": [1, 2]}'
    for bad in ('{"items": [1, 2', '{"a": 1}', '{"items": ["open]}'):
        with pytest.raises(NotAPage):
            split_page(bad)


def test_ack_key_only_when_unambiguous() -> None:
    """An item naming two different ack keys is quarantined without acknowledging."""
    assert ack_key_in('{"meta": {"sync": {"ack_key": "k\\"1"}}}') == 'k"1'
    assert ack_key_in('{"ack_key": "a", "x": {"ack_key": "b"}}') is None


@pytest.mark.parametrize(
    "constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '{"deep": [2e308]}']
)
def test_nan_and_infinity_are_quarantined_not_stored_as_null(constant: str) -> None:
    """NaN or ±Infinity (not JSON; SQLite keeps NaN as NULL), or a number past a
    double's range (it would read as Infinity), quarantine their item."""
    item = json.dumps(good(7)).replace('"n7"', constant)
    body = page_text(json.dumps(good(1)), item).encode()
    assert ids(body) == ([1], [("item has a NaN or Infinity value", "C-7")])


def test_an_ack_key_that_is_not_unicode_is_never_sent() -> None:
    """An item whose ack key holds a lone surrogate is quarantined without an ack key
    (a mangled key would acknowledge nothing, or something else)."""
    item = json.dumps(good(8)).replace('"C-8"', '"C-\\ud800"')
    body = page_text(json.dumps(good(1)), item).encode()
    page = decode_page(body)
    assert [c.id for c in page.batch.changes] == [1]
    (bad,) = page.batch.bad_items
    assert bad.ack_key is None and (bad.type, bad.id) == ("contact", 8)


def test_a_page_whose_meta_cannot_be_read_is_lost_not_half_applied() -> None:
    """When the body must be split and its meta is broken, the page is lost (its
    failed_objects would be forgotten while its items were acknowledged)."""
    body = '{"items": [' + deep_item("C-7") + '], "meta": {"failed_objects": [tru]}}'
    with pytest.raises(ProtocolError):
        decode_page(body.encode())
