"""Mastodon: statuses with media, language and an Idempotency-Key."""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import requests

from crosspost import rendering
from crosspost.adapter import (
    Adapter,
    Published,
    RenderContext,
    RenderedMedia,
    Rendition,
    TargetConfig,
    rendered_media,
)
from crosspost.errors import OutcomeUnknown, Permanent, PublishError, Transient
from crosspost.http import classify_status, send
from crosspost.post import HttpUrl, Post

# Mastodon's StatusLengthValidator: an http(s) URL counts as 23 characters, a remote mention
# `@user@domain` as `@user`, and the rest in grapheme clusters.
URL_LENGTH = 23
_URL_RE = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,:;!?'\")\]]")
_MENTION_RE = re.compile(r"(?<![=/\w])@(\w+(?:[\w.-]*\w)?)@[\w.-]*\w", re.ASCII)
_TAG_RE = re.compile(r"<[^>]*>")
_BREAK_RE = re.compile(r"<br\s*/?>|</p>\s*<p>", re.IGNORECASE)


def countable_length(text: str, spoiler_text: str = "") -> int:
    """The length Mastodon checks against `max_characters`: spoiler text plus text."""
    text = _URL_RE.sub("x" * URL_LENGTH, text)
    text = _MENTION_RE.sub(r"@\1", text)
    return rendering.grapheme_count(spoiler_text + text)


def plain_text(content_html: str) -> str:
    """A status's HTML `content` as comparable text: tags gone, whitespace collapsed."""
    text = _TAG_RE.sub("", _BREAK_RE.sub("\n", content_html))
    return comparable(html.unescape(text))


def comparable(text: str) -> str:
    # Mastodon renders a remote mention without its domain, so compare without it too.
    return " ".join(_MENTION_RE.sub(r"@\1", text).split())


class MastodonTarget(TargetConfig):
    platform: Literal["mastodon"] = "mastodon"
    base_url: HttpUrl
    token_env: str
    visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    max_characters: int | None = None  # else the instance's own limit

    def secret_variable(self) -> str | None:
        return self.token_env


@dataclass(frozen=True)
class InstanceLimits:
    max_characters: int = 500
    max_media_attachments: int = 4
    description_limit: int = 1500


