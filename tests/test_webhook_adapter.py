"""The website adapter against a real loopback website that verifies Standard Webhooks."""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from crosspost.adapter import RenderContext, Rendition
from crosspost.errors import OutcomeUnknown, Permanent, RateLimited, Transient
from crosspost.fakes.server import RunningFake
from crosspost.fakes.website import FakeWebsite
from crosspost.post import Post
from crosspost.webhook_payload import (
    InvalidSignature,
    body_of,
    render_html,
    schema,
    schema_problems,
    verify_and_parse,
)
from crosspost_adapters.webhook import WebhookAdapter, WebhookTarget

# A tiny PNG: the signature is what the post's media check sniffs.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)
LONG_EN = (
    "The invasion and military intervention of Russia in Ukraine raises the risk of a new war,"
    " including a nuclear war, in Europe. #PeaceandSecurity Podcasts 🎧\n"
) * 14
LONG_EN = LONG_EN[:2000]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def site(secret: str) -> Iterator[tuple[FakeWebsite, str]]:
    fake = FakeWebsite(secret)
    with RunningFake(fake) as running:
        yield fake, f"{running.url}/crosspost/hook"


def make_adapter(
    url: str, secret: str | None, languages: list[str] | None = None
) -> WebhookAdapter:
    target = WebhookTarget(
        name="website",
        url=url,
        secret_env="WEBSITE_WEBHOOK_SECRET",
        languages=["en", "es"] if languages is None else languages,
    )
    return WebhookAdapter(
        target, secret=SecretStr(secret) if secret else None, session=requests.Session(), timeout=5
    )


def make_post(tmp_path: Path, **changes: Any) -> Post:
    (tmp_path / "poster.png").write_bytes(PNG)
    data: dict[str, Any] = {
        "text": {
            "en": LONG_EN,
            "es": "La toma de mando del Presidente Gabriel Boric significa una gran esperanza"
            " para Chile, la región y la socialdemocracia. ¡Felicidades!",
            "ru": "Следите за нашим партнёром: СД Платформа",
        },
        "default_language": "en",
        "hashtags": {"all": ["PeaceandSecurity", "StandWithUkraine"], "es": ["Chile"]},
        "links": [
            {"url": "https://example.org/podcast/3", "title": "Listen on our website"},
            {"url": "https://open.spotify.com/episode/abc", "title": None},
        ],
        "media": [
            {"path": "poster.png", "alt": {"en": "Podcast poster", "es": "Cartel del pódcast"}},
            {"url": "https://cdn.example.org/photo.jpg", "alt": {"en": "Rally on 8 March"}},
        ],
        "publish_at": "2027-03-08T09:00:00+01:00",
        "targets": ["website", "facebook-page", "mastodon-en"],
        "content_warning": "war",
    }
    data.update(changes)
    return Post.model_validate(data, context={"base_dir": str(tmp_path)})


def rendition_for(adapter: WebhookAdapter, post: Post, **context: Any) -> Rendition:
    return adapter.render(post, "2027-03-08-podcast", RenderContext(**context))


# --- the payload -------------------------------------------------------------------------


