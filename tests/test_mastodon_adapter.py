"""The Mastodon adapter against the fake Mastodon, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from crosspost.adapter import RenderedMedia
from crosspost.errors import OutcomeUnknown, Permanent, RateLimited, Transient
from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import FakePlatform, Reply, Request, RunningFake
from crosspost_adapters.mastodon import countable_length
from fakes_mastodon_fixtures import *  # noqa: F403  (the fixtures)
from fakes_mastodon_fixtures import TOKEN, MakeAdapter, make_post, mastodon_adapter

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    return path


@pytest.fixture
def mp4(tmp_path: Path) -> Path:
    path = tmp_path / "cat.mp4"
    path.write_bytes(MP4)
    return path


# --- rendering ---------------------------------------------------------------------------


def test_spanish_account_gets_spanish_text_and_language(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    post = make_post(text={"en": "Hello", "es": "Hola"}, default_language="en")
    adapter = make_mastodon("mastodon-es")
    rendition = adapter.render(post, "p1")
    assert (rendition.language, rendition.text) == ("es", "Hola")
    assert rendition.options["language"] == "es"
    adapter.publish(rendition, "key-es")
    assert mastodon_fake.statuses[0].language == "es"
    assert mastodon_fake.statuses[0].text == "Hola"


def test_hashtags_appended_once_whatever_their_case(make_mastodon: MakeAdapter) -> None:
    post = make_post(
        text={"en": "We #StandWithUkraine today"}, hashtags=["standwithukraine", "peace"]
    )
    rendition = make_mastodon().render(post, "p1")
    assert rendition.text.casefold().count("#standwithukraine") == 1
    assert rendition.text.endswith("\n\n#peace")


def test_links_missing_from_the_text_are_added(make_mastodon: MakeAdapter) -> None:
    post = make_post(
        text={"en": "Read https://example.org/a"},
        links=[{"url": "https://example.org/a"}, {"url": "https://example.org/b", "title": "B"}],
    )
    text = make_mastodon().render(post, "p1").text
    assert text.count("https://example.org/a") == 1
    assert "B: https://example.org/b" in text


def test_counting_follows_mastodon() -> None:
    long_url = "https://example.org/" + "a" * 200
    assert countable_length(f"See {long_url}") == 4 + 23
    assert countable_length("🇺🇦👩🏽‍💻 Слава") == 8
    assert countable_length("hi @alice@example.social") == len("hi @alice")
    assert countable_length("body", spoiler_text="cw") == 6


def test_rendition_length_uses_the_platform_count(make_mastodon: MakeAdapter) -> None:
    url = "http://example.org/" + "x" * 300
    post = make_post(text={"en": f"🇺🇦 {url}"}, content_warning="CW")
    rendition = make_mastodon().render(post, "p1")
    assert rendition.length == 2 + 2 + 23
    assert rendition.options["spoiler_text"] == "CW"
    assert rendition.options["sensitive"] is True


def test_alt_text_in_the_rendition_language(make_mastodon: MakeAdapter, png: Path) -> None:
    post = make_post(
        text={"en": "Cat", "es": "Gato"},
        media=[
            {"path": str(png), "alt": {"en": "A cat", "es": "Un gato"}},
            {"path": str(png), "alt": {"en": "Only English"}},
            {"path": str(png)},
        ],
    )
    media = make_mastodon("mastodon-es").render(post, "p1").media
    assert [m.alt for m in media] == ["Un gato", "Only English", ""]
    assert (media[0].is_url, media[0].mime_type) == (False, "image/png")


def test_limit_comes_from_the_instance(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    mastodon_fake.max_characters = 1000
    post = make_post(text={"en": "x" * 800})
    rendition = make_mastodon().render(post, "p1")
    assert (rendition.limit, rendition.over_by) == (1000, 0)
    configured = make_mastodon(max_characters=300).render(post, "p1")
    assert (configured.limit, configured.over_by) == (300, 500)


def test_limit_is_500_when_the_instance_is_unreachable(make_mastodon: MakeAdapter) -> None:
    adapter = make_mastodon(base_url=f"http://127.0.0.1:{_closed_port()}")
    assert adapter.render(make_post(text={"en": "hi"}), "p1").limit == 500


def test_over_the_limit_is_reported_not_cut(make_mastodon: MakeAdapter) -> None:
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "word " * 120}), "p1")
    assert not rendition.shortened
    assert adapter.validate(rendition) == [
        f"{rendition.length} characters, mastodon-en allows 500 ({rendition.length - 500} over)"
    ]


def test_opt_in_shortening_links_the_mirror(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    adapter = make_mastodon(shorten=True, mirror_url="https://example.org/posts/")
    rendition = adapter.render(make_post(text={"en": "word " * 200}), "p1")
    assert rendition.shortened
    assert rendition.text.endswith("…\nhttps://example.org/posts/p1")
    assert rendition.length <= 500
    assert adapter.validate(rendition) == []
    adapter.publish(rendition, "key-short")
    assert mastodon_fake.statuses[0].text == rendition.text


def test_validate_media_count_and_alt_length(make_mastodon: MakeAdapter, png: Path) -> None:
    post = make_post(text={"en": "Cats"}, media=[{"path": str(png), "alt": {"en": "a" * 1501}}] * 5)
    adapter = make_mastodon()
    problems = adapter.validate(adapter.render(post, "p1"))
    assert problems[0] == "5 media, mastodon-en allows 4"
    assert "media 1: alt text has 1501 characters, mastodon-en allows 1500" in problems


# --- publishing --------------------------------------------------------------------------


def test_publish_text(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon, mastodon_server: RunningFake
) -> None:
    adapter = make_mastodon(visibility="unlisted")
    post = make_post(text={"en": "Hello"}, content_warning="spoilers")
    published = adapter.publish(adapter.render(post, "p1"), "key-1")
    [status] = mastodon_fake.statuses
    assert published.remote_id == status.id
    assert published.remote_url == f"{mastodon_server.url}/@crosspost/{status.id}"
    assert (status.visibility, status.language, status.idempotency_key) == (
        "unlisted",
        "en",
        "key-1",
    )
    assert (status.spoiler_text, status.sensitive) == ("spoilers", True)
    [request] = [r for r in mastodon_fake.requests if r.path == "/api/v1/statuses"]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["idempotency-key"] == "key-1"
    assert TOKEN not in request.path


def test_publish_media_waits_for_processing(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon, png: Path, mp4: Path
) -> None:
    mastodon_fake.processing_polls = 2
    post = make_post(
        text={"en": "Cats"},
        media=[{"path": str(png), "alt": {"en": "A cat"}}, {"path": str(mp4)}],
    )
    adapter = make_mastodon()
    adapter.publish(adapter.render(post, "p1"), "key-media")
    [status] = mastodon_fake.statuses
    image, video = (mastodon_fake.media[m] for m in status.media_ids)
    assert (image.kind, image.description, image.size) == ("image", "A cat", len(PNG))
    assert (video.kind, video.description) == ("video", None)
    polls = [r.path for r in mastodon_fake.requests if r.path.startswith("/api/v1/media/")]
    assert polls == [f"/api/v1/media/{video.id}"] * 3  # 206, 206, 200


def test_media_that_never_finishes_is_transient(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon, mp4: Path
) -> None:
    mastodon_fake.processing_polls = 1000
    adapter = make_mastodon()
    post = make_post(text={"en": "Video"}, media=[{"path": str(mp4)}])
    with pytest.raises(Transient, match="still processing"):
        adapter.publish(adapter.render(post, "p1"), "key-slow")
    assert mastodon_fake.statuses == []


class _MediaHost(FakePlatform):
    def handle(self, request: Request) -> Reply:
        if request.path == "/cat.png":
            return Reply(200, PNG, {"Content-Type": "image/png"})
        return Reply(404, b"no")


@pytest.fixture
def media_host() -> Iterator[RunningFake]:
    with RunningFake(_MediaHost()) as running:
        yield running


def test_url_media_is_downloaded_then_uploaded(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon, media_host: RunningFake
) -> None:
    adapter = make_mastodon()
    adapter.media_url_schemes = ("https", "http")  # type: ignore[misc]  # loopback has no TLS
    rendition = adapter.render(make_post(text={"en": "Cat"}), "p1")
    remote = RenderedMedia(f"{media_host.url}/cat.png", True, "image/png", "A cat")
    adapter.publish(dataclasses.replace(rendition, media=(remote,)), "key-url")
    [media] = mastodon_fake.media.values()
    assert (media.size, media.description) == (len(PNG), "A cat")
    missing = RenderedMedia(f"{media_host.url}/gone.png", True, "image/png", "")
    with pytest.raises(Permanent, match="404"):
        adapter.publish(dataclasses.replace(rendition, media=(missing,)), "key-url-2")


def test_url_media_must_be_https(make_mastodon: MakeAdapter, media_host: RunningFake) -> None:
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "Cat"}), "p1")
    remote = RenderedMedia(f"{media_host.url}/cat.png", True, "image/png", "")
    with pytest.raises(Permanent, match="must be https"):
        adapter.publish(dataclasses.replace(rendition, media=(remote,)), "key")


def test_same_key_twice_makes_one_status(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "Once"}), "p1")
    first = adapter.publish(rendition, "key-once")
    second = adapter.publish(rendition, "key-once")
    assert first == second
    assert len(mastodon_fake.statuses) == 1


# --- errors ------------------------------------------------------------------------------


def test_over_the_limit_is_permanent(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "x" * 501}), "p1")
    with pytest.raises(Permanent) as caught:
        adapter.publish(rendition, "key-long")
    assert caught.value.http_status == 422
    assert str(caught.value).startswith("POST /api/v1/statuses: HTTP 422: ")
    assert mastodon_fake.statuses == []


def test_bad_token_is_permanent_and_not_shown(make_mastodon: MakeAdapter) -> None:
    secret = "wrong-token-do-not-print"
    adapter = make_mastodon(token=secret)
    rendition = adapter.render(make_post(text={"en": "hi"}), "p1")
    with pytest.raises(Permanent) as caught:
        adapter.publish(rendition, "key")
    assert caught.value.http_status == 401
    assert "access token is invalid" in str(caught.value)
    assert secret not in str(caught.value)


def test_missing_token_is_permanent(make_mastodon: MakeAdapter) -> None:
    adapter = make_mastodon(token=None)
    with pytest.raises(Permanent, match="no access token"):
        adapter.publish(adapter.render(make_post(text={"en": "hi"}), "p1"), "key")


def test_retry_after_gives_retry_at(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    mastodon_fake.fail_next("POST", "/api/v1/statuses", status=429, headers={"Retry-After": "2"})
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "hi"}), "p1")
    before = datetime.now(UTC)
    with pytest.raises(RateLimited) as caught:
        adapter.publish(rendition, "key")
    after = datetime.now(UTC)
    assert before + timedelta(seconds=2) <= caught.value.retry_at <= after + timedelta(seconds=2)
    assert mastodon_fake.statuses == []


def test_rate_limit_window_gives_reset_time(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    mastodon_fake.limits["default"] = (2, 300.0)
    adapter = make_mastodon(max_characters=500)
    rendition = adapter.render(make_post(text={"en": "hi"}), "p1")
    adapter.publish(rendition, "key-1")
    assert adapter.rate_limit is not None
    assert adapter.rate_limit[:2] == (2, 1)
    assert adapter.rate_limit_reset is None
    adapter.publish(rendition, "key-2")
    assert adapter.rate_limit_reset is not None  # remaining 0: the next one will wait
    with pytest.raises(RateLimited) as caught:
        adapter.publish(rendition, "key-3")
    retry_at = caught.value.retry_at
    assert retry_at == adapter.rate_limit_reset
    assert retry_at.utcoffset() == timedelta(0)
    assert datetime.now(UTC) < retry_at <= datetime.now(UTC) + timedelta(minutes=5)
    assert len(mastodon_fake.statuses) == 2


def test_server_error_is_transient(make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon) -> None:
    mastodon_fake.fail_next("POST", "/api/v1/statuses", status=503)
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "hi"}), "p1")
    with pytest.raises(Transient) as caught:
        adapter.publish(rendition, "key")
    assert caught.value.http_status == 503
    adapter.publish(rendition, "key")
    assert len(mastodon_fake.statuses) == 1


def test_refused_connection_is_transient(make_mastodon: MakeAdapter) -> None:
    adapter = make_mastodon(base_url=f"http://127.0.0.1:{_closed_port()}", max_characters=500)
    rendition = adapter.render(make_post(text={"en": "hi"}), "p1")
    with pytest.raises(Transient):
        adapter.publish(rendition, "key")


def test_reset_after_create_is_unknown_then_found(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    mastodon_fake.fail_next("POST", "/api/v1/statuses", fault="reset", after_create=True)
    adapter = make_mastodon()
    post = make_post(text={"en": "Hello https://example.org/page\n\nsecond @bob@example.social"})
    rendition = adapter.render(post, "p1")
    since = datetime.now(UTC)
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "key-unknown")
    [status] = mastodon_fake.statuses
    found = adapter.lookup(rendition, "key-unknown", since)
    assert found is not None
    assert found.remote_id == status.id
    other = adapter.render(make_post(text={"en": "Something else"}), "p2")
    assert adapter.lookup(other, "key-other", since) is None


def test_reset_before_create_is_unknown_and_not_found(
    make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon
) -> None:
    mastodon_fake.fail_next("POST", "/api/v1/statuses", fault="reset")
    adapter = make_mastodon()
    rendition = adapter.render(make_post(text={"en": "Lost"}), "p1")
    since = datetime.now(UTC)
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "key")
    assert adapter.lookup(rendition, "key", since) is None


def test_no_answer_is_unknown(make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon) -> None:
    mastodon_fake.fail_next("POST", "/api/v1/statuses", fault="hang", delay=1.5, after_create=True)
    adapter = make_mastodon(timeout=0.3)
    rendition = adapter.render(make_post(text={"en": "Slow"}), "p1")
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "key")


def test_delete(make_mastodon: MakeAdapter, mastodon_fake: FakeMastodon) -> None:
    adapter = make_mastodon()
    published = adapter.publish(adapter.render(make_post(text={"en": "bye"}), "p1"), "key")
    adapter.delete(published.remote_id)
    assert mastodon_fake.statuses[0].deleted
    adapter.delete(published.remote_id)  # already gone: fine
    assert [r.method for r in mastodon_fake.requests[-2:]] == ["DELETE", "DELETE"]


# --- the fake keeps Mastodon's rules ---------------------------------------------------------


def test_fake_enforces_mastodon_rules(
    mastodon_fake: FakeMastodon, mastodon_server: RunningFake
) -> None:
    url, auth = mastodon_server.url, {"Authorization": f"Bearer {TOKEN}"}
    with requests.Session() as http:
        anonymous = http.get(f"{url}/api/v1/accounts/verify_credentials")
        assert anonymous.status_code == 401
        assert 'error="invalid_token"' in anonymous.headers["WWW-Authenticate"]
        blank = http.post(f"{url}/api/v1/statuses", data={"status": " "}, headers=auth)
        assert blank.status_code == 422
        video = http.post(
            f"{url}/api/v2/media", files={"file": ("v.mp4", MP4, "video/mp4")}, headers=auth
        )
        assert (video.status_code, video.json()["url"]) == (202, None)
        early = {"status": "too soon", "media_ids[]": video.json()["id"]}
        unready = http.post(f"{url}/api/v1/statuses", data=early, headers=auth)
        assert unready.status_code == 422
        for response in (anonymous, blank, video, unready):
            assert response.headers["X-RateLimit-Reset"].endswith("Z")
        assert video.headers["X-RateLimit-Limit"] == "30"
        assert blank.headers["X-RateLimit-Limit"] == "300"
    assert mastodon_fake.statuses == []


def test_each_token_is_its_own_account() -> None:
    fake = FakeMastodon(tokens={"token-en": "news", "token-es": "noticias"})
    with RunningFake(fake) as running:
        en = mastodon_adapter(running.url, "mastodon-en", token="token-en", max_characters=500)
        es = mastodon_adapter(running.url, "mastodon-es", token="token-es", max_characters=500)
        post = make_post(text={"en": "Hello", "es": "Hola"})
        since = datetime.now(UTC)
        first = en.publish(en.render(post, "p1"), "same-key")
        second = es.publish(es.render(post, "p1"), "same-key")  # keys are per account
        assert first.remote_id != second.remote_id
        assert second.remote_url is not None
        assert "/@noticias/" in second.remote_url
        assert es.lookup(en.render(post, "p1"), "same-key", since) is None
        es.delete(first.remote_id)  # not its own: Mastodon answers 404
        assert not fake.statuses[0].deleted
