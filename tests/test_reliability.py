"""Faults, in process: the real Service, dispatcher, adapters and queue against fakes that fail
on cue — 5xx, a connection reset or a read timeout after the platform acted, 429 with
Retry-After, 401/422, a stale worker, a look-up that cannot tell, and a recurring campaign
driven by an injected clock. Every count is taken on the fakes and in the queue."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crosspost.campaigns import load_campaigns
from crosspost.cli import main as cli_main
from crosspost.delivery import AttemptRecord, DeliveryState, PostRecord
from crosspost.dispatcher import Dispatcher, utc_now
from crosspost.errors import NotFound
from crosspost.intake import Intake
from crosspost.post import Post
from crosspost.queue import Queue
from crosspost.scheduler import Service
from crosspost.settings import Settings
from crosspost.targets import load_targets
from platforms import Platforms, running_platforms
from workers_support import (
    REPO,
    assert_each_published_once,
    attempts_by_delivery,
    new_posts,
    wait_until,
    write_targets,
)

S = DeliveryState
SETTLED = {S.PUBLISHED, S.FAILED, S.NEEDS_REVIEW, S.MISSED, S.CANCELLED}
STATUSES = "/api/v1/statuses"


@pytest.fixture
def platforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platforms]:
    with running_platforms(tmp_path) as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


def settings() -> Settings:
    # A 0.5 s HTTP timeout: a fake that hangs for longer is a read timeout.
    return Settings(lease_seconds=5, workers=8, http_timeout=0.5)


class SettableClock:
    """Runs at the wall clock's pace from wherever it was last set."""

    def __init__(self, at: datetime) -> None:
        self.set(at)

    def set(self, at: datetime) -> None:
        self._origin = (at, time.monotonic())

    def __call__(self) -> datetime:
        at, mark = self._origin
        return at + timedelta(seconds=time.monotonic() - mark)


@contextmanager
def running_service(
    queue: Queue, targets_file: Path, clock: SettableClock | None = None
) -> Iterator[Service]:
    targets = load_targets(targets_file)
    campaigns = load_campaigns(REPO / "config" / "campaigns")
    service = Service(settings(), queue, targets, campaigns, clock=clock or utc_now)
    service.start()
    try:
        yield service
    finally:
        service.stop(grace=5)


def queue_posts(queue: Queue, prefix: str, count: int = 1, **options: object) -> list[str]:
    now = datetime.now(UTC)
    batch = new_posts(count, now, prefix=prefix, **options)  # type: ignore[arg-type]
    queue.add_many(batch, now)
    return [p.id for p in batch]


def settled(queue: Queue, *post_ids: str) -> bool:
    return all(d.state in SETTLED for p in post_ids for d in queue.get(p).deliveries)


def delivery(record: PostRecord, target: str):  # type: ignore[no-untyped-def]
    return next(d for d in record.deliveries if d.target == target)


def posts_sent(platforms: Platforms, key: str | None = None) -> list[float]:
    """Arrival times of status POSTs (with Idempotency-Key `key`, if given)."""
    return [
        r.at
        for r in list(platforms.mastodon.requests)
        if r.method == "POST"
        and r.path == STATUSES
        and (key is None or r.headers.get("idempotency-key") == key)
    ]


def feed_requests(platforms: Platforms, method: str) -> int:
    return sum(
        r.method == method and r.path.endswith("/feed") for r in list(platforms.graph.requests)
    )


# -- retried, then delivered exactly once ------------------------------------------------------


def test_5xx_then_success_is_retried_and_published_once(queue: Queue, platforms: Platforms) -> None:
    platforms.mastodon.fail_next("POST", STATUSES, status=503, times=2)
    platforms.graph.fail_next("POST", "/feed", status=500, graph_code=2)
    platforms.website.fail_next(503)
    (post_id,) = queue_posts(queue, "flaky")
    with running_service(queue, platforms.targets_file):
        wait_until(lambda: settled(queue, post_id), 20, "the post settled")
    assert_each_published_once(queue, platforms, 4)
    for attempts in attempts_by_delivery(queue).values():
        assert [a.outcome for a in attempts] == ["transient", "published"], attempts
        assert attempts[0].http_status in (500, 503)


