"""The canonical post: written once, rendered per target by the adapters.

A post is a frozen pydantic model. Files (YAML, JSON, Markdown) are read by `postfile`; the
validators here check everything that can be checked without the targets file: language tags,
hashtags, links, media (sniffed, sized), and a timezone-aware publish time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import filetype
import langcodes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_MEDIA_BYTES = 40 * 1024 * 1024
MEDIA_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4", "video/quicktime"}
)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HASHTAG_RE = re.compile(r"^\w+$")


def _language_tag(value: str) -> str:
    if not isinstance(value, str) or not langcodes.tag_is_valid(value):
        raise ValueError(f"{value!r} is not a valid language tag (BCP 47, e.g. en, es, ru, pt-BR)")
    return str(langcodes.standardize_tag(value))


def _hashtag(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"hashtag must be text, not {type(value).__name__}")
    tag = value[1:] if value.startswith("#") else value
    if not tag:
        raise ValueError("empty hashtag")
    if not _HASHTAG_RE.match(tag):
        raise ValueError(
            f"{value!r} is not a hashtag: use letters, digits and underscores only"
            " (no spaces or punctuation)"
        )
    if tag.isdigit():
        raise ValueError(f"{value!r} is not a hashtag: it needs at least one letter")
    return tag


def _http_url(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in value:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


LanguageTag = Annotated[str, AfterValidator(_language_tag)]
Hashtag = Annotated[str, AfterValidator(_hashtag)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _no_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value


NonBlank = Annotated[str, AfterValidator(_no_blank)]


class Link(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    title: str | dict[LanguageTag, str] | None = None

    def title_for(self, language: str | None) -> str | None:
        """The title in `language`, else the first one given (a plain title is every
        language's)."""
        if not isinstance(self.title, dict):
            return self.title
        if language in self.title:
            return self.title[language]
        return next(iter(self.title.values()), None)


class Media(BaseModel):
    """An image or video: a local file (checked and sniffed when the post is read) or a URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    url: str | None = None
    alt: dict[LanguageTag, str] = Field(default_factory=dict)
    mime_type: str | None = None
    size: int | None = None

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme != "https":
            raise ValueError(f"{value!r}: media URLs must be https")
        return value

    @model_validator(mode="after")
    def _check_file(self, info: ValidationInfo) -> Self:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of `path` (a local file) or `url` (https)")
        if self.path is None:
            return self
        context = info.context or {}
        if context.get("stored"):  # read back from the queue: checked when it was added
            return self
        base = Path(context.get("base_dir", "."))
        file = (base / self.path).resolve()
        if not file.is_file():
            raise ValueError(f"{self.path}: no such file")
        try:
            size = file.stat().st_size
            with file.open("rb") as fh:
                head = fh.read(8192)
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot be read ({exc.strerror})") from None
        if size > MAX_MEDIA_BYTES:
            raise ValueError(f"{self.path}: {size} bytes, the most is {MAX_MEDIA_BYTES}")
        kind = filetype.guess(head)
        mime = kind.mime if kind else None
        if mime not in MEDIA_TYPES:
            found = mime or "not an image or video"
            raise ValueError(
                f"{self.path}: content is {found}; allowed: {', '.join(sorted(MEDIA_TYPES))}"
            )
        object.__setattr__(self, "path", str(file))
        object.__setattr__(self, "mime_type", mime)
        object.__setattr__(self, "size", size)
        return self

    def alt_for(self, language: str, default_language: str) -> str:
        return self.alt.get(language) or self.alt.get(default_language) or ""


class TargetOverride(BaseModel):
    """What one target gets differently: its own text, extra hashtags, another language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: dict[LanguageTag, NonBlank] = Field(default_factory=dict)
    hashtags: list[Hashtag] = Field(default_factory=list)
    language: LanguageTag | None = None


def _split_hashtags(data: Any) -> Any:
    """`hashtags` is a list (every language) or a map language -> list (`all` for every one)."""
    if isinstance(data, dict) and isinstance(data.get("hashtags"), dict):
        by_language = dict(data["hashtags"])
        data = dict(data)
        data["hashtags"] = by_language.pop("all", [])
        data["language_hashtags"] = by_language
    return data


class Post(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    text: dict[LanguageTag, NonBlank]
    default_language: LanguageTag | None = None
    hashtags: list[Hashtag] = Field(default_factory=list)
    language_hashtags: dict[LanguageTag, list[Hashtag]] = Field(default_factory=dict)
    links: list[Link] = Field(default_factory=list)
    media: list[Media] = Field(default_factory=list)
    publish_at: datetime | None = None
    publish_now: bool = False
    timezone: str | None = None
    campaign: str | None = None
    targets: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
    overrides: dict[str, TargetOverride] = Field(default_factory=dict)
    content_warning: str | None = None
    sensitive: bool = False

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        data = _split_hashtags(data)
        if isinstance(data, dict) and data.get("publish_at") == "now":
            data = {**data, "publish_at": None, "publish_now": True}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and not _ID_RE.match(value):
            raise ValueError(
                f"{value!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter"
                " or digit"
            )
        return value

    @field_validator("text")
    @classmethod
    def _some_text(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("the post has no text: give at least one language")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"{value!r} is not an IANA time zone (e.g. Europe/Brussels)"
                ) from None
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one target")
        doubled = sorted({t for t in value if value.count(t) > 1})
        if doubled:
            raise ValueError(f"named more than once: {', '.join(doubled)}")
        return value

    @field_validator("publish_at", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an ISO 8601 time such as 2027-03-08T09:00:00+01:00"
                ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_language is None:
            object.__setattr__(self, "default_language", next(iter(self.text)))
        elif self.default_language not in self.text:
            raise ValueError(
                f"default_language {self.default_language!r} has no text"
                f" (the text has: {', '.join(self.text)})"
            )
        if self.publish_at is not None:
            if self.publish_at.tzinfo is None or self.publish_at.utcoffset() is None:
                if self.timezone is None:
                    raise ValueError(
                        f"publish_at {self.publish_at.isoformat()} has no UTC offset: add one"
                        " (e.g. +01:00) or name a `timezone`"
                    )
                local = self.publish_at.replace(tzinfo=ZoneInfo(self.timezone))
                object.__setattr__(self, "publish_at", local)
            object.__setattr__(self, "publish_at", self.publish_at.astimezone(UTC))
        chosen = [
            name
            for name, given in (
                ("publish_at", self.publish_at is not None),
                ("publish_at: now", self.publish_now),
                ("campaign", self.campaign is not None),
            )
            if given
        ]
        if not chosen:
            raise ValueError("say when: give `publish_at` (a time, or `now`) or a `campaign`")
        if len(chosen) > 1:
            raise ValueError(f"give only one of {' and '.join(chosen)}")
        for target, override in self.overrides.items():
            if override.language and override.language not in {*self.text, *override.text}:
                raise ValueError(
                    f"overrides.{target}.language: {override.language!r} has no text in the post"
                )
        unknown = sorted(set(self.overrides) - set(self.targets))
        if unknown:
            raise ValueError(f"overrides for targets the post does not name: {', '.join(unknown)}")
        return self

    @property
    def main_language(self) -> str:
        assert self.default_language is not None
        return self.default_language

    def hashtags_for(self, language: str, target: str | None = None) -> list[str]:
        """Shared, then per-language, then the target's extra hashtags; no duplicates."""
        tags = [*self.hashtags, *self.language_hashtags.get(language, [])]
        if target is not None and target in self.overrides:
            tags += self.overrides[target].hashtags
        seen: set[str] = set()
        unique = []
        for tag in tags:
            if tag.casefold() not in seen:
                seen.add(tag.casefold())
                unique.append(tag)
        return unique

    def language_for(self, target: str, target_languages: list[str]) -> str:
        """The override's language, else the target's first language the post has, else the
        default."""
        override = self.overrides.get(target)
        if override is not None and override.language is not None:
            return override.language
        for language in target_languages:
            if language in self.text:
                return language
        return self.main_language

    def text_for(self, target: str, language: str) -> str:
        override = self.overrides.get(target)
        if override is not None and language in override.text:
            return override.text[language]
        return self.text.get(language) or self.text[self.main_language]

    def canonical_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
