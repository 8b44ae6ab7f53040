"""A website: a JSON POST signed per the Standard Webhooks spec."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from crosspost.adapter import Adapter, Published, RenderContext, Rendition, TargetConfig
from crosspost.post import HttpUrl, Post


class WebhookTarget(TargetConfig):
    platform: Literal["webhook"] = "webhook"
    url: HttpUrl
    secret_env: str

    def secret_variable(self) -> str | None:
        return self.secret_env


class WebhookAdapter(Adapter):
    platform = "webhook"
    config_model = WebhookTarget
    max_length = 1_000_000

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
