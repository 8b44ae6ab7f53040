"""What a website receives: the post event payload, its safe HTML, and the receiver's check.

The payload follows the Standard Webhooks envelope `{"type", "timestamp", "data"}` and is
described exactly by `schemas/post-event.schema.json`. Text goes out as written, in every chosen
language; `html` is the same text (plus the links and hashtags it lacks, as on the other
targets) escaped and linked, so a site can show it without an HTML sanitiser of its own.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import regex
from jsonschema import Draft202012Validator
from standardwebhooks.webhooks import Webhook

from crosspost.post import Media, Post
from crosspost.rendering import compose

PUBLISHED: Final = "post.published"
UPDATED: Final = "post.updated"
DELETED: Final = "post.deleted"
EVENTS: Final = (PUBLISHED, UPDATED, DELETED)
DEFAULT_HASHTAG_BASE: Final = "/mirror/tags/"
SCHEMA_FILE: Final = "post-event.schema.json"

# Order matters only where matches could start at the same place; they cannot, so the scan
# takes whichever token comes first. A hashtag needs a letter, as `crosspost.post` requires.
_TOKEN = regex.compile(
    r"""
    (?P<url>https?://[^\s<>"'`\x00-\x1f\x7f]+)
  | (?<![\w@/])@(?P<user>[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*)
      @(?P<domain>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+)
  | (?<![\w#])\#(?P<tag>(?=\w*[^\W\d_])\w+)
    """,
    flags=regex.VERBOSE | regex.V1,
)
_TRAILING_PUNCTUATION = ".,;:!?'\")]}"
_PARAGRAPH_BREAK = regex.compile(r"\n[ \t]*\n\s*")


class InvalidSignature(ValueError):
    """The request is not signed with the secret, lacks the headers, or is too old/new."""


class InvalidPayload(ValueError):
    """The signed body is not a post event this version of crosspost sends."""


def utc_iso(moment: datetime) -> str:
    """`2027-03-08T08:00:00.000Z`: UTC, milliseconds, the form the schema requires."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload_languages(post: Post, target: str | None, chosen: Iterable[str]) -> list[str]:
    """Every language the post has — a website shows them all — ordered: the default first,
    then the target's `languages`, then the rest."""
    override = post.overrides.get(target) if target is not None else None
    available = [
        *post.text,
        *(lang for lang in (override.text if override else {}) if lang not in post.text),
    ]
    order = [post.main_language, *chosen, *available]
    return [lang for i, lang in enumerate(order) if lang in available and lang not in order[:i]]


def composed_text(post: Post, target: str | None, language: str) -> str:
    """The text with the links and hashtags it lacks appended, as every target shows it."""
    name = target or ""
    return compose(
        post.text_for(name, language), post.links, post.hashtags_for(language, target), language
    )


def render_html(text: str, hashtag_base: str = DEFAULT_HASHTAG_BASE) -> str:
    """Escaped text in `<p>` paragraphs (blank lines), `<br>` line breaks, and linked URLs,
    hashtags and `@user@domain` mentions. The only tags in the result are `p`, `br` and `a`."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    paragraphs = [part.strip("\n") for part in _PARAGRAPH_BREAK.split(normalised)]
    return "\n".join(
        "<p>" + "<br>\n".join(_linked(line, hashtag_base) for line in part.split("\n")) + "</p>"
        for part in paragraphs
        if part.strip()
    )


def _linked(line: str, hashtag_base: str) -> str:
    out: list[str] = []
    position = 0
    while (match := _TOKEN.search(line, position)) is not None:
        out.append(html.escape(line[position : match.start()]))
        if match["url"] is not None:
            url = _trim_url(match["url"])
            if "://" not in url or url.endswith("://"):
                out.append(html.escape(url))
            else:
                href = html.escape(url, quote=True)
                out.append(f'<a href="{href}" rel="nofollow noopener">{html.escape(url)}</a>')
            position = match.start() + len(url)
            continue
        if match["tag"] is not None:
            tag = match["tag"]
            href = html.escape(hashtag_base + quote(tag.lower()), quote=True)
            out.append(f'<a class="hashtag" href="{href}">#{html.escape(tag)}</a>')
        else:
            user, domain = match["user"], match["domain"]
            href = html.escape(f"https://{domain}/@{user}", quote=True)
            out.append(
                f'<a class="mention" href="{href}" rel="nofollow noopener">'
                f"@{html.escape(user)}@{html.escape(domain)}</a>"
            )
        position = match.end()
    out.append(html.escape(line[position:]))
    return "".join(out)


def _trim_url(url: str) -> str:
    """Drop sentence punctuation after a URL, but keep a `)` that closes one inside it."""
    while url and url[-1] in _TRAILING_PUNCTUATION:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url


def _media_item(media: Media, post: Post, languages: list[str]) -> dict[str, Any]:
    filename = sha256 = None
    if media.path is not None:
        filename = Path(media.path).name
        try:
            with open(media.path, "rb") as fh:
                sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            sha256 = None  # a stored post whose file has moved: the name still identifies it
    return {
        "url": media.url,
        "filename": filename,
        "sha256": sha256,
        "mime_type": media.mime_type,
        "alt": {lang: media.alt_for(lang, post.main_language) for lang in languages},
    }


def build_payload(
    post: Post,
    post_id: str,
    event: str,
    copies: Mapping[str, str],
    now: datetime,
    *,
    target: str | None = None,
    languages: Iterable[str] = (),
    hashtag_base: str = DEFAULT_HASHTAG_BASE,
) -> dict[str, Any]:
    """The event for `post`: every chosen language's full text and safe HTML, and the rest."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
    chosen = payload_languages(post, target, languages)
    extra_tags = post.overrides[target].hashtags if target in post.overrides else []
    data: dict[str, Any] = {
        "id": post_id,
        "default_language": post.main_language,
        "languages": {
            lang: {
                "text": post.text_for(target or "", lang),
                "html": render_html(composed_text(post, target, lang), hashtag_base),
            }
            for lang in chosen
        },
        "hashtags": _unique([*post.hashtags, *extra_tags]),
        "language_hashtags": {
            lang: list(post.language_hashtags[lang])
            for lang in chosen
            if post.language_hashtags.get(lang)
        },
        "links": [
            {"url": link.url, "title": link.title_for(post.main_language)} for link in post.links
        ],
        "media": [_media_item(media, post, chosen) for media in post.media],
        "publish_at": utc_iso(post.publish_at) if post.publish_at else None,
        "campaign": post.campaign,
        "content_warning": post.content_warning,
        "sensitive": post.sensitive,
        "copies": {name: url for name, url in copies.items() if name != target},
    }
    return {"type": event, "timestamp": utc_iso(now), "data": data}


def _unique(tags: Iterable[str]) -> list[str]:
    unique: dict[str, str] = {}
    for tag in tags:
        unique.setdefault(tag.casefold(), tag)
    return list(unique.values())


def deleted_payload(webhook_id: str, now: datetime) -> dict[str, Any]:
    """A deletion naming the `webhook-id` the post was published with (the receiver kept it)."""
    return {"type": DELETED, "timestamp": utc_iso(now), "data": {"webhook_id": webhook_id}}


def body_of(payload: Mapping[str, Any]) -> str:
    """The exact text that is signed and sent: compact JSON, UTF-8 left as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        files("crosspost").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8")
    )
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def schema_problems(payload: Any) -> list[str]:
    """Every way `payload` differs from the schema, as `path: message` lines."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(_validator().iter_errors(payload), key=lambda e: list(e.path))
    ]


def verify_and_parse(
    body: bytes | str, headers: Mapping[str, str], secret: str, *, validate: bool = True
) -> dict[str, Any]:
    """For receivers: check the Standard Webhooks signature and timestamp, parse, validate.

    Raises `InvalidSignature` (answer 401) or `InvalidPayload` (answer 400). De-duplicate on
    the `webhook-id` header after this succeeds."""
    try:
        parsed = Webhook(secret).verify(body, dict(headers))
    except Exception as exc:  # the library raises ValueError/binascii errors on garbled headers
        raise InvalidSignature(_signature_reason(exc)) from None
    if not isinstance(parsed, dict):
        raise InvalidPayload("the body is not a JSON object")
    if validate:
        problems = schema_problems(parsed)
        if problems:
            raise InvalidPayload("; ".join(problems[:5]))
    return parsed


def _signature_reason(exc: Exception) -> str:
    # The library's own messages name no secret; anything else is reported by kind only.
    message = str(exc) if type(exc).__name__ == "WebhookVerificationError" else ""
    return message or f"malformed signature headers ({type(exc).__name__})"