def test_payload_carries_every_language_in_full(tmp_path: Path, secret: str) -> None:
    adapter = make_adapter("https://example.org/hook", secret)
    copies = {"facebook-page": "https://www.facebook.com/123_456"}
    rendition = rendition_for(adapter, make_post(tmp_path), copies=copies)
    payload = rendition.options["payload"]
    data = payload["data"]

    assert payload["type"] == "post.published"
    assert payload["timestamp"].endswith("Z")
    assert data["id"] == "2027-03-08-podcast"
    assert data["default_language"] == "en"
    assert list(data["languages"]) == ["en", "es", "ru"]  # default, the target's, the rest
    assert len(LONG_EN) == 2000
    assert data["languages"]["en"]["text"] == LONG_EN  # nothing cut
    assert data["languages"]["es"]["text"].endswith("¡Felicidades!")
    assert data["hashtags"] == ["PeaceandSecurity", "StandWithUkraine"]
    assert data["language_hashtags"] == {"es": ["Chile"]}
    assert data["links"] == [
        {"url": "https://example.org/podcast/3", "title": "Listen on our website"},
        {"url": "https://open.spotify.com/episode/abc", "title": None},
    ]
    poster, photo = data["media"]
    assert poster["url"] is None
    assert poster["filename"] == "poster.png"
    assert re.fullmatch(r"[0-9a-f]{64}", poster["sha256"])
    assert poster["mime_type"] == "image/png"
    # ru has no alt text of its own: the default language's stands in
    assert poster["alt"] == {
        "en": "Podcast poster",
        "es": "Cartel del pódcast",
        "ru": "Podcast poster",
    }
    assert photo["url"] == "https://cdn.example.org/photo.jpg"
    assert photo["alt"] == dict.fromkeys(["en", "es", "ru"], "Rally on 8 March")
    assert data["publish_at"] == "2027-03-08T08:00:00.000Z"
    assert data["content_warning"] == "war"
    assert data["copies"] == copies
    assert schema_problems(payload) == []

    assert rendition.language == "en"
    assert rendition.text.startswith(LONG_EN.rstrip())
    assert "https://example.org/podcast/3" in rendition.text  # links the text lacks, appended
    assert rendition.length >= 2000
    assert adapter.validate(rendition) == []


def test_every_language_goes_default_first_then_the_targets(tmp_path: Path, secret: str) -> None:
    everything = make_adapter("https://example.org/hook", secret, languages=[])
    data = rendition_for(everything, make_post(tmp_path)).options["payload"]["data"]
    assert list(data["languages"]) == ["en", "es", "ru"]

    russian_first = make_adapter("https://example.org/hook", secret, languages=["ru"])
    data = rendition_for(russian_first, make_post(tmp_path)).options["payload"]["data"]
    assert list(data["languages"]) == ["en", "ru", "es"]


def test_event_type_comes_from_the_context(tmp_path: Path, secret: str) -> None:
    adapter = make_adapter("https://example.org/hook", secret)
    rendition = rendition_for(adapter, make_post(tmp_path), event="post.updated")
    assert rendition.options["payload"]["type"] == "post.updated"


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_problems({"type": "post.published", "timestamp": "x", "data": {}})


# --- the safe HTML -----------------------------------------------------------------------


def test_html_is_escaped_and_linked(tmp_path: Path, secret: str) -> None:
    text = (
        'Listen <script>alert("x")</script> & more: https://example.org/ep?a=1&b=2.\n'
        "Thanks @alice@mastodon.social and #StandWithUkraine\n\n"
        "Second paragraph, mail me at x@y.org, #1 is not a tag"
    )
    post = make_post(tmp_path, text={"en": text}, hashtags=["PeaceandSecurity", "standwithukraine"])
    adapter = make_adapter("https://example.org/hook", secret)
    markup = rendition_for(adapter, post).options["payload"]["data"]["languages"]["en"]["html"]

    assert "<script" not in markup
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in markup
    assert (
        '<a href="https://example.org/ep?a=1&amp;b=2" rel="nofollow noopener">'
        "https://example.org/ep?a=1&amp;b=2</a>." in markup
    )
    assert (
        '<a class="mention" href="https://mastodon.social/@alice" rel="nofollow noopener">'
        "@alice@mastodon.social</a>" in markup
    )
    assert '<a class="hashtag" href="/mirror/tags/standwithukraine">#StandWithUkraine</a>' in markup
    assert "<br>" in markup
    assert markup.count("<p>") == 4  # two written, then the appended links and hashtags
    assert "x@y.org" in markup
    assert "#1 is not a tag" in markup
    # What the text lacked is appended once, as on the other targets.
    assert 'href="https://example.org/podcast/3"' in markup
    assert '<a class="hashtag" href="/mirror/tags/peaceandsecurity">' in markup
    assert markup.count("StandWithUkraine") + markup.count("standwithukraine") == 2  # href + text


