"""The Facebook adapter against the fake Graph API, over real loopback HTTP."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from crosspost.adapter import Published
from crosspost.errors import OutcomeUnknown, Permanent, RateLimited, Transient
from crosspost.fakes.facebook import FakeGraph
from crosspost.fakes.server import RunningFake
from crosspost.post import Post
from crosspost_adapters.facebook import FacebookAdapter, FacebookTarget, read_usage

TOKEN = "EAAB-test-page-token-1234567890"
PAGE = "123456789"
FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/facebook"


def fixture(name: str) -> Any:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"recorded fixture {path} is absent (shared/ must sit beside the clone)")
    return json.loads(path.read_text(encoding="utf-8"))


def tiny_png(path: Path) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def graph() -> Iterator[tuple[FakeGraph, str]]:
    fake = FakeGraph(page_id=PAGE, token=TOKEN)
    with RunningFake(fake) as running:
        yield fake, running.url


def make_adapter(url: str, token: str = TOKEN, **extra: Any) -> FacebookAdapter:
    target = FacebookTarget(
        name="facebook-page",
        base_url=url,
        page_id=PAGE,
        token_env="FACEBOOK_PAGE_TOKEN",
        **{"languages": ["en"], **extra},
    )
    return FacebookAdapter(target, secret=SecretStr(token), timeout=5.0)


@pytest.fixture
def adapter(graph: tuple[FakeGraph, str]) -> FacebookAdapter:
    return make_adapter(graph[1])


def make_post(**fields: Any) -> Post:
    data: dict[str, Any] = {
        "text": {"en": "Spring fair this Saturday #community", "es": "Feria de primavera"},
        "hashtags": ["community", "spring"],
        "language_hashtags": {"es": ["feria"]},
        "links": [
            {"url": "https://example.org/fair", "title": "Programme"},
            {"url": "https://example.org/map"},
        ],
        "publish_at": "now",
        "targets": ["facebook-page"],
    }
    data.update(fields)
    return Post.model_validate(data)


# --- rendering ----------------------------------------------------------------------------------


def test_render_keeps_links_hashtags_once_and_first_link_as_card(adapter: FacebookAdapter) -> None:
    rendition = adapter.render(make_post(), "p1")
    assert rendition.link == "https://example.org/fair"
    assert "Programme: https://example.org/fair" in rendition.text
    assert "https://example.org/map" in rendition.text
    assert rendition.text.lower().count("#community") == 1
    assert rendition.text.endswith("#spring")
    assert rendition.language == "en"
    assert rendition.limit == 63_206
    assert not adapter.validate(rendition)


def test_render_language_per_target_and_alt_text_in_that_language(
    graph: tuple[FakeGraph, str], tmp_path: Path
) -> None:
    spanish = make_adapter(graph[1], languages=["es"])
    image = tiny_png(tmp_path / "fair.png")
    post = make_post(media=[{"path": str(image), "alt": {"en": "A stall", "es": "Un puesto"}}])
    rendition = spanish.render(post, "p1")
    assert rendition.language == "es"
    assert rendition.text.startswith("Feria de primavera")
    assert "#feria" in rendition.text
    assert "#community" in rendition.text
    assert rendition.link is None  # the photo is shown, not a link card
    assert rendition.media[0].alt == "Un puesto"
    assert rendition.media[0].mime_type == "image/png"


def test_render_over_limit_is_shortened_only_when_opted_in(graph: tuple[FakeGraph, str]) -> None:
    long_post = make_post(text={"en": "word " * 20_000})
    plain = make_adapter(graph[1]).render(long_post, "p1")
    assert plain.over_by > 0
    assert adapter_problems(make_adapter(graph[1]), long_post)
    shortening = make_adapter(graph[1], shorten=True, mirror_url="https://example.org/posts")
    short = shortening.render(long_post, "p1")
    assert short.shortened
    assert short.length <= 63_206
    assert short.text.endswith("https://example.org/posts/p1")


def adapter_problems(adapter: FacebookAdapter, post: Post) -> list[str]:
    return adapter.validate(adapter.render(post, "p1"))


# --- publishing ---------------------------------------------------------------------------------


def test_text_post_with_link(graph: tuple[FakeGraph, str], adapter: FacebookAdapter) -> None:
    fake, _ = graph
    rendition = adapter.render(make_post(), "p1")
    published = adapter.publish(rendition, "key-1")
    post = fake.posts[published.remote_id]
    assert post.message == rendition.text
    assert post.link == "https://example.org/fair"
    assert published.remote_url == f"https://www.facebook.com/{published.remote_id}"
    request = fake.requests[-1]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in request.path
    assert "access_token" not in request.query


def test_one_local_photo_is_uploaded_as_multipart(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, tmp_path: Path
) -> None:
    fake, _ = graph
    image = tiny_png(tmp_path / "stall.png")
    post = make_post(media=[{"path": str(image), "alt": {"en": "A stall with apples"}}])
    rendition = adapter.render(post, "p1")
    published = adapter.publish(rendition, "key-1")
    assert published.remote_id.startswith(f"{PAGE}_")
    [photo] = fake.photos.values()
    assert photo.published
    assert photo.size == image.stat().st_size
    assert photo.alt == "A stall with apples"
    assert photo.caption == rendition.text
    assert fake.requests[-1].headers["content-type"].startswith("multipart/form-data")
    assert fake.posts[published.remote_id].photo_ids == [photo.id]


def test_several_photos_are_attached_to_one_post(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, tmp_path: Path
) -> None:
    fake, _ = graph
    images = [tiny_png(tmp_path / f"{n}.png") for n in range(3)]
    media = [{"path": str(p), "alt": {"en": f"photo {n}"}} for n, p in enumerate(images)]
    media.append({"url": "https://example.org/poster.jpg", "alt": {"en": "the poster"}})
    rendition = adapter.render(make_post(media=media), "p1")
    published = adapter.publish(rendition, "key-1")
    post = fake.posts[published.remote_id]
    assert post.message == rendition.text
    assert len(post.photo_ids) == 4
    photos = [fake.photos[i] for i in post.photo_ids]
    assert [p.alt for p in photos] == ["photo 0", "photo 1", "photo 2", "the poster"]
    assert not any(p.published for p in photos)
    assert photos[3].url == "https://example.org/poster.jpg"
    assert len(fake.posts) == 1


# --- errors -------------------------------------------------------------------------------------


def test_bad_token_is_permanent_and_never_shown(graph: tuple[FakeGraph, str]) -> None:
    wrong = "EAAB-wrong-token-that-must-not-leak"
    adapter = make_adapter(graph[1], token=wrong)
    with pytest.raises(Permanent) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    text = str(caught.value)
    assert "190" in text
    assert "OAuthException" in text
    assert "fbtrace_id" in text
    assert wrong not in text
    assert TOKEN not in text


def test_echoed_token_is_stripped_from_the_error(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    fake.fail_next(
        "POST", "/feed", status=400, graph_code=100,
        message=f"(#100) bad request https://graph.facebook.com/x?access_token={TOKEN}&a=b",
    )  # fmt: skip
    with pytest.raises(Permanent) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert TOKEN not in str(caught.value)
    assert "access_token=[redacted]" in str(caught.value)


def test_duplicate_message_is_permanent(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    rendition = adapter.render(make_post(), "p1")
    adapter.publish(rendition, "key-1")
    with pytest.raises(Permanent, match="506"):
        adapter.publish(rendition, "key-2")
    assert len(graph[0].posts) == 1


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80001])
def test_throttling_waits_as_long_as_graph_says(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, code: int
) -> None:
    fake, _ = graph
    fake.throttle_for(minutes=42, code=code)
    before = datetime.now(UTC)
    with pytest.raises(RateLimited) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    wait = caught.value.retry_at - before
    assert timedelta(minutes=41) <= wait <= timedelta(minutes=43)
    assert f"Graph error {code}" in str(caught.value)
    assert adapter.usage == 100
    assert adapter.regain_access_at is not None
    assert not fake.posts


def test_throttling_after_calls_per_window(graph: tuple[FakeGraph, str]) -> None:
    fake, url = graph
    fake.calls_per_window = 2
    adapter = make_adapter(url)
    adapter.publish(adapter.render(make_post(text={"en": "one"}), "p1"), "k1")
    assert adapter.usage == 50
    adapter.publish(adapter.render(make_post(text={"en": "two"}), "p2"), "k2")
    with pytest.raises(RateLimited) as caught:
        adapter.publish(adapter.render(make_post(text={"en": "three"}), "p3"), "k3")
    assert caught.value.retry_at > datetime.now(UTC) + timedelta(minutes=50)


def test_throttle_without_a_hint_waits_an_hour(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    fake.fail_next("POST", "/feed", status=400, graph_code=4, headers={"X-App-Usage": "{}"})
    with pytest.raises(RateLimited) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert caught.value.retry_at > datetime.now(UTC) + timedelta(minutes=59)


def test_policy_block_368_waits_long(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    graph[0].fail_next("POST", "/feed", status=400, graph_code=368)
    with pytest.raises(RateLimited) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert caught.value.retry_at > datetime.now(UTC) + timedelta(hours=23)


@pytest.mark.parametrize(("status", "code"), [(500, 2), (500, 1), (503, None), (400, 2)])
def test_temporary_failures_are_transient(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, status: int, code: int | None
) -> None:
    fake, _ = graph
    if code is None:  # a proxy's error page, not Graph JSON
        fake.fail_next("POST", "/feed", status=status, body=b"<html>Service Unavailable</html>")
    else:
        fake.fail_next("POST", "/feed", status=status, graph_code=code)
    with pytest.raises(Transient):
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert not fake.posts


def test_refused_connection_is_transient() -> None:
    fake = FakeGraph(page_id=PAGE, token=TOKEN)
    running = RunningFake(fake).start()
    url = running.url
    running.stop()
    adapter = make_adapter(url)
    with pytest.raises(Transient):
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")


# --- outcome unknown and lookup -----------------------------------------------------------------


def test_reset_after_create_then_lookup_finds_the_post(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    fake.fail_next("POST", "/feed", fault="reset", after_create=True)
    rendition = adapter.render(make_post(), "p1")
    since = datetime.now(UTC)
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "key-1")
    [post] = fake.posts.values()
    found = adapter.lookup(rendition, "key-1", since)
    assert found is not None
    assert found.remote_id == post.id
    assert found.remote_url
    assert post.id.split("_")[1] in found.remote_url
    lookup_request = fake.requests[-1]
    assert lookup_request.method == "GET"
    assert "access_token" not in lookup_request.query
    assert len(fake.posts) == 1


def test_hang_is_outcome_unknown(graph: tuple[FakeGraph, str]) -> None:
    fake, url = graph
    adapter = make_adapter(url)
    adapter.timeout = 0.3
    fake.fail_next("POST", "/feed", fault="hang", after_create=True, delay=1.0)
    with pytest.raises(OutcomeUnknown):
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")


def test_lost_answer_for_an_unpublished_photo_is_transient(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, tmp_path: Path
) -> None:
    fake, _ = graph
    media = [{"path": str(tiny_png(tmp_path / f"{n}.png"))} for n in range(2)]
    fake.fail_next("POST", "/photos", fault="reset", after_create=True)
    with pytest.raises(Transient):
        adapter.publish(adapter.render(make_post(media=media), "p1"), "key-1")
    assert not fake.posts


def test_lookup_returns_none_when_nothing_was_posted(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    other = adapter.render(make_post(text={"en": "something else"}), "p0")
    adapter.publish(other, "key-0")
    rendition = adapter.render(make_post(), "p1")
    assert adapter.lookup(rendition, "key-1", datetime.now(UTC)) is None


def test_lookup_ignores_posts_from_before_the_attempt(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    rendition = adapter.render(make_post(), "p1")
    adapter.publish(rendition, "key-1")
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert adapter.lookup(rendition, "key-1", later) is None


def test_lookup_follows_paging_next(graph: tuple[FakeGraph, str]) -> None:
    fake, url = graph
    adapter = make_adapter(url)
    first = adapter.render(make_post(text={"en": "the first"}), "p1")
    since = datetime.now(UTC)
    adapter.publish(first, "k1")
    for n in range(30):
        adapter.publish(adapter.render(make_post(text={"en": f"filler {n}"}), f"f{n}"), "k")
    found = adapter.lookup(first, "k1", since)
    assert found is not None
    assert fake.posts[found.remote_id].message == first.text
    feed_reads = [r for r in fake.requests if r.method == "GET"]
    assert len(feed_reads) == 2
    assert "after" in feed_reads[1].query


def test_lookup_parses_a_recorded_feed_page(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    page = fixture("posts/feeds_default_fields_p1.json")
    recorded = page["data"][1]
    fake.reply_next("GET", "/feed", page)
    rendition = adapter.render(
        make_post(text={"en": recorded["message"]}, hashtags=[], links=[]), "p"
    )
    since = datetime(2021, 7, 8, 15, 0, tzinfo=UTC)
    found = adapter.lookup(rendition, "key", since)
    assert found == Published(recorded["id"], recorded["permalink_url"])
    # paging.next points at graph.facebook.com: the token is never sent off the fake's host
    assert all(r.path.endswith("/feed") for r in fake.requests)


def test_recorded_feed_page_older_than_since_is_not_a_match(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    page = fixture("posts/feeds_default_fields_p1.json")
    fake.reply_next("GET", "/feed", page)
    text = page["data"][1]["message"]
    rendition = adapter.render(make_post(text={"en": text}, hashtags=[], links=[]), "p")
    assert adapter.lookup(rendition, "key", datetime(2021, 7, 9, 0, 0, tzinfo=UTC)) is None


# --- delete -------------------------------------------------------------------------------------


def test_delete_removes_the_post_and_tolerates_it_being_gone(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    published = adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    adapter.delete(published.remote_id)
    assert not fake.posts
    adapter.delete(published.remote_id)  # already gone: code 100, subcode 33


def test_delete_with_bad_token_is_permanent(graph: tuple[FakeGraph, str]) -> None:
    adapter = make_adapter(graph[1], token="nope")
    with pytest.raises(Permanent, match="190"):
        adapter.delete(f"{PAGE}_1")


# --- recorded error bodies and headers ----------------------------------------------------------


@pytest.mark.parametrize("name", ["error.json", "base/error_data.json"])
def test_recorded_graph_errors_are_permanent(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter, name: str
) -> None:
    fake, _ = graph
    body = fixture(name)
    fake.fail_next("POST", "/feed", status=400, body=body)
    with pytest.raises(Permanent) as caught:
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert body["error"]["fbtrace_id"] in str(caught.value)
    assert "Graph error 100" in str(caught.value)


def test_recorded_rate_limit_headers_parse() -> None:
    examples = {e["name"]: e["headers"] for e in fixture("ratelimit_headers.json")["examples"]}
    assert read_usage(examples["app_usage_high"]) == (91.0, 0.0)
    assert read_usage(examples["app_usage_low"]) == (16.0, 0.0)
    assert read_usage(examples["business_use_case_usage"]) == (1.0, 0.0)
    assert read_usage(examples["ad_account_usage"]) is None
    blocked = json.loads(examples["business_use_case_usage"]["x-business-use-case-usage"])
    for entries in blocked.values():
        entries[0]["estimated_time_to_regain_access"] = 17
    assert read_usage({"x-business-use-case-usage": json.dumps(blocked)}) == (1.0, 17.0)


def test_recorded_headers_update_usage_and_regain_time(
    graph: tuple[FakeGraph, str], adapter: FacebookAdapter
) -> None:
    fake, _ = graph
    examples = {e["name"]: e["headers"] for e in fixture("ratelimit_headers.json")["examples"]}
    fake.fail_next("POST", "/feed", status=400, graph_code=100, headers=examples["app_usage_high"])
    with pytest.raises(Permanent):
        adapter.publish(adapter.render(make_post(), "p1"), "key-1")
    assert adapter.usage == 91.0
    assert adapter.regain_access_at is None


def test_videos_are_refused_before_publishing(adapter: FacebookAdapter) -> None:
    post = make_post(media=[{"url": "https://example.org/clip.mp4", "mime_type": "video/mp4"}])
    [problem] = adapter.validate(adapter.render(post, "p1"))
    assert "only photos" in problem
