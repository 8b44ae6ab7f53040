"""Adapters read the platforms' budget headers so the dispatcher can stop before a 429."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import SecretStr

from crosspost.fakes.facebook import FakeGraph
from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import RunningFake
from crosspost.post import Post
from crosspost_adapters.facebook import FacebookAdapter, FacebookTarget
from crosspost_adapters.mastodon import MastodonAdapter, MastodonTarget


def post(text: str) -> Post:
    return Post.model_validate({"text": {"en": text}, "publish_at": "now", "targets": ["t"]})


def test_mastodon_pauses_when_its_window_is_spent() -> None:
    fake = FakeMastodon(tokens=["tok-0123456789"], requests_per_window=2)
    with RunningFake(fake) as running:
        config = MastodonTarget(name="m", base_url=running.url, token_env="X", max_characters=500)
        adapter = MastodonAdapter(config, secret=SecretStr("tok-0123456789"))
        adapter.publish(adapter.render(post("one"), "p1"), "cp_1")
        assert adapter.paused_until() is None
        adapter.publish(adapter.render(post("two"), "p2"), "cp_2")
        paused = adapter.paused_until()
        assert paused is not None and paused > datetime.now(UTC)
        assert adapter.rate_limit is not None and adapter.rate_limit[1] == 0


def test_graph_pauses_near_full_usage() -> None:
    fake = FakeGraph(page_id="42", token="fb-0123456789", calls_per_window=2)
    with RunningFake(fake) as running:
        config = FacebookTarget(name="f", base_url=running.url, page_id="42", token_env="X")
        adapter = FacebookAdapter(config, secret=SecretStr("fb-0123456789"))
        adapter.publish(adapter.render(post("one"), "p1"), "cp_1")
        assert adapter.paused_until() is None  # 50 %
        adapter.publish(adapter.render(post("two"), "p2"), "cp_2")
        paused = adapter.paused_until()  # 100 %
        assert paused is not None and paused > datetime.now(UTC)
