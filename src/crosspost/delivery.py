"""Deliveries as values: the state machine, and the frozen records the queue hands out.

A delivery is one post going to one target. Its state changes only along `TRANSITIONS`; the
queue checks every change against it (`check_transition`), so no other code can take a shortcut.

    scheduled ──claim──▶ claimed ──▶ published
        ▲   │               │ ├──▶ retry-waiting ──claim──▶ claimed …
        │   ▼               │ ├──▶ failed ───────┐
        │ cancelled         │ ├──▶ needs-review ─┤ retry (manual)
        │                   │ └──▶ missed ───────┤
        └───────────────────┴─ release ◀─────────┘
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from crosspost.errors import Conflict


class DeliveryState(StrEnum):
    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    PUBLISHED = "published"
    RETRY_WAITING = "retry-waiting"
    FAILED = "failed"
    NEEDS_REVIEW = "needs-review"
    CANCELLED = "cancelled"
    MISSED = "missed"


S = DeliveryState
TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    S.SCHEDULED: frozenset({S.CLAIMED, S.CANCELLED, S.SCHEDULED}),
    S.RETRY_WAITING: frozenset({S.CLAIMED, S.CANCELLED, S.SCHEDULED}),
    S.CLAIMED: frozenset(
        {S.PUBLISHED, S.RETRY_WAITING, S.FAILED, S.NEEDS_REVIEW, S.MISSED, S.CLAIMED, S.SCHEDULED}
    ),
    S.FAILED: frozenset({S.SCHEDULED, S.CANCELLED}),
    S.NEEDS_REVIEW: frozenset({S.SCHEDULED, S.PUBLISHED, S.CANCELLED}),
    S.MISSED: frozenset({S.SCHEDULED, S.CANCELLED}),
    S.PUBLISHED: frozenset(),
    S.CANCELLED: frozenset(),
}
# States in which the queue will look at a delivery again when its `due_at` comes.
ACTIVE_STATES = frozenset({S.SCHEDULED, S.RETRY_WAITING, S.CLAIMED})
# States a manager may still change or cancel.
PENDING_STATES = frozenset({S.SCHEDULED, S.RETRY_WAITING})
# States `retry` puts back on the schedule.
RETRYABLE_STATES = frozenset({S.FAILED, S.MISSED, S.NEEDS_REVIEW})


def check_transition(current: DeliveryState, new: DeliveryState) -> None:
    if new not in TRANSITIONS[current]:
        raise Conflict(f"a delivery cannot go from {current} to {new}")


@dataclass(frozen=True)
class Delivery:
    id: int
    post_id: str
    target: str
    state: DeliveryState
    scheduled_at: datetime  # when it should go out (UTC)
    due_at: datetime  # when the queue looks at it next: the schedule, a retry or a lease's end
    attempts: int
    idempotency_key: str
    maybe_landed: bool  # an earlier attempt may have reached the platform
    remote_id: str | None = None
    remote_url: str | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    published_at: datetime | None = None
    lease_owner: str | None = None
    fence: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "state": str(self.state),
            "scheduled_at": self.scheduled_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "attempts": self.attempts,
            "remote_id": self.remote_id,
            "remote_url": self.remote_url,
            "last_error": self.last_error,
            "last_error_kind": self.last_error_kind,
            "published_at": self.published_at.isoformat() if self.published_at else None,
        }


@dataclass(frozen=True)
class Attempt:
    id: int
    delivery_id: int
    started_at: datetime
    duration_ms: int
    outcome: str  # "published", "found" (look-up), or an error kind from crosspost.errors
    http_status: int | None = None
    error_kind: str | None = None
    error_message: str | None = None
    remote_id: str | None = None
    remote_url: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
            "remote_id": self.remote_id,
            "remote_url": self.remote_url,
        }


@dataclass(frozen=True)
class PostRecord:
    id: str
    source: str
    body: dict[str, Any]  # the canonical post as JSON
    campaign: str | None
    created_at: datetime
    updated_at: datetime
    deliveries: tuple[Delivery, ...]

    def as_json(self, deliveries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The stable JSON form (`crosspost show --json`, the API); `deliveries` replaces each
        delivery's own form when the caller adds to it."""
        return {
            "id": self.id,
            "source": self.source,
            "state": self.state,
            "campaign": self.campaign,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "deliveries": (
                deliveries if deliveries is not None else [d.as_json() for d in self.deliveries]
            ),
        }

    @property
    def state(self) -> str:
        """The one state all deliveries share, else `mixed`."""
        states = {d.state for d in self.deliveries}
        if len(states) == 1:
            return str(next(iter(states)))
        return "mixed"


@dataclass(frozen=True)
class NewDelivery:
    target: str
    scheduled_at: datetime


@dataclass(frozen=True)
class NewPost:
    id: str
    source: str
    body: dict[str, Any]
    campaign: str | None
    deliveries: tuple[NewDelivery, ...]


@dataclass(frozen=True)
class AddResult:
    outcome: str  # "queued", "updated" or "unchanged"
    post: PostRecord


@dataclass(frozen=True)
class Claim:
    """A delivery a worker holds until `lease_until`; `fence` proves it still holds it."""

    delivery: Delivery
    post_body: dict[str, Any]
    fence: int
    lease_until: datetime
    reclaimed: bool  # taken over from a worker whose lease ran out: it may have published


@dataclass(frozen=True)
class Finish:
    """The end of one claim as a worker reports it: the new state, and the attempt made."""

    delivery_id: int
    fence: int
    state: DeliveryState
    attempt: AttemptRecord | None = None
    due_at: datetime | None = None  # for retry-waiting, or scheduled (given back)
    maybe_landed: bool | None = None
    now: datetime | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """What a worker reports about one attempt."""

    started_at: datetime
    duration_ms: int
    outcome: str
    http_status: int | None = None
    error_kind: str | None = None
    error_message: str | None = None
    remote_id: str | None = None
    remote_url: str | None = None
