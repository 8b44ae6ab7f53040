"""The website mirror: its signed webhook, pages, feeds, embed and media; the careful fetch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from crosspost.api import create_app
from crosspost.campaigns import load_campaigns
from crosspost.delivery import AttemptRecord, DeliveryState
from crosspost.fakes.server import FakePlatform, Reply, Request, RunningFake
from crosspost.intake import Intake
from crosspost.media_fetch import MediaFetchError, fetch_media
from crosspost.mirror import ensure_mirror_secrets, order_languages, preferred_languages
from crosspost.postfile import read_post_file
from crosspost.queue import Queue
from crosspost.settings import Settings
from crosspost.targets import load_targets
from crosspost.webhook_payload import body_of, build_payload, deleted_payload
from platforms import new_secret, targets_yaml
from test_api import clear_mirror

REPO = Path(__file__).resolve().parents[1]
PNG = (REPO / "config/examples/media/iwd-banner.png").read_bytes()


@dataclass
class Site:
    client: TestClient
    queue: Queue
    secret: str
    settings: Settings
    intake: Intake

    def send(
        self, payload: dict[str, object], webhook_id: str, secret: str | None = None
    ) -> object:
        body = body_of(payload)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret or self.secret).sign(webhook_id, now, body),
        }
        return self.client.post("/mirror/hook", content=body.encode(), headers=headers)

    def queue_example(self, name: str, **replace: str) -> str:
        path = self.settings.data_dir / name
        text = (REPO / "config/examples" / name).read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        path.write_text(text.replace("media/", str(REPO / "config/examples/media") + "/"))
        checked = self.intake.check(read_post_file(path), path.name, datetime.now(UTC))
        self.queue.add(checked.new_post(), datetime.now(UTC))
        return checked.post_id

    def publish(
        self, post_id: str, webhook_id: str, copies: dict[str, str] | None = None
    ) -> object:
        from crosspost.post import Post

        post = Post.model_validate(self.queue.get(post_id).body, context={"stored": True})
        payload = build_payload(
            post,
            post_id,
            "post.published",
            copies or {},
            datetime.now(UTC),
            target="website",
            languages=["en", "es"],
        )
        return self.send(payload, webhook_id)


@pytest.fixture
def site(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    clear_mirror(database_url)
    secret = new_secret()
    monkeypatch.setenv("TEST_WEBSITE_SECRET", secret)
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(
        targets_yaml(
            {
                "graph": "http://127.0.0.1:9",
                "mastodon": "http://127.0.0.1:9",
                "website": "http://127.0.0.1:8080",
            }
        ).replace("/crosspost/hook", "/mirror/hook")
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        targets=targets_file,
        campaigns_dir=REPO / "config/campaigns",
    )
    settings.data_dir.mkdir()
    queue = Queue(database_url)
    queue.upgrade()
    targets = load_targets(targets_file)
    campaigns = load_campaigns(settings.campaigns_dir)
    app = create_app(settings, queue, targets, campaigns)
    with TestClient(app) as client:
        yield Site(client, queue, secret, settings, Intake(targets, settings, campaigns))
    queue.close()


def test_hook_verifies_deduplicates_and_stores(site: Site) -> None:
    post_id = site.queue_example(
        "stand-with-ukraine.yaml", **{"publish_at: 2027-02-24T09:00:00+01:00": "publish_at: now"}
    )
    answer = site.publish(post_id, "cp_first")
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    assert answer.json()["url"].endswith(f"/mirror/posts/{post_id}")  # type: ignore[attr-defined]
    assert site.publish(post_id, "cp_first").status_code == 200  # type: ignore[attr-defined]
    page = site.client.get("/mirror")
    assert page.text.count(f'id="post-{post_id}"') == 1
    assert "Three years on" in page.text
    assert 'href="/mirror/tags/standwithukraine"' in page.text
    assert 'alt="The flag of Ukraine: a blue band above a yellow band"' in page.text
    assert 'alt="La bandera de Ucrania' in page.text
    assert site.client.get("/mirror/tags/standwithukraine").text.count("Three years on") == 1
    assert "Three years on" not in site.client.get("/mirror/tags/other").text

    # The image is served from our media folder, by digest.
    src = page.text.split('<img src="', 1)[1].split('"', 1)[0]
    image = site.client.get(src)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"

    bad = site.send({"type": "post.published"}, "cp_x", secret=new_secret())
    assert bad.status_code == 401  # type: ignore[attr-defined]
    invalid = site.send({"type": "post.published", "timestamp": "x", "data": {}}, "cp_y")
    assert invalid.status_code == 400  # type: ignore[attr-defined]
    unsigned = site.client.post("/mirror/hook", content=b"{}")
    assert unsigned.status_code == 401

    deleted = site.send(deleted_payload("cp_first", datetime.now(UTC)), "cp_first-deleted")
    assert deleted.status_code == 200  # type: ignore[attr-defined]
    assert "Three years on" not in site.client.get("/mirror").text
    assert site.client.get(f"/mirror/posts/{post_id}").status_code == 404


def test_language_switch_follows_accept_language(site: Site) -> None:
    post_id = site.queue_example(
        "stand-with-ukraine.yaml", **{"publish_at: 2027-02-24T09:00:00+01:00": "publish_at: now"}
    )
    site.publish(post_id, "cp_1")
    spanish = site.client.get(
        f"/mirror/posts/{post_id}", headers={"Accept-Language": "es-CL,es;q=0.9,en;q=0.5"}
    )
    radios = spanish.text.split('type="radio"')
    assert 'value="es" checked' in radios[1]
    assert 'value="en"' in radios[2] and "checked" not in radios[2].split(">")[0]
    english = site.client.get(
        f"/mirror/posts/{post_id}", headers={"Accept-Language": "fr, en;q=0.8"}
    )
    assert 'value="en" checked' in english.text.split('type="radio"')[1]
    assert preferred_languages("en;q=0.2, es, *;q=0") == ["es", "en"]
    assert order_languages(["en", "es", "ru"], "en", ["ru"]) == ["ru", "en", "es"]
    assert order_languages(["en", "es"], "en", ["de"]) == ["en", "es"]


def test_copies_come_from_the_queue(site: Site) -> None:
    post_id = site.queue_example(
        "stand-with-ukraine.yaml", **{"publish_at: 2027-02-24T09:00:00+01:00": "publish_at: now"}
    )
    now = datetime.now(UTC)
    for claim in site.queue.claim_due("t", now, now, 10):
        if claim.delivery.target in ("facebook-page", "mastodon-en"):
            url = f"https://copies.example/{claim.delivery.target}/1"
            site.queue.finish(
                claim.delivery.id,
                claim.fence,
                DeliveryState.PUBLISHED,
                AttemptRecord(now, 1, "published", remote_id="1", remote_url=url),
            )
    site.publish(post_id, "cp_1")
    page = site.client.get(f"/mirror/posts/{post_id}").text
    assert 'href="https://copies.example/facebook-page/1"' in page
    assert 'href="https://copies.example/mastodon-en/1"' in page
    assert "Facebook (facebook-page)" in page


def test_feeds_are_valid_json_feed_and_atom(site: Site) -> None:
    for number, name in enumerate(["stand-with-ukraine.yaml", "boric-chile.yaml"]):
        text = (REPO / "config/examples" / name).read_text()
        replace = {
            line: "publish_at: now" for line in text.splitlines() if line.startswith("publish_at:")
        }
        post_id = site.queue_example(name, **replace)
        assert site.publish(post_id, f"cp_{number}").status_code == 200  # type: ignore[attr-defined]

    json_answer = site.client.get("/mirror/feed.json")
    assert json_answer.headers["content-type"].startswith("application/feed+json")
    feed = json_answer.json()
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] and feed["feed_url"].endswith("/mirror/feed.json")
    assert len(feed["items"]) == 2
    for item in feed["items"]:
        assert item["id"] and item["url"].startswith("http")
        assert item["content_html"] and item["content_text"]
        datetime.fromisoformat(item["date_published"])
    # feedparser 6 reads no JSON Feed: the spec's rules, checked here. Required: version,
    # title, items; per item an id (a string) and content_html or content_text; dates RFC 3339.
    assert isinstance(feed["items"], list)
    for item in feed["items"]:
        assert isinstance(item["id"], str)
        assert isinstance(item.get("content_html") or item.get("content_text"), str)
        assert datetime.fromisoformat(item["date_modified"]).tzinfo is not None
        assert set(item) <= {
            "id",
            "url",
            "external_url",
            "title",
            "content_html",
            "content_text",
            "summary",
            "image",
            "banner_image",
            "date_published",
            "date_modified",
            "authors",
            "tags",
            "language",
            "attachments",
        }
        for attachment in item.get("attachments", []):
            assert attachment["url"].startswith("http") and attachment["mime_type"]

    atom = feedparser.parse(site.client.get("/mirror/feed.atom").content)
    assert not atom.bozo, atom.get("bozo_exception")
    assert atom.version == "atom10"
    assert atom.feed.title and atom.feed.id and atom.feed.updated
    assert len(atom.entries) == 2
    for entry in atom.entries:
        assert entry.id and entry.title and entry.updated and entry.link
        assert entry.content[0].value
    assert any("StandWithUkraine" in [t.term for t in e.tags] for e in atom.entries)


def test_embed_and_pagination(site: Site) -> None:
    site.settings.mirror_page_size = 1
    ids = []
    for number in range(3):
        payload = {
            "type": "post.published",
            "timestamp": "2027-01-01T00:00:00.000Z",
            "data": {
                "id": f"p{number}",
                "default_language": "en",
                "languages": {"en": {"text": f"Post {number}", "html": f"<p>Post {number}</p>"}},
                "hashtags": [],
                "language_hashtags": {},
                "links": [],
                "media": [],
                "publish_at": None,
                "campaign": None,
                "content_warning": None,
                "sensitive": False,
                "copies": {},
            },
        }
        assert site.send(payload, f"cp_p{number}").status_code == 200  # type: ignore[attr-defined]
        ids.append(f"p{number}")
    embed = site.client.get("/mirror/embed/p1")
    assert embed.status_code == 200
    assert "frame-ancestors *" in embed.headers["content-security-policy"]
    assert "Post 1" in embed.text
    assert site.client.get("/mirror/embed/missing").status_code == 404


def test_generated_mirror_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBSITE_WEBHOOK_SECRET", raising=False)
    settings = Settings(data_dir=tmp_path / "data", env_file=tmp_path / "none")
    targets = load_targets(REPO / "config/targets.yaml")
    assert ensure_mirror_secrets(settings, targets) == ["WEBSITE_WEBHOOK_SECRET"]
    made = settings.generated_secrets_dir / "WEBSITE_WEBHOOK_SECRET"
    assert made.stat().st_mode & 0o777 == 0o600
    value = settings.secret("WEBSITE_WEBHOOK_SECRET")
    assert value is not None and value.get_secret_value().startswith("whsec_")
    assert ensure_mirror_secrets(settings, targets) == []  # made once
    monkeypatch.setenv("WEBSITE_WEBHOOK_SECRET", "whsec_fromenv")
    assert settings.secret("WEBSITE_WEBHOOK_SECRET").get_secret_value() == "whsec_fromenv"  # type: ignore[union-attr]
    assert settings.secret("../../etc/passwd") is None


class MediaHost(FakePlatform):
    """Serves an image, a redirect, text, and a large body."""

    def __init__(self, redirect_to: str = "") -> None:
        super().__init__()
        self.redirect_to = redirect_to

    def handle(self, request: Request) -> Reply:
        if request.path == "/image.png":
            return Reply(200, PNG, {"Content-Type": "text/plain"})  # the bytes decide, not this
        if request.path == "/redirect":
            return Reply(302, b"", {"Location": self.redirect_to})
        if request.path == "/text":
            return Reply(200, b"<html>not an image</html>", {"Content-Type": "image/png"})
        if request.path == "/big":
            return Reply(200, PNG + os.urandom(300_000), {"Content-Type": "image/png"})
        return Reply(404, {"error": "no"})


def test_media_fetch_is_careful() -> None:
    with RunningFake(MediaHost()) as host:
        hostport = host.url.removeprefix("http://")
        fetched = fetch_media(f"{host.url}/image.png", allowed=[hostport], allow_http=True)
        assert fetched.mime_type == "image/png" and fetched.content == PNG
        with pytest.raises(MediaFetchError, match="private, loopback"):
            fetch_media(f"{host.url}/image.png", allow_http=True)
        with pytest.raises(MediaFetchError, match="only https"):
            fetch_media(f"{host.url}/image.png", allowed=[hostport])
        with pytest.raises(MediaFetchError, match="not an image"):
            fetch_media(f"{host.url}/text", allowed=[hostport], allow_http=True)
        with pytest.raises(MediaFetchError, match="bytes"):
            fetch_media(f"{host.url}/big", allowed=[hostport], allow_http=True, max_bytes=200_000)
        with pytest.raises(MediaFetchError, match="HTTP 404"):
            fetch_media(f"{host.url}/nothing", allowed=[hostport], allow_http=True)
    for private in ("http://169.254.169.254/latest", "http://10.0.0.1/x.png", "http://[::1]/x"):
        with RunningFake(MediaHost(redirect_to=private)) as host:
            hostport = host.url.removeprefix("http://")
            with pytest.raises(MediaFetchError, match="refused"):
                fetch_media(f"{host.url}/redirect", allowed=[hostport], allow_http=True)
    with RunningFake(MediaHost()) as host:
        hostport = host.url.removeprefix("http://")
        host.fake.redirect_to = f"{host.url}/redirect"  # type: ignore[attr-defined]
        with pytest.raises(MediaFetchError, match="redirects"):
            fetch_media(f"{host.url}/redirect", allowed=[hostport], allow_http=True)
    with pytest.raises(MediaFetchError, match="credentials"):
        fetch_media("https://user:pw@example.org/x.png")