@pytest.mark.parametrize("fault", ["reset", "hang"])
def test_an_answer_lost_after_the_platform_acted_is_delivered_once(
    queue: Queue, platforms: Platforms, fault: str
) -> None:
    # "hang" answers nothing for longer than the 0.5 s HTTP timeout: a read timeout.
    delay = 1.5 if fault == "hang" else 0.0
    platforms.mastodon.fail_next(
        "POST", STATUSES, fault=fault, delay=delay, after_create=True, times=2
    )
    platforms.graph.fail_next("POST", "/feed", fault=fault, delay=delay, after_create=True)
    platforms.website.fail_next(fault=fault, delay=delay, after_store=True)
    (post_id,) = queue_posts(queue, f"lost-{fault}")
    with running_service(queue, platforms.targets_file):
        wait_until(lambda: settled(queue, post_id), 30, "the post settled")
    report = assert_each_published_once(queue, platforms, 4)
    # Mastodon and the website were sent the same key again; Facebook was looked up instead.
    assert report.repeated_keys == 2 and report.website_repeats == 1 and report.found == 1
    assert feed_requests(platforms, "POST") == 1
    for attempts in attempts_by_delivery(queue).values():
        assert attempts[0].outcome == "outcome-unknown", attempts
        assert len(attempts) == 2


def test_429_with_retry_after_sends_nothing_to_that_target_before_then(
    queue: Queue, platforms: Platforms, tmp_path: Path
) -> None:
    # One publish at a time, so the other posts are waiting in the worker when the 429 comes.
    targets_file = write_targets(platforms, tmp_path, concurrency=1)
    platforms.mastodon.fail_next("POST", STATUSES, status=429, headers={"Retry-After": "2"})
    post_ids = queue_posts(queue, "limited", 3, targets=["mastodon-en"])
    with running_service(queue, targets_file):
        wait_until(lambda: settled(queue, *post_ids), 30, "the posts settled")
    assert_each_published_once(queue, platforms, 3)
    limited, *later = posts_sent(platforms)
    assert len(later) == 3
    assert min(later) >= limited + 2, [t - limited for t in later]
    outcomes = sorted(
        [a.outcome for a in attempts] for attempts in attempts_by_delivery(queue).values()
    )
    assert outcomes == [["published"], ["published"], ["rate-limited", "published"]]


# -- refused: failed at once, with the reason; `crosspost retry` re-sends only that --------------


def test_401_and_422_fail_after_one_request_and_retry_requeues_only_the_failed_target(
    queue: Queue, platforms: Platforms, monkeypatch: pytest.MonkeyPatch
) -> None:
    platforms.mastodon.fail_next(
        "POST", STATUSES, status=422, body={"error": "Validation failed: Text can't be blank"}
    )
    (refused,) = queue_posts(queue, "refused", targets=["mastodon-en", "facebook-page", "website"])
    with running_service(queue, platforms.targets_file) as service:
        wait_until(lambda: settled(queue, refused), 20, "the first post settled")
        # Then a token the instance does not know: 401 (read when the adapter is first made).
        monkeypatch.setenv("TEST_MASTODON_ES_TOKEN", "a-revoked-token")
        (revoked,) = queue_posts(queue, "revoked", targets=["mastodon-es"])
        service.wake()
        wait_until(lambda: settled(queue, revoked), 20, "the second post settled")
        time.sleep(1.0)  # four backoffs of this policy: a retry would have happened by now

        record = queue.get(refused)
        toot = delivery(record, "mastodon-en")
        assert toot.state == S.FAILED and toot.attempts == 1
        assert "422" in (toot.last_error or "") and "Text can't be blank" in (toot.last_error or "")
        assert toot.last_error_kind == "permanent"
        assert len(posts_sent(platforms, toot.idempotency_key)) == 1
        assert {d.state for d in record.deliveries if d != toot} == {S.PUBLISHED}
        unauthorised = queue.get(revoked).deliveries[0]
        assert unauthorised.state == S.FAILED and unauthorised.attempts == 1
        assert "401" in (unauthorised.last_error or "")
        assert "a-revoked-token" not in (unauthorised.last_error or "")
        assert len(posts_sent(platforms, unauthorised.idempotency_key)) == 1

        monkeypatch.setenv("CROSSPOST_DATABASE_URL", queue.url)
        monkeypatch.setenv("CROSSPOST_TARGETS", str(platforms.targets_file))
        out = io.StringIO()
        assert cli_main(["retry", refused], out=out) == 0
        assert out.getvalue().startswith(f"{refused}: mastodon-en scheduled again")
        assert "facebook-page" not in out.getvalue() and "website" not in out.getvalue()
        service.wake()
        wait_until(lambda: settled(queue, refused), 20, "the retried post settled")
        assert cli_main(["retry", refused], out=io.StringIO()) == 1  # nothing left to retry
    record = queue.get(refused)
    assert {d.state for d in record.deliveries} == {S.PUBLISHED}
    # The published targets were not sent anything again.
    assert feed_requests(platforms, "POST") == 1
    assert len(platforms.website.requests) == 1 and len(platforms.graph.posted()) == 1
    assert len([s for s in platforms.mastodon.statuses if s.language == "en"]) == 1
    assert [a.outcome for a in queue.attempts(delivery(record, "mastodon-en").id)] == [
        "permanent",
        "published",
    ]


