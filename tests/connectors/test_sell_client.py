"""Sell Sync API client over httpx.MockTransport: statuses, retries, envelopes, auth."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import httpx
import pytest

from replicad.connectors.errors import AuthRefused, RemoteRefused, RemoteUnreachable
from replicad.connectors.ratelimit import Rate, TokenBucket
from replicad.connectors.retry import RetryPolicy
from replicad.connectors.sell import SellClient, SellSettings
from replicad.connectors.sell_protocol import ProtocolError, decode_page

TOKEN = "t" * 64
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


def client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> SellClient:
    settings = SellSettings(
        base_url="https://sell.test", token=TOKEN, device_uuid="dev-1", retry=FAST
    )
    return SellClient(settings, transport=httpx.MockTransport(handler), rng=random.Random(1), **kw)  # type: ignore[arg-type]


def page(items: list[object], left: int = 0, failed: list[object] | None = None) -> object:
    meta = {"type": "collection", "count": len(items), "count_left": left}
    return {"items": items, "meta": {**meta, "failed_objects": failed or []}}


def item(id_: int, rev: int, type_: str = "contact") -> dict[str, object]:
    sync = {"event_type": "updated", "ack_key": f"C-{id_}-{rev}", "revision": rev}
    return {"data": {"id": id_, "name": "n"}, "meta": {"type": type_, "sync": sync}}


async def test_headers_on_every_request() -> None:
    """Bearer token, device UUID and Accept are sent; start 201 yields the session."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        queues = [{"data": {"name": "main", "pages": 3, "total_count": 250}}]
        return httpx.Response(201, json={"data": {"id": "s1", "queues": queues}})

    async with client(handler) as c:
        session = await c.start()
    assert session is not None and session.id == "s1" and session.total_count == 250
    req = seen[0]
    assert req.url == "https://sell.test/v2/sync/start" and req.method == "POST"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["X-Basecrm-Device-UUID"] == "dev-1"
    assert req.headers["Accept"] == "application/json"


async def test_start_204_means_nothing_new() -> None:
    """A 204 on start means there is nothing to synchronize."""
    async with client(lambda r: httpx.Response(204)) as c:
        assert await c.start() is None


async def test_empty_200_page_is_not_the_end() -> None:
    """An empty 200 page is a page; only 204 ends the session."""
    answers = [httpx.Response(200, json=page([], left=1)), httpx.Response(204)]
    async with client(lambda r: answers.pop(0)) as c:
        first, _ = await c.fetch("s1")
        assert first is not None and decode_page(first).count == 0
        last, _ = await c.fetch("s1")
        assert last is None


async def test_page_items_parsed_and_failed_objects_kept() -> None:
    """Items become changes, deletes are detected, failed_objects are kept."""
    deleted = {
        "data": {"id": 3},
        "meta": {"type": "contact", "sync": {"event_type": "deleted", "ack_key": "C-3-0",
                                             "revision": 0}},
    }  # fmt: skip
    body = page([item(1, 5), deleted, ["junk"]], left=7, failed=[{"type": "deal", "id": 9}])
    async with client(lambda r: httpx.Response(200, json=body)) as c:
        raw, lossy = await c.fetch("s1")
    assert raw is not None and not lossy
    got = decode_page(raw)
    assert got.count_left == 7
    assert [(x.id, x.deleted) for x in got.batch.changes] == [(1, False), (3, True)]
    assert got.batch.bad_items[0].reason == "item is not an object"
    assert got.batch.failed_objects[0].id == "9"


async def test_ack_envelope() -> None:
    """Acks are sent in the data envelope."""
    bodies: list[object] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(req.content))
        return httpx.Response(202, json={})

    async with client(handler) as c:
        await c.ack(["a", "b"])
    assert bodies == [{"data": {"ack_keys": ["a", "b"]}}]


async def test_retry_after_is_honoured_on_429() -> None:
    """A 429 waits Retry-After, then the request succeeds."""
    answers = [httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(204)]
    async with client(lambda r: answers.pop(0)) as c:
        assert await c.start() is None
        assert c.stats.retries == 1


