"""Fixtures shared by the Mastodon tests: a fake Mastodon on loopback, adapters aimed at it.

Test modules take the fixtures with `from fakes_mastodon_fixtures import *`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import RunningFake
from crosspost.post import Post
from crosspost_adapters.mastodon import MastodonAdapter, MastodonTarget

__all__ = ["make_mastodon", "mastodon_fake", "mastodon_server"]

TOKEN = "tok-3c1d9e-very-secret"

MakeAdapter = Callable[..., MastodonAdapter]


class FastMastodonAdapter(MastodonAdapter):
    """The real adapter; only the pacing of media polls is shortened for tests."""

    media_poll_interval = 0.01
    media_poll_limit = 20


def make_post(**fields: Any) -> Post:
    data: dict[str, Any] = {"targets": ["mastodon-en", "mastodon-es"], "publish_at": "now"}
    data.update(fields)
    return Post.model_validate(data)


@pytest.fixture
def mastodon_fake() -> FakeMastodon:
    return FakeMastodon(tokens=[TOKEN])


@pytest.fixture
def mastodon_server(mastodon_fake: FakeMastodon) -> Iterator[RunningFake]:
    with RunningFake(mastodon_fake) as running:
        yield running


def mastodon_adapter(
    base_url: str,
    name: str = "mastodon-en",
    *,
    token: str | None = TOKEN,
    timeout: float = 5.0,
    **fields: Any,
) -> MastodonAdapter:
    """An adapter for a target `name` on `base_url`; `fields` are more target settings."""
    languages = fields.pop("languages", ["es"] if name.endswith("-es") else ["en"])
    target = MastodonTarget(
        name=name, base_url=base_url, token_env="MASTODON_TOKEN", languages=languages, **fields
    )
    return FastMastodonAdapter(target, secret=SecretStr(token) if token else None, timeout=timeout)


@pytest.fixture
def make_mastodon(mastodon_server: RunningFake) -> Iterator[MakeAdapter]:
    """`make_mastodon(name="mastodon-es", **target fields)`: an adapter aimed at the fake."""
    made: list[MastodonAdapter] = []

    def make(
        name: str = "mastodon-en", *, base_url: str | None = None, **fields: Any
    ) -> MastodonAdapter:
        adapter = mastodon_adapter(base_url or mastodon_server.url, name, **fields)
        made.append(adapter)
        return adapter

    MastodonAdapter.instance_cache.clear()  # ports are reused between tests
    yield make
    for adapter in made:
        adapter.session.close()
    MastodonAdapter.instance_cache.clear()
