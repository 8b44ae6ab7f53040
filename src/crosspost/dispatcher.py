"""The dispatcher: claims due deliveries, publishes them in a bounded pool, records the outcome.

    claim (lease + fence) → render → [look up, if an earlier attempt may have landed]
        → publish → finish: published / retry-waiting / failed / needs-review / missed

It holds no SQL (the queue does) and no retry loop (a retry is a delivery with a new due time,
decided by `crosspost.retry`). Per target it keeps a concurrency limit and the platform's
"not before" time after a rate limit, and claims nothing for a target that cannot publish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

from crosspost.adapter import Adapter, Published, RenderContext, Rendition
from crosspost.campaigns import Campaign, following_occurrences
from crosspost.delivery import (
    AddResult,
    AttemptRecord,
    Claim,
    DeliveryState,
    Finish,
    NewDelivery,
    NewPost,
)
from crosspost.errors import Conflict, Permanent, PublishError, RateLimited
from crosspost.intake import with_year
from crosspost.post import Post
from crosspost.retry import policy_for
from crosspost.settings import Settings
from crosspost.targets import Targets

log = logging.getLogger("crosspost.dispatcher")
S = DeliveryState
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class QueueStore(Protocol):
    """What the dispatcher needs of the queue (crosspost.queue.Queue implements it)."""

    def claim_due(
        self,
        worker: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        skip_targets: Sequence[str] = (),
    ) -> list[Claim]: ...

    def renew(self, delivery_id: int, fence: int, lease_until: datetime) -> bool: ...

    def finish(
        self,
        delivery_id: int,
        fence: int,
        state: DeliveryState,
        attempt: AttemptRecord | None,
        *,
        due_at: datetime | None = None,
        maybe_landed: bool | None = None,
        now: datetime | None = None,
    ) -> bool: ...

    def finish_many(self, ends: Sequence[Finish]) -> list[bool]: ...

    def published_copies(self, post_id: str) -> dict[str, str]: ...

    def ensure(self, new: NewPost, now: datetime) -> AddResult: ...


class _GroupCommit:
    """Publish threads' results written a batch per transaction (group commit).

    The first thread to arrive writes what is pending — its own result and whatever others
    added meanwhile — and keeps writing until nothing is left; the rest wait for their answer.
    In a burst that is one commit for many deliveries instead of one each."""

    def __init__(self, queue: QueueStore) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._pending: list[tuple[Finish, Future[bool]]] = []
        self._writing = False

    def finish(self, end: Finish) -> bool:
        answer: Future[bool] = Future()
        with self._lock:
            self._pending.append((end, answer))
            lead = not self._writing
            self._writing = True
        if lead:
            self._write_until_empty()
        return answer.result()

    def _write_until_empty(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._writing = False
                    return
            try:
                kept = self._queue.finish_many([end for end, _ in batch])
            except Exception as exc:  # every waiting thread learns of it
                for _, answer in batch:
                    answer.set_exception(exc)
            else:
                for (_, answer), ok in zip(batch, kept, strict=True):
                    answer.set_result(ok)


@dataclass
class _TargetState:
    running: int = 0
    waiting: deque[Claim] = field(default_factory=deque)
    not_before: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one claim, for the service's counters and the benchmarks."""

    target: str
    state: DeliveryState | None  # None: the fence was lost, nothing recorded
    lag: float  # seconds from the due time to the start of the attempt