async def test_5xx_retried_then_gives_up() -> None:
    """5xx answers are retried a bounded number of times, then RemoteUnreachable."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return httpx.Response(503, json={"errors": []})

    async with client(handler) as c:
        with pytest.raises(RemoteUnreachable, match="gave up after 3 retries"):
            await c.start()
    assert len(calls) == 4


async def test_network_error_marks_fetch_lossy() -> None:
    """A fetch retried after a transport error reports that a page may be lost."""
    answers: list[object] = [httpx.ReadError("reset"), httpx.Response(204)]

    def handler(req: httpx.Request) -> httpx.Response:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        assert isinstance(a, httpx.Response)
        return a

    async with client(handler) as c:
        got, lossy = await c.fetch("s1")
    assert got is None and lossy


async def test_malformed_bodies_are_protocol_errors_of_the_page() -> None:
    """fetch hands over the body as it came; decoding it says what is wrong (the pull
    then treats the page as lost, see tests/unit/test_pull_pages.py)."""
    bodies = [
        b'{"items": [{"da',
        b"",
        b'{"nope": 1}',
        b'{"items": {}}',
        b'{"items": [], "meta": {"failed_objects": 5}}',
        b"[" * 100_000,  # nested too deep for json to decode
    ]
    answers = [httpx.Response(200, content=b) for b in bodies]
    async with client(lambda r: answers.pop(0)) as c:
        for body in bodies:
            raw, lossy = await c.fetch("s1")
            assert raw == body and not lossy
            with pytest.raises(ProtocolError):
                decode_page(raw)


async def test_unexpected_queue_status_is_a_protocol_error() -> None:
    """A 2xx other than 200/204 from the queue is not something the Sync API sends."""
    async with client(lambda r: httpx.Response(202, json={})) as c:
        with pytest.raises(ProtocolError, match="unexpected status 202"):
            await c.fetch("s1")


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refused_names_scope(status: int) -> None:
    """401/403 become AuthRefused with the envelope's message and no token."""
    envelope = {
        "errors": [{"error": {"code": "unauthorized", "message": "Invalid token"}}],
        "meta": {"type": "errors", "http_status": f"{status}"},
    }
    async with client(lambda r: httpx.Response(status, json=envelope)) as c:
        with pytest.raises(AuthRefused) as info:
            await c.start()
    assert "sync scope" in str(info.value) and "Invalid token" in str(info.value)
    assert TOKEN not in str(info.value)


async def test_other_4xx_is_refused_with_envelope() -> None:
    """A 422 is not retried and carries Sell's error message."""
    envelope = {"errors": [{"error": {"code": "invalid", "message": "bad keys"}}]}
    async with client(lambda r: httpx.Response(422, json=envelope)) as c:
        with pytest.raises(RemoteRefused, match="bad keys"):
            await c.ack(["x"])


