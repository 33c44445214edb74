"""Fault injection rules for the emulator's Sell and push routes: pure data and matching.

A rule is posted as JSON::

    {"endpoint": "start" | "fetch" | "ack" | "any"
                 | "transfer" | "push_data" | "push_errors" | "cdm_write" | "cdm_list"
                 | "cdm_delete" | "push",
     "action": "status" | "truncate" | "delay" | "empty_page" | "failed_objects" | "malformed"
               | "lost_response" | "reject",
     "times": 1,   # how often it fires; 0 = forever
     "skip": 0,    # let this many matching requests (or, for reject, items) through first
     ...action parameters: "status" + optional "retry_after" (status),
        "seconds" (delay), "count" (failed_objects),
        "match": {"field": F, "value": V} + optional "message" (reject)}

``any`` stands for every Sell Sync API endpoint and ``push`` for every push
endpoint (docs/push-wire.md); neither covers the other, so Sell fault scenarios
behave as they always did while a client also pushes.

``status`` and ``delay`` apply to any endpoint.  The page actions shape a page,
so they only match fetches that would serve one: a rule is never spent on the
204 that ends a session.  ``lost_response`` (carry the request out, then answer
502) is for push endpoints only, and ``reject`` for the push writes; a reject
rule is consulted per pushed record, not per request, and only for records that
pass the emulator's own validation.  Rules are consulted in the order they were
added and the first one that fires wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

SELL_ENDPOINTS: Final = ("start", "fetch", "ack")
PUSH_ENDPOINTS: Final = (
    "transfer",
    "push_data",
    "push_errors",
    "cdm_write",
    "cdm_list",
    "cdm_delete",
)
ENDPOINTS: Final = (*SELL_ENDPOINTS, "any", *PUSH_ENDPOINTS, "push")
ACTIONS: Final = (
    "status",
    "truncate",
    "delay",
    "empty_page",
    "failed_objects",
    "malformed",
    "lost_response",
    "reject",
)
PAGE_ACTIONS: Final = frozenset({"truncate", "empty_page", "failed_objects", "malformed"})
# Where the push-only actions may be aimed: a lost answer can happen anywhere,
# but only writes have records to reject.
_ACTION_ENDPOINTS: Final = {
    "lost_response": frozenset({*PUSH_ENDPOINTS, "push"}),
    "reject": frozenset({"transfer", "cdm_write", "push"}),
}
_WILDCARD: Final = {
    **dict.fromkeys(SELL_ENDPOINTS, "any"),
    **dict.fromkeys(PUSH_ENDPOINTS, "push"),
}
DEFAULT_REJECT_MESSAGE: Final = "rejected by emulator fault rule"

# Ids of the bogus items added by "malformed": far beyond any generated id so
# that acknowledging their keys can never remove a real queue entry.
MALFORMED_ID_BASE: Final = 10**12

_PARAMETERS: Final = {
    "status": {"status", "retry_after", "echo_auth"},
    "delay": {"seconds"},
    "failed_objects": {"count"},
    "reject": {"match", "message"},
}


# Stands for a field the pushed record does not have: equal to no JSON value.
_ABSENT: Final = object()


def _same_json(left: object, right: object) -> bool:
    """Equality of JSON values, except that true and 1 (Python's True == 1) differ."""
    return left == right and isinstance(left, bool) == isinstance(right, bool)


class FaultRuleError(ValueError):
    """A posted rule is not valid."""


@dataclass(slots=True)
class FaultRule:
    """One fault injection rule and how often it has fired."""

    endpoint: str
    action: str
    times: int = 1
    skip: int = 0
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    count: int = 1
    match_field: str = ""
    match_value: Any = None
    message: str = DEFAULT_REJECT_MESSAGE
    # status: the error message repeats the request's Authorization header, as some
    # servers do (a client must never store or show it).
    echo_auth: bool = False
    fired: int = 0
    skipped: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether the rule has fired as often as allowed."""
        return self.times > 0 and self.fired >= self.times

    def fault_message(self, authorization: str) -> str:
        """The message of a ``status`` answer."""
        if self.echo_auth:
            return f"Injected fault; request had Authorization: {authorization}"
        return "Injected fault"

    def matches(
        self, endpoint: str, *, page_available: bool, item: Mapping[str, Any] | None = None
    ) -> bool:
        """Whether a request to ``endpoint`` (or, with ``item``, one record it pushes)
        is one this rule is about."""
        if self.endpoint not in (endpoint, _WILDCARD.get(endpoint)):
            return False
        if self.action == "reject":
            return item is not None and _same_json(
                item.get(self.match_field, _ABSENT), self.match_value
            )
        if item is not None:
            return False
        if self.action in PAGE_ACTIONS:
            return endpoint == "fetch" and page_available
        return True

    def to_json(self) -> dict[str, Any]:
        """The rule as reported by ``GET /_emulator/faults``."""
        rule: dict[str, Any] = {
            "endpoint": self.endpoint,
            "action": self.action,
            "times": self.times,
            "skip": self.skip,
            "fired": self.fired,
        }
        if self.action == "status":
            rule.update(status=self.status, retry_after=self.retry_after, echo_auth=self.echo_auth)
        elif self.action == "delay":
            rule["seconds"] = self.seconds
        elif self.action == "failed_objects":
            rule["count"] = self.count
        elif self.action == "reject":
            rule["match"] = {"field": self.match_field, "value": self.match_value}
            rule["message"] = self.message
        return rule


def _number(raw: Mapping[str, Any], name: str, default: float, *, minimum: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise FaultRuleError(f"{name!r} must be a number >= {minimum}, got {value!r}")
    return float(value)


def _integer(raw: Mapping[str, Any], name: str, default: int, *, minimum: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultRuleError(f"{name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _reject_parameters(raw: Mapping[str, Any]) -> tuple[str, Any, str]:
    """``(field, value, message)`` of a reject rule."""
    match = raw.get("match")
    if (
        not isinstance(match, dict)
        or set(match) != {"field", "value"}
        or not isinstance(match["field"], str)
        or not match["field"]
    ):
        raise FaultRuleError(f'\'match\' must be {{"field": name, "value": v}}, got {match!r}')
    message = raw.get("message", DEFAULT_REJECT_MESSAGE)
    if not isinstance(message, str) or not message:
        raise FaultRuleError(f"'message' must be a non-empty string, got {message!r}")
    return match["field"], match["value"], message


def parse_rule(raw: object) -> FaultRule:
    """Validate one posted rule; raises :class:`FaultRuleError` with a readable reason."""
    if not isinstance(raw, dict):
        raise FaultRuleError(f"a rule must be an object, got {raw!r}")
    endpoint = raw.get("endpoint", "any")
    if endpoint not in ENDPOINTS:
        raise FaultRuleError(f"'endpoint' must be one of {ENDPOINTS}, got {endpoint!r}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise FaultRuleError(f"'action' must be one of {ACTIONS}, got {action!r}")
    allowed = {"endpoint", "action", "times", "skip"} | _PARAMETERS.get(action, set())
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise FaultRuleError(f"unknown field(s) {unknown} for action {action!r}")
    if action in PAGE_ACTIONS and endpoint not in ("fetch", "any"):
        raise FaultRuleError(f"action {action!r} only applies to fetch, not {endpoint!r}")
    targets = _ACTION_ENDPOINTS.get(action)
    if targets is not None and endpoint not in targets:
        raise FaultRuleError(
            f"action {action!r} only applies to {sorted(targets)}, not {endpoint!r}"
        )
    match_field, match_value, message = (
        _reject_parameters(raw) if action == "reject" else ("", None, DEFAULT_REJECT_MESSAGE)
    )
    status = _integer(raw, "status", 500, minimum=400)
    if status > 599:
        raise FaultRuleError(f"'status' must be an HTTP error status, got {status}")
    retry_after = raw.get("retry_after")
    echo_auth = raw.get("echo_auth", False)
    if not isinstance(echo_auth, bool):
        raise FaultRuleError(f"'echo_auth' must be true or false, got {echo_auth!r}")
    return FaultRule(
        endpoint=endpoint,
        action=action,
        times=_integer(raw, "times", 1, minimum=0),
        skip=_integer(raw, "skip", 0, minimum=0),
        status=status,
        retry_after=None if retry_after is None else _number(raw, "retry_after", 0.0, minimum=0.0),
        seconds=_number(raw, "seconds", 0.0, minimum=0.0),
        count=_integer(raw, "count", 1, minimum=1),
        match_field=match_field,
        match_value=match_value,
        message=message,
        echo_auth=echo_auth,
    )


def parse_rules(raw: object) -> list[FaultRule]:
    """Validate the body of ``POST /_emulator/faults``: ``{"rules": [...]}``."""
    rules = raw.get("rules") if isinstance(raw, dict) else None
    if not isinstance(rules, list):
        raise FaultRuleError('expected {"rules": [...]}')
    return [parse_rule(rule) for rule in rules]


class FaultPlan:
    """The ordered list of active rules."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rules: list[FaultRule]) -> None:
        """Append rules after the existing ones."""
        self.rules.extend(rules)

    def clear(self) -> None:
        """Remove every rule."""
        self.rules.clear()

    def take(
        self,
        endpoint: str,
        *,
        page_available: bool = True,
        item: Mapping[str, Any] | None = None,
    ) -> FaultRule | None:
        """The rule that fires for this request (or pushed record ``item``), if any,
        counting it as fired."""
        for rule in self.rules:
            if rule.exhausted or not rule.matches(
                endpoint, page_available=page_available, item=item
            ):
                continue
            if rule.skipped < rule.skip:
                rule.skipped += 1
                continue
            rule.fired += 1
            return rule
        return None

    def rejection(self, endpoint: str, item: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(field, message)`` of the reject rule that fires for a record pushed to
        ``endpoint``, if any."""
        rule = self.take(endpoint, item=item)
        return None if rule is None else (rule.match_field, rule.message)

    def to_json(self) -> list[dict[str, Any]]:
        """Every rule, including exhausted ones, as posted plus its ``fired`` count."""
        return [rule.to_json() for rule in self.rules]


def malformed_items() -> list[dict[str, Any]]:
    """The bogus items the "malformed" action appends to a page.

    Each carries a well-formed ack key for a record that does not exist (so
    acknowledging it must be harmless), except the last, which has none.
    """
    base = MALFORMED_ID_BASE

    def sync(id_: int) -> dict[str, Any]:
        return {"event_type": "created", "ack_key": f"Contact-{id_}-1", "revision": 1}

    return [
        {
            "data": {"id": base + 1, "name": "Robert'); DROP TABLE contact;--"},
            "meta": {"type": "contact; DROP TABLE contact", "sync": sync(base + 1)},
        },
        {
            "data": {"id": base + 2, "type": "table", "name": "contact", "sql": "CREATE TABLE x"},
            "meta": {"type": "sqlite_master", "sync": sync(base + 2)},
        },
        {
            "data": [{"id": base + 3}, "not an object"],
            "meta": {"type": "contact", "sync": sync(base + 3)},
        },
        {
            "data": {"id": base + 4, "name": "no ack key"},
            "meta": {"type": "contact", "sync": {"event_type": "updated", "revision": 1}},
        },
    ]
