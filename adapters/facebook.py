"""Facebook Graph API, Pages: feed posts with links and photos."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import field_validator

from crosspost.adapter import Adapter, Published, RenderContext, Rendition, TargetConfig
from crosspost.post import HttpUrl, Post


class FacebookTarget(TargetConfig):
    platform: Literal["facebook"] = "facebook"
    base_url: HttpUrl = "https://graph.facebook.com"
    graph_version: str = "v25.0"
    page_id: str
    token_env: str

    @field_validator("graph_version")
    @classmethod
    def _version(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"v\d+\.\d+", value):
            raise ValueError(f"{value!r} is not a Graph API version such as v25.0")
        return value

    @field_validator("page_id", mode="before")
    @classmethod
    def _page_id(cls, value: object) -> str:
        text = str(value)
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a numeric Page id")
        return text

    def secret_variable(self) -> str | None:
        return self.token_env


class FacebookAdapter(Adapter):
    platform = "facebook"
    config_model = FacebookTarget
    max_length = 63_206

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
