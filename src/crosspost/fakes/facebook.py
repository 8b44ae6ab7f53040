"""A fake Facebook Graph API (Pages) on loopback that keeps Graph's rules.

It checks the Bearer token and the Page id, the 63,206-character message limit, refuses a
message identical to one posted recently (#506), takes photos (a multipart `source` file or a
`url`), unpublished photos and `attached_media`, lists the feed with `since`, `fields` and cursor
paging, deletes posts, and throttles after `calls_per_window` calls (#32 by default) with
`X-App-Usage` and `X-Business-Use-Case-Usage` headers. Error bodies have Graph's shape.

    fake.fail_next("POST", "/feed", status=500, graph_code=2)
    fake.fail_next("POST", "/feed", fault="reset", after_create=True)

Run alone: `python -m crosspost.fakes.facebook --port 8081 --latency 0.15`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import urlencode

from crosspost.fakes.server import (
    FakePlatform,
    Reply,
    Request,
    serve_until_interrupted,
)

MAX_MESSAGE = 63_206
_VERSIONED = re.compile(r"^/v\d+\.\d+/(?P<rest>[^?]*)$")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")
THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80001: "(#80001) There have been too many calls to this Page account. Wait a bit and try"
    " again.",
}
TRANSIENT_MESSAGES = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
}


@dataclass
class FakePost:
    id: str
    message: str
    created_at: float
    link: str | None = None
    photo_ids: list[str] = field(default_factory=list)

    @property
    def created_time(self) -> str:
        return datetime.fromtimestamp(self.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


@dataclass
class FakePhoto:
    id: str
    published: bool
    alt: str | None
    caption: str
    size: int  # bytes uploaded, or 0 for a URL
    url: str | None = None
    attached_to: str | None = None


@dataclass
class _Scripted:
    method: str
    path: str
    reply: Reply
    after_create: bool


class FakeGraph(FakePlatform):
    def __init__(
        self,
        *,
        page_id: str = "123456789",
        token: str = "fake-page-token",  # noqa: S107 (a fake's test token)
        duplicate_window: float = 3600.0,
        calls_per_window: int | None = None,
        window: float = 3600.0,
        throttle_code: int = 32,
    ) -> None:
        super().__init__()
        self.page_id = page_id
        self.token = token
        self.duplicate_window = duplicate_window
        self.calls_per_window = calls_per_window
        self.window = window
        self.throttle_code = throttle_code
        self.posts: dict[str, FakePost] = {}
        self.photos: dict[str, FakePhoto] = {}
        self._calls: deque[float] = deque()
        self._blocked_until = 0.0
        self._scripted: list[_Scripted] = []
        self._next_id = 1000

    # --- test controls -----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        graph_code: int | None = 2,
        subcode: int | None = None,
        message: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        fault: str | None = None,
        after_create: bool = False,
        delay: float = 0.0,
    ) -> None:
        """The next `method` request whose path ends with `path` fails this way.

        `fault` is "reset" or "hang" (see fakes.server); with `after_create` the request is
        carried out first. `body` replaces the Graph error body (e.g. a recorded fixture)."""
        if body is None and fault is None:
            body = self.error_body(graph_code or 1, message, subcode)
            if graph_code in TRANSIENT_MESSAGES:
                body["error"]["is_transient"] = True
        reply = Reply(status, body, dict(headers or {}), fault, delay)
        with self.lock:
            self._scripted.append(_Scripted(method.upper(), path, reply, after_create))

    def reply_next(self, method: str, path: str, body: Any, status: int = 200) -> None:
        """The next matching request gets this canned answer (e.g. a recorded feed page)."""
        with self.lock:
            self._scripted.append(_Scripted(method.upper(), path, Reply(status, body), False))

    def throttle_for(self, minutes: float, code: int | None = None) -> None:
        """Refuse every call for `minutes`, as Graph does once a limit is reached."""
        with self.lock:
            self._blocked_until = time.time() + minutes * 60
            if code is not None:
                self.throttle_code = code

    def posted(self) -> list[FakePost]:
        with self.lock:
            return sorted(self.posts.values(), key=lambda post: post.created_at)

    @staticmethod
    def error_body(
        code: int, message: str | None = None, subcode: int | None = None
    ) -> dict[str, Any]:
        text = message or THROTTLE_MESSAGES.get(code) or TRANSIENT_MESSAGES.get(code)
        error: dict[str, Any] = {
            "message": text or f"(#{code}) Error",
            "type": "OAuthException",
            "code": code,
        }
        if subcode is not None:
            error["error_subcode"] = subcode
        error["fbtrace_id"] = secrets.token_urlsafe(16)
        return {"error": error}

    # --- serving -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        with self.lock:
            reply = self._handle(request)
            given = {name.lower() for name in reply.headers}
            usage = self._usage_headers()
            reply.headers.update({k: v for k, v in usage.items() if k.lower() not in given})
            return reply

    def _handle(self, request: Request) -> Reply:
        now = time.time()
        scripted = self._take_script(request)
        if scripted is not None and not scripted.after_create:
            return scripted.reply
        match = _VERSIONED.match(request.path)
        if match is None:
            return self._error(400, 2500, f"Unknown path components: {request.path}")
        if not self._authorised(request):
            reply = self._error(400, 190, "Invalid OAuth access token - Cannot parse access token")
            reply.headers["WWW-Authenticate"] = (
                'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token"'
            )
            return reply
        throttled = self._throttle(now)
        if throttled is not None:
            return throttled
        reply = self._route(request, match["rest"].strip("/").split("/"), now)
        if scripted is not None and reply.status < 400:
            return scripted.reply  # the work is done; the answer is lost
        return reply

    def _take_script(self, request: Request) -> _Scripted | None:
        for index, scripted in enumerate(self._scripted):
            if scripted.method == request.method and request.path.endswith(scripted.path):
                return self._scripted.pop(index)
        return None

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        # Graph also takes the token as a query parameter; crosspost must not, tests check.
        given = given or _first(request.query, "access_token")
        return given is not None and secrets.compare_digest(given, self.token)

    def _throttle(self, now: float) -> Reply | None:
        while self._calls and self._calls[0] <= now - self.window:
            self._calls.popleft()
        if self.calls_per_window is not None and len(self._calls) >= self.calls_per_window:
            self._blocked_until = max(self._blocked_until, self._calls[0] + self.window)
        if now < self._blocked_until:
            return self._error(400, self.throttle_code)
        self._calls.append(now)
        return None

    def _usage_headers(self) -> dict[str, str]:
        now = time.time()
        limit = self.calls_per_window
        percent = 100 if now < self._blocked_until else 0
        if limit:
            percent = max(percent, min(100, math.ceil(100 * len(self._calls) / limit)))
        regain = max(0, math.ceil((self._blocked_until - now) / 60))
        usage = {"call_count": percent, "total_cputime": 1, "total_time": 1}
        business = {
            self.page_id: [{"type": "pages", **usage, "estimated_time_to_regain_access": regain}]
        }
        return {
            "X-App-Usage": json.dumps(usage),
            "X-Business-Use-Case-Usage": json.dumps(business),
        }

    def _route(self, request: Request, parts: list[str], now: float) -> Reply:
        method = request.method
        if len(parts) == 2 and parts[1] in ("feed", "photos"):
            if parts[0] != self.page_id:
                return self._missing(parts[0], method)
            if method == "POST" and parts[1] == "feed":
                return self._create_post(request.form(), now)
            if method == "POST":
                return self._create_photo(request, now)
            if method == "GET" and parts[1] == "feed":
                return self._list_feed(request)
        if len(parts) == 1 and method == "DELETE":
            return self._delete(parts[0])
        return self._missing("/".join(parts), method)

    def _create_post(self, form: dict[str, list[str]], now: float) -> Reply:
        message = _first(form, "message") or ""
        link = _first(form, "link")
        attached = [value for _, value in _indexed(form, "attached_media")]
        if not (message or link or attached):
            return self._error(400, 100, "(#100) Missing message or attachment")
        if len(message) > MAX_MESSAGE:
            # Graph's exact wording for this case is not documented; the code is #100.
            return self._error(
                400, 100, f"(#100) Param message must be at most {MAX_MESSAGE} characters long"
            )
        if message and self._recent_duplicate(message, now):
            return self._error(400, 506, "(#506) Duplicate status message")
        photo_ids: list[str] = []
        for raw in attached:
            try:
                photo_id = str(json.loads(raw)["media_fbid"])
            except (ValueError, KeyError, TypeError):
                return self._error(400, 100, "(#100) Invalid attached_media")
            photo = self.photos.get(photo_id)
            if photo is None or photo.published or photo.attached_to is not None:
                return self._error(400, 100, f"(#100) Invalid media_fbid {photo_id}")
            photo_ids.append(photo_id)
        post = FakePost(self._new_id(page=True), message, now, link, photo_ids)
        self.posts[post.id] = post
        for photo_id in photo_ids:
            self.photos[photo_id].attached_to = post.id
        return Reply(200, {"id": post.id})

    def _create_photo(self, request: Request, now: float) -> Reply:
        fields, files = _form_fields(request)
        published = (fields.get("published") or "true").lower() != "false"
        content = files.get("source")
        url = fields.get("url")
        if content is None and not url:
            return self._error(400, 324, "(#324) Requires upload file")
        if content is not None and not content.startswith(_IMAGE_MAGIC):
            return self._error(400, 324, "(#324) Missing or invalid image file")
        caption = fields.get("caption") or fields.get("message") or ""
        if len(caption) > MAX_MESSAGE:
            return self._error(400, 100, "(#100) Param caption is too long")
        photo = FakePhoto(
            self._new_id(page=False),
            published,
            fields.get("alt_text_custom"),
            caption,
            len(content or b""),
            url,
        )
        self.photos[photo.id] = photo
        if not published:
            return Reply(200, {"id": photo.id})
        post = FakePost(self._new_id(page=True), caption, now, None, [photo.id])
        self.posts[post.id] = post
        photo.attached_to = post.id
        return Reply(200, {"id": photo.id, "post_id": post.id})

    def _list_feed(self, request: Request) -> Reply:
        wanted = (_first(request.query, "fields") or "id,message,created_time").split(",")
        since = float(_first(request.query, "since") or 0)
        limit = min(100, int(_first(request.query, "limit") or 25))
        offset = int(_first(request.query, "after") or 0)
        newest_first = sorted(self.posts.values(), key=lambda p: p.created_at, reverse=True)
        matching = [post for post in newest_first if post.created_at >= since]
        page = matching[offset : offset + limit]
        data = [self._post_fields(post, wanted) for post in page]
        body: dict[str, Any] = {"data": data}
        if offset + limit < len(matching):
            query = {k: v[0] for k, v in request.query.items() if k != "access_token"}
            query["after"] = str(offset + limit)
            host = request.headers.get("host", "127.0.0.1")
            body["paging"] = {
                "cursors": {"before": str(offset), "after": str(offset + limit)},
                "next": f"http://{host}{request.path}?{urlencode(query)}",
            }
        return Reply(200, body)

    def _post_fields(self, post: FakePost, wanted: list[str]) -> dict[str, Any]:
        page, _, story = post.id.partition("_")
        every = {
            "id": post.id,
            "message": post.message,
            "created_time": post.created_time,
            "permalink_url": f"https://www.facebook.com/{page}/posts/{story}/",
        }
        return {name: every[name] for name in wanted if every.get(name)}

    def _delete(self, object_id: str) -> Reply:
        if object_id in self.posts:
            for photo_id in self.posts.pop(object_id).photo_ids:
                self.photos.pop(photo_id, None)
            return Reply(200, {"success": True})
        if object_id in self.photos:
            del self.photos[object_id]
            return Reply(200, {"success": True})
        return self._missing(object_id, "DELETE")

    def _recent_duplicate(self, message: str, now: float) -> bool:
        return any(
            post.message == message and now - post.created_at < self.duplicate_window
            for post in self.posts.values()
        )

    def _new_id(self, *, page: bool) -> str:
        self._next_id += 1
        return f"{self.page_id}_{self._next_id}" if page else str(self._next_id)

    def _missing(self, object_id: str, method: str) -> Reply:
        verb = {"GET": "get", "DELETE": "delete"}.get(method, "post")
        return self._error(
            400,
            100,
            f"Unsupported {verb} request. Object with ID '{object_id}' does not exist, cannot be"
            " loaded due to missing permissions, or does not support this operation.",
            subcode=33,
        )

    def _error(
        self, status: int, code: int, message: str | None = None, subcode: int | None = None
    ) -> Reply:
        return Reply(status, self.error_body(code, message, subcode))


def _first(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _indexed(form: dict[str, list[str]], name: str) -> list[tuple[int, str]]:
    pattern = re.compile(re.escape(name) + r"\[(\d+)\]$")
    found = [(int(m[1]), values[0]) for key, values in form.items() if (m := pattern.match(key))]
    return sorted(found)


def _form_fields(request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """Fields and files of a urlencoded or multipart/form-data body."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return {k: v[0] for k, v in request.form().items()}, {}
    head = f"Content-Type: {kind}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.body)
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is not None:
            files[name] = payload
        else:
            fields[name] = payload.decode("utf-8")
    return fields, files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Facebook Graph API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to replies")
    parser.add_argument("--page-id", default="123456789")
    parser.add_argument("--token", default="fake-page-token")
    parser.add_argument("--calls-per-window", type=int, default=None)
    args = parser.parse_args(argv)
    fake = FakeGraph(page_id=args.page_id, token=args.token, calls_per_window=args.calls_per_window)
    fake.latency = args.latency
    serve_until_interrupted(fake, args.port, f"fake Graph API (page {args.page_id})")


if __name__ == "__main__":
    main()
