"""Mutations posted to ``/_emulator/mutate``: explicit operations and seeded random ones.

Body: ``{"ops": [...]}`` and/or ``{"random": {"count": N, "seed": S}}`` (explicit
operations run first).  Operations are validated as a whole before any is
applied; an operation that then fails against the account (say an update of a
deleted record) stops the batch, leaving the earlier ones applied and reported.
"""

from __future__ import annotations

import random
from typing import Any, Final

from replicad.connectors.emulator.dataset import fake_record
from replicad.connectors.emulator.records import Change, RecordError, check_type
from replicad.connectors.emulator.state import SyncState

_OPS: Final = ("create", "update", "delete")
# Fields a random update may rewrite, per type, and fields it may add: replicas
# must cope with records gaining columns they have never seen.
_UPDATABLE: Final = {
    "contact": ("email", "phone", "customer_status", "address", "custom_fields", "tags"),
    "lead": ("title", "status", "phone", "address", "custom_fields", "tags"),
    "deal": ("value", "stage_id", "hot", "estimated_close_date", "custom_fields", "tags"),
}
_NEW_FIELDS: Final = ("nickname", "linkedin_url", "loyalty_points", "preferred_language")
_LANGUAGES: Final = ("de", "en", "fr", "ja", "pl", "pt")
_TYPE_WEIGHTS: Final = ("contact", "contact", "lead", "deal")
_PICK_ATTEMPTS: Final = 32


class MutationError(Exception):
    """A mutation request failed; ``results`` holds the changes applied before it."""

    def __init__(self, status: int, message: str, results: list[Change] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.results = results or []


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MutationError(422, f"{what} must be a positive integer, got {value!r}")
    return value


def _validate_op(index: int, raw: object) -> dict[str, Any]:
    where = f"ops[{index}]"
    if not isinstance(raw, dict):
        raise MutationError(422, f"{where} must be an object")
    op = raw.get("op")
    if op not in _OPS:
        raise MutationError(422, f"{where}.op must be one of {_OPS}, got {op!r}")
    try:
        check_type(raw.get("type"))
    except RecordError as exc:
        raise MutationError(422, f"{where}: {exc.message}") from exc
    if op != "create":
        _positive_int(raw.get("id"), f"{where}.id")
    if op != "delete" and not isinstance(raw.get("data", {}), dict):
        raise MutationError(422, f"{where}.data must be an object")
    return raw


def _apply(state: SyncState, op: dict[str, Any]) -> Change:
    type_, data = op["type"], op.get("data", {})
    if op["op"] == "create":
        return state.create(type_, data)
    if op["op"] == "update":
        return state.update(type_, op["id"], data)
    return state.delete(type_, op["id"])


def _pick_live(rng: random.Random, state: SyncState, type_: str) -> int | None:
    store = state.store
    top = store.max_id(type_)
    for _ in range(_PICK_ATTEMPTS if top else 0):
        id_ = rng.randint(1, top)
        if store.exists((type_, id_)):
            return id_
    return None


def _new_field(rng: random.Random, step: int) -> dict[str, Any]:
    name = rng.choice(_NEW_FIELDS)
    if name == "nickname":
        return {name: f"nick-{step}"}
    if name == "linkedin_url":
        return {name: f"https://www.linkedin.com/in/replicad-{step}"}
    if name == "loyalty_points":
        return {name: rng.randint(0, 10_000)}
    return {name: rng.choice(_LANGUAGES)}


def random_mutations(state: SyncState, count: int, seed: int) -> list[Change]:
    """Apply ``count`` seeded random creates, updates and deletes.

    The same account state and seed always produce the same changes.  About a
    quarter are creates, 60 % updates (a quarter of which add a new field) and
    15 % deletes; an update or delete that finds no live record creates instead.
    """
    rng = random.Random(seed)
    store = state.store
    changes: list[Change] = []
    for step in range(count):
        type_ = rng.choice(_TYPE_WEIGHTS)
        roll = rng.random()
        salt = f"replicad-mutation|{seed}|{step}"
        contacts = store.max_id("contact")
        target = None if roll < 0.25 else _pick_live(rng, state, type_)
        if target is None:
            data = fake_record(type_, store.max_id(type_) + 1, salt=salt, contacts=contacts)
            # Let the store stamp creation with the mutation's own time.
            del data["created_at"], data["updated_at"]
            changes.append(state.create(type_, data))
        elif roll < 0.85:
            fresh = fake_record(type_, target, salt=salt, contacts=contacts)
            fields = rng.sample(_UPDATABLE[type_], rng.randint(1, 3))
            patch = {name: fresh[name] for name in fields}
            if rng.random() < 0.25:
                patch.update(_new_field(rng, step))
            changes.append(state.update(type_, target, patch))
        else:
            changes.append(state.delete(type_, target))
    return changes


def apply_mutations(state: SyncState, body: object) -> list[Change]:
    """Carry out a ``/_emulator/mutate`` body; raises :class:`MutationError`."""
    if not isinstance(body, dict) or not ({"ops", "random"} & body.keys()):
        raise MutationError(422, 'expected {"ops": [...]} and/or {"random": {...}}')
    ops = body.get("ops", [])
    if not isinstance(ops, list):
        raise MutationError(422, "ops must be a list")
    validated = [_validate_op(index, op) for index, op in enumerate(ops)]
    spec = body.get("random")
    if spec is not None:
        if not isinstance(spec, dict):
            raise MutationError(422, 'random must be {"count": N, "seed": S}')
        count = spec.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise MutationError(422, f"random.count must be an integer >= 0, got {count!r}")
        seed = spec.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise MutationError(422, f"random.seed must be an integer, got {seed!r}")
    changes: list[Change] = []
    for op in validated:
        try:
            changes.append(_apply(state, op))
        except RecordError as exc:
            raise MutationError(exc.status, exc.message, changes) from exc
    if spec is not None:
        changes.extend(random_mutations(state, count, seed))
    return changes
