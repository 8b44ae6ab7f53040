"""A website: a JSON POST signed per the Standard Webhooks spec.

The website gets every chosen language's full text (no limit, nothing cut) and safe HTML; see
`crosspost.webhook_payload` and docs/webhook.md. The `webhook-id` header is the delivery's
idempotency key, so every retry of one delivery carries the same id and the site keeps it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin, urlsplit

import requests
from standardwebhooks.webhooks import Webhook

from crosspost import webhook_payload
from crosspost.adapter import (
    Adapter,
    Published,
    RenderContext,
    Rendition,
    TargetConfig,
    rendered_media,
)
from crosspost.errors import Permanent, PublishError
from crosspost.http import classify_status, send
from crosspost.post import HttpUrl, Post
from crosspost.rendering import grapheme_count


class WebhookTarget(TargetConfig):
    platform: Literal["webhook"] = "webhook"
    url: HttpUrl
    secret_env: str
    hashtag_base: str = webhook_payload.DEFAULT_HASHTAG_BASE

    def secret_variable(self) -> str | None:
        return self.secret_env


class WebhookAdapter(Adapter):
    platform = "webhook"
    config_model = WebhookTarget
    max_length = 1_000_000  # a website shows the whole post: the limit only stops runaway input
    supports_idempotency_key = True
    # Standard Webhooks: 410 Gone means the endpoint was removed and must not be sent to again.
    unsubscribed_status: ClassVar[int] = 410
    reason_chars: ClassVar[int] = 200

    @property
    def target(self) -> WebhookTarget:
        assert isinstance(self.config, WebhookTarget)
        return self.config

    def render(self, post: Post, post_id: str, context: RenderContext | None = None) -> Rendition:
        context = context or RenderContext()
        name = self.config.name
        payload = webhook_payload.build_payload(
            post,
            post_id,
            context.event,
            context.copies,
            datetime.now(UTC),
            target=name,
            languages=self.config.languages,
            hashtag_base=self.target.hashtag_base,
        )
        languages = list(payload["data"]["languages"])
        composed = {lang: webhook_payload.composed_text(post, name, lang) for lang in languages}
        language = post.language_for(name, self.config.languages)
        if language not in composed:
            language = post.main_language
        return Rendition(
            post_id=post_id,
            target=name,
            platform=self.platform,
            language=language,
            text=composed[language],
            length=max(grapheme_count(text) for text in composed.values()),
            limit=self.max_length,
            media=rendered_media(post, language),
            link=post.links[0].url if post.links else None,
            options={"payload": payload, "event": context.event},
        )

    def publish(self, rendition: Rendition, idempotency_key: str) -> Published:
        payload = rendition.options["payload"]
        response = self._post(payload, idempotency_key)
        return Published(remote_id=idempotency_key, remote_url=self._copy_url(response))

    def lookup(
        self, rendition: Rendition, idempotency_key: str, since: datetime
    ) -> Published | None:
        """Always None: re-sending is the look-up. The site de-duplicates on `webhook-id`
        (the idempotency key), so a second send of a delivery that landed is dropped there."""
        return None

    def delete(self, remote_id: str) -> None:
        payload = webhook_payload.deleted_payload(remote_id, datetime.now(UTC))
        self._post(payload, f"{remote_id}-deleted")

    def _post(self, payload: Mapping[str, Any], webhook_id: str) -> requests.Response:
        """Sign and send one event; the only place this adapter turns HTTP into errors."""
        signer = self._signer()
        body = webhook_payload.body_of(payload)
        sent_at = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(webhook_id, sent_at, body),
        }
        url = str(self.target.url)
        response = send(
            self.session, "POST", url, timeout=self.timeout, data=body.encode(), headers=headers
        )
        if 200 <= response.status_code < 300:
            return response
        raise self._failure(response, f"{payload['type']} to {urlsplit(url).netloc}")

    def _signer(self) -> Webhook:
        variable = self.target.secret_env
        if self._secret is None:
            raise Permanent(
                f"{self.config.name}: the webhook secret variable {variable} is not set"
            )
        try:
            return Webhook(self._secret.get_secret_value())
        except Exception:  # bad base64 or empty: say which variable, never its value
            raise Permanent(
                f"{self.config.name}: the webhook secret variable {variable} is not a valid"
                " secret (expected whsec_ followed by base64)"
            ) from None

    def _failure(self, response: requests.Response, what: str) -> PublishError:
        status = response.status_code
        message = f"{what}: HTTP {status}{self._reason(response)}"
        if status == self.unsubscribed_status:
            return Permanent(
                f"{message} (the website removed this endpoint; fix the target's url)",
                http_status=status,
            )
        return classify_status(response, message)

    def _reason(self, response: requests.Response) -> str:
        """The site's own `error`/`message` text, short, and never carrying our secret."""
        try:
            body = response.json()
        except ValueError:
            return ""
        reason = body.get("error") or body.get("message") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            return ""
        if self._secret is not None:
            value = self._secret.get_secret_value()
            if value in reason or value.removeprefix("whsec_") in reason:
                return ""
        return f": {reason.strip()[: self.reason_chars]}"

    def _copy_url(self, response: requests.Response) -> str | None:
        base = str(self.target.url)
        location = response.headers.get("Location")
        if location:
            return urljoin(base, location)
        try:
            body = response.json()
        except ValueError:
            return None
        url = body.get("url") if isinstance(body, dict) else None
        return urljoin(base, url) if isinstance(url, str) and url else None
