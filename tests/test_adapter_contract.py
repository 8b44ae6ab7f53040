"""One contract, every adapter: render, validate, publish, look up, delete, and the four error
kinds — each adapter against its fake platform over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from crosspost.adapter import Adapter, Published, adapter_class, adapter_classes
from crosspost.errors import OutcomeUnknown, Permanent, RateLimited, Transient
from crosspost.fakes.facebook import FakeGraph
from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import FakePlatform, RunningFake
from crosspost.fakes.website import FakeWebsite
from crosspost.post import Post
from platforms import new_secret

TOKEN = "contract-token-0123456789"
PAGE = "123456789"


@dataclass
class Case:
    platform: str
    fake: FakePlatform
    config: Callable[[str], dict[str, Any]]
    secret: str
    copies: Callable[[FakePlatform], int]
    inject: Callable[..., None]  # (fake, status=, headers=, fault=, after_create=)
    finds_earlier_attempts: bool  # lookup() can find a post published without a reply


def _mastodon() -> Case:
    def inject(fake: Any, **kw: Any) -> None:
        fake.fail_next("POST", "/api/v1/statuses", **kw)

    return Case(
        "mastodon",
        FakeMastodon(tokens=[TOKEN]),
        lambda url: {"base_url": url, "token_env": "X", "languages": ["es"]},
        TOKEN,
        lambda fake: len([s for s in fake.statuses if not s.deleted]),  # type: ignore[attr-defined]
        inject,
        True,
    )


def _facebook() -> Case:
    def inject(fake: Any, **kw: Any) -> None:
        if kw.get("status") == 401:
            kw.update(status=400, graph_code=190)
        elif kw.get("status") == 429:
            kw.update(status=400, graph_code=32)
        fake.fail_next("POST", f"/{PAGE}/feed", **kw)

    return Case(
        "facebook",
        FakeGraph(page_id=PAGE, token=TOKEN),
        lambda url: {"base_url": url, "page_id": PAGE, "token_env": "X", "languages": ["es"]},
        TOKEN,
        lambda fake: len(fake.posts),  # type: ignore[attr-defined]
        inject,
        True,
    )


def _webhook() -> Case:
    secret = new_secret()

    def inject(fake: Any, **kw: Any) -> None:
        after = kw.pop("after_create", False)
        fake.fail_next(after_store=after, **kw)

    return Case(
        "webhook",
        FakeWebsite(secret),
        lambda url: {"url": f"{url}/crosspost/hook", "secret_env": "X", "languages": ["es"]},
        secret,
        lambda fake: len(fake.posts),  # type: ignore[attr-defined]
        inject,
        False,  # idempotent by webhook-id instead: re-sending is the look-up
    )


CASES = {"mastodon": _mastodon, "facebook": _facebook, "webhook": _webhook}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Iterator[tuple[Case, Adapter]]:
    made = CASES[request.param]()
    with RunningFake(made.fake) as running:
        cls = adapter_class(made.platform)
        config = cls.config_model.model_validate(
            {"name": f"{made.platform}-es", "platform": made.platform, **made.config(running.url)}
        )
        yield made, cls(config, secret=SecretStr(made.secret), timeout=1.0)


POST = Post.model_validate(
    {
        "id": "contract",
        "text": {
            "en": "Peace needs trust. #PeaceandSecurity",
            "es": "La paz necesita confianza. #peaceandsecurity 🇺🇦",
        },
        "hashtags": ["PeaceandSecurity", "StandWithUkraine"],
        "links": [{"url": "https://example.org/podcast/3", "title": "Escúchalo"}],
        "publish_at": "now",
        "targets": ["x"],
    }
)


def test_every_platform_is_registered() -> None:
    assert set(adapter_classes()) >= set(CASES)


def test_render_picks_the_language_keeps_links_and_tags_hashtags_once(case) -> None:
    _, adapter = case
    rendition = adapter.render(POST, "contract")
    assert rendition.language == "es"
    assert rendition.target == adapter.config.name
    assert "La paz necesita confianza" in rendition.text
    assert "https://example.org/podcast/3" in rendition.text
    assert rendition.text.lower().count("#peaceandsecurity") == 1
    assert rendition.text.count("#StandWithUkraine") == 1
    assert adapter.validate(rendition) == []


def test_validate_reports_how_far_over_the_limit(case) -> None:
    _, adapter = case
    if adapter.max_length > 100_000:  # the website takes any length: nothing is ever cut
        long = POST.model_copy(update={"text": {"es": "palabra " * 20_000}})
        rendition = adapter.render(long, "contract")
        assert adapter.validate(rendition) == []
        assert (
            "palabra " * 20_000 in rendition.options["payload"]["data"]["languages"]["es"]["text"]
        )
        return
    long = POST.model_copy(update={"text": {"es": "palabra " * (adapter.max_length // 4)}})
    rendition = adapter.render(long, "contract")
    problems = adapter.validate(rendition)
    assert problems and f"{rendition.over_by} over" in problems[0]
    assert adapter.config.name in problems[0]


def test_publish_then_look_up_then_delete(case) -> None:
    made, adapter = case
    since = datetime.now(UTC) - timedelta(seconds=5)
    rendition = adapter.render(POST, "contract")
    published = adapter.publish(rendition, "cp_contract_key")
    assert isinstance(published, Published) and published.remote_id
    assert made.copies(made.fake) == 1
    found = adapter.lookup(rendition, "cp_contract_key", since)
    if made.finds_earlier_attempts:
        assert found is not None and found.remote_id == published.remote_id
    adapter.delete(published.remote_id)
    if made.platform != "webhook":
        assert made.copies(made.fake) == 0


def test_the_same_key_or_a_look_up_never_makes_two_copies(case) -> None:
    made, adapter = case
    since = datetime.now(UTC) - timedelta(seconds=5)
    rendition = adapter.render(POST, "contract")
    made.inject(made.fake, status=200, fault="reset", after_create=True)
    with pytest.raises(OutcomeUnknown):
        adapter.publish(rendition, "cp_same_key")
    assert made.copies(made.fake) == 1
    # What the dispatcher does next: ask the platform, or re-send under the same key.
    if adapter.supports_idempotency_key:
        adapter.publish(rendition, "cp_same_key")
    else:
        assert adapter.lookup(rendition, "cp_same_key", since) is not None
    assert made.copies(made.fake) == 1


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        ({"status": 503}, Transient),
        ({"status": 429, "headers": {"Retry-After": "30"}}, RateLimited),
        ({"status": 401}, Permanent),
        ({"status": 200, "fault": "hang", "delay": 1.5}, OutcomeUnknown),
    ],
    ids=["5xx", "429", "401", "read-timeout"],
)
def test_failures_are_classified_without_the_secret(case, inject, kind) -> None:
    made, adapter = case
    made.inject(made.fake, **inject)
    rendition = adapter.render(POST, "contract")
    with pytest.raises(kind) as caught:
        adapter.publish(rendition, "cp_failing")
    assert made.secret not in str(caught.value)
    if kind is RateLimited:
        assert caught.value.retry_at > datetime.now(UTC)


def test_an_unreachable_platform_is_transient(case) -> None:
    made, adapter = case
    cls = type(adapter)
    dead = made.config("http://127.0.0.1:9")
    config = cls.config_model.model_validate({"name": "dead", "platform": made.platform, **dead})
    with pytest.raises(Transient):
        cls(config, secret=SecretStr(made.secret), timeout=1.0).publish(
            adapter.render(POST, "contract"), "cp_dead"
        )
