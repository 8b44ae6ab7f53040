"""Facebook Graph API, Pages: feed posts with links and photos.

Graph facts used here (developers.facebook.com, "Handling Errors", "Rate Limits", Page feed and
Photo references):
- every error is `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`;
- 4, 17, 32, 341, 613 and 80001 are throttling; 1 and 2 are temporary; 368 is a temporary block
  for a policy violation ("wait and retry"); 506 is a duplicate post; 190 a bad token;
- `X-Business-Use-Case-Usage` (Page tokens) carries `estimated_time_to_regain_access` in minutes,
  `X-App-Usage` / `X-Page-Usage` carry percentages of a rolling one-hour window;
- several photos in one post: upload each with `published=false`, then post `attached_media`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from pydantic import SecretStr, field_validator

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
from crosspost.errors import (
    ConfigError,
    OutcomeUnknown,
    Permanent,
    PublishError,
    RateLimited,
    Transient,
)
from crosspost.http import retry_at_from_headers, send
from crosspost.post import HttpUrl, Post

THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80001})
TRANSIENT_CODES = frozenset({1, 2})
POLICY_BLOCK_CODE = 368
NOT_FOUND = (100, 33)  # "Object with ID ... does not exist"
# Platform limits are a rolling hour; without a hint, waiting that long is always enough.
DEFAULT_THROTTLE_WAIT = timedelta(minutes=60)
# A policy block says only "wait and retry" and lasts hours to days; the dispatcher's
# max_lateness turns a post that would land too late into `missed`.
POLICY_BLOCK_WAIT = timedelta(hours=24)
USAGE_HEADERS = ("x-app-usage", "x-business-use-case-usage", "x-page-usage")
USAGE_FIELDS = ("call_count", "total_cputime", "total_time")
MAX_PHOTO_BYTES = 10 * 1024 * 1024  # Photo reference: static images under 10 MB
LOOKUP_PAGES = 2
LOOKUP_SLACK = timedelta(seconds=60)  # clock skew between us and Graph's created_time
PERMALINK_BASE = "https://www.facebook.com"
_TOKEN_IN_TEXT = re.compile(r"access_token=[^&\s\"']+")


class FacebookTarget(TargetConfig):
    platform: Literal["facebook"] = "facebook"
    base_url: HttpUrl = "https://graph.facebook.com"
    graph_version: str = "v25.0"
    page_id: str
    token_env: str

    @field_validator("graph_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"v\d+\.\d+", value):
            raise ValueError(f"{value!r} is not a Graph API version such as v25.0")
        return value

    @field_validator("page_id", mode="before")
    @classmethod
    def _page_id(cls, value: object) -> str:
        text = str(value)
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a numeric Page id")
        return text

    def secret_variable(self) -> str | None:
        return self.token_env


class FacebookAdapter(Adapter):
    platform = "facebook"
    config_model = FacebookTarget
    # Facebook documents no counting rule for the 63,206 limit; Python len() (code points) is
    # used, which equals UTF-16 units except for astral characters such as emoji.
    max_length = 63_206

    def __init__(
        self,
        config: TargetConfig,
        *,
        secret: SecretStr | None,
        session: requests.Session | None = None,
        timeout: float = 15.0,
    ) -> None:
        if not isinstance(config, FacebookTarget):
            raise ConfigError(f"{config.name}: not a facebook target")
        super().__init__(config, secret=secret, session=session, timeout=timeout)
        self.target = config
        self.usage = 0.0  # highest percentage of any Graph usage header seen last
        self.regain_access_at: datetime | None = None

    @staticmethod
    def count(text: str) -> int:
        return len(text)

    def render(self, post: Post, post_id: str, context: RenderContext | None = None) -> Rendition:
        target = self.target
        language = post.language_for(target.name, target.languages)
        message = rendering.compose(
            post.text_for(target.name, language),
            post.links,
            post.hashtags_for(language, target.name),
            language,
        )
        shortened = False
        if target.shorten and target.mirror_url and self.count(message) > self.max_length:
            full_post = f"{target.mirror_url.rstrip('/')}/{post_id}"
            message = rendering.shorten(message, self.max_length, self.count, full_post)
            shortened = True
        media = rendered_media(post, language)
        # Facebook draws a card for `link`; a post with photos shows the photos instead.
        link = post.links[0].url if post.links and not media else None
        return Rendition(
            post_id=post_id,
            target=target.name,
            platform=self.platform,
            language=language,
            text=message,
            length=self.count(message),
            limit=self.max_length,
            media=media,
            link=link,
            shortened=shortened,
        )

    def validate(self, rendition: Rendition) -> list[str]:
        problems = super().validate(rendition)
        for item in rendition.media:
            if item.mime_type and not item.mime_type.startswith("image/"):
                problems.append(f"{item.source}: only photos can be posted to Facebook")
            elif item.size is not None and item.size >= MAX_PHOTO_BYTES:
                problems.append(f"{item.source}: {item.size} bytes, Facebook takes under 10 MB")
        return problems

    def publish(self, rendition: Rendition, idempotency_key: str) -> Published:
        page = self.target.page_id
        photos = rendition.media
        if not photos:
            form = {"message": rendition.text}
            if rendition.link:
                form["link"] = rendition.link
            return self._published(self._call("POST", f"{page}/feed", data=form))
        if len(photos) == 1:
            body = self._upload(photos[0], {"caption": rendition.text})
            return self._published({"id": body.get("post_id") or body["id"]})
        form = {"message": rendition.text}
        for index, photo in enumerate(photos):
            try:
                photo_id = self._upload(photo, {"published": "false"})["id"]
            except OutcomeUnknown as exc:
                # An unpublished photo is invisible: a lost answer here published nothing.
                raise Transient(f"{exc} (an unpublished photo; nothing was posted)") from None
            form[f"attached_media[{index}]"] = json.dumps({"media_fbid": str(photo_id)})
        return self._published(self._call("POST", f"{page}/feed", data=form))

    def lookup(
        self, rendition: Rendition, idempotency_key: str, since: datetime
    ) -> Published | None:
        # Graph has no idempotency key: an earlier attempt shows as a post with our message.
        floor = since.astimezone(UTC) - LOOKUP_SLACK
        wanted = _normalised(rendition.text)
        url: str | None = self._url(f"{self.target.page_id}/feed")
        params: dict[str, str] | None = {
            "fields": "id,message,created_time,permalink_url",
            "since": str(int(floor.timestamp())),
            "limit": "25",
        }
        for _ in range(LOOKUP_PAGES):
            if url is None:
                break
            body = self._call("GET", url, params=params)
            for item in body.get("data") or []:
                created = _graph_time(item.get("created_time"))
                if _normalised(item.get("message") or "") == wanted and (
                    created is None or created >= floor
                ):
                    return self._published(item)
            url, params = self._next_page(body), None
        return None

    # Graph starts throttling at 100 %; stop a little before, until access is regained.
    usage_pause_threshold: ClassVar[float] = 95.0

    def paused_until(self) -> datetime | None:
        if self.usage >= self.usage_pause_threshold:
            return self.regain_access_at or datetime.now(UTC) + timedelta(minutes=5)
        return None

    def delete(self, remote_id: str) -> None:
        self._call("DELETE", remote_id, gone_ok=True)

    # --- the HTTP boundary -------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.target.base_url.rstrip('/')}/{self.target.graph_version}/{path}"

    def _call(
        self, method: str, path_or_url: str, *, gone_ok: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """One Graph request; `gone_ok` treats "object does not exist" as done (for deletes)."""
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        response = send(
            self.session, method, url, timeout=self.timeout, headers=self._auth(), **kwargs
        )
        now = datetime.now(UTC)
        self._read_usage(response.headers, now)
        body = _json_object(response)
        if response.ok and body is not None:
            return body
        if response.ok:
            # A success we cannot read: a write may well have happened.
            unreadable = Transient if method == "GET" else OutcomeUnknown
            raise unreadable(
                f"{self.target.name}: HTTP {response.status_code} without a JSON object",
                http_status=response.status_code,
            )
        error = (body or {}).get("error")
        error = error if isinstance(error, dict) else {}
        if gone_ok and (_int(error.get("code")), _int(error.get("error_subcode"))) == NOT_FOUND:
            return {}
        raise self._error(response, error, now)

    def _auth(self) -> dict[str, str]:
        if self._secret is None or not self._secret.get_secret_value():
            raise Permanent(f"{self.target.name}: no Page access token ({self.target.token_env})")
        return {"Authorization": f"Bearer {self._secret.get_secret_value()}"}

    def _upload(self, photo: RenderedMedia, form: dict[str, str]) -> dict[str, Any]:
        if photo.alt:
            form = {**form, "alt_text_custom": photo.alt}
        path = f"{self.target.page_id}/photos"
        if photo.is_url:
            return self._call("POST", path, data={**form, "url": photo.source})
        file = Path(photo.source)
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise Permanent(f"{file.name}: cannot be read ({exc.strerror})") from None
        kind = photo.mime_type or "application/octet-stream"
        return self._call("POST", path, data=form, files={"source": (file.name, content, kind)})

    def _published(self, body: Mapping[str, Any]) -> Published:
        post_id = str(body["id"])
        return Published(
            remote_id=post_id,
            remote_url=body.get("permalink_url") or f"{PERMALINK_BASE}/{post_id}",
        )

    def _next_page(self, body: Mapping[str, Any]) -> str | None:
        """`paging.next` on our own Graph host, without any token Graph put in its query."""
        link = (body.get("paging") or {}).get("next")
        if not isinstance(link, str):
            return None
        parts, base = urlsplit(link), urlsplit(self.target.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            return None  # never send the Bearer token to another host
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "access_token"])
        return urlunsplit(parts._replace(query=query))

    def _read_usage(self, headers: Mapping[str, str], now: datetime) -> None:
        usage = read_usage(headers)
        if usage is None:
            return
        self.usage, minutes = usage
        self.regain_access_at = now + timedelta(minutes=minutes) if minutes > 0 else None

    def _error(
        self, response: requests.Response, error: Mapping[str, Any], now: datetime
    ) -> PublishError:
        """Every unsuccessful Graph answer becomes one classified error, here and only here."""
        status = response.status_code
        code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
        text = self._describe(status, code, subcode, error)
        if code in THROTTLE_CODES or code == POLICY_BLOCK_CODE or status == 429:
            usage = read_usage(response.headers)
            if usage is not None and usage[1] > 0:
                retry_at = now + timedelta(minutes=usage[1])
            else:
                wait = POLICY_BLOCK_WAIT if code == POLICY_BLOCK_CODE else DEFAULT_THROTTLE_WAIT
                retry_at = retry_at_from_headers(response.headers, now) or now + wait
            return RateLimited(text, retry_at=retry_at, http_status=status)
        if code in TRANSIENT_CODES or error.get("is_transient") is True or status >= 500:
            return Transient(text, http_status=status)
        return Permanent(text, http_status=status)

    def _describe(
        self, status: int, code: int | None, subcode: int | None, error: Mapping[str, Any]
    ) -> str:
        parts = [f"{self.target.name}: HTTP {status}"]
        if code is not None:
            parts.append(f"Graph error {code}" + (f"/{subcode}" if subcode else ""))
        if error.get("type"):
            parts.append(str(error["type"]))
        if error.get("message"):
            parts.append(self._redact(str(error["message"])))
        if error.get("fbtrace_id"):
            parts.append(f"fbtrace_id {error['fbtrace_id']}")
        return ", ".join(parts)

    def _redact(self, text: str) -> str:
        text = _TOKEN_IN_TEXT.sub("access_token=[redacted]", text)
        token = self._secret.get_secret_value() if self._secret else ""
        return text.replace(token, "[redacted]") if token else text


def read_usage(headers: Mapping[str, str]) -> tuple[float, float] | None:
    """(highest usage percentage, minutes until access returns) from Graph's usage headers."""
    entries: list[Mapping[str, Any]] = []
    for name in USAGE_HEADERS:
        raw = headers.get(name)
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict) and any(field in value for field in USAGE_FIELDS):
            entries.append(value)
        elif isinstance(value, dict):  # business use case: {business id: [{...}, ...]}
            for group in value.values():
                if isinstance(group, list):
                    entries += [entry for entry in group if isinstance(entry, dict)]
    if not entries:
        return None
    usage = max((_number(e.get(f)) for e in entries for f in USAGE_FIELDS), default=0.0)
    wait = max((_number(e.get("estimated_time_to_regain_access")) for e in entries), default=0.0)
    return usage, wait


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def _int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _graph_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None
