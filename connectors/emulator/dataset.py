"""Deterministic seeded CRM dataset for the Sell Sync API emulator.

Every record is a pure function of ``(seed, type, id)``: its fields are decoded
from a BLAKE2b digest of those three values, so any record can be rebuilt on
demand without generating the ones before it.  That lets the emulator serve a
million-record account while storing only the records that were mutated.

Records are laid out over a global index ``0 .. records-1``: even indexes are
contacts, ``index % 4 == 1`` leads and ``index % 4 == 3`` deals, which gives the
50 / 25 / 25 split with ids starting at 1 per type and closed-form conversions
between ``(type, id)`` and the index.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any, Final

TYPES: Final = ("contact", "lead", "deal")

_EPOCH: Final = dt.date(2015, 1, 1)
_DAY_SECONDS: Final = 86_400
_CREATED_SPAN_DAYS: Final = 9 * 365
_UPDATED_SPAN_DAYS: Final = 2 * 365
# Formatting dates through datetime costs more than the rest of a record, so
# every reachable day is rendered once at import time.
_DAYS: Final = [
    (_EPOCH + dt.timedelta(days=n)).isoformat()
    for n in range(_CREATED_SPAN_DAYS + _UPDATED_SPAN_DAYS + 400)
]

# (display form, ASCII slug for e-mail addresses).  Several names are
# deliberately non-ASCII or carry quotes so that replicas get exercised on them.
_FIRST_NAMES: Final = [
    ("Anna", "anna"),
    ("Ben", "ben"),
    ("Chloé", "chloe"),
    ("David", "david"),
    ("Elena", "elena"),
    ("François", "francois"),
    ("Grace", "grace"),
    ("Hiro", "hiro"),
    ("Ines", "ines"),
    ("José", "jose"),
    ("Karin", "karin"),
    ("Łukasz", "lukasz"),
    ("Maria", "maria"),
    ("Noah", "noah"),
    ("Olivia", "olivia"),
    ("Pedro", "pedro"),
    ("Quinn", "quinn"),
    ("Rosa", "rosa"),
    ("Søren", "soren"),
    ("Tomás", "tomas"),
    ("Uma", "uma"),
    ("Viktor", "viktor"),
    ("Wen", "wen"),
    ("Zoë", "zoe"),
]
_LAST_NAMES: Final = [
    ("Andersen", "andersen"),
    ("Brown", "brown"),
    ("Çelik", "celik"),
    ("Dvořák", "dvorak"),
    ("Evans", "evans"),
    ("Fischer", "fischer"),
    ("García", "garcia"),
    ("Hansen", "hansen"),
    ("Ivanova", "ivanova"),
    ("Jensen", "jensen"),
    ("Kowalski", "kowalski"),
    ("López", "lopez"),
    ("Müller", "muller"),
    ("Nguyễn", "nguyen"),
    ("O'Brien", "obrien"),
    ("Petrov", "petrov"),
    ("Rossi", "rossi"),
    ("Smith", "smith"),
    ("Tanaka", "tanaka"),
    ("山田", "yamada"),
]
_COMPANIES: Final = [
    ("Acme Corp", "acme"),
    ("Globex", "globex"),
    ("Initech", "initech"),
    ("Umbrella Ltd", "umbrella"),
    ("Café ☕ Brûlé GmbH", "cafe-brule"),
    ("Stark Industries", "stark"),
    ("Wayne Enterprises", "wayne"),
    ("Nordlys AS", "nordlys"),
    ("Zürich Widgets AG", "zurich-widgets"),
    ("Tyrell Inc.", "tyrell"),
]
_CITIES: Final = [
    ("Berlin", "DE"),
    ("Kraków", "PL"),
    ("Lyon", "FR"),
    ("Boston", "US"),
    ("Austin", "US"),
    ("Tokyo", "JP"),
    ("São Paulo", "BR"),
    ("Oslo", "NO"),
    ("Madrid", "ES"),
    ("Dublin", "IE"),
]
_STREETS: Final = ["Main St", "Oak Avenue", "Königstraße", "Rue de la Paix", "Harbour Road"]
_DOMAINS: Final = ["example.com", "example.org", "mail.example.net"]
_CUSTOMER_STATUSES: Final = ["none", "current", "past"]
_LEAD_STATUSES: Final = ["New", "Working", "Unqualified"]
_TITLES: Final = ["CEO", "CTO", "Head of Sales", "Buyer", "Office Manager"]
_TIERS: Final = ["gold", "silver", "bronze"]
_TAGS: Final = ["vip", "newsletter", "partner", "churn-risk", "trade-show", "referral"]
_PRODUCTS: Final = ["Licences", "Support plan", "Onboarding", "Hardware", "Consulting"]
_CURRENCIES: Final = ["EUR", "USD"]


class _Digits:
    """Mixed-radix reader over a large random integer: each ``pick(n)`` takes one digit."""

    __slots__ = ("_value",)

    def __init__(self, value: int) -> None:
        self._value = value

    def pick(self, n: int) -> int:
        self._value, digit = divmod(self._value, n)
        return digit

    def chance(self, percent: int) -> bool:
        return self.pick(100) < percent


def type_counts(records: int) -> dict[str, int]:
    """Number of records of each type in a dataset of ``records`` records."""
    return {"contact": (records + 1) // 2, "lead": (records + 2) // 4, "deal": records // 4}


def locate(index: int) -> tuple[str, int]:
    """The ``(type, id)`` of the record at global ``index``."""
    if index % 2 == 0:
        return "contact", index // 2 + 1
    if index % 4 == 1:
        return "lead", index // 4 + 1
    return "deal", index // 4 + 1


def index_of(type_: str, id_: int) -> int:
    """The global index of record ``(type_, id_)``; inverse of :func:`locate`."""
    if type_ == "contact":
        return 2 * (id_ - 1)
    if type_ == "lead":
        return 4 * (id_ - 1) + 1
    if type_ == "deal":
        return 4 * (id_ - 1) + 3
    raise ValueError(f"unknown record type {type_!r}")


def _timestamp(day: int, second: int) -> str:
    hours, rest = divmod(second, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{_DAYS[day]}T{hours:02d}:{minutes:02d}:{seconds:02d}Z"


def _stamps(d: _Digits) -> tuple[str, str]:
    created_day = d.pick(_CREATED_SPAN_DAYS)
    updated_day = created_day + d.pick(_UPDATED_SPAN_DAYS)
    return _timestamp(created_day, d.pick(_DAY_SECONDS)), _timestamp(
        updated_day, d.pick(_DAY_SECONDS)
    )


def _address(d: _Digits) -> dict[str, Any]:
    city, country = _CITIES[d.pick(len(_CITIES))]
    number = d.pick(300) + 1
    street = _STREETS[d.pick(len(_STREETS))]
    return {
        "line1": None if d.chance(8) else f"{number} {street}",
        "city": city,
        # Zero-padded on purpose: replicas that coerce postal codes to integers lose data.
        "postal_code": f"{d.pick(100_000):05d}",
        "country": country,
    }


def _custom_fields(d: _Digits) -> dict[str, Any]:
    tier = d.pick(len(_TIERS) + 1)
    return {"tier": _TIERS[tier] if tier < len(_TIERS) else None, "score": d.pick(101)}


def _tags(d: _Digits) -> list[str]:
    first = d.pick(len(_TAGS))
    step = d.pick(len(_TAGS) - 1) + 1
    return [_TAGS[(first + k * step) % len(_TAGS)] for k in range(d.pick(4))]


def _phone(d: _Digits) -> str | None:
    if d.chance(12):
        return None
    return f"+{d.pick(90) + 1} {d.pick(1000):03d} {d.pick(10_000):04d}"


def _contact(id_: int, d: _Digits) -> dict[str, Any]:
    first, first_slug = _FIRST_NAMES[d.pick(len(_FIRST_NAMES))]
    last, last_slug = _LAST_NAMES[d.pick(len(_LAST_NAMES))]
    company, company_slug = _COMPANIES[d.pick(len(_COMPANIES))]
    domain = _DOMAINS[d.pick(len(_DOMAINS))]
    is_organization = d.chance(15)
    created_at, updated_at = _stamps(d)
    if is_organization:
        name, first_name, last_name = company, None, None
        email: str | None = f"info{id_}@{company_slug}.{domain}"
    else:
        name, first_name, last_name = f"{first} {last}", first, last
        email = f"{first_slug}.{last_slug}{id_}@{domain}"
    return {
        "id": id_,
        "name": name,
        "first_name": first_name,
        "last_name": last_name,
        "email": None if d.chance(5) else email,
        "phone": _phone(d),
        "is_organization": is_organization,
        "customer_status": _CUSTOMER_STATUSES[d.pick(len(_CUSTOMER_STATUSES))],
        "address": _address(d),
        "custom_fields": _custom_fields(d),
        "tags": _tags(d),
        "owner_id": d.pick(20) + 1,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _lead(id_: int, d: _Digits) -> dict[str, Any]:
    first, first_slug = _FIRST_NAMES[d.pick(len(_FIRST_NAMES))]
    last, last_slug = _LAST_NAMES[d.pick(len(_LAST_NAMES))]
    company, _ = _COMPANIES[d.pick(len(_COMPANIES))]
    title = d.pick(len(_TITLES) + 1)
    created_at, updated_at = _stamps(d)
    return {
        "id": id_,
        "first_name": first,
        "last_name": last,
        "organization_name": company,
        "title": _TITLES[title] if title < len(_TITLES) else None,
        "status": _LEAD_STATUSES[d.pick(len(_LEAD_STATUSES))],
        "source_id": d.pick(12) + 1,
        "email": f"{first_slug}.{last_slug}.lead{id_}@{_DOMAINS[d.pick(len(_DOMAINS))]}",
        "phone": _phone(d),
        "address": _address(d),
        "custom_fields": _custom_fields(d),
        "tags": _tags(d),
        "owner_id": d.pick(20) + 1,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _deal(id_: int, d: _Digits, contacts: int) -> dict[str, Any]:
    product = _PRODUCTS[d.pick(len(_PRODUCTS))]
    company, _ = _COMPANIES[d.pick(len(_COMPANIES))]
    whole = d.pick(200_000) + 100
    cents = d.pick(4)
    # Mix integral and fractional amounts: replicas must not truncate either kind.
    value: float | int = whole + cents / 4 if cents else whole
    close_day = d.pick(_CREATED_SPAN_DAYS + 365)
    created_at, updated_at = _stamps(d)
    return {
        "id": id_,
        "name": f"{product} for {company}",
        "value": value,
        "currency": _CURRENCIES[d.pick(len(_CURRENCIES))],
        "stage_id": d.pick(7) + 1,
        "contact_id": d.pick(contacts) + 1 if contacts else None,
        "hot": d.chance(20),
        "estimated_close_date": None if d.chance(10) else _DAYS[close_day],
        "custom_fields": _custom_fields(d),
        "tags": _tags(d),
        "owner_id": d.pick(20) + 1,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def fake_record(type_: str, id_: int, *, salt: str, contacts: int) -> dict[str, Any]:
    """A realistic record of ``type_`` with id ``id_``, a pure function of its arguments.

    Deals point at a contact id in ``1 .. contacts`` (None when there are none).
    """
    if type_ not in TYPES:
        raise ValueError(f"unknown record type {type_!r}")
    digest = hashlib.blake2b(f"{salt}|{type_}|{id_}".encode(), digest_size=64).digest()
    digits = _Digits(int.from_bytes(digest, "little"))
    if type_ == "contact":
        return _contact(id_, digits)
    if type_ == "lead":
        return _lead(id_, digits)
    return _deal(id_, digits, contacts)


class Dataset:
    """The records of one ``(records, seed)`` account, each rebuilt on demand."""

    def __init__(self, records: int, seed: int) -> None:
        if records < 0:
            raise ValueError("records must be >= 0")
        self.records = records
        self.seed = seed
        self.counts = type_counts(records)
        self._salt = f"replicad-emulator|{seed}"

    def contains(self, type_: str, id_: int) -> bool:
        """Whether ``(type_, id_)`` is one of the generated records."""
        return 1 <= id_ <= self.counts.get(type_, 0)

    def record(self, type_: str, id_: int) -> dict[str, Any]:
        """A fresh dict holding record ``(type_, id_)``; ``KeyError`` if it is not generated."""
        if not self.contains(type_, id_):
            raise KeyError((type_, id_))
        return fake_record(type_, id_, salt=self._salt, contacts=self.counts["contact"])

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for index in range(self.records):
            type_, id_ = locate(index)
            yield type_, self.record(type_, id_)


def generate(records: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(type, data)`` for every record of the ``(records, seed)`` dataset, by index."""
    return iter(Dataset(records, seed))
