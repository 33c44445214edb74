"""The sans-IO push parsers: strict where the seeds speak, tolerant where they are silent.

One test per rule of docs/push-wire.md ("What the client accepts").
"""

from __future__ import annotations

from typing import Any

import pytest

from replicad.connectors.cdm_protocol import REJECT_STATUS, parse_written
from replicad.connectors.endgrate_protocol import (
    DataPage,
    EndgrateProtocolError,
    ReturnedRow,
    TransferError,
    next_offset,
    outcomes,
    parse_data_page,
    parse_transfer,
    rows_all_have_ids,
)
from replicad.connectors.push_model import PushBatch, PushItem


def batch(n: int) -> PushBatch:
    items = tuple(PushItem(i, f"int-{i}", "insert", {"n": i}) for i in range(1, n + 1))
    return PushBatch("trk", "crm-contact", items)


@pytest.mark.parametrize("status", [200, 201, 202])
def test_any_2xx_transfer_with_an_id_is_accepted(status: int) -> None:
    """Endgrate: a 200, 201 or 202 naming a transfer_id is an accepted transfer; a
    "success" member is not required."""
    assert parse_transfer(status, {"transfer_id": "t-1"}) == "t-1"
    assert parse_transfer(status, {"success": True, "transfer_id": 7}) == "7"


@pytest.mark.parametrize("body", [None, {}, {"transfer_id": ""}, ["x"], {"transfer_id": {}}])
def test_2xx_transfer_without_an_id_is_accepted_without_data(body: Any) -> None:
    """Endgrate: a 2xx without a usable transfer_id is still accepted (no data to read)."""
    assert parse_transfer(204 if body is None else 200, body) is None


def test_transfer_outside_2xx_is_not_parsed_as_accepted() -> None:
    """Endgrate: only a 2xx answer can be an accepted transfer."""
    with pytest.raises(EndgrateProtocolError):
        parse_transfer(400, {"transfer_id": "t"})


@pytest.mark.parametrize(
    ("nxt", "has_next"),
    [(None, False), ("https://x/api/push/data?offset=2", True), (2, True), (0, True)],
)
def test_meta_next_is_a_link_a_number_or_null(nxt: Any, has_next: bool) -> None:
    """Endgrate: meta.next may be a link, a number (an offset) or null."""
    page = parse_data_page(200, {"meta": {"next": nxt}, "transfer_data": [{"id": "1"}]})
    assert page.has_next is has_next and page.count is None


@pytest.mark.parametrize("nxt", [True, {"offset": 2}, [2]])
def test_meta_next_of_another_shape_is_refused(nxt: Any) -> None:
    """Endgrate: a meta.next that is neither a link, a number nor null is a protocol error."""
    with pytest.raises(EndgrateProtocolError):
        parse_data_page(200, {"meta": {"next": nxt}, "transfer_data": []})


def test_data_page_without_success_or_meta_is_read_but_success_false_is_not() -> None:
    """Endgrate: "success" and "meta" may be absent; "success": false is a refusal."""
    page = parse_data_page(200, {"transfer_data": [{"id": 5}, {"data": {}}]})
    assert page.rows == (ReturnedRow("5"), ReturnedRow(None)) and not page.has_next
    with pytest.raises(EndgrateProtocolError):
        parse_data_page(200, {"success": False, "transfer_data": []})


def test_offsets_come_from_the_rows_not_from_the_link() -> None:
    """Endgrate: the next offset is where the rows ended, whatever meta.next says."""
    page = DataPage(None, (ReturnedRow("1"), ReturnedRow("2")), has_next=True)
    assert next_offset(page, expected=5, offset=0) == 2
    assert next_offset(DataPage(None, (ReturnedRow("3"),), True), expected=3, offset=2) is None


def test_errors_are_needed_only_when_a_row_has_no_id() -> None:
    """Endgrate: every row with an id confirms the transfer without the errors list."""
    assert rows_all_have_ids([ReturnedRow("1"), ReturnedRow("2")], 2)
    assert not rows_all_have_ids([ReturnedRow("1"), ReturnedRow(None)], 2)
    assert not rows_all_have_ids([ReturnedRow("1")], 2)