# -- a stale worker ------------------------------------------------------------------------------


def test_a_stale_worker_whose_lease_was_taken_over_changes_nothing_in_the_queue(
    queue: Queue,
) -> None:
    queue_posts(queue, "stale", targets=["mastodon-en"])
    now = datetime.now(UTC)
    (first,) = queue.claim_due("A", now, now + timedelta(seconds=1), 10)
    assert queue.claim_due("B", now, now + timedelta(seconds=1), 10) == []  # still leased
    later = now + timedelta(seconds=2)
    (second,) = queue.claim_due("B", later, later + timedelta(seconds=5), 10)
    assert second.reclaimed and second.delivery.maybe_landed and second.fence > first.fence
    attempt = AttemptRecord(started_at=now, duration_ms=5, outcome="published", remote_id="1")
    assert not queue.renew(first.delivery.id, first.fence, later + timedelta(seconds=9))
    assert not queue.finish(first.delivery.id, first.fence, S.PUBLISHED, attempt, now=later)
    (held,) = queue.get(first.delivery.post_id).deliveries
    assert held.state == S.CLAIMED and held.lease_owner == "B" and held.remote_id is None
    assert queue.attempts(held.id) == []
    assert queue.finish(second.delivery.id, second.fence, S.PUBLISHED, attempt, now=later)
    assert [a.outcome for a in queue.attempts(held.id)] == ["published"]


def test_a_dispatcher_whose_claim_was_taken_over_records_nothing(
    queue: Queue, platforms: Platforms
) -> None:
    targets = load_targets(platforms.targets_file)
    queue_posts(queue, "takeover", targets=["mastodon-en", "website"])
    now = datetime.now(UTC)
    later = now + timedelta(seconds=10)  # after the stale worker's 5 s lease
    stale = Dispatcher(queue, targets, settings(), worker_id="stale", clock=lambda: now)
    fresh = Dispatcher(queue, targets, settings(), worker_id="fresh", clock=lambda: later)
    old_claims = queue.claim_due("stale", now, now + stale.lease, 10)
    new_claims = queue.claim_due("fresh", later, later + fresh.lease, 10)
    assert len(old_claims) == len(new_claims) == 2
    try:
        # The stale worker wakes up from its pause and sends: its results are not recorded.
        assert [stale.deliver(c).state for c in old_claims] == [None, None]
        assert attempts_by_delivery(queue) == {}
        # The new owner re-sends under the same keys: the platforms keep one copy.
        assert [fresh.deliver(c).state for c in new_claims] == [S.PUBLISHED, S.PUBLISHED]
    finally:
        stale.shutdown(0)
        fresh.shutdown(0)
    report = assert_each_published_once(queue, platforms, 2)
    assert report.repeated_keys == 1 and report.website_repeats == 1


