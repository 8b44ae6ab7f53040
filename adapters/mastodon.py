"""Mastodon: statuses with media, language and an Idempotency-Key."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from crosspost.adapter import Adapter, Published, RenderContext, Rendition, TargetConfig
from crosspost.post import HttpUrl, Post


class MastodonTarget(TargetConfig):
    platform: Literal["mastodon"] = "mastodon"
    base_url: HttpUrl
    token_env: str
    visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    max_characters: int | None = None  # else the instance's own limit

    def secret_variable(self) -> str | None:
        return self.token_env


class MastodonAdapter(Adapter):
    platform = "mastodon"
    config_model = MastodonTarget
    max_length = 500
    supports_idempotency_key = True

    def render(self, post: Post, post_id: str, context: RenderContext | None = None) -> Rendition:
        raise NotImplementedError

    def publish(self, rendition: Rendition, idempotency_key: str) -> Published:
        raise NotImplementedError

    def lookup(
        self, rendition: Rendition, idempotency_key: str, since: datetime
    ) -> Published | None:
        raise NotImplementedError

    def delete(self, remote_id: str) -> None:
        raise NotImplementedError
