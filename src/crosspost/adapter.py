"""The adapter interface every platform implements, and the registry that loads them.

An adapter is one small module in `adapters/`, registered under the entry-point group
`crosspost.adapters`. It renders a post for one target, publishes a rendition, looks up whether
an earlier attempt landed, and deletes a published copy. It never touches the database, never
sleeps and never retries: every failure leaves it as one of the `PublishError` kinds in
`crosspost.errors`, mapped at its HTTP boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from crosspost.errors import ConfigError
from crosspost.post import HttpUrl, LanguageTag, Post
from crosspost.retry import RetryPolicy

ENTRY_POINT_GROUP = "crosspost.adapters"


class TargetConfig(BaseModel):
    """What every target has; each platform's adapter extends it with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    platform: str
    languages: list[LanguageTag] = Field(default_factory=list)
    timezone: str = "UTC"
    max_lateness: timedelta = Field(
        default=timedelta(hours=6),
        description="A delivery later than this after its time is `missed`, not published.",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Publishes in flight at once.")
    shorten: bool = Field(
        default=False,
        description="Opt in: a text over the limit is cut with '…' and a link to the mirror.",
    )
    mirror_url: HttpUrl | None = Field(
        default=None, description="Permalink base of the website mirror, for shortened posts."
    )
    retry: RetryPolicy | None = Field(
        default=None, description="This target's retry policy; default: its platform's."
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Brussels)") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def secret_variable(self) -> str | None:
        """The name of the environment variable holding this target's secret, if any."""
        return None


@dataclass(frozen=True)
class RenderedMedia:
    """One attachment as a target gets it: the file or URL, its type and alt text."""

    source: str
    is_url: bool
    mime_type: str | None
    alt: str
    size: int | None = None


def rendered_media(post: Post, language: str) -> tuple[RenderedMedia, ...]:
    """The post's media as one target gets them: alt text in that target's language."""
    return tuple(
        RenderedMedia(
            source=item.url or item.path or "",
            is_url=item.url is not None,
            mime_type=item.mime_type,
            alt=item.alt_for(language, post.main_language),
            size=item.size,
        )
        for item in post.media
    )


@dataclass(frozen=True)
class Rendition:
    """Exactly what one target receives for one post."""

    post_id: str
    target: str
    platform: str
    language: str
    text: str
    length: int
    limit: int
    media: tuple[RenderedMedia, ...] = ()
    link: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    shortened: bool = False

    @property
    def over_by(self) -> int:
        return max(0, self.length - self.limit)


@dataclass(frozen=True)
class Published:
    """Where a delivery landed."""

    remote_id: str
    remote_url: str | None = None


@dataclass(frozen=True)
class RenderContext:
    """What the queue knows that a rendition may show: the post's copies elsewhere."""

    copies: Mapping[str, str] = field(default_factory=dict)
    event: str = "post.published"


class Adapter(ABC):
    """One platform. Subclasses declare their facts as class attributes."""

    platform: ClassVar[str]
    config_model: ClassVar[type[TargetConfig]]
    max_length: ClassVar[int]
    supports_idempotency_key: ClassVar[bool] = False
    # How long the platform remembers an idempotency key (None: for as long as it matters).
    idempotency_window: ClassVar[timedelta | None] = None
    # Whether `render` wants the post's copies on other targets (the website shows them).
    wants_copies: ClassVar[bool] = False

    def __init__(
        self,
        config: TargetConfig,
        *,
        secret: SecretStr | None,
        session: requests.Session | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.config = config
        self._secret = secret
        self.session = session or requests.Session()
        self.timeout = timeout

    @abstractmethod
    def render(self, post: Post, post_id: str, context: RenderContext | None = None) -> Rendition:
        """The post as this target should receive it (no network except cached platform facts)."""

    def validate(self, rendition: Rendition) -> list[str]:
        """Problems that stop this rendition from being published; empty when it is fine."""
        if rendition.over_by:
            return [
                f"{rendition.length} characters, {rendition.target} allows {rendition.limit}"
                f" ({rendition.over_by} over)"
            ]
        return []

    @abstractmethod
    def publish(self, rendition: Rendition, idempotency_key: str) -> Published:
        """Send the rendition; the key is the same for every attempt of one delivery."""

    @abstractmethod
    def lookup(
        self, rendition: Rendition, idempotency_key: str, since: datetime
    ) -> Published | None:
        """Whether an earlier attempt (sent at or after `since`) already landed."""

    @abstractmethod
    def delete(self, remote_id: str) -> None:
        """Remove a published copy."""

    def paused_until(self) -> datetime | None:
        """When the platform's own budget headers say the next request would be refused: the
        dispatcher sends nothing to this target before then. None: go ahead."""
        return None


@cache
def adapter_classes() -> Mapping[str, type[Adapter]]:
    """Every installed adapter, by platform name, checked against the interface."""
    found: dict[str, type[Adapter]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise ConfigError(f"entry point {ep.name!r} ({ep.value}) is not a crosspost Adapter")
        found[ep.name] = cls
    return found


def adapter_class(platform: str) -> type[Adapter]:
    classes = adapter_classes()
    if platform not in classes:
        raise ConfigError(
            f"unknown platform {platform!r}; installed: {', '.join(sorted(classes)) or 'none'}"
        )
    return classes[platform]
