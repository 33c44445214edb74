"""The emulator's shared runtime objects: state, pushes, faults, request statistics, token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import Request

from replicad.connectors.emulator.faults import SELL_ENDPOINTS, FaultPlan
from replicad.connectors.emulator.push_state import PushState
from replicad.connectors.emulator.records import RecordStore
from replicad.connectors.emulator.state import DEFAULT_PAGE_SIZE, DEFAULT_SESSION_TTL, SyncState

# How the emulator answers where the seeds leave the wire open (docs/push-wire.md):
# "standard" is the reading the docs fix; "variant" answers in the other legal ways
# (201/202 transfers without "success", no errors list, numeric meta.next, CDM writes
# answered 202/204 and deletes 204 without body or tracking echo, acks answered with
# plain text).
PROFILES: Final = ("standard", "variant")

# The real basecrm client rejects tokens that are not exactly 64 characters long.
# Not a secret: the emulator only ever serves generated data on loopback.
DEFAULT_TOKEN: Final = "replicad-emulator-access-token-e93da5ac2b8ef2e5b68e4bed8cfd24aac"  # noqa: S105


def _zero_requests() -> dict[str, int]:
    return dict.fromkeys(SELL_ENDPOINTS, 0)


@dataclass(slots=True)
class Stats:
    """Counters reported by ``GET /_emulator/stats``.

    ``requests`` always holds the Sell endpoints; a push endpoint appears with its
    first request, so accounts that are only pulled from report what they always did.
    """

    requests: dict[str, int] = field(default_factory=_zero_requests)
    acked_keys: int = 0
    ack_keys_applied: int = 0
    sessions_started: int = 0

    def count(self, endpoint: str) -> None:
        """Count one request to ``endpoint``."""
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1

    def reset(self) -> None:
        """Zero every counter."""
        self.requests = _zero_requests()
        self.acked_keys = 0
        self.ack_keys_applied = 0
        self.sessions_started = 0


@dataclass(slots=True)
class Emulator:
    """Everything one emulator app instance serves from."""

    state: SyncState
    token: str
    profile: str = "standard"
    faults: FaultPlan = field(default_factory=FaultPlan)
    stats: Stats = field(default_factory=Stats)
    pushes: PushState = field(init=False)

    def __post_init__(self) -> None:
        # Pushes write through the same SyncState that the Sell routes serve.
        self.pushes = PushState(self.state)

    @classmethod
    def build(
        cls,
        *,
        records: int,
        seed: int,
        token: str,
        page_size: int = DEFAULT_PAGE_SIZE,
        session_ttl: float = DEFAULT_SESSION_TTL,
        profile: str = "standard",
    ) -> Emulator:
        """A fresh account of ``records`` seeded records."""
        if not token or any(ch.isspace() for ch in token):
            raise ValueError("token must be non-empty and contain no whitespace")
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
        store = RecordStore(records, seed)
        state = SyncState(store, page_size=page_size, session_ttl=session_ttl)
        return cls(state=state, token=token, profile=profile)

    @property
    def variant(self) -> bool:
        """Whether the emulator answers in the variant profile's ways."""
        return self.profile == "variant"

    def stats_json(self) -> dict[str, Any]:
        """The body of ``GET /_emulator/stats``."""
        return {
            "requests": dict(self.stats.requests),
            "acked_keys": self.stats.acked_keys,
            "ack_keys_applied": self.stats.ack_keys_applied,
            "sessions_started": self.stats.sessions_started,
            "devices": {
                device: {
                    "queued": self.state.queued(device),
                    "active_sessions": self.state.active_sessions(device),
                }
                for device in self.state.devices()
            },
        }


def has_token(request: Request, token: str) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <token>``."""
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    # compare_digest keeps the check constant-time; the token is never echoed.
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


def emulator_of(request: Request) -> Emulator:
    """The :class:`Emulator` behind the app serving ``request``."""
    emulator: Emulator = request.app.state.emulator
    return emulator
