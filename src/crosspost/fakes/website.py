"""A fake website that receives crosspost's signed webhooks the way a careful real one would.

It verifies every request with the `standardwebhooks` library (401 on a bad or missing signature
or a stale timestamp), validates the payload against the schema (400), keeps each `webhook-id`
once (a repeat is answered 200 again and not stored), and answers `{"url": ...}` for the post's
page. Faults are queued with `fail_next`.

    python -m crosspost.fakes.website --port 8081 --secret whsec_... --latency 0.15
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from crosspost.fakes.server import (
    FakePlatform,
    Reply,
    Request,
    serve_until_interrupted,
)
from crosspost.webhook_payload import DELETED, InvalidPayload, InvalidSignature, verify_and_parse


@dataclass(frozen=True)
class _Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    fault: str | None = None
    after_store: bool = False
    delay: float = 0.0

    def reply(self) -> Reply:
        body = self.body if self.body is not None else {"error": f"injected HTTP {self.status}"}
        return Reply(self.status, body, dict(self.headers), fault=self.fault, delay=self.delay)


class FakeWebsite(FakePlatform):
    """`events`: verified payloads in arrival order, repeats left out; `posts`: post id -> the
    latest `data`; `deleted`: ids of posts removed by a `post.deleted` event."""

    def __init__(
        self,
        secret: str,
        *,
        path: str = "/crosspost/hook",
        base_url: str = "https://website.example",
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.secret = secret
        self.path = path
        self.base_url = base_url.rstrip("/")
        self.validate = validate
        self.events: list[dict[str, Any]] = []
        self.posts: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.repeats = 0
        self.rejected: list[tuple[int, str]] = []  # (status, reason) of refused requests
        self._post_by_webhook_id: dict[str, str] = {}
        self._faults: deque[_Fault] = deque()

    def fail_next(
        self,
        status: int = 503,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        fault: str | None = None,
        after_store: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next request with `status` (or drop it: `fault="reset"`/`"hang"`);
        `after_store=True` acts on the request first, as a site that crashed while answering."""
        with self.lock:
            self._faults.append(
                _Fault(status, dict(headers or {}), body, fault, after_store, delay)
            )

    def handle(self, request: Request) -> Reply:
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and not fault.after_store:
            return fault.reply()
        if request.path != self.path:
            return self._refuse(404, f"no endpoint at {request.path}")
        if request.method != "POST":
            return self._refuse(405, "POST only")
        try:
            payload = verify_and_parse(
                request.body, request.headers, self.secret, validate=self.validate
            )
        except InvalidSignature as exc:
            return self._refuse(401, f"signature: {exc}")
        except InvalidPayload as exc:
            return self._refuse(400, f"payload: {exc}")
        post_id = self._store(request.headers["webhook-id"], payload)
        if fault is not None:
            return fault.reply()
        return Reply(200, {"url": f"{self.base_url}/posts/{post_id}"} if post_id else {})

    def _refuse(self, status: int, reason: str) -> Reply:
        with self.lock:
            self.rejected.append((status, reason))
        return Reply(status, {"error": reason})

    def _store(self, webhook_id: str, payload: dict[str, Any]) -> str | None:
        """Keep a verified event once per `webhook-id`; the id of the post it concerns."""
        data = payload["data"]
        with self.lock:
            if webhook_id in self._post_by_webhook_id:
                self.repeats += 1
                return self._post_by_webhook_id[webhook_id] or None
            post_id = data.get("id") or self._post_by_webhook_id.get(data.get("webhook_id", ""))
            self._post_by_webhook_id[webhook_id] = post_id or ""
            self.events.append(payload)
            if post_id and payload["type"] == DELETED:
                self.posts.pop(post_id, None)
                self.deleted.append(post_id)
            elif post_id:
                self.posts[post_id] = data
            return post_id or None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake website receiving crosspost webhooks.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True, help="whsec_<base64>, as the target uses")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--path", default="/crosspost/hook")
    parser.add_argument("--base-url", default="https://website.example")
    args = parser.parse_args(argv)
    fake = FakeWebsite(args.secret, path=args.path, base_url=args.base_url)
    fake.latency = args.latency
    serve_until_interrupted(fake, args.port, f"fake website (hook {args.path})")


if __name__ == "__main__":
    main()
