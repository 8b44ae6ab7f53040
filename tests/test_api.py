"""The HTTP API against a real queue (SQLite and PostgreSQL): every endpoint, auth, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crosspost.api import create_app
from crosspost.campaigns import load_campaigns
from crosspost.delivery import AttemptRecord, DeliveryState
from crosspost.queue import Queue
from crosspost.settings import Settings
from crosspost.targets import load_targets
from platforms import FACEBOOK_TOKEN, MASTODON_TOKENS, new_secret, targets_yaml

REPO = Path(__file__).resolve().parents[1]
TOKEN = "api-token-for-tests-0123456789"
PNG = (REPO / "config/examples/media/iwd-banner.png").read_bytes()
S = DeliveryState
LATER = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0).isoformat()


@dataclass
class Api:
    client: TestClient
    queue: Queue
    settings: Settings


def clear_mirror(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE mirror_posts, mirror_events")


@pytest.fixture
def api(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    clear_mirror(database_url)
    unused = "http://127.0.0.1:9"
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(targets_yaml({"graph": unused, "mastodon": unused, "website": unused}))
    for name, value in {
        "TEST_MASTODON_EN_TOKEN": MASTODON_TOKENS["mastodon-en"],
        "TEST_MASTODON_ES_TOKEN": MASTODON_TOKENS["mastodon-es"],
        "TEST_FACEBOOK_TOKEN": FACEBOOK_TOKEN,
        "TEST_WEBSITE_SECRET": new_secret(),
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        targets=targets_file,
        campaigns_dir=REPO / "config/campaigns",
        api_token=SecretStr(TOKEN),
    )
    queue = Queue(database_url)
    queue.upgrade()
    app = create_app(
        settings, queue, load_targets(targets_file), load_campaigns(settings.campaigns_dir)
    )
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield Api(client, queue, settings)
    queue.close()


def post_fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": "iwd-test",
        "text": {
            "en": "On International Women's Day we call for equal pay.",
            "es": "En el Día Internacional de la Mujer pedimos igualdad salarial.",
        },
        "hashtags": ["IWD", "EqualPay"],
        "links": [{"url": "https://example.org/iwd", "title": "Our call"}],
        "publish_at": LATER,
        "targets": ["facebook-page", "mastodon-en", "mastodon-es", "website"],
    }
    fields.update(changes)
    return fields


def fields_of(response_json: dict[str, object]) -> set[str]:
    detail = response_json["detail"]
    assert isinstance(detail, list)
    return {item["field"] for item in detail}


def test_create_get_list_and_filters(api: Api) -> None:
    created = api.client.post("/api/posts", json=post_fields())
    assert created.status_code == 201, created.text
    assert created.json()["outcome"] == "queued"
    assert {d["target"] for d in created.json()["deliveries"]} == {
        "facebook-page",
        "mastodon-en",
        "mastodon-es",
        "website",
    }
    again = api.client.post("/api/posts", json=post_fields())
    assert again.status_code == 200
    assert again.json()["outcome"] == "unchanged"

    one = api.client.get("/api/posts/iwd-test").json()
    assert one["post"]["text"]["es"].startswith("En el Día")
    assert all(d["attempt_log"] == [] for d in one["deliveries"])

    assert [p["id"] for p in api.client.get("/api/posts").json()] == ["iwd-test"]
    assert api.client.get("/api/posts", params={"state": "published"}).json() == []
    assert len(api.client.get("/api/posts", params={"target": "website"}).json()) == 1
    assert api.client.get("/api/posts", params={"campaign": "x"}).json() == []
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert api.client.get("/api/posts", params={"until": soon}).json() == []
    assert len(api.client.get("/api/posts", params={"since": soon}).json()) == 1


def test_invalid_posts_are_422_naming_each_field(api: Api) -> None:
    bad = api.client.post(
        "/api/posts",
        json=post_fields(text={"en": "x", "xx-invalid-tag!": "y"}, links=[{"url": "ftp://x"}]),
    )
    assert bad.status_code == 422
    assert {"links.0.url"} <= fields_of(bad.json())
    unknown = api.client.post("/api/posts", json=post_fields(targets=["website", "nowhere"]))
    assert unknown.status_code == 422
    assert "targets" in fields_of(unknown.json())
    assert "nowhere" in unknown.text
    naive = api.client.post("/api/posts", json=post_fields(publish_at="2030-03-08T09:00:00"))
    assert naive.status_code == 422
    assert "UTC offset" in naive.text
    past = api.client.post("/api/posts", json=post_fields(publish_at="2001-03-08T09:00:00Z"))
    assert past.status_code == 422
    assert fields_of(past.json()) == {"publish_at"}
    too_long = api.client.post(
        "/api/posts", json=post_fields(text={"en": "word " * 200}, targets=["mastodon-en"])
    )
    assert too_long.status_code == 422
    assert fields_of(too_long.json()) == {"text.en"}
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b"null", b'"text"'):
        answer = api.client.post(
            "/api/posts", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 422, body
    assert api.client.get("/api/posts", params={"since": "2027-01-01T00:00:00"}).status_code == 422
    assert api.client.get("/api/posts", params={"state": "bogus"}).status_code == 422
    assert api.client.get("/api/posts", params={"target": "nowhere"}).status_code == 422
    assert api.queue.list_posts() == []


def test_auth_is_required_except_for_mirror_health_metrics(api: Api) -> None:
    anonymous = TestClient(api.client.app)
    for method, path in [
        ("GET", "/api/posts"),
        ("POST", "/api/posts"),
        ("GET", "/api/posts/x"),
        ("PUT", "/api/posts/x"),
        ("POST", "/api/posts/x/cancel"),
        ("POST", "/api/posts/x/retry"),
        ("POST", "/api/preview"),
        ("POST", "/api/import"),
        ("GET", "/api/campaigns"),
        ("POST", "/api/media"),
    ]:
        answer = anonymous.request(method, path)
        assert answer.status_code == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = anonymous.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert TOKEN not in wrong.text
    for path in ("/mirror", "/health", "/metrics", "/mirror/feed.json", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path


def test_update_cancel_retry_and_conflicts(api: Api) -> None:
    api.client.post("/api/posts", json=post_fields())
    changed = api.client.put(
        "/api/posts/iwd-test", json=post_fields(text={"en": "A new text #IWD"}, targets=["website"])
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["outcome"] == "updated"
    assert [d["target"] for d in changed.json()["deliveries"]] == ["website"]
    assert api.client.put("/api/posts/other", json=post_fields(id="other")).status_code == 404
    mismatch = api.client.put("/api/posts/iwd-test", json=post_fields(id="different"))
    assert mismatch.status_code == 422
    assert fields_of(mismatch.json()) == {"id"}

    nothing_failed = api.client.post("/api/posts/iwd-test/retry")
    assert nothing_failed.status_code == 409
    cancelled = api.client.post("/api/posts/iwd-test/cancel")
    assert cancelled.status_code == 200
    assert [d["state"] for d in cancelled.json()["cancelled"]] == ["cancelled"]
    assert api.client.post("/api/posts/iwd-test/cancel").status_code == 409
    assert api.client.post("/api/posts/missing/cancel").status_code == 404
    assert api.client.get("/api/posts/missing").status_code == 404

    # A failed delivery can be retried; a published one makes an update a conflict.
    api.client.post("/api/posts", json=post_fields(id="two", publish_at="now"))
    now = datetime.now(UTC)
    claims = api.queue.claim_due("test", now, now + timedelta(minutes=1), 10)
    by_target = {c.delivery.target: c for c in claims}
    record = AttemptRecord(
        started_at=now,
        duration_ms=5,
        outcome="permanent",
        error_kind="permanent",
        error_message="HTTP 403",
    )
    api.queue.finish(
        by_target["mastodon-en"].delivery.id, by_target["mastodon-en"].fence, S.FAILED, record
    )
    done = AttemptRecord(
        started_at=now,
        duration_ms=5,
        outcome="published",
        remote_id="1",
        remote_url="https://m.example/@a/1",
    )
    api.queue.finish(
        by_target["website"].delivery.id, by_target["website"].fence, S.PUBLISHED, done
    )
    assert api.client.post("/api/posts/two/retry", params={"target": "nowhere"}).status_code == 404
    retried = api.client.post("/api/posts/two/retry", params={"target": "mastodon-en"})
    assert retried.status_code == 200, retried.text
    assert [d["state"] for d in retried.json()["scheduled"]] == ["scheduled"]
    shown = api.client.get("/api/posts/two").json()
    attempts = {d["target"]: d["attempt_log"] for d in shown["deliveries"]}
    assert attempts["mastodon-en"][0]["error_message"] == "HTTP 403"
    conflict = api.client.put(
        "/api/posts/two", json=post_fields(id="two", text={"en": "changed"}, publish_at="now")
    )
    assert conflict.status_code == 409
    assert "website" in conflict.json()["detail"]


def test_preview_does_not_queue(api: Api) -> None:
    answer = api.client.post("/api/preview", json=post_fields())
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True
    assert body["renditions"]["mastodon-es"]["language"] == "es"
    assert "#IWD" in body["renditions"]["mastodon-en"]["text"]
    too_long = api.client.post(
        "/api/preview", json=post_fields(text={"en": "word " * 200}, targets=["mastodon-en"])
    ).json()
    assert too_long["ok"] is False
    assert too_long["problems"][0]["field"] == "text.en"
    assert api.queue.list_posts() == []


def test_import_json_yaml_csv_all_or_nothing(api: Api) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    listing = [post_fields(id="a"), post_fields(id="b", targets=["website"])]
    assert api.client.post("/api/import", json=listing).status_code == 201
    yaml_text = f"- id: c\n  text: {{en: hello}}\n  publish_at: '{later}'\n  targets: [website]\n"
    answer = api.client.post(
        "/api/import", content=yaml_text, headers={"Content-Type": "application/yaml"}
    )
    assert answer.status_code == 201, answer.text
    csv_text = (
        "id,text.en,text.es,targets,hashtags,publish_at\n"
        f"d,Hello,Hola,website mastodon-es,IWD,{later}\n"
        f"e,Second,,website,,{later}\n"
    )
    answer = api.client.post("/api/import", content=csv_text, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 201, answer.text
    assert {p["id"] for p in api.client.get("/api/posts").json()} == {"a", "b", "c", "d", "e"}

    mixed = [post_fields(id="f"), post_fields(id="g", targets=["nowhere"]), {"text": 3}]
    refused = api.client.post("/api/import", json=mixed)
    assert refused.status_code == 422
    fields = fields_of(refused.json())
    assert "1.targets" in fields
    assert any(f.startswith("2.") for f in fields)
    bad_yaml = api.client.post(
        "/api/import", content="- [unclosed", headers={"Content-Type": "application/yaml"}
    )
    assert bad_yaml.status_code == 422
    assert api.client.post("/api/import", json=[]).status_code == 422
    assert (
        api.client.post(
            "/api/import", content="x", headers={"Content-Type": "image/png"}
        ).status_code
        == 422
    )
    assert {p["id"] for p in api.client.get("/api/posts").json()} == {"a", "b", "c", "d", "e"}


def test_media_upload_multipart_and_path(api: Api) -> None:
    fields = post_fields(media=[{"path": "banner.png", "alt": {"en": "A purple banner"}}])
    answer = api.client.post(
        "/api/posts",
        data={"post": json.dumps(fields)},
        files={"media": ("banner.png", PNG, "image/png")},
    )
    assert answer.status_code == 201, answer.text
    stored = api.client.get("/api/posts/iwd-test").json()["post"]["media"][0]
    assert stored["mime_type"] == "image/png"
    assert Path(stored["path"]).parent == (api.settings.data_dir / "media").resolve()

    uploaded = api.client.post("/api/media", files={"file": ("x.png", PNG, "image/png")})
    assert uploaded.status_code == 201
    name = uploaded.json()["path"]
    by_path = api.client.post(
        "/api/posts", json=post_fields(id="by-path", media=[{"path": name, "alt": {"en": "x"}}])
    )
    assert by_path.status_code == 201, by_path.text

    not_image = api.client.post("/api/media", files={"file": ("x.png", b"hello", "image/png")})
    assert not_image.status_code == 422
    escape = api.client.post(
        "/api/posts", json=post_fields(id="escape", media=[{"path": "/etc/passwd"}])
    )
    assert escape.status_code == 422
    assert fields_of(escape.json()) == {"media.0.path"}
    private = api.client.post(
        "/api/posts",
        json=post_fields(id="ssrf", media=[{"url": "https://127.0.0.1/a.png", "alt": {"en": "x"}}]),
    )
    assert private.status_code == 422
    assert fields_of(private.json()) == {"media.0.url"}
    assert "refused" in private.text
    assert {p["id"] for p in api.client.get("/api/posts").json()} == {"iwd-test", "by-path"}


def test_campaigns_health_metrics_openapi(api: Api) -> None:
    campaigns = api.client.get("/api/campaigns").json()
    iwd = next(c for c in campaigns if c["id"] == "international-womens-day")
    assert {i["target"] for i in iwd["next"]} >= {"facebook-page", "mastodon-es"}
    health = api.client.get("/health").json()
    assert health["database"] == "ok"
    api.client.post("/api/posts", json=post_fields())
    metrics = api.client.get("/metrics").text
    assert 'crosspost_queued{platform="mastodon"} 2.0' in metrics
    assert "crosspost_publish_lag_seconds" in metrics
    schema = api.client.get("/openapi.json").json()
    assert "/api/posts" in schema["paths"]
    assert "PostFields" in schema["components"]["schemas"]
    assert TOKEN not in json.dumps(schema)
