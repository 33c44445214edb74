"""When and how long to retry a request: jittered exponential backoff, Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from replicad.connectors.errors import RemoteUnreachable

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff (half to all of the step)."""

    max_retries: int = 6
    base: float = 0.5
    cap: float = 30.0
    # A Retry-After longer than this is treated as an outage: give up this cycle.
    max_retry_after: float = 300.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        upper = min(self.cap, self.base * (2 ** (attempt - 1)))
        return (rng or random).uniform(upper / 2, upper)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if valid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def checked_retry_after(value: str | None, policy: RetryPolicy, what: str) -> float | None:
    """The Retry-After delay to honour; one longer than the policy allows is an outage."""
    delay = retry_after(value)
    if delay is not None and delay > policy.max_retry_after:
        raise RemoteUnreachable(f"{what}: remote asks to wait {delay:.0f}s (Retry-After)")
    return delay


def next_wait(
    policy: RetryPolicy,
    attempt: int,
    delay: float | None,
    rng: random.Random,
    what: str,
    reason: str,
) -> float:
    """Seconds before retry number ``attempt``: Retry-After if given, else backoff;
    past the policy's retries, give up."""
    if attempt > policy.max_retries:
        raise RemoteUnreachable(
            f"{what}: gave up after {policy.max_retries} retries (last: {reason})"
        )
    return delay if delay is not None else policy.backoff(attempt, rng)
