"""A client-side token bucket that models the remote's request budget.

Sell allows 36,000 requests per hour per token: a bucket of 36,000 that refills at
10 per second lets bursts run at full speed. A bucket alone would admit a full burst
plus an hour of refill within the first hour, so a sliding window of the last
``period`` seconds also holds every hour to the budget.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

SELL_DEFAULT = "36000/h"
# Waits for the budget are told to ``TokenBucket.on_wait`` at most this often (a
# budget that paces requests makes each wait short, one after another).
NOTICE_EVERY = 5.0
# Granularity (seconds) of the request window carried across processes.
STATE_SLOT = 10
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """A budget of ``capacity`` requests per ``period`` seconds."""

    capacity: int
    period: float

    @property
    def per_second(self) -> float:
        """The steady refill rate."""
        return self.capacity / self.period


def parse_rate(text: str) -> Rate:
    """Parse ``"36000/h"``, ``"10/s"`` or ``"600/m"``; raise ValueError otherwise."""
    m = _RATE_RE.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate like '36000/h', '600/m' or '10/s'")
    return Rate(int(m.group(1)), _UNITS[m.group(2)])


class TokenBucket:
    """Full at start; each request takes a token; tokens refill continuously."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate.capacity)
        self._stamp = clock()
        # Send times of the requests within the last period (sliding window).
        self._sent: deque[float] = deque()
        # Told, before it starts, of a wait for the budget (at most every NOTICE_EVERY
        # seconds): the daemon shows that the budget, not the network or the CPU, sets
        # the pace.
        self.on_wait: Callable[[float], Awaitable[None]] | None = None
        self.waited = 0.0  # seconds spent waiting for the budget, in all
        self._noticed = -math.inf

    @property
    def per_second(self) -> float:
        """Requests per second the budget allows in the long run."""
        return self.rate.per_second

    def _refill(self) -> None:
        now = self._clock()
        gained = (now - self._stamp) * self.rate.per_second
        self._tokens = min(float(self.rate.capacity), self._tokens + gained)
        self._stamp = now

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it (0 if available)."""
        self._refill()
        self._tokens -= 1.0
        delay = 0.0 if self._tokens >= 0 else -self._tokens / self.rate.per_second
        now = self._stamp
        while self._sent and self._sent[0] <= now - self.rate.period:
            self._sent.popleft()
        if len(self._sent) >= self.rate.capacity:
            oldest = self._sent[len(self._sent) - self.rate.capacity]
            delay = max(delay, oldest + self.rate.period - now)
        self._sent.append(now + delay)
        return delay

    def state(self, wall: float) -> dict[str, Any]:
        """What a later process needs to keep honouring the budget: the tokens left,
        and the requests of the last period counted per slot of wall-clock time.

        ``wall`` is the wall-clock time now (seconds since the epoch); the bucket's own
        clock is monotonic, which does not carry across processes. A request counts
        at the end of its slot, so a restored window never frees a request early.
        """
        self._refill()
        now = self._stamp
        slots: dict[int, int] = {}
        for sent in self._sent:
            if sent > now - self.rate.period:
                slot = math.ceil((wall + sent - now) / STATE_SLOT) * STATE_SLOT
                slots[slot] = slots.get(slot, 0) + 1
        return {"at": wall, "tokens": self._tokens, "sent": sorted(slots.items())}

    def restore(self, state: Any, wall: float) -> bool:
        """Take over a saved ``state`` (see ``state``) at wall-clock time ``wall``;
        False, changing nothing, if it is not one."""
        try:
            at, tokens = float(state["at"]), float(state["tokens"])
            slots = [(float(slot), int(n)) for slot, n in state["sent"]]
        except (KeyError, TypeError, ValueError):
            return False
        if not (math.isfinite(at) and math.isfinite(tokens)):
            return False
        now = self._clock()
        capacity = float(self.rate.capacity)
        # Refilled for the time in between (none if the wall clock went back).
        self._tokens = max(
            -capacity, min(capacity, tokens + max(0.0, wall - at) * self.rate.per_second)
        )
        self._stamp = now
        sent: list[float] = []
        for slot, n in slots:
            at_mono = now - (wall - slot)
            if at_mono > now - self.rate.period and 0 < n <= self.rate.capacity:
                sent.extend([at_mono] * n)
        self._sent = deque(sorted(sent)[-self.rate.capacity :])
        return True

    async def acquire(self) -> None:
        """Wait until a request may be sent."""
        delay = self.reserve()
        if delay <= 0:
            return
        self.waited += delay
        now = self._clock()
        if self.on_wait is not None and now - self._noticed >= NOTICE_EVERY:
            self._noticed = now
            await self.on_wait(delay)
            delay -= self._clock() - now
        if delay > 0:
            await anyio.sleep(delay)