def test_hashtag_base_is_configurable() -> None:
    assert (
        render_html("#Ukraine", "https://site.example/t/")
        == '<p><a class="hashtag" href="https://site.example/t/ukraine">#Ukraine</a></p>'
    )


_OUR_TAGS = re.compile(r'</?(?:p|br|a)(?: (?:class|href|rel)="[^"<>]*")*>')
_FRAGMENTS = st.sampled_from(
    [
        "<script>",
        "</script>",
        "<SCRIPT src=x>",
        "<",
        ">",
        "&",
        '"',
        "'",
        "#",
        "#tag",
        "#日本",
        "@",
        "@a@b.c",
        "@user@mastodon.social",
        "http://",
        "https://e.org/<script>",
        "https://x.y/p?q=1&r=<b>",
        "javascript:alert(1)",
        "\n",
        "\n\n",
        " ",
        ".",
        ")",
        "(",
        "<a href=x>",
        "&lt;",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=8)), max_size=25).map("".join))
def test_html_never_lets_input_markup_through(text: str) -> None:
    markup = render_html(text)
    assert "<script" not in markup.lower()
    outside_our_tags = _OUR_TAGS.sub("", markup)
    assert "<" not in outside_our_tags
    assert ">" not in outside_our_tags
    # Nothing is lost either: the visible text is the input, give or take whitespace.
    visible = html.unescape(outside_our_tags)
    squeeze = re.compile(r"\s+")
    cleaned = text.replace("\r", "")
    assert squeeze.sub("", visible) == squeeze.sub("", cleaned)


# --- publishing over HTTP ----------------------------------------------------------------