def test_row_without_id_stays_unresolved_until_final_then_is_confirmed() -> None:
    """Endgrate: a row without id that no error names is accepted: unresolved before the
    last re-read, then confirmed without a remote id (never rejected); errors None means
    the server has no errors list."""
    rows = [ReturnedRow("9"), ReturnedRow(None)]
    early = outcomes(batch(2), "t", rows, None, sample_data=False, final=False)
    assert [o.id for o in early.outcomes] == ["9"] and early.unresolved == [1]
    late = outcomes(batch(2), "t", rows, None, sample_data=False, final=True)
    assert [(o.entry, o.confirmed, o.id) for o in late.outcomes] == [
        (1, True, "9"),
        (2, True, None),
    ]
    assert late.unresolved == []


def test_only_an_error_naming_the_item_rejects_it() -> None:
    """Endgrate: an error naming the item is the one explicit refusal of an item."""
    rows = [ReturnedRow(None), ReturnedRow(None)]
    err = [TransferError(1, None, "validation", "bad email")]
    done = outcomes(batch(2), "t", rows, err, sample_data=False, final=False)
    assert [o.rejected for o in done.outcomes] == ["validation: bad email"]
    assert done.unresolved == [0]


def test_sample_data_is_confirmed_as_not_written() -> None:
    """Endgrate: sample data is confirmed without ids and marked as not written."""
    done = outcomes(batch(1), "t", [ReturnedRow(None)], [], sample_data=True, final=False)
    assert [(o.confirmed, o.id, o.written) for o in done.outcomes] == [(True, None, False)]


@pytest.mark.parametrize(
    ("status", "body", "rid"),
    [
        (201, {"data": {"id": 4}}, "4"),
        (200, {"id": "x-4"}, "x-4"),
        (202, None, None),
        (204, None, None),
        (200, {"data": {"name": "no id"}}, None),
        (201, "not an object", None),
    ],
)
def test_any_2xx_write_is_accepted(status: int, body: Any, rid: str | None) -> None:
    """CDM: any 2xx confirms the record, with its id when the answer carries one."""
    w = parse_written(status, body, entry=1, tracking_id="t.1", echoed="t.1", sync_id=None)
    assert w.outcome.confirmed and w.outcome.id == rid


@pytest.mark.parametrize(
    ("echoed", "body", "seen"),
    [
        ("t.1", None, True),
        (None, {"data": {"id": 1}, "tracking_id": "t.1"}, True),
        (None, {"id": 1, "meta": {"trackingId": "t.1"}}, True),
        (None, {"data": {"id": 1}}, False),
    ],
)
def test_tracking_echo_header_or_body_or_none(echoed: str | None, body: Any, seen: bool) -> None:
    """CDM: the tracking echo may be a header or in the body; absent is accepted."""
    w = parse_written(201, body, entry=1, tracking_id="t.1", echoed=echoed, sync_id=None)
    assert w.echoed is seen and w.outcome.confirmed


@pytest.mark.parametrize(
    ("echoed", "body"),
    [("other", None), (None, {"tracking_id": "other", "data": {"id": 1}})],
)
def test_echo_of_another_request_is_a_protocol_error(echoed: str | None, body: Any) -> None:
    """CDM: an echo naming another request means the answer is not ours."""
    with pytest.raises(Exception, match="X-Tracking-ID"):
        parse_written(201, body, entry=1, tracking_id="t.1", echoed=echoed, sync_id=None)


def test_a_top_level_record_field_is_not_taken_for_the_echo() -> None:
    """CDM: a record answered without an envelope may have a tracking_id field of its
    own; only an envelope's (or meta's) tracking_id is the echo."""
    body = {"id": 5, "tracking_id": "the record's own"}
    w = parse_written(201, body, entry=1, tracking_id="t.1", echoed=None, sync_id=None)
    assert w.outcome.id == "5" and not w.echoed


def test_a_row_with_an_id_is_confirmed_even_if_an_error_names_it() -> None:
    """Endgrate: a row that came back with its id was written; an error naming it (an
    association's) does not reject it, so its id is kept."""
    rows = [ReturnedRow("1001"), ReturnedRow(None)]
    errors = [TransferError(0, None, "association", "company failed")]
    done = outcomes(batch(2), "t", rows, errors, sample_data=False, final=True)
    assert [(o.confirmed, o.id) for o in done.outcomes] == [(True, "1001"), (True, None)]


def test_every_refusing_4xx_rejects_but_auth_and_retryable_do_not() -> None:
    """CDM: a 4xx to the write rejects the record, except 401/403 (auth) and
    408/425/429 (retried)."""
    assert {400, 404, 409, 410, 422} <= REJECT_STATUS
    assert not {401, 403, 408, 425, 429} & REJECT_STATUS
