"""Every error crosspost raises, in one place.

    CrosspostError
     ├── InputError             a post file, API body or argument is wrong: each Problem names
     │                          the source (file), the field and what is wrong
     ├── ConfigError            the targets file or the settings are wrong, or a secret is unset
     ├── NotFound               no post with that id
     ├── Conflict               the change would touch something already published
     ├── QueueError             the database failed; the driver error is translated in queue.py
     └── PublishError           raised by adapters, mapped once at their HTTP boundary
          ├── Transient         nothing landed (5xx, refused connection, timeout before sending)
          ├── RateLimited       the platform said wait: never send again before `retry_at`
          ├── Permanent         retrying cannot help (401/403/404/422, Graph 100/190/200-299/506)
          └── OutcomeUnknown    the request may have landed (read timeout, reset after sending):
                                look the post up on the platform before publishing again

Messages never contain secrets: adapters build them from status codes and platform error
bodies, never from request headers or URLs carrying tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


class CrosspostError(Exception):
    """Base of every error crosspost raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (source, field) and what."""

    source: str
    field: str
    message: str

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.message])


class InputError(CrosspostError):
    """A post file, API body or command argument is invalid; nothing was queued or changed."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(cls, source: str, field: str, message: str) -> InputError:
        return cls([Problem(source, field, message)])


class ConfigError(CrosspostError):
    """The targets file or settings are invalid, or a secret a target needs is not set."""


class NotFound(CrosspostError):
    """No post or delivery with that id."""


class Conflict(CrosspostError):
    """The change was refused because part of the post is already published or in flight."""


class QueueError(CrosspostError):
    """The database failed; raised from the driver error in exactly one place (queue.py)."""


class PublishError(CrosspostError):
    """A failure while talking to a platform, classified by the adapter that saw it."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status

    @property
    def kind(self) -> str:
        return _KIND_NAMES[type(self)]


class Transient(PublishError):
    """Nothing landed; the same request may be sent again after a backoff."""


class RateLimited(PublishError):
    """The platform asked us to wait; `retry_at` is the earliest moment to send again (UTC)."""

    def __init__(self, message: str, *, retry_at: datetime, http_status: int | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_at = retry_at


class Permanent(PublishError):
    """Retrying cannot help; the delivery fails with this reason."""


class OutcomeUnknown(PublishError):
    """The request may have reached the platform; reconcile before any new request."""


_KIND_NAMES: dict[type[PublishError], str] = {
    PublishError: "error",
    Transient: "transient",
    RateLimited: "rate-limited",
    Permanent: "permanent",
    OutcomeUnknown: "outcome-unknown",
}
