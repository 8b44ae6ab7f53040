"""The queue on SQLite and PostgreSQL: adding, idempotency, the state machine, claims, fencing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from crosspost.delivery import (
    TRANSITIONS,
    AttemptRecord,
    DeliveryState,
    Finish,
    NewDelivery,
    NewPost,
    check_transition,
)
from crosspost.errors import Conflict, NotFound
from crosspost.queue import Queue

S = DeliveryState
NOW = datetime(2027, 3, 8, 8, 0, tzinfo=UTC)


def new_post(
    post_id: str = "p1",
    body: dict | None = None,
    at: datetime = NOW,
    targets: tuple[str, ...] = ("mastodon-en", "website"),
) -> NewPost:
    return NewPost(
        id=post_id,
        source="p.yaml",
        body=body or {"text": {"en": "hello"}},
        campaign=None,
        deliveries=tuple(NewDelivery(t, at) for t in targets),
    )


def attempt(outcome: str = "published", **kw: object) -> AttemptRecord:
    return AttemptRecord(started_at=NOW, duration_ms=5, outcome=outcome, **kw)  # type: ignore[arg-type]


def test_add_is_idempotent(queue: Queue) -> None:
    first = queue.add(new_post(), NOW)
    again = queue.add(new_post(), NOW)
    assert first.outcome == "queued"
    assert again.outcome == "unchanged"
    assert [d.id for d in again.post.deliveries] == [d.id for d in first.post.deliveries]
    assert len(queue.list_posts()) == 1
    keys = {d.idempotency_key for d in first.post.deliveries}
    assert len(keys) == 2 and all(k.startswith("cp_") for k in keys)


def test_change_before_publishing_updates_pending_deliveries(queue: Queue) -> None:
    queue.add(new_post(), NOW)
    later = NOW + timedelta(hours=2)
    result = queue.add(
        new_post(body={"text": {"en": "changed"}}, at=later, targets=("website", "facebook-page")),
        NOW,
    )
    assert result.outcome == "updated"
    assert {d.target: d.scheduled_at for d in result.post.deliveries} == {
        "website": later,
        "facebook-page": later,
    }
    assert queue.get("p1").body == {"text": {"en": "changed"}}


def test_change_after_partly_publishing_is_refused_and_changes_nothing(queue: Queue) -> None:
    queue.add(new_post(), NOW)
    claim = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 1)[0]
    assert queue.finish(claim.delivery.id, claim.fence, S.PUBLISHED, attempt(remote_id="9"))
    before = queue.get("p1")
    with pytest.raises(Conflict, match="already published"):
        queue.add(new_post(body={"text": {"en": "changed"}}), NOW)
    assert queue.get("p1") == before


def test_claim_is_oldest_first_and_only_due(queue: Queue) -> None:
    queue.add(new_post("late", at=NOW + timedelta(minutes=5)), NOW)
    queue.add(new_post("early", at=NOW - timedelta(minutes=5)), NOW)
    claims = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 10)
    assert {c.delivery.post_id for c in claims} == {"early"}
    assert all(c.delivery.state == S.CLAIMED and c.fence == 1 for c in claims)
    assert queue.claim_due("w2", NOW, NOW + timedelta(minutes=1), 10) == []
    assert queue.next_due() == NOW + timedelta(minutes=1)


def test_expired_lease_is_taken_over_and_the_stale_worker_changes_nothing(queue: Queue) -> None:
    queue.add(new_post(targets=("website",)), NOW)
    old = queue.claim_due("old", NOW, NOW + timedelta(seconds=30), 1)[0]
    assert not old.reclaimed
    new = queue.claim_due("new", NOW + timedelta(seconds=31), NOW + timedelta(minutes=5), 1)[0]
    assert new.reclaimed and new.delivery.maybe_landed and new.fence == old.fence + 1
    # The stale worker can neither finish, renew nor release.
    assert not queue.finish(old.delivery.id, old.fence, S.PUBLISHED, attempt(remote_id="x"))
    assert not queue.renew(old.delivery.id, old.fence, NOW + timedelta(hours=1))
    assert queue.finish(new.delivery.id, new.fence, S.PUBLISHED, attempt(remote_id="y"))
    d = queue.get("p1").deliveries[0]
    assert (d.state, d.remote_id, d.attempts) == (S.PUBLISHED, "y", 2)
    assert [a.remote_id for a in queue.attempts(d.id)] == ["y"]


def test_retry_waiting_comes_back_at_its_time(queue: Queue) -> None:
    queue.add(new_post(targets=("website",)), NOW)
    c = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 1)[0]
    retry_at = NOW + timedelta(seconds=40)
    assert queue.finish(
        c.delivery.id,
        c.fence,
        S.RETRY_WAITING,
        attempt("transient", http_status=503, error_kind="transient", error_message="503"),
        due_at=retry_at,
    )
    assert queue.claim_due("w", retry_at - timedelta(seconds=1), retry_at, 1) == []
    again = queue.claim_due("w", retry_at, retry_at + timedelta(minutes=1), 1)
    assert len(again) == 1 and again[0].delivery.attempts == 2
    assert again[0].delivery.last_error == "503"


def test_cancel_and_retry(queue: Queue) -> None:
    queue.add(new_post(), NOW)
    c = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 1)[0]
    queue.finish(
        c.delivery.id,
        c.fence,
        S.FAILED,
        attempt(
            "permanent", http_status=401, error_kind="permanent", error_message="401 invalid token"
        ),
    )
    cancelled = queue.cancel("p1")
    assert [d.state for d in cancelled] == [S.CANCELLED]
    with pytest.raises(Conflict):
        queue.cancel("p1")
    retried = queue.retry("p1", NOW)
    assert [(d.target, d.state) for d in retried] == [(c.delivery.target, S.SCHEDULED)]
    with pytest.raises(Conflict, match="nothing to retry"):
        queue.retry("p1", NOW)
    with pytest.raises(NotFound):
        queue.retry("nope", NOW)


def test_retry_never_republishes_a_published_target(queue: Queue) -> None:
    queue.add(new_post(), NOW)
    first, second = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 2)
    queue.finish(first.delivery.id, first.fence, S.PUBLISHED, attempt(remote_id="1"))
    queue.finish(
        second.delivery.id,
        second.fence,
        S.FAILED,
        attempt("permanent", error_kind="permanent", error_message="no"),
    )
    retried = queue.retry("p1", NOW)
    assert [d.target for d in retried] == [second.delivery.target]
    states = {d.target: d.state for d in queue.get("p1").deliveries}
    assert states == {first.delivery.target: S.PUBLISHED, second.delivery.target: S.SCHEDULED}


def test_list_filters(queue: Queue) -> None:
    queue.add(new_post("a", targets=("website",)), NOW)
    queue.add(new_post("b", targets=("mastodon-en",), at=NOW + timedelta(days=1)), NOW)
    assert [p.id for p in queue.list_posts(target="website")] == ["a"]
    assert [p.id for p in queue.list_posts(since=NOW + timedelta(hours=1))] == ["b"]
    assert {p.id for p in queue.list_posts(state=S.SCHEDULED)} == {"a", "b"}
    assert queue.list_posts(state=S.PUBLISHED) == []


def test_bulk_add_skips_present_ids(queue: Queue) -> None:
    queue.add(new_post("p0"), NOW)
    batch = [new_post(f"p{i}") for i in range(50)]
    assert queue.add_many(batch, NOW) == 49
    assert queue.counts()[("website", "scheduled")] == 50


def test_due_index_is_a_range_scan(queue: Queue) -> None:
    sql = (
        "SELECT id FROM deliveries WHERE state IN ('claimed', 'retry-waiting', 'scheduled')"
        " AND due_at <= '2027-01-01' ORDER BY due_at LIMIT 10"
    )
    with queue.engine.connect() as conn:
        if queue.is_postgres:
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + sql)))
        else:
            plan = "\n".join(str(r[-1]) for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_deliveries_due" in plan


def test_state_machine_is_enforced() -> None:
    check_transition(S.SCHEDULED, S.CLAIMED)
    for state, allowed in TRANSITIONS.items():
        for other in DeliveryState:
            if other not in allowed:
                with pytest.raises(Conflict):
                    check_transition(state, other)
    with pytest.raises(Conflict):
        check_transition(S.PUBLISHED, S.SCHEDULED)


def test_ensure_adds_only_what_is_missing_and_is_idempotent(queue: Queue) -> None:
    first = queue.ensure(new_post("campaign@2028", targets=("website",)), NOW)
    assert first.outcome == "queued"
    again = queue.ensure(new_post("campaign@2028", targets=("website", "mastodon-en")), NOW)
    assert again.outcome == "updated"
    assert [d.target for d in again.post.deliveries] == ["website", "mastodon-en"]
    assert queue.ensure(new_post("campaign@2028", targets=("website",)), NOW).outcome == (
        "unchanged"
    )


def test_finish_many_fences_each_end_on_its_own(queue: Queue) -> None:
    queue.add(new_post(), NOW)
    first, second = queue.claim_due("w", NOW, NOW + timedelta(minutes=1), 2)
    stale = Finish(second.delivery.id, second.fence - 1, S.PUBLISHED, attempt(remote_id="old"))
    fresh = Finish(first.delivery.id, first.fence, S.PUBLISHED, attempt(remote_id="new"))
    assert queue.finish_many([stale, fresh]) == [False, True]
    states = {d.id: (d.state, d.remote_id) for d in queue.get("p1").deliveries}
    assert states[first.delivery.id] == (S.PUBLISHED, "new")
    assert states[second.delivery.id] == (S.CLAIMED, None)
    assert queue.attempts(second.delivery.id) == []