def test_token_bucket_allows_burst_then_paces() -> None:
    """The bucket lets a full burst through, then paces requests."""
    now = [0.0]
    bucket = TokenBucket(Rate(3, 1.0), clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(1.0)  # the window: 3 per second at most
    now[0] += 10.0
    assert bucket.reserve() == 0.0


async def test_a_bucket_tells_of_its_waits_at_most_every_few_seconds() -> None:
    """Waits for the budget are told to on_wait before they start (so the daemon can
    say the budget sets the pace), at most once per NOTICE_EVERY; the time on_wait
    takes is part of the wait, not added to it."""
    from replicad.connectors.ratelimit import NOTICE_EVERY

    told: list[float] = []

    async def on_wait(seconds: float) -> None:
        told.append(seconds)

    bucket = TokenBucket(Rate(2, 0.1))  # 20 per second, a burst of 2
    bucket.on_wait = on_wait
    for _ in range(6):
        await bucket.acquire()
    assert len(told) == 1 and 0 < told[0] <= 0.1
    assert bucket.waited > 0.1
    assert NOTICE_EVERY > 0.5  # the four waits here fall within one notice period


def test_sell_default_budget_never_exceeds_an_hour() -> None:
    """With Sell's default, a burst runs at once and no hour admits over 36,000."""
    from bisect import bisect_right

    from replicad.connectors.ratelimit import SELL_DEFAULT, parse_rate

    rate = parse_rate(SELL_DEFAULT)
    assert rate.capacity == 36000 and rate.per_second == 10.0
    now = [0.0]
    bucket = TokenBucket(rate, clock=lambda: now[0])
    times = []
    while now[0] < 3 * 3600.0:
        now[0] += bucket.reserve()
        times.append(now[0])
    assert times[35999] == 0.0  # the whole burst without waiting
    worst = max(i - bisect_right(times, t - 3600.0) + 1 for i, t in enumerate(times))
    assert worst <= 36000


def test_budget_carries_across_a_restart_and_no_hour_exceeds_it() -> None:
    """A process that ran 36,000 requests in a burst and stopped: the next one, started
    at once from the saved state, may not send until the hour frees them; in any hour
    spanning both processes at most 36,000 go out."""
    from bisect import bisect_right

    from replicad.connectors.ratelimit import SELL_DEFAULT, STATE_SLOT, parse_rate

    rate = parse_rate(SELL_DEFAULT)
    first_clock, wall = [100.0], 1_000_000.0
    first = TokenBucket(rate, clock=lambda: first_clock[0])
    sends = []
    for _ in range(36000):
        first_clock[0] += first.reserve()
        sends.append(wall + first_clock[0] - 100.0)
    state = json.loads(json.dumps(first.state(wall)))  # as kept in the replica
    assert sum(n for _, n in state["sent"]) == 36000

    # Another process, another monotonic clock, 5 minutes later by the wall clock.
    later = wall + 300.0
    second_clock = [7.0]
    second = TokenBucket(rate, clock=lambda: second_clock[0])
    assert second.restore(state, later)
    first_wait = second.reserve()
    assert 3600.0 - 300.0 <= first_wait <= 3600.0 - 300.0 + STATE_SLOT
    second_clock[0] += first_wait
    sends.append(later + first_wait)
    while second_clock[0] < 7.0 + 2 * 3600.0:
        second_clock[0] += second.reserve()
        sends.append(later + second_clock[0] - 7.0)
    worst = max(i - bisect_right(sends, t - 3600.0) + 1 for i, t in enumerate(sends))
    assert worst <= 36000


def test_budget_state_that_is_not_one_is_ignored() -> None:
    """A damaged saved state leaves a fresh bucket as it is."""
    bucket = TokenBucket(Rate(3, 1.0), clock=lambda: 0.0)
    for bad in (None, {}, {"at": "x", "tokens": 1, "sent": []}, {"at": 1, "tokens": 1},
                {"at": float("nan"), "tokens": 1, "sent": []}, [1, 2]):  # fmt: skip
        assert not bucket.restore(bad, 10.0)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]


async def test_queue_fetch_follows_the_session_and_keeps_headers() -> None:
    """The queue GET is built once per session: a new session id means a new URL, and
    every send carries the same headers."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=page([item(len(seen), 1)]))

    async with client(handler) as c:
        for session in ("s1", "s1", "s2", "s1"):
            await c.fetch(session)
    assert [r.url.path for r in seen] == [
        "/v2/sync/s1/queues/main",
        "/v2/sync/s1/queues/main",
        "/v2/sync/s2/queues/main",
        "/v2/sync/s1/queues/main",
    ]
    assert all(r.headers["X-Basecrm-Device-UUID"] == "dev-1" for r in seen)
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in seen)


async def test_retried_ack_resends_the_same_body() -> None:
    """A request rebuilt once and sent again after a 503 carries its body again."""
    bodies: list[bytes] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.read())
        return httpx.Response(503 if len(bodies) == 1 else 202, json={})

    async with client(handler) as c:
        await c.ack(["a"])
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert json.loads(bodies[1]) == {"data": {"ack_keys": ["a"]}}


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"OK"),
        httpx.Response(202, content=b"<html>accepted</html>"),
        httpx.Response(204),
        httpx.Response(200, content=b'{"data": {'),
    ],
)
async def test_any_2xx_to_an_ack_is_success(answer: httpx.Response) -> None:
    """An ack answered with any 2xx succeeds at once, whatever its body."""
    calls: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return answer

    async with client(handler) as c:
        await c.ack(["k"])
        assert c.stats.retries == 0
    assert len(calls) == 1


async def test_truncated_start_answer_is_retried() -> None:
    """A 2xx start whose body is cut short is sent again, not taken as a session."""
    answers = [httpx.Response(201, content=b'{"data": {"id"'), httpx.Response(204)]
    async with client(lambda r: answers.pop(0)) as c:
        assert await c.start() is None
        assert c.stats.retries == 1


async def test_server_echo_of_the_token_is_redacted() -> None:
    """A refusal whose message echoes the Authorization header never carries the token."""
    body = {"errors": [{"error": {"code": "x", "message": f"bad header Bearer {TOKEN}"}}]}
    async with client(lambda r: httpx.Response(422, json=body)) as c:
        with pytest.raises(RemoteRefused) as caught:
            await c.ack(["k"])
    assert TOKEN not in str(caught.value) and "bad header Bearer ***" in str(caught.value)