class Dispatcher:
    def __init__(
        self,
        queue: QueueStore,
        targets: Targets,
        settings: Settings,
        *,
        worker_id: str,
        campaigns: Mapping[str, Campaign] | None = None,
        clock: Clock = utc_now,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.queue = queue
        self._commits = _GroupCommit(queue)
        self.targets = targets
        self.settings = settings
        self.worker_id = worker_id
        self.campaigns = campaigns or {}
        self.clock = clock
        self.on_outcome = on_outcome
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.capacity = settings.workers
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="publish")
        self._lock = threading.Lock()
        self._held: dict[int, Claim] = {}  # every claim this process holds, running or waiting
        self._targets: dict[str, _TargetState] = {name: _TargetState() for name in targets}
        self._adapters: dict[str, Adapter] = {}
        self._unpublishable = {
            name: env
            for name in targets
            if (env := targets.missing_secret(name, settings)) is not None
        }
        for name, env in self._unpublishable.items():
            log.warning("%s: %s is not set; its deliveries wait until it is", name, env)
        self.idle = threading.Event()
        self.idle.set()
        self.stopping = False

    # -- claiming --------------------------------------------------------------------------

    def blocked_targets(self, now: datetime) -> list[str]:
        """Targets to claim nothing for: secret missing, rate-limited, or at capacity."""
        blocked = set(self._unpublishable)
        with self._lock:
            for name, state in self._targets.items():
                limit = self.targets[name].concurrency
                if (state.not_before and state.not_before > now) or (
                    state.running + len(state.waiting) >= limit * 4
                ):
                    blocked.add(name)
        return sorted(blocked)

    def next_release(self, now: datetime) -> datetime | None:
        """The soonest moment a rate-limited target may be sent to again."""
        with self._lock:
            times = [
                s.not_before for s in self._targets.values() if s.not_before and s.not_before > now
            ]
        return min(times, default=None)

    def dispatch_due(self) -> int:
        """Claim what is due (as far as there is room) and start it; returns how many."""
        if self.stopping:
            return 0
        now = self.clock()
        with self._lock:
            room = self.capacity * 2 - len(self._held)
        if room <= 0:
            return 0
        claims = self.queue.claim_due(
            self.worker_id, now, now + self.lease, room, self.blocked_targets(now)
        )
        if self.stopping:  # shutdown began while we were claiming: give these straight back
            for claim in claims:
                self.queue.finish(claim.delivery.id, claim.fence, S.SCHEDULED, None, due_at=now)
            return 0
        with self._lock:
            for claim in claims:
                self._held[claim.delivery.id] = claim
                self._targets.setdefault(claim.delivery.target, _TargetState()).waiting.append(
                    claim
                )
            if self._held:
                self.idle.clear()
        self._start_ready()
        return len(claims)

    def _start_ready(self) -> None:
        now = self.clock()
        held_back: list[tuple[Claim, datetime]] = []
        with self._lock:
            for name, state in self._targets.items():
                if state.not_before is not None and state.not_before > now:
                    # The platform said wait: what waits for it goes back to the queue, due
                    # when it may be sent, rather than out now.
                    held_back += [(claim, state.not_before) for claim in state.waiting]
                    state.waiting.clear()
                    continue
                config = self.targets.get(name)
                limit = config.concurrency if config else 1
                while state.waiting and state.running < limit and not self.stopping:
                    claim = state.waiting.popleft()
                    state.running += 1
                    self._pool.submit(self._run, claim)
        for claim, due_at in held_back:
            self._release(claim, due_at)

    def _release(self, claim: Claim, due_at: datetime) -> None:
        """Give a claim that has not started back to the queue, due at `due_at`."""
        self.queue.finish(claim.delivery.id, claim.fence, S.SCHEDULED, None, due_at=due_at)
        with self._lock:
            self._held.pop(claim.delivery.id, None)
            if not self._held:
                self.idle.set()

    def _run(self, claim: Claim) -> None:
        outcome = None
        try:
            if self.stopping:  # queued in the pool when shutdown began: give it back unsent
                self.queue.finish(
                    claim.delivery.id, claim.fence, S.SCHEDULED, None, due_at=self.clock()
                )
            else:
                outcome = self.deliver(claim)
        except Exception:  # a bug must not kill the worker thread; the lease brings it back
            log.exception("delivery %s to %s crashed", claim.delivery.id, claim.delivery.target)
        finally:
            with self._lock:
                self._held.pop(claim.delivery.id, None)
                state = self._targets[claim.delivery.target]
                state.running -= 1
                if not self._held:
                    self.idle.set()
            if outcome is not None and self.on_outcome is not None:
                self.on_outcome(outcome)
            self._start_ready()

    def renew_leases(self) -> int:
        """Extend the lease of every claim held; a claim taken over elsewhere is let go."""
        until = self.clock() + self.lease
        with self._lock:
            held = list(self._held.values())
        lost = 0
        for claim in held:
            if not self.queue.renew(claim.delivery.id, claim.fence, until):
                lost += 1
                log.warning("lease on delivery %s was taken over", claim.delivery.id)
                self._forget_unstarted(claim)
        return lost

    def _forget_unstarted(self, claim: Claim) -> None:
        """A claim taken over elsewhere that has not started here is dropped unsent."""
        with self._lock:
            waiting = self._targets[claim.delivery.target].waiting
            if claim in waiting:
                waiting.remove(claim)
                self._held.pop(claim.delivery.id, None)
                if not self._held:
                    self.idle.set()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._held)

    # -- one delivery ----------------------------------------------------------------------

    def adapter(self, target: str) -> Adapter:
        with self._lock:
            if target not in self._adapters:
                session = requests.Session()
                size = max(self.targets[target].concurrency, 4)
                session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=size))
                session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=size))
                self._adapters[target] = self.targets.adapter(target, self.settings, session)
            return self._adapters[target]

    def deliver(self, claim: Claim) -> Outcome:
        delivery = claim.delivery
        start = self.clock()
        started = time.monotonic()
        lag = max(0.0, (start - delivery.scheduled_at).total_seconds())

        def record(
            state: DeliveryState,
            outcome: str,
            *,
            error: PublishError | None = None,
            published: Published | None = None,
            due_at: datetime | None = None,
            maybe_landed: bool | None = None,
            reason: str | None = None,
        ) -> Outcome:
            attempt = AttemptRecord(
                started_at=start,
                duration_ms=int((time.monotonic() - started) * 1000),
                outcome=outcome,
                http_status=error.http_status if error else None,
                error_kind=error.kind if error else (outcome if reason else None),
                error_message=reason or (str(error) if error else None),
                remote_id=published.remote_id if published else None,
                remote_url=published.remote_url if published else None,
            )
            kept = self._commits.finish(
                Finish(delivery.id, claim.fence, state, attempt, due_at, maybe_landed, self.clock())
            )
            if not kept:
                log.warning("delivery %s: lease lost, result not recorded", delivery.id)
                return Outcome(delivery.target, None, lag)
            if state in (S.PUBLISHED, S.FAILED, S.MISSED):
                self._follow_campaign(claim)
            return Outcome(delivery.target, state, lag)

        config = self.targets.get(delivery.target)
        if config is None:
            return record(
                S.FAILED, "permanent", reason=f"target {delivery.target!r} is not configured"
            )
        late = start - delivery.scheduled_at
        # Only a first try can be missed: an earlier one may have landed, so it goes ahead.
        if delivery.attempts == 1 and not delivery.maybe_landed and late > config.max_lateness:
            return record(
                S.MISSED,
                "missed",
                reason=f"{_duration(late)} late; {delivery.target} allows"
                f" {_duration(config.max_lateness)} (max_lateness)",
            )
        policy = policy_for(config.platform, config.retry)
        adapter = self.adapter(delivery.target)
        looking_up = False
        try:
            rendition = self._render(claim, adapter)
            problems = adapter.validate(rendition)
            if problems:
                raise Permanent("; ".join(problems))
            if delivery.maybe_landed and self._must_look_up(adapter, claim, start):
                looking_up = True
                found = adapter.lookup(
                    rendition,
                    delivery.idempotency_key,
                    delivery.scheduled_at - timedelta(minutes=5),
                )
                looking_up = False
                if found is not None:
                    return record(S.PUBLISHED, "found", published=found)
            published = adapter.publish(rendition, delivery.idempotency_key)
            return record(S.PUBLISHED, "published", published=published)
        except PublishError as error:
            now = self.clock()
            if isinstance(error, RateLimited):
                self._hold_target(delivery.target, error.retry_at)
            decision = policy.decide(error, delivery.attempts, delivery.scheduled_at, now)
            maybe_landed = delivery.maybe_landed or decision.maybe_landed
            if decision.action == "retry":
                return record(
                    S.RETRY_WAITING,
                    error.kind,
                    error=error,
                    due_at=decision.at,
                    maybe_landed=maybe_landed,
                )
            if maybe_landed or looking_up:
                # Even a refusal (Graph's #506 duplicate) may mean the earlier attempt landed.
                return record(
                    S.NEEDS_REVIEW,
                    error.kind,
                    error=error,
                    reason=f"could not tell whether an earlier attempt landed: {decision.reason}",
                )
            return record(S.FAILED, error.kind, error=error, reason=decision.reason)
        finally:
            pause = adapter.paused_until()
            if pause is not None:
                self._hold_target(delivery.target, pause)

    def _render(self, claim: Claim, adapter: Adapter) -> Rendition:
        delivery = claim.delivery
        post = Post.model_validate(claim.post_body, context={"stored": True})
        if post.campaign:
            zone = self.targets[delivery.target].zone
            post = with_year(post, delivery.scheduled_at.astimezone(zone).year)
        copies = self.queue.published_copies(delivery.post_id) if adapter.wants_copies else {}
        return adapter.render(post, delivery.post_id, RenderContext(copies=copies))

    @staticmethod
    def _must_look_up(adapter: Adapter, claim: Claim, now: datetime) -> bool:
        """An earlier attempt may have landed: re-sending is safe only under a key the
        platform still remembers; otherwise ask the platform first."""
        if not adapter.supports_idempotency_key:
            return True
        window = adapter.idempotency_window
        # The first attempt was at or after the publish time; a margin keeps us inside it.
        return window is not None and now - claim.delivery.scheduled_at > window * 0.9

    def _hold_target(self, target: str, until: datetime) -> None:
        with self._lock:
            state = self._targets.setdefault(target, _TargetState())
            if state.not_before is None or until > state.not_before:
                state.not_before = until

    def _follow_campaign(self, claim: Claim) -> None:
        """A recurring campaign post is queued for its next occurrence once this one is done."""
        body = claim.post_body
        name = body.get("campaign")
        campaign = self.campaigns.get(name) if isinstance(name, str) else None
        delivery = claim.delivery
        if campaign is None or not campaign.recurring or delivery.target not in self.targets:
            return
        zone = self.targets[delivery.target].zone
        order = list(body.get("targets", []))
        zones = [(t, self.targets[t].zone) for t in order if t in self.targets]
        following = following_occurrences(campaign, zones, {delivery.target: delivery.scheduled_at})
        at = following.get(delivery.target)
        if at is None:
            return
        base = delivery.post_id.split("@", 1)[0]
        year = at.astimezone(zone).year
        following_post = NewPost(
            id=f"{base}@{year}",
            source=f"campaign {name}",
            body=body,
            campaign=name,
            deliveries=(NewDelivery(delivery.target, at),),
        )
        try:
            self.queue.ensure(following_post, self.clock())
        except Conflict:
            # The post's other targets finished at the same moment and one of them created
            # next year's post first: now it exists, this adds only this target's delivery.
            self.queue.ensure(following_post, self.clock())

    # -- stopping --------------------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Stop claiming; give back what has not started; let running publishes finish."""
        self.stopping = True
        now = self.clock()
        with self._lock:
            waiting = [c for state in self._targets.values() for c in state.waiting]
            for state in self._targets.values():
                state.waiting.clear()
        for claim in waiting:
            self._release(claim, now)
        self.idle.wait(grace)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