def test_publish_signs_with_standard_webhooks(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    adapter = make_adapter(url, secret)
    rendition = rendition_for(adapter, make_post(tmp_path))

    published = adapter.publish(rendition, "delivery-41")

    assert published.remote_id == "delivery-41"
    assert published.remote_url == "https://website.example/posts/2027-03-08-podcast"
    (request,) = fake.requests
    assert request.headers["webhook-id"] == "delivery-41"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    # The receiving side's own check, with the library a website would use.
    received = Webhook(secret).verify(request.body, request.headers)
    assert received == rendition.options["payload"]
    assert json.loads(request.body) == received
    assert request.body == body_of(received).encode()  # compact JSON, as signed
    assert fake.events == [rendition.options["payload"]]
    assert fake.posts["2027-03-08-podcast"]["languages"]["en"]["text"] == LONG_EN
    assert adapter.lookup(rendition, "delivery-41", datetime.now(UTC)) is None


def test_retry_with_the_same_key_is_stored_once(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    adapter = make_adapter(url, secret)
    rendition = rendition_for(adapter, make_post(tmp_path))
    first = adapter.publish(rendition, "delivery-7")
    again = adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-7")
    assert first == again
    assert len(fake.requests) == 2
    assert len(fake.events) == 1
    assert fake.repeats == 1


def test_wrong_secret_is_refused_and_permanent(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    wrong = new_secret()
    adapter = make_adapter(url, wrong)
    with pytest.raises(Permanent) as caught:
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert caught.value.http_status == 401
    assert fake.events == []
    for value in (wrong, wrong.removeprefix("whsec_"), secret, secret.removeprefix("whsec_")):
        assert value not in str(caught.value)


def test_missing_secret_names_the_variable(tmp_path: Path, site: tuple[FakeWebsite, str]) -> None:
    fake, url = site
    adapter = make_adapter(url, None)
    with pytest.raises(Permanent, match="WEBSITE_WEBHOOK_SECRET is not set"):
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert fake.requests == []


def test_malformed_secret_is_permanent_without_its_value(
    tmp_path: Path, site: tuple[FakeWebsite, str]
) -> None:
    _, url = site
    adapter = make_adapter(url, "whsec_!!not-base64!!")
    with pytest.raises(Permanent, match="WEBSITE_WEBHOOK_SECRET is not a valid") as caught:
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert "not-base64" not in str(caught.value)


def test_gone_means_unsubscribed(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    fake.fail_next(status=410)
    adapter = make_adapter(url, secret)
    with pytest.raises(Permanent) as caught:
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert caught.value.http_status == 410


def test_too_many_requests_is_rate_limited(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    fake.fail_next(status=429, headers={"Retry-After": "120"})
    adapter = make_adapter(url, secret)
    before = datetime.now(UTC)
    with pytest.raises(RateLimited) as caught:
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert caught.value.retry_at >= before + timedelta(seconds=119)
    assert caught.value.retry_at <= datetime.now(UTC) + timedelta(seconds=121)


@pytest.mark.parametrize("status", [500, 503, 408])
def test_server_errors_are_transient(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str], status: int
) -> None:
    fake, url = site
    fake.fail_next(status=status)
    adapter = make_adapter(url, secret)
    with pytest.raises(Transient) as caught:
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert caught.value.http_status == status
    assert fake.events == []
    adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")
    assert len(fake.events) == 1


def test_other_client_errors_are_permanent(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    fake.fail_next(status=403, body={"error": "this site takes no posts on Sundays"})
    adapter = make_adapter(url, secret)
    with pytest.raises(Permanent, match="403: this site takes no posts on Sundays"):
        adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-1")


def test_reset_after_store_is_unknown_and_the_resend_is_dropped(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    fake.fail_next(fault="reset", after_store=True)
    adapter = make_adapter(url, secret)
    rendition = rendition_for(adapter, make_post(tmp_path))
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "delivery-9")
    assert len(fake.events) == 1  # it did land
    published = adapter.publish(rendition, "delivery-9")
    assert published.remote_id == "delivery-9"
    assert len(fake.events) == 1
    assert fake.repeats == 1


def test_an_invalid_payload_is_refused(secret: str, site: tuple[FakeWebsite, str]) -> None:
    fake, url = site
    adapter = make_adapter(url, secret)
    broken = Rendition(
        post_id="p",
        target="website",
        platform="webhook",
        language="en",
        text="hi",
        length=2,
        limit=adapter.max_length,
        options={"payload": {"type": "post.published", "timestamp": "now", "data": {"id": "p"}}},
    )
    with pytest.raises(Permanent) as caught:
        adapter.publish(broken, "delivery-1")
    assert caught.value.http_status == 400
    assert fake.events == []


def test_stale_or_unsigned_requests_are_refused(secret: str, site: tuple[FakeWebsite, str]) -> None:
    fake, url = site
    body = json.dumps(
        {"type": "post.deleted", "timestamp": "2027-01-01T00:00:00Z", "data": {"id": "p"}}
    )
    old = datetime.now(UTC) - timedelta(minutes=10)
    stale = {
        "webhook-id": "m1",
        "webhook-timestamp": str(int(old.timestamp())),
        "webhook-signature": Webhook(secret).sign("m1", old, body),
    }
    assert requests.post(url, data=body, headers=stale, timeout=5).status_code == 401
    assert requests.post(url, data=body, timeout=5).status_code == 401
    with pytest.raises(InvalidSignature):
        verify_and_parse(body, stale, secret)
    assert fake.events == []


def test_delete_sends_post_deleted(
    tmp_path: Path, secret: str, site: tuple[FakeWebsite, str]
) -> None:
    fake, url = site
    adapter = make_adapter(url, secret)
    published = adapter.publish(rendition_for(adapter, make_post(tmp_path)), "delivery-3")
    adapter.delete(published.remote_id)
    adapter.delete(published.remote_id)  # a repeat is dropped by webhook-id

    assert [event["type"] for event in fake.events] == ["post.published", "post.deleted"]
    assert fake.requests[-1].headers["webhook-id"] == "delivery-3-deleted"
    assert fake.events[1]["data"] == {"webhook_id": "delivery-3"}
    assert fake.posts == {}
    assert fake.deleted == ["2027-03-08-podcast"]