# -- a look-up that cannot tell --------------------------------------------------------------------


def test_graph_outcome_unknown_with_a_failing_lookup_goes_to_needs_review_not_reposted(
    queue: Queue, platforms: Platforms
) -> None:
    platforms.graph.fail_next("POST", "/feed", fault="reset", after_create=True)
    for _ in range(10):
        platforms.graph.fail_next("GET", "/feed", status=500, graph_code=2)
    (post_id,) = queue_posts(queue, "unknown", targets=["facebook-page"])
    with running_service(queue, platforms.targets_file):
        wait_until(lambda: settled(queue, post_id), 30, "the post settled")
    (page,) = queue.get(post_id).deliveries
    assert page.state == S.NEEDS_REVIEW, page
    assert page.maybe_landed and "could not tell" in (page.last_error or "")
    # FAST_RETRY allows six attempts: one publish, then five look-ups, and no second post.
    assert feed_requests(platforms, "POST") == 1 and feed_requests(platforms, "GET") == 5
    assert len(platforms.graph.posted()) == 1
    outcomes = [a.outcome for a in queue.attempts(page.id)]
    assert outcomes == ["outcome-unknown", *["transient"] * 5], outcomes


# -- a recurring campaign, on an injected clock ---------------------------------------------


def test_a_published_recurring_campaign_post_queues_next_years_occurrence(
    queue: Queue, platforms: Platforms
) -> None:
    campaigns = load_campaigns(REPO / "config" / "campaigns")
    targets = load_targets(platforms.targets_file)
    clock = SettableClock(datetime(2027, 2, 1, tzinfo=UTC))
    post = Post(
        id="iwd-test",
        text={"en": "International Women's Day {year}: equal pay, equal rights."},
        campaign="international-womens-day",
        targets=["mastodon-en", "website"],
    )
    checked = Intake(targets, settings(), campaigns).check(post, "iwd.yaml", clock())
    assert not checked.problems, checked.problems
    eight_march = datetime(2027, 3, 8, 8, 0, tzinfo=UTC)  # 09:00 in Brussels
    assert set(checked.schedule.values()) == {eight_march}
    queue.add(checked.new_post(), clock())

    clock.set(eight_march - timedelta(seconds=1))
    with running_service(queue, platforms.targets_file, clock) as service:
        wait_until(lambda: settled(queue, "iwd-test"), 20, "the 2027 post published")
        # Each target queues its own next occurrence just after recording its publish.
        wait_until(lambda: _targets_of(queue, "iwd-test@2028") == 2, 5, "2028 queued")
        following = queue.get("iwd-test@2028")
        assert {d.target for d in following.deliveries} == {"mastodon-en", "website"}
        assert {d.state for d in following.deliveries} == {S.SCHEDULED}
        assert {d.scheduled_at for d in following.deliveries} == {
            datetime(2028, 3, 8, 8, 0, tzinfo=UTC)
        }

        clock.set(datetime(2028, 3, 8, 8, 0, 1, tzinfo=UTC))  # a year later, at once
        service.wake()
        wait_until(lambda: settled(queue, "iwd-test@2028"), 20, "the 2028 post published")
        wait_until(lambda: _targets_of(queue, "iwd-test@2029") == 2, 5, "2029 queued")
    assert {d.state for d in queue.get("iwd-test").deliveries} == {S.PUBLISHED}
    assert {d.state for d in queue.get("iwd-test@2028").deliveries} == {S.PUBLISHED}
    texts = sorted(s.text for s in platforms.mastodon.statuses)
    assert len(texts) == 2
    assert "Day 2027:" in texts[0] and "Day 2028:" in texts[1]
    assert len(platforms.website.events) == 2
    assert sorted(e["data"]["id"] for e in platforms.website.events) == [
        "iwd-test",
        "iwd-test@2028",
    ]


def _targets_of(queue: Queue, post_id: str) -> int:
    try:
        return len(queue.get(post_id).deliveries)
    except NotFound:
        return 0