class MastodonAdapter(Adapter):
    platform = "mastodon"
    config_model = MastodonTarget
    max_length = 500  # when the instance does not say
    supports_idempotency_key = True
    idempotency_window = timedelta(hours=1)  # Mastodon keeps an Idempotency-Key an hour
    max_media_bytes: ClassVar[int] = 40 * 1024 * 1024
    media_url_schemes: ClassVar[tuple[str, ...]] = ("https",)
    media_poll_interval: ClassVar[float] = 1.0
    media_poll_limit: ClassVar[int] = 60
    instance_timeout: ClassVar[float] = 3.0
    lookup_page_size: ClassVar[int] = 40
    clock_skew: ClassVar[timedelta] = timedelta(minutes=2)
    # GET /api/v2/instance, once per base URL in the process.
    instance_cache: ClassVar[dict[str, InstanceLimits]] = {}

    def __init__(self, config: TargetConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        assert isinstance(config, MastodonTarget)
        self.target = config
        self.base_url = config.base_url.rstrip("/")
        self.rate_limit: tuple[int, int, datetime] | None = None
        self.rate_limit_reset: datetime | None = None

    # --- rendering -------------------------------------------------------------------------

    def instance_limits(self) -> InstanceLimits:
        cached = self.instance_cache.get(self.base_url)
        if cached is not None:
            return cached
        try:
            response = send(
                self.session,
                "GET",
                f"{self.base_url}/api/v2/instance",
                timeout=self.instance_timeout,
            )
            response.raise_for_status()
            config = response.json()["configuration"]
            limits = InstanceLimits(
                max_characters=int(config["statuses"]["max_characters"]),
                max_media_attachments=int(config["statuses"].get("max_media_attachments", 4)),
                description_limit=int(
                    config.get("media_attachments", {}).get("description_limit", 1500)
                ),
            )
        except (PublishError, requests.RequestException, ValueError, KeyError, TypeError):
            return InstanceLimits(max_characters=self.max_length)  # not cached: ask again later
        self.instance_cache[self.base_url] = limits
        return limits

    def render(self, post: Post, post_id: str, context: RenderContext | None = None) -> Rendition:
        name = self.target.name
        language = post.language_for(name, self.target.languages)
        body = post.text_for(name, language)
        text = rendering.compose(body, post.links, post.hashtags_for(language, name), language)
        spoiler = post.content_warning or ""
        limit = self.target.max_characters or self.instance_limits().max_characters

        def count(candidate: str) -> int:
            return countable_length(candidate, spoiler)

        shortened = False
        link = post.links[0].url if post.links else None
        if count(text) > limit and self.target.shorten and self.target.mirror_url:
            link = f"{self.target.mirror_url.rstrip('/')}/{post_id}"
            text = rendering.shorten(text, limit, count, link)
            shortened = True
        media = rendered_media(post, language)
        options: dict[str, Any] = {
            "visibility": self.target.visibility,
            "spoiler_text": spoiler,
            "sensitive": post.sensitive or bool(spoiler),
            "language": language,
        }
        return Rendition(
            post_id=post_id,
            target=name,
            platform=self.platform,
            language=language,
            text=text,
            length=count(text),
            limit=limit,
            media=media,
            link=link,
            options=options,
            shortened=shortened,
        )

    def validate(self, rendition: Rendition) -> list[str]:
        problems = super().validate(rendition)
        if not rendition.media:
            return problems
        limits = self.instance_limits()
        if len(rendition.media) > limits.max_media_attachments:
            problems.append(
                f"{len(rendition.media)} media, {rendition.target} allows"
                f" {limits.max_media_attachments}"
            )
        for number, media in enumerate(rendition.media, 1):
            if len(media.alt) > limits.description_limit:
                problems.append(
                    f"media {number}: alt text has {len(media.alt)} characters,"
                    f" {rendition.target} allows {limits.description_limit}"
                )
        return problems

    # --- publishing ------------------------------------------------------------------------

    def publish(self, rendition: Rendition, idempotency_key: str) -> Published:
        media_ids = [self._upload(media) for media in rendition.media]
        options = rendition.options
        form: list[tuple[str, str]] = [("status", rendition.text)]
        form += [("media_ids[]", media_id) for media_id in media_ids]
        form.append(("language", rendition.language))
        form.append(("visibility", str(options.get("visibility", self.target.visibility))))
        if options.get("spoiler_text"):
            form.append(("spoiler_text", str(options["spoiler_text"])))
        if options.get("sensitive"):
            form.append(("sensitive", "true"))
        response = self._request(
            "POST",
            "/api/v1/statuses",
            may_land=True,
            data=form,
            headers={"Idempotency-Key": idempotency_key},
        )
        # A status POST answered 2xx landed, whatever its body says: reconcile, never resend.
        status = self._json(response, "POST /api/v1/statuses", OutcomeUnknown)
        if not isinstance(status, dict) or "id" not in status:
            raise OutcomeUnknown("POST /api/v1/statuses: the answer holds no status id")
        return Published(remote_id=str(status["id"]), remote_url=status.get("url"))

    def _upload(self, media: RenderedMedia) -> str:
        content, name = self._media_bytes(media)
        file = (name, content, media.mime_type or "application/octet-stream")
        data = {"description": media.alt} if media.alt else {}
        response = self._request("POST", "/api/v2/media", files={"file": file}, data=data)
        attachment = self._json(response, "POST /api/v2/media")
        if not isinstance(attachment, dict) or "id" not in attachment:
            raise Transient("POST /api/v2/media: the answer holds no media id")
        media_id = str(attachment["id"])
        if response.status_code == 202:
            self._await_media(media_id)
        return media_id

    def _await_media(self, media_id: str) -> None:
        # The one wait an adapter does: the platform is still transcoding an upload it
        # accepted (202), and the status cannot name it before it is ready. Bounded; not a retry.
        for _ in range(self.media_poll_limit):
            time.sleep(self.media_poll_interval)
            response = self._request("GET", f"/api/v1/media/{media_id}")
            if response.status_code == 200:
                return
        waited = self.media_poll_interval * self.media_poll_limit
        raise Transient(f"media {media_id} still processing after {waited:g}s")

    def _media_bytes(self, media: RenderedMedia) -> tuple[bytes, str]:
        if not media.is_url:
            path = Path(media.source)
            try:
                return path.read_bytes(), path.name
            except OSError as exc:
                raise Permanent(f"{path.name}: cannot be read ({exc.strerror})") from None
        parts = urlsplit(media.source)
        where = f"GET {parts.netloc}{parts.path}"
        if parts.scheme not in self.media_url_schemes:
            raise Permanent(f"{where}: media URLs must be {' or '.join(self.media_url_schemes)}")
        response = self._checked(
            where,
            send(self.session, "GET", media.source, timeout=self.timeout, stream=True),
            api=False,
        )
        chunks: list[bytes] = []
        size = 0
        with response:
            try:
                for chunk in response.iter_content(1 << 16):
                    size += len(chunk)
                    if size > self.max_media_bytes:
                        raise Permanent(f"{where}: larger than {self.max_media_bytes} bytes")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise Transient(f"{where}: download failed ({type(exc).__name__})") from None
        return b"".join(chunks), Path(parts.path).name or "media"

    # --- reconciliation and removal ----------------------------------------------------------

    def lookup(
        self, rendition: Rendition, idempotency_key: str, since: datetime
    ) -> Published | None:
        where = "GET /api/v1/accounts/verify_credentials"
        account = self._json(self._request("GET", "/api/v1/accounts/verify_credentials"), where)
        try:
            path = f"/api/v1/accounts/{account['id']}/statuses"
            where = f"GET {path}"
            page = {"limit": self.lookup_page_size}
            statuses = self._json(self._request("GET", path, params=page), where)
            wanted = comparable(rendition.text)
            earliest = since - self.clock_skew
            for status in statuses:
                created = datetime.fromisoformat(status["created_at"].replace("Z", "+00:00"))
                if created < earliest:
                    break  # newest first: the rest are older still
                if plain_text(status.get("content") or "") == wanted:
                    return Published(remote_id=str(status["id"]), remote_url=status.get("url"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise Transient(f"{where}: an answer not shaped like Mastodon's") from None
        return None

    def delete(self, remote_id: str) -> None:
        try:
            self._request("DELETE", f"/api/v1/statuses/{remote_id}")
        except Permanent as exc:
            if exc.http_status != 404:
                raise
            # already gone: what delete wanted

    # --- the HTTP boundary -------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, may_land: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One API call. Only a status POST can leave an unknown outcome: media uploads and
        reads are safe to send again, so a lost answer there is Transient."""
        if self._secret is None:
            raise Permanent(f"{method} {path}: no access token configured for {self.target.name}")
        headers = {
            "Authorization": f"Bearer {self._secret.get_secret_value()}",
            **kwargs.pop("headers", {}),
        }
        where = f"{method} {path}"
        try:
            response = send(
                self.session,
                method,
                f"{self.base_url}{path}",
                timeout=self.timeout,
                headers=headers,
                **kwargs,
            )
        except OutcomeUnknown as exc:
            if may_land:
                raise OutcomeUnknown(f"{exc} ({path})") from None
            raise Transient(f"{exc} ({path})") from None
        except Transient as exc:
            raise Transient(f"{exc} ({path})") from None
        return self._checked(where, response)

    def _checked(
        self, where: str, response: requests.Response, *, api: bool = True
    ) -> requests.Response:
        if api:
            self._note_rate_limit(response)
        if 200 <= response.status_code < 300:
            return response
        message = f"{where}: HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            # The text is localised (the account's locale): shown to people, never matched.
            message += f": {body['error']}"
        raise classify_status(response, message)

    def paused_until(self) -> datetime | None:
        return self.rate_limit_reset

    def _note_rate_limit(self, response: requests.Response) -> None:
        limit = response.headers.get("X-RateLimit-Limit")
        remaining = response.headers.get("X-RateLimit-Remaining")
        reset = parse_reset(response.headers.get("X-RateLimit-Reset"))
        if limit is None or remaining is None or reset is None:
            return
        try:
            self.rate_limit = (int(limit), int(remaining), reset)
        except ValueError:
            return
        self.rate_limit_reset = reset if self.rate_limit[1] <= 0 else None

    @staticmethod
    def _json(
        response: requests.Response, where: str, error: type[PublishError] = Transient
    ) -> Any:
        try:
            return response.json()
        except ValueError:
            raise error(
                f"{where}: HTTP {response.status_code} with a body that is not JSON"
            ) from None


def parse_reset(value: str | None) -> datetime | None:
    """`X-RateLimit-Reset`: ISO 8601 UTC with microseconds, e.g. 2026-08-01T14:30:00.140610Z."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
