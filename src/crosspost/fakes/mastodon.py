"""A fake Mastodon server that enforces the rules crosspost relies on.

Bearer tokens, each its own account (401 with `WWW-Authenticate` otherwise), the instance's limits
(`/api/v2/instance`), status length by Mastodon's counting (URLs 23, remote mentions as their
local part, grapheme clusters, spoiler plus text), `Idempotency-Key` (the same status for a
repeated key within an hour), asynchronous media (202, then 206 until processed, then 200;
a status naming unprocessed media is refused), and `X-RateLimit-*` headers on every response
(429 once a window is used up). Scripted faults are consumed by the requests they match:

    fake.fail_next("POST", "/api/v1/statuses", status=503)
    fake.fail_next("POST", "/api/v1/statuses", fault="reset", after_create=True)
    fake.fail_next("POST", "/api/v1/statuses", status=429, headers={"Retry-After": "2"})
    fake.fail_next("POST", "/api/v1/statuses", fault="hang", delay=2.0)

Run it alone: `python -m crosspost.fakes.mastodon --port 8301 --latency 0.15`.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import fnmatch
import html
import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import regex

from crosspost.fakes.server import (
    FakePlatform,
    Reply,
    Request,
    serve_until_interrupted,
)

_URL = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,:;!?'\")\]]")
_REMOTE_MENTION = re.compile(r"(?<![=/\w])@(\w+(?:[\w.-]*\w)?)@[\w.-]*\w", re.ASCII)
_GRAPHEME = regex.compile(r"\X")
_STATUS_PATH = re.compile(r"^/api/v1/statuses/(\w+)$")
_MEDIA_PATH = re.compile(r"^/api/v1/media/(\w+)$")
_ACCOUNT_STATUSES = re.compile(r"^/api/v1/accounts/(\w+)/statuses$")
VISIBILITIES = ("public", "unlisted", "private", "direct")
IDEMPOTENCY_SECONDS = 3600


def status_length(text: str, spoiler_text: str) -> int:
    """StatusLengthValidator: URLs as 23 characters, `@user@domain` as `@user`, graphemes."""
    text = _REMOTE_MENTION.sub(r"@\1", _URL.sub("x" * 23, text))
    return len(_GRAPHEME.findall(spoiler_text + text))


def content_html(text: str) -> str:
    """Text as Mastodon serves it: paragraphs, line breaks, links split into spans."""

    def link(match: re.Match[str]) -> str:
        url = match.group(0)
        scheme, _, rest = url.partition("://")
        return (
            f'<a href="{url}" rel="nofollow noopener" target="_blank">'
            f'<span class="invisible">{scheme}://</span><span class="">{rest}</span>'
            '<span class="invisible"></span></a>'
        )

    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    rendered = [
        _URL.sub(link, html.escape(p, quote=False)).replace("\n", "<br />") for p in paragraphs
    ]
    return "".join(f"<p>{p}</p>" for p in rendered)


@dataclass(frozen=True)
class FakeAccount:
    id: str
    username: str


@dataclass
class FakeStatus:
    id: str
    text: str
    spoiler_text: str
    language: str | None
    visibility: str
    sensitive: bool
    media_ids: list[str]
    idempotency_key: str | None
    created_at: datetime
    deleted: bool = False
    account_id: str = ""


@dataclass
class FakeMedia:
    id: str
    kind: str
    mime_type: str
    size: int
    description: str | None
    polls_left: int  # 206 answers still to give before it is processed
    status_id: str | None = None
    account_id: str = ""

    @property
    def ready(self) -> bool:
        return self.polls_left <= 0


@dataclass
class Fault:
    method: str
    path: str  # fnmatch pattern
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    delay: float = 0.0
    after_create: bool = False


@dataclass
class _Window:
    start: float
    used: int = 0


class FakeMastodon(FakePlatform):
    def __init__(
        self,
        *,
        tokens: Iterable[str] | Mapping[str, str] = ("test-token",),
        username: str = "crosspost",
        max_characters: int = 500,
        max_media_attachments: int = 4,
        description_limit: int = 1500,
        async_media: bool = False,
        processing_polls: int = 2,
        requests_per_window: int = 300,
        request_window: float = 300.0,
        media_per_window: int = 30,
        media_window: float = 1800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        # Each token is its own account: a mapping names them (token -> username), else the
        # first is `username` and the others `username2`, `username3`...
        names = (
            dict(tokens)
            if isinstance(tokens, Mapping)
            else {t: username + (str(n) if n > 1 else "") for n, t in enumerate(tokens, 1)}
        )
        self.accounts = {
            token: FakeAccount(str(110000000000000000 + n), name)
            for n, (token, name) in enumerate(names.items(), 1)
        }
        self._accounts_by_id = {a.id: a for a in self.accounts.values()}
        self.username = username
        self.max_characters = max_characters
        self.max_media_attachments = max_media_attachments
        self.description_limit = description_limit
        self.async_media = async_media
        self.processing_polls = processing_polls
        self.limits = {
            "default": (requests_per_window, request_window),
            "media": (media_per_window, media_window),
        }
        self.clock = clock
        self.statuses: list[FakeStatus] = []
        self.media: dict[str, FakeMedia] = {}
        self.faults: list[Fault] = []
        self._by_id: dict[str, FakeStatus] = {}
        self._keys: dict[tuple[str, str], tuple[str, float]] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._ids = itertools.count(1)

    # --- test controls ---------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        body: Any = None,
        headers: dict[str, str] | None = None,
        fault: str | None = None,
        delay: float = 0.0,
        after_create: bool = False,
        times: int = 1,
    ) -> None:
        """Script the next `times` requests matching `method` and `path` (an fnmatch pattern)
        to fail; with `after_create`, the request is carried out first."""
        with self.lock:
            for _ in range(times):
                self.faults.append(
                    Fault(
                        method, path, status, body, dict(headers or {}), fault, delay, after_create
                    )
                )

    def live_statuses(self) -> list[FakeStatus]:
        with self.lock:
            return [s for s in self.statuses if not s.deleted]

    # --- dispatch --------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        with self.lock:
            fault = self._take_fault(request)
            if fault is not None and not fault.after_create:
                return self._fault_reply(fault, self._rate_headers(request, count=False)[0])
            reply = self._serve(request)
            if fault is not None:
                return self._fault_reply(fault, reply.headers)
            return reply

    def _take_fault(self, request: Request) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.method == request.method and fnmatch.fnmatchcase(request.path, fault.path):
                return self.faults.pop(index)
        return None

    @staticmethod
    def _fault_reply(fault: Fault, headers: dict[str, str]) -> Reply:
        body = fault.body
        if body is None:
            body = {"error": HTTPStatus(fault.status).phrase}
        return Reply(
            fault.status, body, {**headers, **fault.headers}, fault=fault.fault, delay=fault.delay
        )

    def _serve(self, request: Request) -> Reply:
        path = request.path.rstrip("/") or "/"
        if request.method == "GET" and path == "/api/v2/instance":
            return Reply(200, self._instance(request), self._rate_headers(request)[0])
        headers, over = self._rate_headers(request)
        account = self.accounts.get(self._token(request) or "")
        if account is None:
            return Reply(
                401,
                {"error": "The access token is invalid"},
                {
                    **headers,
                    "WWW-Authenticate": 'Bearer realm="Doorkeeper", error="invalid_token",'
                    ' error_description="The access token is invalid"',
                },
            )
        if over:
            return Reply(429, {"error": "Too many requests"}, headers)
        status, body = self._route(request, path, account)
        return Reply(status, body, headers)

    def _route(self, request: Request, path: str, account: FakeAccount) -> tuple[int, Any]:
        method = request.method
        if method == "POST" and path == "/api/v1/statuses":
            return self._create_status(request, account)
        if method == "POST" and path == "/api/v2/media":
            return self._upload(request, account)
        if method == "GET" and path == "/api/v1/accounts/verify_credentials":
            return 200, self._account_json(request, account)
        if method == "GET" and (match := _ACCOUNT_STATUSES.match(path)):
            return self._account_statuses(request, match.group(1))
        if method == "GET" and (match := _MEDIA_PATH.match(path)):
            return self._poll_media(request, match.group(1), account)
        if match := _STATUS_PATH.match(path):
            status = self._by_id.get(match.group(1))
            if status is None or status.deleted:
                return 404, {"error": "Record not found"}
            if method == "GET":
                return 200, self._status_json(request, status)
            if method == "DELETE":
                if status.account_id != account.id:  # only one's own
                    return 404, {"error": "Record not found"}
                status.deleted = True
                return 200, {**self._status_json(request, status), "text": status.text}
        return 404, {"error": "Not Found"}

    # --- statuses ----------------------------------------------------------------------------

    def _create_status(self, request: Request, account: FakeAccount) -> tuple[int, Any]:
        form = request.form()
        key = request.headers.get("idempotency-key")
        now = self.clock()
        if key:
            earlier = self._keys.get((account.id, key))
            if earlier is not None and now - earlier[1] < IDEMPOTENCY_SECONDS:
                return 200, self._status_json(request, self._by_id[earlier[0]])

        def one(name: str, default: str = "") -> str:
            return form.get(name, [default])[-1]

        text, spoiler = one("status"), one("spoiler_text")
        media_ids = form.get("media_ids[]", [])
        visibility = one("visibility", "public") or "public"
        if visibility not in VISIBILITIES:
            return 422, {"error": f"Validation failed: Visibility '{visibility}' is not valid"}
        if not text.strip() and not media_ids:
            return 422, {"error": "Validation failed: Text can't be blank"}
        if status_length(text, spoiler) > self.max_characters:
            return 422, {
                "error": f"Validation failed: Text character limit of {self.max_characters}"
                " exceeded"
            }
        if len(media_ids) > self.max_media_attachments:
            return 422, {"error": f"Cannot attach more than {self.max_media_attachments} files"}
        for media_id in media_ids:
            media = self.media.get(media_id)
            if media is None or media.account_id != account.id or media.status_id is not None:
                return 422, {"error": f"Validation failed: Media {media_id} does not exist"}
            if not media.ready:
                return 422, {
                    "error": "Cannot attach files that have not finished processing."
                    " Try again in a moment!"
                }
        status = FakeStatus(
            id=self._next_id(now),
            text=text,
            spoiler_text=spoiler,
            language=one("language") or None,
            visibility=visibility,
            sensitive=one("sensitive").lower() in ("true", "1") or bool(spoiler),
            media_ids=list(media_ids),
            idempotency_key=key,
            created_at=datetime.fromtimestamp(now, UTC),
            account_id=account.id,
        )
        for media_id in media_ids:
            self.media[media_id].status_id = status.id
        self.statuses.append(status)
        self._by_id[status.id] = status
        if key:
            self._keys[(account.id, key)] = (status.id, now)
        return 200, self._status_json(request, status)

    def _account_statuses(self, request: Request, account_id: str) -> tuple[int, Any]:
        if account_id not in self._accounts_by_id:
            return 404, {"error": "Record not found"}
        asked = request.query.get("limit", ["20"])[0]
        limit = min(int(asked), 40) if asked.isdigit() else 20
        mine = (s for s in reversed(self.statuses) if s.account_id == account_id)
        newest = [s for s in mine if not s.deleted][:limit]
        return 200, [self._status_json(request, s) for s in newest]

    def _status_json(self, request: Request, status: FakeStatus) -> dict[str, Any]:
        base = self._base(request)
        account = self._accounts_by_id[status.account_id]
        return {
            "id": status.id,
            "created_at": status.created_at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "in_reply_to_id": None,
            "in_reply_to_account_id": None,
            "sensitive": status.sensitive,
            "spoiler_text": status.spoiler_text,
            "visibility": status.visibility,
            "language": status.language,
            "uri": f"{base}/users/{account.username}/statuses/{status.id}",
            "url": f"{base}/@{account.username}/{status.id}",
            "content": content_html(status.text),
            "account": self._account_json(request, account),
            "media_attachments": [
                self._media_json(request, self.media[m]) for m in status.media_ids
            ],
            "mentions": [],
            "tags": [],
            "emojis": [],
            "reblog": None,
            "poll": None,
            "card": None,
        }

    # --- media -------------------------------------------------------------------------------

    def _upload(self, request: Request, account: FakeAccount) -> tuple[int, Any]:
        parts = _multipart(request)
        if "file" not in parts:
            return 422, {"error": "Validation failed: File can't be blank"}
        content, mime = parts["file"]
        description = parts["description"][0].decode() if "description" in parts else None
        if description is not None and len(description) > self.description_limit:
            return 422, {
                "error": "Validation failed: Description is too long (maximum is"
                f" {self.description_limit} characters)"
            }
        kind = mime.partition("/")[0]
        kind = kind if kind in ("image", "video", "audio") else "unknown"
        processing = self.async_media or kind == "video"
        media = FakeMedia(
            id=self._next_id(self.clock()),
            kind=kind,
            mime_type=mime,
            size=len(content),
            description=description,
            polls_left=self.processing_polls if processing else 0,
            account_id=account.id,
        )
        self.media[media.id] = media
        return (202 if processing else 200), self._media_json(request, media)

    def _poll_media(self, request: Request, media_id: str, account: FakeAccount) -> tuple[int, Any]:
        media = self.media.get(media_id)
        if media is None or media.account_id != account.id:
            return 404, {"error": "Record not found"}
        if not media.ready:
            media.polls_left -= 1
            return 206, self._media_json(request, media, processing=True)
        return 200, self._media_json(request, media)

    def _media_json(
        self, request: Request, media: FakeMedia, *, processing: bool | None = None
    ) -> dict[str, Any]:
        base = self._base(request)
        pending = not media.ready if processing is None else processing
        return {
            "id": media.id,
            "type": media.kind,
            "url": None if pending else f"{base}/system/media_attachments/{media.id}/original",
            "preview_url": f"{base}/system/media_attachments/{media.id}/small",
            "remote_url": None,
            "description": media.description,
            "meta": {},
            "blurhash": None,
        }

    # --- the rest ----------------------------------------------------------------------------

    def _instance(self, request: Request) -> dict[str, Any]:
        return {
            "domain": request.headers.get("host", "localhost"),
            "title": "Fake Mastodon",
            "version": "4.6.4",
            "configuration": {
                "statuses": {
                    "max_characters": self.max_characters,
                    "max_media_attachments": self.max_media_attachments,
                    "characters_reserved_per_url": 23,
                },
                "media_attachments": {"description_limit": self.description_limit},
            },
            "api_versions": {"mastodon": 11},
        }

    def _account_json(self, request: Request, account: FakeAccount) -> dict[str, Any]:
        return {
            "id": account.id,
            "username": account.username,
            "acct": account.username,
            "url": f"{self._base(request)}/@{account.username}",
        }

    def _rate_headers(self, request: Request, *, count: bool = True) -> tuple[dict[str, str], bool]:
        """The headers of the window this request falls in, and whether it is over the limit."""
        bucket = "media" if request.path.startswith("/api/v2/media") else "default"
        limit, period = self.limits[bucket]
        now = self.clock()
        start = now - now % period
        key = (self._token(request) or "anonymous", bucket)
        window = self._windows.get(key)
        if window is None or window.start != start:
            window = self._windows[key] = _Window(start)
        if count:
            window.used += 1
        reset = datetime.fromtimestamp(start + period, UTC)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - window.used)),
            "X-RateLimit-Reset": reset.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        }
        return headers, window.used > limit

    def _next_id(self, now: float) -> str:
        # Mastodon ids: milliseconds shifted left 16 bits plus a sequence; kept as text.
        return str((int(now * 1000) << 16) + next(self._ids) % 65536)

    @staticmethod
    def _token(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    @staticmethod
    def _base(request: Request) -> str:
        return f"http://{request.headers.get('host', 'localhost')}"


def _multipart(request: Request) -> dict[str, tuple[bytes, str]]:
    """Form parts by name: (content, content type)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return {}
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    parts: dict[str, tuple[bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
            parts[str(name)] = (content, part.get_content_type())
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Mastodon server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    parser.add_argument("--token", action="append", help="a valid access token (repeatable)")
    parser.add_argument("--max-characters", type=int, default=500)
    parser.add_argument(
        "--requests-per-window", type=int, default=300, help="per token per 5 minutes"
    )
    parser.add_argument("--async-media", action="store_true", help="every upload answers 202")
    args = parser.parse_args(argv)
    fake = FakeMastodon(
        tokens=args.token or ["test-token"],
        max_characters=args.max_characters,
        requests_per_window=args.requests_per_window,
        async_media=args.async_media,
    )
    fake.latency = args.latency
    serve_until_interrupted(fake, args.port, "fake Mastodon")


if __name__ == "__main__":
    main()
