"""The Mastodon adapter against recorded real Mastodon answers (Mastodon.py's VCR cassettes),
replayed over loopback HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from crosspost.adapter import RenderedMedia, Rendition
from crosspost.errors import Permanent
from crosspost.fakes.server import FakePlatform, Reply, Request, RunningFake
from crosspost_adapters.mastodon import MastodonAdapter, parse_reset
from fakes_mastodon_fixtures import TOKEN, mastodon_adapter


def _fixtures_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared/fixtures"
    return Path(os.environ.get("CROSSPOST_SHARED_FIXTURES", default))


CASSETTES = _fixtures_dir() / "mastodon/cassettes"
# Recorded bodies are stored decoded; the server sizes them itself.
_DROPPED_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection"}


def load(name: str) -> list[dict[str, Any]]:
    path = CASSETTES / name
    if not path.is_file():
        pytest.skip(
            f"recorded cassette {path} is absent: put shared/fixtures beside the clone"
            " or set CROSSPOST_SHARED_FIXTURES"
        )
    with path.open("rb") as fh:
        interactions: list[dict[str, Any]] = yaml.safe_load(fh)["interactions"]
    return interactions


def _path(uri: str) -> str:
    return urlsplit(uri).path.rstrip("/")


class Replay(FakePlatform):
    """Answers each request with the first unused recorded interaction of the same method and
    path; `routes` maps a recorded (method, path) to the one this adapter sends instead."""

    def __init__(
        self,
        interactions: list[dict[str, Any]],
        routes: dict[tuple[str, str], tuple[str, str]] | None = None,
    ) -> None:
        super().__init__()
        routes = routes or {}
        self.pending: list[tuple[str, str, dict[str, Any]]] = []
        for interaction in interactions:
            request = interaction["request"]
            key = (request["method"], _path(request["uri"]))
            method, path = routes.get(key, key)
            self.pending.append((method, path, interaction))
        self.served: list[dict[str, Any]] = []

    def handle(self, request: Request) -> Reply:
        with self.lock:
            for index, (method, path, interaction) in enumerate(self.pending):
                if method == request.method and path == request.path.rstrip("/"):
                    del self.pending[index]
                    self.served.append(interaction)
                    return _reply(interaction["response"])
        return Reply(599, {"error": f"nothing recorded for {request.method} {request.path}"})

    def last_headers(self) -> dict[str, str]:
        return _headers(self.served[-1]["response"])


def _headers(response: dict[str, Any]) -> dict[str, str]:
    return {
        "-".join(part.capitalize() for part in name.split("-")): values[-1]
        for name, values in response["headers"].items()
        if name.lower() not in _DROPPED_HEADERS
    }


def _reply(response: dict[str, Any]) -> Reply:
    body = response["body"]["string"]
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    return Reply(response["status"]["code"], payload, _headers(response))


@pytest.fixture
def replay() -> Iterator[Any]:
    running: list[RunningFake] = []

    def start(
        interactions: list[dict[str, Any]],
        routes: dict[tuple[str, str], tuple[str, str]] | None = None,
        **target: Any,
    ) -> tuple[Replay, MastodonAdapter]:
        fake = Replay(interactions, routes)
        server = RunningFake(fake).start()
        running.append(server)
        return fake, mastodon_adapter(server.url, **target)

    MastodonAdapter.instance_cache.clear()
    yield start
    for server in running:
        server.stop()
    MastodonAdapter.instance_cache.clear()


def rendition(text: str, media: tuple[RenderedMedia, ...] = (), **options: Any) -> Rendition:
    return Rendition(
        post_id="p1",
        target="mastodon-en",
        platform="mastodon",
        language="en",
        text=text,
        length=len(text),
        limit=500,
        media=media,
        options={"visibility": "public", **options},
    )


def _recorded_form(interaction: dict[str, Any]) -> set[tuple[str, str]]:
    return set(parse_qsl(interaction["request"]["body"] or "", keep_blank_values=True))


@pytest.mark.parametrize("spoiler", [None, "Content warning"])
@pytest.mark.parametrize("visibility", [None, "direct", "private", "public", "unlisted"])
def test_status_post_is_parsed(replay: Any, spoiler: str | None, visibility: str | None) -> None:
    interactions = load(f"test_status_post[{spoiler}-{visibility}].yaml")
    fake, adapter = replay(interactions, visibility=visibility or "public")
    options = {"spoiler_text": spoiler or "", "visibility": visibility or "public"}
    published = adapter.publish(rendition("Toot!", **options), "key-1")
    recorded = _reply(interactions[0]["response"]).body
    assert isinstance(recorded, bytes)
    status = yaml.safe_load(recorded)  # JSON is YAML
    assert (published.remote_id, published.remote_url) == (status["id"], status["url"])
    sent = fake.requests[0]
    assert _recorded_form(interactions[0]) <= set(parse_qsl(sent.body.decode()))
    assert sent.headers["idempotency-key"] == "key-1"
    adapter.delete(published.remote_id)
    assert fake.pending == []


def test_rate_limit_headers_become_utc_datetimes(replay: Any) -> None:
    interactions = load("test_status_post[None-public].yaml")
    fake, adapter = replay(interactions)
    adapter.publish(rendition("Toot!"), "key-1")
    headers = fake.last_headers()
    assert adapter.rate_limit is not None
    limit, remaining, reset = adapter.rate_limit
    assert (limit, remaining) == (
        int(headers["X-Ratelimit-Limit"]),
        int(headers["X-Ratelimit-Remaining"]),
    )
    assert reset.utcoffset() is not None
    assert reset == parse_reset(headers["X-Ratelimit-Reset"])
    assert parse_reset("2026-08-01T14:30:00.140610Z") == datetime(
        2026, 8, 1, 14, 30, 0, 140610, tzinfo=UTC
    )
    assert adapter.rate_limit_reset is None  # plenty left


def test_async_media_is_polled_then_posted(replay: Any, tmp_path: Path) -> None:
    interactions = load("test_media_post[False].request-body-elided.yaml")
    assert [i["response"]["status"]["code"] for i in interactions] == [202, 200, 200, 200]
    fake, adapter = replay(interactions)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(32))
    media = (RenderedMedia(str(video), False, "video/mp4", "me when a cat"),)
    published = adapter.publish(rendition("LOL check this out", media), "key-media")
    assert published.remote_id == "117020620300441304"
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/api/v2/media"),
        ("GET", "/api/v1/media/117020619601888181"),
        ("POST", "/api/v1/statuses"),
    ]
    assert ("media_ids[]", "117020619601888181") in parse_qsl(fake.requests[2].body.decode())
    assert b'name="description"' in fake.requests[0].body
    adapter.delete(published.remote_id)


def test_synchronous_media_uploads(replay: Any, tmp_path: Path) -> None:
    interactions = load("test_media_post_multiple.yaml")
    fake, adapter = replay(interactions)
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + bytes(32))
    media = (RenderedMedia(str(image), False, "image/jpeg", ""),) * 2
    status = yaml.safe_load(_reply(interactions[4]["response"]).body)  # type: ignore[arg-type]
    published = adapter.publish(rendition("two cats", media), "key")
    assert published.remote_id == status["id"]
    assert not any(r.path.startswith("/api/v1/media/") for r in fake.requests)


@pytest.mark.parametrize("name", ["test_status_empty.yaml", "test_lang_for_errors.yaml"])
def test_validation_errors_are_permanent(replay: Any, name: str) -> None:
    interactions = load(name)
    _, adapter = replay(interactions)
    for _ in interactions:
        with pytest.raises(Permanent) as caught:
            adapter.publish(rendition(""), "key")
        assert caught.value.http_status == 422
        assert str(caught.value).startswith("POST /api/v1/statuses: HTTP 422: ")


def test_deleted_media_and_deleted_status(replay: Any) -> None:
    interactions = load("test_status_delete_media.yaml")[-3:]
    assert [i["response"]["status"]["code"] for i in interactions] == [422, 404, 200]
    fake, adapter = replay(interactions)
    with pytest.raises(Permanent, match="HTTP 422"):
        adapter.publish(rendition("Trying to repost deleted media"), "key")
    adapter.delete("117020606379845323")  # 404: already gone, nothing to do
    adapter.delete("117020606020659979")
    assert fake.pending == []


def test_missing_status_is_already_deleted(replay: Any) -> None:
    routes = {("GET", "/api/v1/statuses/0"): ("DELETE", "/api/v1/statuses/0")}
    fake, adapter = replay(load("test_status_missing.yaml"), routes)
    adapter.delete("0")
    assert fake.pending == []


def test_invalid_token_is_permanent(replay: Any) -> None:
    routes = {("GET", "/api/v1/timelines/home"): ("GET", "/api/v1/accounts/verify_credentials")}
    _, adapter = replay(load("test_home_tl_anonymous_throws.yaml"), routes)
    with pytest.raises(Permanent) as caught:
        adapter.lookup(rendition("x"), "key", datetime.now(UTC))
    assert caught.value.http_status == 401
    assert "The access token is invalid" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_lookup_reads_real_status_html(replay: Any) -> None:
    credentials = load("test_verify_credentials.yaml")[:1]
    account_id = yaml.safe_load(_reply(credentials[0]["response"]).body)["id"]  # type: ignore[arg-type]
    timeline = load("test_scheduled_status_long_part2.yaml")
    routes = {("GET", "/api/v1/timelines/home"): ("GET", f"/api/v1/accounts/{account_id}/statuses")}
    since = datetime(2026, 8, 1, 13, 55, tzinfo=UTC)

    _, adapter = replay(credentials + timeline, routes)
    found = adapter.lookup(rendition("it's cool guy"), "key", since)
    assert found is not None
    assert found.remote_id == "117020590470221822"

    _, adapter = replay(credentials + timeline, routes)
    mention = rendition("@mastodonpy_test_2@mastodon.example pssssst")
    assert adapter.lookup(mention, "key", since) is not None

    _, adapter = replay(credentials + timeline, routes)
    later = datetime(2026, 8, 1, 15, 0, tzinfo=UTC)
    assert adapter.lookup(rendition("it's cool guy"), "key", later) is None


@pytest.mark.parametrize(
    ("name", "description_limit"),
    [("test_instance.yaml", 10000), ("test_entity_instancev2.yaml", 1500)],
)
def test_instance_v2_limits(replay: Any, name: str, description_limit: int) -> None:
    _, adapter = replay(load(name))
    limits = adapter.instance_limits()
    assert (limits.max_characters, limits.max_media_attachments) == (500, 4)
    assert limits.description_limit == description_limit
    assert adapter.instance_limits() is limits  # asked once per base URL
