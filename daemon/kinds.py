"""The registry of connection kinds: what each is for, what it takes, how it is built.

Config validation, the engine, ``validate`` and the supervisor consult this table and
nothing else about a kind. Adding a kind touches this registry and the kind's own
connector module. Client modules are imported only when a client is built, so a
command that never talks to a push destination never loads its code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replicad.connectors.ratelimit import SELL_DEFAULT, TokenBucket
from replicad.connectors.retry import RetryPolicy

if TYPE_CHECKING:
    from replicad.connectors.pull_model import PullConnector
    from replicad.connectors.push_model import PushConnector
    from replicad.connectors.sell import SellClient
    from replicad.daemon.config import Connection, Sync

# The last argument: the connection's rate budget, shared by every push sync on it.
PushFactory = Callable[
    ["Connection", "Sync", str, RetryPolicy, "TokenBucket | None"], "PushConnector"
]
PullFactory = Callable[["Connection", str, str, RetryPolicy], "PullConnector"]


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of connection."""

    name: str
    direction: str | None  # "pull" or "push"; None: reserved, not usable yet
    # Connection keys only this kind takes, and those among them it requires.
    connection_keys: frozenset[str] = frozenset()
    required_keys: frozenset[str] = frozenset()
    # Sync keys only this kind takes.
    sync_keys: frozenset[str] = frozenset()
    # Whether a push sends several entries per request (else one per batch: a write
    # whose answer is the only proof it arrived must never be in flight unsent).
    batches: bool = False
    # Whether an update names the record by its remote id (not by our internal id):
    # an edit of a row whose create was accepted without an id then waits for it.
    updates_need_id: bool = False
    # Whether a create may land on a record the destination already has (it upserts
    # by its own matching), unless the sync disables that: the record a create
    # accepted without an id made may then be one the replica held before.
    creates_may_merge: bool = False
    default_rate_limit: str | None = None
    # The path the client appends to base_url (a base_url ending with it is a mistake).
    appended_path: str = ""
    # Push operations this destination can carry out, and why it cannot the others
    # (config refuses a sync asking for one, with that reason).
    push_operations: frozenset[str] = frozenset()
    # Pull: the types this remote is known to send (a name close to one of them but
    # not equal is taken for a typo in ``types``).
    known_types: tuple[str, ...] = ()
    cannot: tuple[tuple[str, str], ...] = ()
    pull_client: PullFactory | None = None
    push_client: PushFactory | None = None


def _sell_client(conn: Connection, device_uuid: str, token: str, retry: RetryPolicy) -> SellClient:
    from replicad.connectors.sell import SellClient, SellSettings

    return SellClient(
        SellSettings(
            base_url=conn.base_url,
            token=token,
            device_uuid=device_uuid,
            ack_batch=conn.ack_batch,
            rate_limit=conn.rate_limit or SELL.default_rate_limit,
            timeout=conn.timeout,
            retry=retry,
        )
    )


def _endgrate_client(
    conn: Connection, sync: Sync, token: str, retry: RetryPolicy, bucket: TokenBucket | None
) -> PushConnector:
    from replicad.connectors.endgrate import EndgrateClient, EndgrateSettings

    assert conn.session_id is not None  # required_keys
    return EndgrateClient(
        EndgrateSettings(
            base_url=conn.base_url,
            token=token,
            session_id=conn.session_id,
            # insert and append create, never merge into a record the destination has.
            disable_upsert=sync.disable_upsert or sync.operation in ("insert", "append"),
            sample_data=sync.sample_data,
            timeout=conn.timeout,
            retry=retry,
            rate_limit=conn.rate_limit,
        ),
        bucket=bucket,
    )


def _cdm_client(
    conn: Connection, sync: Sync, token: str, retry: RetryPolicy, bucket: TokenBucket | None
) -> PushConnector:
    from replicad.connectors.cdm import CdmClient, CdmSettings

    return CdmClient(
        CdmSettings(
            base_url=conn.base_url,
            token=token,
            push_to_source=sync.push_to_source,
            sources=sync.sources,
            natural_key=sync.natural_key,
            timeout=conn.timeout,
            retry=retry,
            rate_limit=conn.rate_limit,
        ),
        bucket=bucket,
    )


# The types Sell's Sync API sends (for spotting typos in a pull's ``types``).
SELL_TYPES = (
    "account", "associated_contact", "call", "call_outcome", "collaboration", "contact",
    "deal", "deal_source", "deal_unqualified_reason", "lead", "lead_source",
    "lead_unqualified_reason", "line_item", "loss_reason", "note", "order", "pipeline",
    "product", "source", "stage", "tag", "task", "text_message", "user", "visit",
    "visit_outcome",
)  # fmt: skip

SELL = Kind(
    "sell",
    "pull",
    connection_keys=frozenset({"device_uuid", "ack_batch"}),
    default_rate_limit=SELL_DEFAULT,  # Sell's documented budget per token
    appended_path="/v2",
    known_types=SELL_TYPES,
    pull_client=_sell_client,
)
ENDGRATE = Kind(
    "endgrate",
    "push",
    connection_keys=frozenset({"session_id"}),
    required_keys=frozenset({"session_id"}),
    sync_keys=frozenset({"disable_upsert", "sample_data", "associations", "batch_size"}),
    batches=True,
    creates_may_merge=True,  # transfers upsert unless disable_upsert
    push_operations=frozenset({"upsert", "insert", "append"}),
    cannot=(
        ("mirror", "Endgrate push transfers cannot delete records (its API has no delete)"),
        (
            "update",
            "an Endgrate transfer creates or upserts; it cannot change only records the "
            "destination already has",
        ),
    ),
    push_client=_endgrate_client,
)
CDM = Kind(
    "cdm",
    "push",
    sync_keys=frozenset({"push_to_source", "sources", "natural_key"}),
    # DELETE api/{object}/{id} makes mirror possible; updates by id or by lookup.
    push_operations=frozenset({"mirror", "upsert", "insert", "update", "append"}),
    updates_need_id=True,
    push_client=_cdm_client,
)
REST = Kind("rest", None)

KINDS: dict[str, Kind] = {k.name: k for k in (SELL, ENDGRATE, CDM, REST)}


def kinds_for(direction: str) -> list[str]:
    """Names of the kinds a sync of ``direction`` can use."""
    return [k.name for k in KINDS.values() if k.direction == direction]


def kind_only_keys() -> frozenset[str]:
    """Sync keys that belong to some kind (checked against the sync's kind)."""
    return frozenset().union(*(k.sync_keys for k in KINDS.values()))
