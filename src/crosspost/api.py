"""The HTTP API: managers queue and manage posts over HTTP; the same rules as `crosspost add`.

Every post goes through `Intake.check`, so the API accepts and refuses exactly what the command
line does; errors are mapped to HTTP in one place (`_install_error_handlers`): `InputError` →
422 naming each field, `NotFound` → 404, `Conflict` → 409, `ConfigError` and `QueueError` → 503.
Bearer auth guards `/api/*`; the mirror, `/health` and `/metrics` are public.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import filetype
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from crosspost.campaigns import Campaign, campaign_table
from crosspost.delivery import Delivery, DeliveryState, PostRecord
from crosspost.dispatcher import Outcome
from crosspost.errors import ConfigError, Conflict, InputError, NotFound, Problem, QueueError
from crosspost.intake import Checked, Intake
from crosspost.media_fetch import MediaFetchError, MediaFolder, fetch_media
from crosspost.mirror import Mirror, mirror_router
from crosspost.mirror_store import MirrorStore
from crosspost.post import MAX_MEDIA_BYTES, MEDIA_TYPES, Post
from crosspost.postfile import build_post, parse_yaml
from crosspost.queue import Queue
from crosspost.scheduler import Service
from crosspost.settings import Settings
from crosspost.targets import Targets

SOURCE: Final = "api"
BEARER: Final = HTTPBearer(auto_error=False, description="the value of CROSSPOST_API_TOKEN")
MAX_JSON_BYTES: Final = 5 * 1024 * 1024
MAX_IMPORT: Final = 1000
POST_SCHEMA: Final = "PostFields"
_POST_BODY: Final = {"$ref": f"#/components/schemas/{POST_SCHEMA}"}
JSON_POST_BODY: Final = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _POST_BODY}}}
}
CREATE_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _POST_BODY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["post"],
                    "properties": {
                        "post": {"type": "string", "description": "the post's fields as JSON"},
                        "media": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                }
            },
        },
    }
}
IMPORT_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": _POST_BODY}},
            "application/yaml": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}
MEDIA_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "no or wrong bearer token"},
    404: {"description": "no such post"},
    409: {"description": "part of the post is already published or in flight"},
    422: {"description": "the input is invalid; each problem names its field"},
    503: {"description": "the database or the configuration is unavailable"},
}


def _problems_json(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    return [
        {
            "loc": ["body", *[p for p in problem.field.split(".") if p]],
            "field": problem.field,
            "msg": problem.message,
            "source": problem.source,
        }
        for problem in problems
    ]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status, headers=dict(headers or {}))


def _install_error_handlers(app: FastAPI) -> None:
    def input_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        return JSONResponse({"detail": _problems_json(exc.problems)}, 422)

    def request_invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail = []
        for err in exc.errors():
            loc = [str(part) for part in err.get("loc", ())]
            field = (
                ".".join(loc[1:]) if loc and loc[0] in ("body", "query", "path") else ".".join(loc)
            )
            detail.append({"loc": loc, "field": field, "msg": str(err.get("msg", "invalid"))})
        return JSONResponse({"detail": detail}, 422)

    def by_status(status: int) -> Callable[[Request, Exception], Response]:
        return lambda _, exc: _error(status, str(exc))

    def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(NotFound, by_status(404))
    app.add_exception_handler(Conflict, by_status(409))
    app.add_exception_handler(ConfigError, by_status(503))
    app.add_exception_handler(QueueError, by_status(503))
    app.add_exception_handler(StarletteHTTPException, http_error)


class Unauthorized(StarletteHTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, {"WWW-Authenticate": 'Bearer realm="crosspost"'})


class PostService:
    """What the API's handlers do with posts: parse, check, fetch media, queue."""

    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        targets: Targets,
        campaigns: Mapping[str, Campaign],
        wake: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.targets = targets
        self.campaigns = campaigns
        self.wake = wake
        self.media = MediaFolder(settings.data_dir / "media")

    def intake(self) -> Intake:
        return Intake(self.targets, self.settings, self.campaigns)

    # -- from request data to checked posts -------------------------------------------------

    def check(
        self,
        data: Any,
        now: datetime,
        *,
        fetch: bool,
        prefix: str = "",
        uploads: Mapping[str, str] | None = None,
    ) -> Checked:
        if not isinstance(data, dict):
            raise InputError.one(SOURCE, prefix.rstrip("."), "expected an object of post fields")
        data = self._media_paths(dict(data), prefix, uploads or {})
        checked = self._checked(data, now, prefix)
        if fetch and self.settings.media_fetch and any(m.url for m in checked.post.media):
            # Only a post that is otherwise valid makes the server fetch anything.
            checked = self._checked(self._fetch_media(data, prefix), now, prefix)
        return checked

    def _checked(self, data: dict[str, Any], now: datetime, prefix: str) -> Checked:
        try:
            post = build_post(data, SOURCE, self.media.root)
        except InputError as exc:
            raise InputError(_prefixed(exc.problems, prefix)) from None
        checked = self.intake().check(post, SOURCE, now)
        if checked.problems:
            raise InputError(_prefixed(checked.problems, prefix))
        return checked

    def _media_paths(
        self, data: dict[str, Any], prefix: str, uploads: Mapping[str, str]
    ) -> dict[str, Any]:
        """A media `path` names an uploaded file or one in the media folder, nothing else."""
        items = data.get("media")
        if not isinstance(items, list):
            return data
        root = self.media.root.resolve()
        problems = []
        fixed = []
        for index, item in enumerate(items):
            path = item.get("path") if isinstance(item, dict) else None
            if isinstance(path, str):
                name = uploads.get(path, path)
                try:
                    resolved = (root / name).resolve()
                except (ValueError, OSError):  # a NUL byte, a loop of links
                    resolved = root
                if not resolved.is_relative_to(root) or resolved == root:
                    problems.append(
                        Problem(
                            SOURCE,
                            f"{prefix}media.{index}.path",
                            "name a file uploaded with the post or to /api/media",
                        )
                    )
                item = {**item, "path": name}
            fixed.append(item)
        if problems:
            raise InputError(problems)
        return {**data, "media": fixed}

    def _fetch_media(self, data: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Media given by https URL is fetched now, carefully, and kept as a file."""
        items = data.get("media")
        if not isinstance(items, list):
            return data
        problems = []
        fixed = []
        for index, item in enumerate(items):
            url = item.get("url") if isinstance(item, dict) else None
            if isinstance(url, str) and "path" not in item:
                try:
                    fetched = fetch_media(
                        url,
                        timeout=self.settings.media_fetch_timeout,
                        allowed=self.settings.media_fetch_allow,
                    )
                except MediaFetchError as exc:
                    problems.append(Problem(SOURCE, f"{prefix}media.{index}.url", str(exc)))
                    fixed.append(item)
                    continue
                name = self.media.store(fetched.content, fetched.mime_type)
                item = {k: v for k, v in item.items() if k != "url"} | {"path": name}
            fixed.append(item)
        if problems:
            raise InputError(problems)
        return {**data, "media": fixed}

    def store_upload(self, field: str, filename: str, content: bytes) -> str:
        if len(content) > MAX_MEDIA_BYTES:
            raise InputError.one(
                SOURCE, field, f"{len(content)} bytes, the most is {MAX_MEDIA_BYTES}"
            )
        kind = filetype.guess(content[:8192])
        mime = kind.mime if kind else None
        if mime not in MEDIA_TYPES:
            raise InputError.one(
                SOURCE,
                field,
                f"{filename or 'the file'}: content is {mime or 'not an image or video'};"
                f" allowed: {', '.join(sorted(MEDIA_TYPES))}",
            )
        return self.media.store(content, mime)

    # -- queueing ----------------------------------------------------------------------------

    def add(self, checked: Sequence[Checked], now: datetime) -> list[dict[str, Any]]:
        results = []
        for item in checked:
            result = self.queue.add(item.new_post(), now)
            results.append(
                {"outcome": result.outcome, **post_json(result.post), "warnings": item.warnings}
            )
        self.wake()
        return results


def _prefixed(problems: Sequence[Problem], prefix: str) -> list[Problem]:
    return [Problem(p.source, f"{prefix}{p.field}".rstrip("."), p.message) for p in problems]


def post_json(
    record: PostRecord, attempts: Callable[[int], list[Any]] | None = None
) -> dict[str, Any]:
    deliveries = []
    for d in record.deliveries:
        data = d.as_json()
        if attempts is not None:
            data["attempt_log"] = [a.as_json() for a in attempts(d.id)]
        deliveries.append(data)
    return record.as_json(deliveries)


def _deliveries_json(found: Sequence[Delivery]) -> list[dict[str, Any]]:
    return [d.as_json() for d in found]


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise InputError.one(SOURCE, "", f"the body is over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError.one(SOURCE, "", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError.one(
            SOURCE, "", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def _csv_posts(text: str) -> list[dict[str, Any]]:
    """One post per row: `text.<lang>`, `targets` and `hashtags` (space or comma separated),
    `links` (space separated), `media.path` or `media.url` with `media.alt.<lang>`, and the
    plain fields (`id`, `publish_at`, `timezone`, `campaign`, `default_language`, ...)."""
    reader = csv.DictReader(io.StringIO(text))
    posts = []
    for row in reader:
        post: dict[str, Any] = {}
        media: dict[str, Any] = {}
        for column, value in row.items():
            if column is None or value is None or value == "":
                continue
            column = column.strip()
            if column.startswith("text."):
                post.setdefault("text", {})[column[5:]] = value
            elif column in ("targets", "hashtags"):
                post[column] = [v for v in value.replace(",", " ").split() if v]
            elif column == "links":
                post["links"] = [{"url": v} for v in value.split()]
            elif column in ("media.path", "media.url"):
                media[column[6:]] = value
            elif column.startswith("media.alt."):
                media.setdefault("alt", {})[column[10:]] = value
            elif column == "sensitive":
                post["sensitive"] = value.strip().lower() in ("1", "true", "yes")
            else:
                post[column] = value
        if media:
            post["media"] = [media]
        posts.append(post)
    return posts


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InputError.one(SOURCE, field, "give a UTC offset, e.g. 2027-03-08T09:00:00+01:00")
    return value


QUEUED_STATES: Final = ("scheduled", "retry-waiting", "claimed")
LAG_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _QueueCollector:
    """Read at every scrape: deliveries by target and state (all processes), and liveness."""

    def __init__(self, queue: Queue, targets: Targets, service: Service | None) -> None:
        self.queue = queue
        self.targets = targets
        self.service = service

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("crosspost_database_up", "1 if the queue's database answers")
        try:
            counts = self.queue.counts()
            up.add_metric([], 1)
        except QueueError:
            counts = {}
            up.add_metric([], 0)
        yield up
        alive = GaugeMetricFamily("crosspost_scheduler_alive", "1 if this process's scheduler runs")
        alive.add_metric([], 1 if self.service is not None and self.service.alive else 0)
        yield alive
        by_state = GaugeMetricFamily(
            "crosspost_deliveries",
            "Deliveries in the queue by target, platform and state",
            labels=["target", "platform", "state"],
        )
        summary = {
            name: GaugeMetricFamily(f"crosspost_{name}", text, labels=["platform"])
            for name, text in (
                ("queued", "Deliveries waiting to go out (scheduled, retry-waiting, claimed)"),
                ("published", "Deliveries published"),
                ("failed", "Deliveries failed or needing review"),
            )
        }
        per_platform: dict[str, dict[str, int]] = {}
        for (target, state), count in sorted(counts.items()):
            platform = self.targets[target].platform if target in self.targets else "unknown"
            by_state.add_metric([target, platform, state], count)
            totals = per_platform.setdefault(platform, {"queued": 0, "published": 0, "failed": 0})
            if state in QUEUED_STATES:
                totals["queued"] += count
            elif state == "published":
                totals["published"] += count
            elif state in ("failed", "needs-review"):
                totals["failed"] += count
        for platform, totals in sorted(per_platform.items()):
            for name, value in totals.items():
                summary[name].add_metric([platform], value)
        yield by_state
        yield from summary.values()


class ApiMetrics:
    """Prometheus metrics: the queue's counts at scrape time, and this process's outcomes."""

    def __init__(self, queue: Queue, targets: Targets, service: Service | None) -> None:
        self.targets = targets
        self.registry = CollectorRegistry()
        self.outcomes = Counter(
            "crosspost_outcomes",
            "Publish attempts finished by this process, by result",
            ["target", "platform", "state"],
            registry=self.registry,
        )
        self.retries = Counter(
            "crosspost_retries",
            "Attempts that ended in a scheduled retry",
            ["target", "platform"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "crosspost_publish_lag_seconds",
            "Seconds from a delivery's due time to the start of its attempt",
            ["platform"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(queue, targets, service))
        if service is not None:
            service.outcome_listeners.append(self.observe)

    def observe(self, outcome: Outcome) -> None:
        config = self.targets.get(outcome.target)
        platform = config.platform if config is not None else "unknown"
        state = str(outcome.state) if outcome.state else "lost"
        self.outcomes.labels(outcome.target, platform, state).inc()
        if state == "retry-waiting":
            self.retries.labels(outcome.target, platform).inc()
        self.lag.labels(platform).observe(max(0.0, outcome.lag))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_app(
    settings: Settings,
    queue: Queue,
    targets: Targets,
    campaigns: Mapping[str, Campaign],
    *,
    service: Service | None = None,
    mirror_secrets: Sequence[str] | None = None,
) -> FastAPI:
    """The API, the mirror, health and metrics, served by `crosspost run` (or a test client)."""
    app = FastAPI(
        title="crosspost",
        version="1",
        description="Queue and manage posts; the website mirror. See docs/api.md.",
        # FastAPI's /docs pages load their scripts from a CDN: only the document is served.
        docs_url=None,
        redoc_url=None,
    )
    _install_error_handlers(app)

    def wake() -> None:
        if service is not None:
            service.wake()

    posts = PostService(settings, queue, targets, campaigns, wake)
    metrics = ApiMetrics(queue, targets, service)

    def authorised(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        token = settings.api_token
        if token is None:
            return  # no token: `crosspost run` listens on 127.0.0.1 only
        if credentials is None:
            raise Unauthorized("send `Authorization: Bearer <CROSSPOST_API_TOKEN>`")
        if not secrets.compare_digest(
            credentials.credentials.encode(), token.get_secret_value().encode()
        ):
            raise Unauthorized("wrong bearer token")

    router = APIRouter(
        prefix="/api", dependencies=[Depends(authorised)], responses=ERRORS, tags=["posts"]
    )

    def known_target(target: str | None) -> str | None:
        if target is not None and target not in targets:
            raise InputError.one(
                SOURCE, "target", f"unknown target {target!r}; configured: {', '.join(targets)}"
            )
        return target

    @router.post("/posts", status_code=201, openapi_extra=CREATE_BODY, summary="Queue a post")
    async def create_post(request: Request) -> JSONResponse:
        now = datetime.now(UTC)
        content_type = request.headers.get("content-type", "")
        uploads: dict[str, str] = {}
        if content_type.startswith("multipart/form-data"):
            data = await _multipart_post(request, posts, uploads)
        else:
            data = await _json_body(request)
        checked = posts.check(data, now, fetch=True, uploads=uploads)
        (result,) = posts.add([checked], now)
        return JSONResponse(result, 201 if result["outcome"] == "queued" else 200)

    @router.get("/posts", summary="List posts, newest first")
    def list_posts(
        state: DeliveryState | None = None,
        target: str | None = None,
        campaign: str | None = None,
        since: Annotated[datetime | None, Query(description="scheduled at or after")] = None,
        until: Annotated[datetime | None, Query(description="scheduled before")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        records = queue.list_posts(
            state=state,
            target=known_target(target),
            campaign=campaign,
            since=_aware(since, "since"),
            until=_aware(until, "until"),
            limit=limit,
            offset=offset,
        )
        return [post_json(r) for r in records]

    @router.get("/posts/{post_id}", summary="A post with its deliveries and attempts")
    def get_post(post_id: str) -> dict[str, Any]:
        record = queue.get(post_id)
        return {**post_json(record, queue.attempts), "post": record.body}

    @router.put(
        "/posts/{post_id}",
        openapi_extra=JSON_POST_BODY,
        summary="Change a post before it is published",
    )
    async def update_post(post_id: str, request: Request) -> JSONResponse:
        now = datetime.now(UTC)
        data = await _json_body(request)
        if isinstance(data, dict):
            if data.get("id", post_id) != post_id:
                raise InputError.one(SOURCE, "id", f"must be {post_id!r} (the post in the URL)")
            data = {**data, "id": post_id}
        await _run(queue.get, post_id)  # 404 before any media is fetched
        checked = posts.check(data, now, fetch=True)
        (result,) = posts.add([checked], now)
        return JSONResponse(result)

    @router.post("/posts/{post_id}/cancel", summary="Cancel what has not gone out")
    def cancel_post(post_id: str) -> dict[str, Any]:
        cancelled = queue.cancel(post_id)
        return {"id": post_id, "cancelled": _deliveries_json(cancelled)}

    @router.post("/posts/{post_id}/retry", summary="Re-queue failed targets")
    def retry_post(post_id: str, target: str | None = None) -> dict[str, Any]:
        again = queue.retry(post_id, datetime.now(UTC), target=target)
        wake()
        return {"id": post_id, "scheduled": _deliveries_json(again)}

    @router.post(
        "/preview", openapi_extra=JSON_POST_BODY, summary="Render a post without queuing it"
    )
    async def preview(request: Request) -> dict[str, Any]:
        now = datetime.now(UTC)
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise InputError.one(SOURCE, "", "expected an object of post fields")
        data = posts._media_paths(dict(data), "", {})
        post = build_post(data, SOURCE, posts.media.root)
        item = posts.intake().check(post, SOURCE, now)
        return {
            "id": item.post_id,
            "ok": not item.problems,
            "renditions": {
                target: {
                    "platform": r.platform,
                    "language": r.language,
                    "text": r.text,
                    "length": r.length,
                    "limit": r.limit,
                    "shortened": r.shortened,
                    "media": [{"mime_type": m.mime_type, "alt": m.alt} for m in r.media],
                    "due_at": item.schedule[target].isoformat()
                    if target in item.schedule
                    else None,
                }
                for target, r in item.renditions.items()
            },
            "problems": _problems_json(item.problems),
            "warnings": item.warnings,
        }

    @router.post("/import", openapi_extra=IMPORT_BODY, summary="Queue many posts: all or none")
    async def bulk_import(request: Request) -> JSONResponse:
        now = datetime.now(UTC)
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        body = await request.body()
        if len(body) > MAX_JSON_BYTES:
            raise InputError.one(SOURCE, "", f"the body is over {MAX_JSON_BYTES} bytes")
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError.one(SOURCE, "", "the body is not UTF-8") from None
        items: Any
        if kind in ("text/csv", "application/csv"):
            try:
                items = _csv_posts(text)
            except csv.Error as exc:
                raise InputError.one(SOURCE, "", f"not valid CSV: {exc}") from None
        elif kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            items = parse_yaml(text, SOURCE)
        elif kind in ("application/json", ""):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError.one(SOURCE, "", f"not valid JSON: {exc.msg}") from None
        else:
            raise InputError.one(SOURCE, "content-type", f"{kind}: send JSON, YAML or CSV")
        if isinstance(items, dict) and isinstance(items.get("posts"), list):
            items = items["posts"]
        if not isinstance(items, list) or not items:
            raise InputError.one(SOURCE, "", "expected a non-empty list of posts")
        if len(items) > MAX_IMPORT:
            raise InputError.one(
                SOURCE, "", f"{len(items)} posts; the most in one import is {MAX_IMPORT}"
            )
        checked: list[Checked] = []
        problems: list[Problem] = []
        for index, item in enumerate(items):
            try:
                checked.append(posts.check(item, now, fetch=False, prefix=f"{index}."))
            except InputError as exc:
                problems.extend(exc.problems)
        ids = [c.post_id for c in checked]
        doubled = sorted({i for i in ids if ids.count(i) > 1})
        if doubled:
            problems.append(Problem(SOURCE, "id", f"given more than once: {', '.join(doubled)}"))
        if problems:
            raise InputError(problems)
        results = await _run(posts.add, checked, now)
        return JSONResponse({"posts": results}, 201)

    @router.post("/media", status_code=201, openapi_extra=MEDIA_BODY, summary="Upload a media file")
    async def upload_media(request: Request) -> dict[str, Any]:
        try:
            form = await request.form(max_files=1, max_fields=5)
        except Exception as exc:  # starlette raises its own errors on a malformed form
            raise InputError.one(
                SOURCE, "file", f"not a valid multipart form ({type(exc).__name__})"
            ) from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError.one(SOURCE, "file", "is required (a file part named `file`)")
        content = await upload.read(MAX_MEDIA_BYTES + 1)
        name = posts.store_upload("file", upload.filename or "", content)
        return {"path": name, "url": f"/mirror/media/{name}"}

    @router.get("/campaigns", summary="Campaigns and their next instants")
    def list_campaigns() -> list[dict[str, Any]]:
        zones = [(name, config.zone) for name, config in targets.items()]
        return [row.as_json() for row in campaign_table(campaigns, zones, datetime.now(UTC))]

    @app.get("/health", tags=["service"], summary="Database, scheduler, next due time")
    def health() -> JSONResponse:
        report: dict[str, Any] = {"status": "ok"}
        try:
            queue.ping()
            due = queue.next_due()
            report["database"] = "ok"
            report["next_due"] = due.isoformat() if due else None
        except QueueError:
            report.update(status="failing", database="unreachable", next_due=None)
        if service is None:
            report["scheduler"] = "not running in this process"
        else:
            report["scheduler"] = "alive" if service.alive else "stopped"
            report["last_tick"] = service.last_tick.isoformat() if service.last_tick else None
            if not service.alive:
                report["status"] = "failing"
        return JSONResponse(report, 200 if report["status"] == "ok" else 503)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.include_router(router)
    store = MirrorStore(queue.db)
    mirror = Mirror(settings, store, queue=queue, targets=targets, secrets=mirror_secrets)
    app.include_router(mirror_router(mirror))
    app.state.mirror = mirror
    app.state.metrics = metrics

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            post_schema = Post.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(post_schema.pop("$defs", {}))
            components[POST_SCHEMA] = post_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _run(function: Callable[..., Any], *args: Any) -> Any:
    from fastapi.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


async def _multipart_post(request: Request, posts: PostService, uploads: dict[str, str]) -> Any:
    """A `post` part (JSON) and `media` file parts its media `path`s name by file name."""
    try:
        form = await request.form(max_files=20, max_fields=20)
    except Exception as exc:  # starlette's own errors on a malformed form
        raise InputError.one(
            SOURCE, "", f"not a valid multipart form ({type(exc).__name__})"
        ) from None
    raw = form.get("post")
    if not isinstance(raw, str):
        raise InputError.one(SOURCE, "post", "is required: the post's fields as JSON")
    for index, upload in enumerate(form.getlist("media")):
        if not isinstance(upload, UploadFile):
            raise InputError.one(SOURCE, f"media.{index}", "must be a file")
        content = await upload.read(MAX_MEDIA_BYTES + 1)
        name = posts.store_upload(f"media.{index}", upload.filename or "", content)
        uploads[Path(upload.filename or name).name] = name
        uploads[upload.filename or name] = name
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError.one(SOURCE, "post", f"not valid JSON: {exc.msg}") from None


class ApiServer:
    """uvicorn serving the app from a thread of `crosspost run` (the main thread keeps the
    signals and the scheduler)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; ConfigError if the server could not listen (port taken, bad host)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(
                    f"the API could not listen on {self.server.config.host}:"
                    f"{self.server.config.port} (is the port in use?)"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
