"""The one retry policy: what to do after a failed attempt, as data the queue writes back.

Nothing here sleeps. tenacity supplies the backoff (exponential with jitter, capped) and the stop
rules (attempts, age); `RetryPolicy.decide` turns them, and the error's kind, into a `Decision`
that the dispatcher hands to the queue: a new due time, or a final state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import tenacity
from pydantic import BaseModel, ConfigDict, Field

from crosspost.errors import OutcomeUnknown, Permanent, PublishError, RateLimited


class RetryPolicy(BaseModel):
    """Backoff and limits; the defaults per platform are in `PLATFORM_POLICIES`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: float = Field(default=30.0, gt=0, description="First backoff, in seconds.")
    cap: float = Field(default=3600.0, gt=0, description="Longest backoff, in seconds.")
    jitter: float = Field(default=10.0, ge=0, description="Random seconds added to a backoff.")
    max_attempts: int = Field(default=8, ge=1)
    max_age: timedelta = Field(
        default=timedelta(hours=24), description="Give up this long after the publish time."
    )

    def _state(self, attempts: int, age: timedelta) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempts
        state.start_time = 0.0
        state.outcome_timestamp = max(age.total_seconds(), 0.0)
        return state

    def backoff(self, attempts: int) -> timedelta:
        wait = tenacity.wait_exponential_jitter(
            multiplier=self.initial, max=self.cap, jitter=self.jitter
        )
        return timedelta(seconds=wait(self._state(attempts, timedelta(0))))

    def exhausted(self, attempts: int, age: timedelta) -> bool:
        stop = tenacity.stop_after_attempt(self.max_attempts) | tenacity.stop_after_delay(
            self.max_age.total_seconds()
        )
        return bool(stop(self._state(attempts, age)))

    def decide(
        self, error: PublishError, attempts: int, scheduled_at: datetime, now: datetime
    ) -> Decision:
        """After attempt number `attempts` of a delivery due at `scheduled_at` failed."""
        reason = f"{error.kind}: {error}"
        if isinstance(error, Permanent):
            return Decision("failed", reason=reason)
        age = now - scheduled_at
        if isinstance(error, RateLimited):
            # Waiting out a rate limit never gives up on its own: only the age limit applies.
            if age >= self.max_age:
                return Decision("failed", reason=f"gave up after {age}: {reason}")
            return Decision("retry", at=max(error.retry_at, now), reason=reason)
        if self.exhausted(attempts, age):
            return Decision("failed", reason=f"gave up after {attempts} attempts: {reason}")
        return Decision(
            "retry",
            at=now + self.backoff(attempts),
            reason=reason,
            maybe_landed=isinstance(error, OutcomeUnknown),
        )


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "failed"]
    at: datetime | None = None
    reason: str = ""
    maybe_landed: bool = False


# Platform facts: Mastodon answers quickly and honours Idempotency-Key for an hour; Graph
# throttles by usage percentages that recover over minutes; a website is ours to fix.
PLATFORM_POLICIES: dict[str, RetryPolicy] = {
    "mastodon": RetryPolicy(initial=20, cap=1800, max_attempts=8),
    "facebook": RetryPolicy(initial=60, cap=3600, max_attempts=6),
    "webhook": RetryPolicy(initial=10, cap=900, max_attempts=12),
}


def policy_for(platform: str, override: RetryPolicy | None = None) -> RetryPolicy:
    return override or PLATFORM_POLICIES.get(platform, RetryPolicy())
