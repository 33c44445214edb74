"""Census sync definitions: field_normalization's six styles, and the config's
parsing of mappings, operations, high-water marks and alerts (errors name the key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replicad.connectors.push_model import PushItem
from replicad.daemon.census import AlertRule, FieldMapping
from replicad.daemon.config import ConfigError, parse_config
from replicad.daemon.mapping import map_item, mapped_columns, wire_data
from replicad.store.normalize import STYLES, normalize

AWKWARD = ["first name", "HTTPStatus", "e-mail", "already_snake", "Größe", "customerID2"]
EXPECTED = {
    "match_source_names": AWKWARD,
    "snake_case": ["first_name", "http_status", "e_mail", "already_snake", "größe", "customer_id2"],
    "camel_case": ["firstName", "httpStatus", "eMail", "alreadySnake", "größe", "customerId2"],
    "lower_case": ["first name", "http status", "e mail", "already snake", "größe", "customer id2"],
    "upper_case": [
        "FIRST NAME",
        "HTTP STATUS",
        "E MAIL",
        "ALREADY SNAKE",
        "GRÖSSE",
        "CUSTOMER ID2",
    ],
    "start_case": ["First Name", "HTTP Status", "E Mail", "Already Snake", "Größe", "Customer ID2"],
}


@pytest.mark.parametrize("style", STYLES)
def test_every_style_writes_awkward_names(style: str) -> None:
    """Each of the six styles writes spaces, acronyms, dashes, snake and non-ASCII names."""
    assert [normalize(n, style) for n in AWKWARD] == EXPECTED[style]


def test_a_name_without_letters_is_kept() -> None:
    """A name with no letters or digits is kept rather than made empty."""
    assert normalize("--", "snake_case") == "--"


def config(sync: str, kind: str = "cdm", tmp: Path | None = None) -> Any:
    conn = 'session_id = "s"\n' if kind == "endgrate" else ""
    text = (
        '[connections.out]\nkind = "' + kind + '"\nbase_url = "https://x.example"\n'
        'token_env = "T"\n' + conn + '[syncs.up]\ndirection = "push"\nconnection = "out"\n'
        'object = "contact"\n' + sync
    )
    import tomllib

    return parse_config(tomllib.loads(text), (tmp or Path("/nonexistent")) / "c.toml")


DIFFED = 'source = { query = "SELECT 1 AS a" }\n'
KEY = 'mappings = [{ from = "a", to = "email", is_primary_identifier = true }]\n'


def test_mappings_in_census_shape_and_shorthand() -> None:
    """``from = "col"`` is a column; constant_value a constant; one primary identifier."""
    c = config(
        DIFFED + 'mappings = [\n{ from = { type = "column", data = "a" }, to = "email", '
        'is_primary_identifier = true },\n{ from = "b", to = "name" },\n'
        '{ from = { type = "constant_value", data = 5 }, to = "n" }]\n'
    )
    s = c.syncs["up"]
    assert s.mappings == (
        FieldMapping("email", column="a", primary=True),
        FieldMapping("name", column="b"),
        FieldMapping("n", constant=5),
    )
    assert s.key_field == "email" and s.field_behavior == "specific_properties"
    assert mapped_columns(s) == ("a", "b")


def test_wire_data_maps_normalizes_and_adds_constants() -> None:
    """Mapped columns take their names, unmapped ones the style's, constants join."""
    s = config(
        DIFFED
        + KEY.replace(
            "]",
            ', { from = "first name", to = "fn" }, '
            '{ from = { type = "constant_value", data = "x" }, to = "src" }]',
        )
        + 'field_behavior = "sync_all_properties"\nfield_normalization = "camel_case"\n'
    ).syncs["up"]
    assert wire_data({"a": "e@x", "first name": "A", "e-mail 2": 1}, s) == {
        "email": "e@x", "fn": "A", "eMail2": 1,
    }  # fmt: skip
    item = PushItem(1, "i", "update", {"a": "e@x", "first name": "B"})
    assert map_item(item, s) == PushItem(1, "i", "update", {"email": "e@x", "fn": "B", "src": "x"})
    only_key = PushItem(2, "i", "update", {"a": "e@x"})
    assert map_item(only_key, s) is None  # nothing but the identifier: nothing to send


def test_deprecated_alert_keys_translate_and_alert_attributes_win() -> None:
    """The deprecated Census keys are translated; alert_attributes wins when both."""
    s = config(
        DIFFED + KEY + "failed_record_notifications_threshold_percent = 20\n"
        "failed_run_notifications_enabled = false\n"
    ).syncs["up"]
    assert s.alerts == (AlertRule("rejected_records", threshold_percent=20.0),)
    s = config(
        DIFFED + KEY + "failed_run_notifications_enabled = false\n"
        'alert_attributes = [{ type = "stale", after = "1h" }]\n'
    ).syncs["up"]
    assert s.alerts == (AlertRule("stale", after=3600.0),)


@pytest.mark.parametrize(
    ("sync", "kind", "says"),
    [
        ('source = "contact"\noperation = "mirror"\n', "endgrate", "cannot delete records"),
        ('source = "contact"\noperation = "update"\n', "endgrate", "cannot change only"),
        ('source = "contact"\noperation = "sideways"\n', "cdm", "is not one of"),
        (DIFFED, "cdm", "syncs.up.mappings: a diffed source needs exactly one"),
        (DIFFED + KEY.replace("]", ', { from = "b", to = "x", is_primary_identifier = true }]'),
         "cdm", "found 2 (email, x)"),
        ('source = "contact"\n' + KEY, "cdm", "is_primary_identifier is for diffed sources"),
        (DIFFED + KEY + 'high_water_mark_attributes = { column = "t" }\n', "cdm",
         "only for operation = 'append'"),
        ('source = { query = "UPDATE x SET a = 1" }\n' + KEY, "cdm", "must be a SELECT"),
        ('source = { query = "SELECT 1; SELECT 2" }\n' + KEY, "cdm", "must be one statement"),
        ('source = { table = "t" }\n' + KEY, "cdm", "a table of the replica is a captured"),
        ('source = { table = "t", database = "no.db" }\n' + KEY, "cdm", "no SQLite file at"),
        ('source = "contact"\nmappings = [{ from = { type = "constant_value", data = '
         "1979-05-27T07:32:00Z }, to = \"d\" }]\n", "cdm", "a constant must be"),
        ('source = "contact"\nmappings = [{ from = "a", to = "x" }, { from = "b", to = "x" }]\n',
         "cdm", "'x' is mapped twice"),
        ('source = "contact"\nfield_normalization = "snake_case"\n'
         'mappings = [{ from = "a", to = "x" }]\n', "cdm", "only field_behavior"),
        ('source = "contact"\nalert_attributes = [{ type = "rejected_records", '
         "threshold_percent = 100 }]\n", "cdm", "between 0 and 100"),
        ('source = "contact"\nalert_attributes = [{ type = "noise" }]\n', "cdm", "is not one of"),
        ('source = "contact"\non_alert = []\n', "cdm", "on_alert: must be a command"),
        (DIFFED + KEY + 'conflict = "remote"\n', "cdm", "only for a captured source"),
    ],
)  # fmt: skip
def test_malformed_definitions_are_config_errors(sync: str, kind: str, says: str) -> None:
    """Each malformed definition is a config error naming the key."""
    with pytest.raises(ConfigError, match=r"syncs\.up") as e:
        config(sync, kind)
    assert says in str(e.value)
