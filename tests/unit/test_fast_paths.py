"""The pull's fast paths agree with the plain rules they shortcut.

parse_item takes well-formed queue items through exact type checks and everything
else through the careful checks; the nested-value encoder is orjson's, with json's C
encoder for what orjson refuses; http clients to loopback skip loading the CA store.
Each must give what the plain version gives.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from replicad.connectors.http import tls_verification
from replicad.connectors.sell_protocol import _parse_odd_item, fast_loads, parse_item
from replicad.store.values import _ENCODE, spellings, to_sql

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    # NaN and ±Infinity never reach the encoder: the page decoder quarantines them.
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    # Control characters, U+2028, non-BMP, and lone surrogates (which orjson refuses).
    | st.text(st.characters(exclude_categories=()), max_size=6)
    | st.sampled_from([1e-05, 1e16, 0.1, -0.0, 5e-324, 1e15, 2**63, -(2**63) - 1, 2**64])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
# Items that are mostly well-formed, with any part possibly of the wrong type, missing,
# or a subclass-like oddity (a bool where an int belongs).
odd = st.sampled_from([None, True, False, 0, 1.5, "", "x", [], {}, [1], {"a": 1}])
ids = st.integers(min_value=-5, max_value=2**40) | odd
revisions = st.integers(min_value=0, max_value=9) | odd
ack_keys = st.sampled_from(["k-1", "k-2"]) | odd
types = st.sampled_from(["contact", "deal", "bad name"]) | odd
events = st.sampled_from(["created", "updated", "deleted"]) | odd


@st.composite
def items(draw: st.DrawFn) -> Any:
    sync = {"event_type": draw(events), "ack_key": draw(ack_keys), "revision": draw(revisions)}
    data = {"id": draw(ids), **draw(st.dictionaries(st.sampled_from(["a", "b"]), json_values))}
    item: dict[str, Any] = {
        "data": draw(st.sampled_from([data, {"id": data["id"]}])) if draw(st.booleans()) else data,
        "meta": {"type": draw(types), "sync": draw(st.sampled_from([sync, odd]))},
    }
    for key in draw(st.lists(st.sampled_from(["data", "meta"]), max_size=1)):
        del item[key]
    return draw(st.sampled_from([item, item, item, draw(odd)]))


@settings(max_examples=500, deadline=None)
@given(items())
@example({"data": {"id": True}, "meta": {"type": "c", "sync": {"ack_key": "k", "revision": 1}}})
@example({"data": {"id": 1}, "meta": {"type": "c", "sync": {"ack_key": "k", "revision": False}}})
@example({"data": {"id": 1}, "meta": {"type": "c", "sync": {"ack_key": "", "revision": 1}}})
@example({"data": {"id": 1}, "meta": {"type": "c", "sync": {"ack_key": "k", "revision": 0}}})
def test_parse_item_fast_path_agrees_with_careful_checks(item: Any) -> None:
    """Same change or same quarantine reason, whichever path an item takes."""
    assert parse_item(item) == _parse_odd_item(item)


@settings(max_examples=1000)
@given(json_values)
def test_nested_encoder_is_compact_json(value: Any) -> None:
    """The nested-value encoder writes the same value as json.dumps (compact, no ASCII
    escaping), and the very same text unless a float is spelled with an exponent."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    got = _ENCODE(value)
    assert json.dumps(json.loads(got), ensure_ascii=False, separators=(",", ":")) == expected
    if not _has_float(value):
        assert got == expected
    if isinstance(value, dict | list):
        assert to_sql(value) == got


@settings(max_examples=500)
@given(json_values)
def test_a_value_is_looked_for_in_this_and_the_older_spelling(value: Any) -> None:
    """Cells are matched against the text this version stores and the text json wrote
    before (rows an earlier version stored keep it), and only those."""
    older = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    cells = spellings(value)
    assert cells[0] == to_sql(value)
    if isinstance(value, dict | list):
        assert set(cells) == {to_sql(value), older}
    else:
        assert cells == (to_sql(value),)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return isinstance(value, list) and any(_has_float(v) for v in value)


@settings(max_examples=1000)
@given(json_values | st.floats())
def test_fast_page_decoder_agrees_with_json_or_steps_aside(value: Any) -> None:
    """The page decoder (orjson) gives what json.loads gives, to the sign of a zero
    and the exactness of a long integer, or refuses (ValueError) and the standard
    decoder is used; it never gives something else."""
    content = json.dumps(value).encode()
    try:
        got = fast_loads(content)
    except ValueError:
        return
    assert repr(got) == repr(json.loads(content))


def test_nested_encoder_refuses_what_json_refuses() -> None:
    """A value json cannot encode raises the same TypeError, never writes something."""
    try:
        _ENCODE({"a": object()})
    except TypeError as e:
        assert "not JSON serializable" in str(e)
    else:
        raise AssertionError("encoded an object json cannot encode")


def test_tls_verification_is_on_for_every_scheme() -> None:
    """https uses the system CA store (httpx's default); plain http (loopback only)
    gets a context that still requires a verified certificate and trusts nothing."""
    assert tls_verification("https://api.getbase.com") is True
    assert tls_verification("HTTPS://api.getbase.com") is True
    for url in ("http://127.0.0.1:8080", "ftp://x"):
        ctx = tls_verification(url)
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.cert_store_stats()["x509_ca"] == 0
