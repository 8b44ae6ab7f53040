"""The website mirror: every published post in full, its feeds, an embed, and its webhook.

The mirror is a website like any other: crosspost's `website` target sends it signed
`post.published` events at `POST /mirror/hook`, and it shows what it received. Pages are built
from the payload's safe HTML (only `p`, `br` and `a` tags), and every image is served from the
mirror's own media folder, so a page never asks a third party for anything.

    GET  /mirror                  newest first, `?page=N`
    GET  /mirror/posts/{id}       permalink
    GET  /mirror/tags/{tag}       posts with a hashtag (where hashtag links point)
    GET  /mirror/embed/{id}       one post, to put in an <iframe>
    GET  /mirror/feed.json        JSON Feed 1.1
    GET  /mirror/feed.atom        Atom (RFC 4287)
    GET  /mirror/media/{name}     media by content digest
    POST /mirror/hook             the Standard Webhooks receiver
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from crosspost.errors import CrosspostError
from crosspost.media_fetch import MediaFetchError, MediaFolder, fetch_media
from crosspost.mirror_store import MirrorPost, MirrorStore
from crosspost.queue import Queue
from crosspost.settings import Settings
from crosspost.targets import Targets
from crosspost.webhook_payload import (
    DELETED,
    InvalidPayload,
    InvalidSignature,
    verify_and_parse,
)

log = logging.getLogger("crosspost.mirror")

HOOK_PATH: Final = "/mirror/hook"
FEED_ITEMS: Final = 50
MAX_EVENT_BYTES: Final = 5 * 1024 * 1024
MAX_LANGUAGES: Final = 12
ATOM_NS: Final = "http://www.w3.org/2005/Atom"
JSON_FEED_VERSION: Final = "https://jsonfeed.org/version/1.1"
# Everything from this server only; inline style and the (script-free) radio language switch.
PAGE_POLICY: Final = (
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline';"
    " base-uri 'none'; form-action 'none'"
)
# Autonyms for the language switch; any other tag is shown as written.
LANGUAGE_NAMES: Final = {
    "ar": "العربية",
    "ca": "Català",
    "de": "Deutsch",
    "en": "English",
    "es": "Español",
    "fr": "Français",
    "it": "Italiano",
    "ja": "日本語",
    "nl": "Nederlands",
    "pl": "Polski",
    "pt": "Português",
    "pt-BR": "Português (Brasil)",
    "ru": "Русский",
    "sv": "Svenska",
    "tr": "Türkçe",
    "uk": "Українська",
    "zh": "中文",
}
_LANGUAGE_RANGE = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$|^\*$")


def preferred_languages(header: str | None) -> list[str]:
    """The tags of an `Accept-Language` header, most wanted first (RFC 9110 q-values)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not _LANGUAGE_RANGE.match(tag):
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and math.isfinite(quality):
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]


def order_languages(available: Sequence[str], default: str, wanted: Sequence[str]) -> list[str]:
    """`available` with the reader's first match first, then the post's default, then the rest."""
    chosen: str | None = None
    for tag in wanted:
        lowered = tag.lower()
        exact = [a for a in available if a.lower() == lowered]
        primary = [a for a in available if a.lower().split("-")[0] == lowered.split("-")[0]]
        if exact or primary:
            chosen = (exact or primary)[0]
            break
    first = chosen or default
    rest = [a for a in available if a != first]
    if default in rest:
        rest.remove(default)
        rest.insert(0, default)
    return [first, *rest] if first in available else list(available)


def _platform_label(platform: str, target: str) -> str:
    names = {"facebook": "Facebook", "mastodon": "Mastodon"}
    return f"{names.get(platform, platform.title())} ({target})"


class Mirror:
    """What the mirror's pages and its webhook need: its store, media and settings."""

    def __init__(
        self,
        settings: Settings,
        store: MirrorStore,
        *,
        queue: Queue | None = None,
        targets: Targets | None = None,
        secrets: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.targets = targets
        self._secrets = list(secrets) if secrets is not None else None
        self.media = MediaFolder(settings.data_dir / "media")
        self.templates = Environment(
            loader=FileSystemLoader(str(files("crosspost").joinpath("templates"))),
            autoescape=select_autoescape(["html"]),
            auto_reload=False,
        )

    # -- receiving -------------------------------------------------------------------------

    def secret_variables(self) -> list[str]:
        """The variables holding the secret of every target that sends to this mirror."""
        if self.targets is None:
            return []
        names = []
        for config in self.targets.values():
            url = getattr(config, "url", None)
            variable = config.secret_variable()
            if url is not None and variable and urlsplit(str(url)).path.rstrip("/") == HOOK_PATH:
                names.append(variable)
        return names

    def secrets(self) -> list[str]:
        if self._secrets is not None:
            return self._secrets
        values = [self.settings.secret(name) for name in self.secret_variables()]
        return [v.get_secret_value() for v in values if v is not None]

    def receive(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Verify, de-duplicate and store one event; the status and JSON to answer with."""
        secrets = self.secrets()
        if not secrets:
            return 503, {"error": "the mirror has no webhook secret configured"}
        event: dict[str, Any] | None = None
        for secret in secrets:
            try:
                event = verify_and_parse(body, headers, secret)
                break
            except InvalidSignature:
                continue
            except InvalidPayload as exc:
                return 400, {"error": f"not a post event: {exc}"[:300]}
        if event is None:
            return 401, {"error": "bad or missing signature"}
        webhook_id = headers.get("webhook-id", "")[:200]
        data: dict[str, Any] = event["data"]
        if self.store.seen(webhook_id):
            return 200, self._answer(data.get("id"))
        media = [] if event["type"] == DELETED else self._localise_media(data)
        post_id = self.store.record(webhook_id, event["type"], data, media, datetime.now(UTC))
        log.info("mirror: %s %s", event["type"], post_id or data)
        return 200, self._answer(post_id if event["type"] != DELETED else None)

    def _answer(self, post_id: Any) -> dict[str, Any]:
        if not isinstance(post_id, str):
            return {"ok": True}
        return {"url": self.absolute(f"/mirror/posts/{quote(post_id)}", "")}

    def _localise_media(self, data: Mapping[str, Any]) -> list[str | None]:
        """A file in our media folder for each item, so pages never load a third party."""
        names: list[str | None] = []
        for index, item in enumerate(data.get("media") or []):
            names.append(self._local_copy(str(data["id"]), index, item))
        return names

    def _local_copy(self, post_id: str, index: int, item: Mapping[str, Any]) -> str | None:
        sha256, url = item.get("sha256"), item.get("url")
        if sha256:
            name = self.media.name_for(sha256, item.get("mime_type"))
            if name and self.media.path(name):
                return name
            return self._copy_from_queue(post_id, index, sha256)
        if url and self.settings.media_fetch:
            try:
                fetched = fetch_media(
                    url,
                    timeout=self.settings.media_fetch_timeout,
                    allowed=self.settings.media_fetch_allow,
                )
            except MediaFetchError as exc:
                log.warning("mirror: %s media %d not fetched: %s", post_id, index, exc)
                return None
            return self.media.store(fetched.content, fetched.mime_type)
        return None

    def _copy_from_queue(self, post_id: str, index: int, sha256: str) -> str | None:
        """The same service queued the post: its file is on this machine; keep a copy if its
        digest is the one the signed payload names."""
        if self.queue is None:
            return None
        try:
            body = self.queue.get(post_id).body
        except CrosspostError:
            return None
        items = body.get("media") or []
        path = items[index].get("path") if index < len(items) else None
        return self.media.store_file(Path(path), sha256) if path else None

    # -- showing ---------------------------------------------------------------------------

    def absolute(self, path: str, base: str) -> str:
        root = (self.settings.public_url or base).rstrip("/")
        return f"{root}{path}"

    def copies(self, post: MirrorPost) -> list[dict[str, str]]:
        """Links to the Facebook and Mastodon copies: the payload's, and what the queue knows
        now (the website is usually sent before the others are published)."""
        found: dict[str, str] = dict(post.data.get("copies") or {})
        if self.queue is not None:
            with contextlib.suppress(CrosspostError):
                found.update(self.queue.published_copies(post.id))
        links = []
        for target, url in sorted(found.items()):
            platform = (
                self.targets[target].platform if self.targets and target in self.targets else ""
            )
            if platform == "webhook" or not str(url).startswith(("https://", "http://")):
                continue
            links.append({"target": target, "url": url, "label": _platform_label(platform, target)})
        return links

    def view(self, post: MirrorPost, wanted: Sequence[str], base: str) -> dict[str, Any]:
        data = post.data
        default = str(data["default_language"])
        languages: dict[str, Any] = data["languages"]
        order = order_languages(list(languages), default, wanted)
        media_items = list(data.get("media") or [])
        variants = []
        for code in order:
            media = []
            for index, item in enumerate(media_items):
                name = post.media[index] if index < len(post.media) else None
                alt = (item.get("alt") or {}).get(code) or (item.get("alt") or {}).get(default, "")
                media.append(
                    {
                        "src": self.absolute(f"/mirror/media/{name}", base) if name else None,
                        "is_video": str(item.get("mime_type") or "").startswith("video/"),
                        "remote": item.get("url"),
                        "alt": alt,
                    }
                )
            variants.append(
                {
                    "code": code,
                    "name": LANGUAGE_NAMES.get(code, code),
                    "html": languages[code]["html"],
                    "text": languages[code]["text"],
                    "media": media,
                }
            )
        return {
            "id": post.id,
            "anchor": re.sub(r"[^A-Za-z0-9_-]", "_", post.id),
            "permalink": self.absolute(f"/mirror/posts/{quote(post.id)}", base),
            "languages": variants,
            "content_warning": data.get("content_warning"),
            "published_iso": post.published_at.isoformat(),
            "published_text": post.published_at.strftime("%-d %B %Y, %H:%M UTC"),
            "updated_iso": post.updated_at.isoformat(),
            "hashtags": list(data.get("hashtags") or []),
            "copies": self.copies(post),
        }

    def render(self, template: str, **context: Any) -> str:
        defaults = {
            "site_title": self.settings.mirror_title,
            "max_languages": MAX_LANGUAGES,
            "embed": False,
            "feeds": None,
            "page_language": "en",
        }
        return self.templates.get_template(template).render(**{**defaults, **context})


def _html(text: str, status: int = 200, embed: bool = False) -> HTMLResponse:
    frames = "frame-ancestors *" if embed else "frame-ancestors 'self'"
    return HTMLResponse(
        text,
        status,
        headers={
            "Content-Security-Policy": f"{PAGE_POLICY}; {frames}",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _title(post: Mapping[str, Any]) -> str:
    text = str(post["text"]).strip().splitlines()[0] if str(post["text"]).strip() else ""
    return text if len(text) <= 80 else text[:79].rstrip() + "…"


def json_feed(mirror: Mirror, posts: Sequence[MirrorPost], base: str) -> dict[str, Any]:
    items = []
    for post in posts:
        view = mirror.view(post, [], base)
        main = view["languages"][0]
        attachments = [
            {"url": m["src"], "mime_type": item.get("mime_type") or "application/octet-stream"}
            for m, item in zip(main["media"], post.data.get("media") or [], strict=False)
            if m["src"]
        ]
        item: dict[str, Any] = {
            "id": view["permalink"],
            "url": view["permalink"],
            "title": _title(main),
            "content_html": _all_languages_html(view),
            "content_text": main["text"],
            "date_published": post.published_at.isoformat(),
            "date_modified": post.updated_at.isoformat(),
            "language": main["code"],
            "tags": view["hashtags"],
        }
        if attachments:
            item["attachments"] = attachments
        items.append(item)
    return {
        "version": JSON_FEED_VERSION,
        "title": mirror.settings.mirror_title,
        "home_page_url": mirror.absolute("/mirror", base),
        "feed_url": mirror.absolute("/mirror/feed.json", base),
        "items": items,
    }


def _all_languages_html(view: Mapping[str, Any]) -> str:
    parts = []
    for variant in view["languages"]:
        images = "".join(
            f'<p><img src="{m["src"]}" alt="{_attr(m["alt"])}"></p>'
            for m in variant["media"]
            if m["src"] and not m["is_video"]
        )
        parts.append(f'<div lang="{variant["code"]}">{variant["html"]}{images}</div>')
    return "\n<hr>\n".join(parts)


def _attr(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


def atom_feed(mirror: Mirror, posts: Sequence[MirrorPost], base: str) -> bytes:
    ET.register_namespace("", ATOM_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            element.text = text
        return element

    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    home = mirror.absolute("/mirror", base)
    sub(feed, "id", home)
    sub(feed, "title", mirror.settings.mirror_title)
    newest = max((p.updated_at for p in posts), default=datetime(2000, 1, 1, tzinfo=UTC))
    sub(feed, "updated", newest.isoformat())
    sub(
        feed,
        "link",
        rel="self",
        href=mirror.absolute("/mirror/feed.atom", base),
        type="application/atom+xml",
    )
    sub(feed, "link", rel="alternate", href=home, type="text/html")
    author = sub(feed, "author")
    sub(author, "name", mirror.settings.mirror_title)
    for post in posts:
        view = mirror.view(post, [], base)
        main = view["languages"][0]
        entry = sub(feed, "entry")
        sub(entry, "id", view["permalink"])
        sub(entry, "title", _title(main))
        sub(entry, "published", post.published_at.isoformat())
        sub(entry, "updated", post.updated_at.isoformat())
        sub(entry, "link", rel="alternate", href=view["permalink"], type="text/html")
        for tag in view["hashtags"]:
            sub(entry, "category", term=tag)
        content = sub(entry, "content", _all_languages_html(view), type="html")
        content.set("{http://www.w3.org/XML/1998/namespace}lang", main["code"])
    body: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return body


def mirror_router(mirror: Mirror) -> APIRouter:
    router = APIRouter(prefix="/mirror", tags=["mirror"])
    size = mirror.settings.mirror_page_size

    def page_of(request: Request, page: int, tag: str | None) -> HTMLResponse:
        total = mirror.store.count(tag)
        pages = max(1, math.ceil(total / size))
        posts = mirror.store.page(limit=size, offset=(page - 1) * size, tag=tag)
        wanted = preferred_languages(request.headers.get("accept-language"))
        base = ""  # pages link relatively; feeds need absolute URLs
        here = f"/mirror/tags/{quote(tag)}" if tag else "/mirror"
        text = mirror.render(
            "index.html",
            title=f"#{tag} — {mirror.settings.mirror_title}"
            if tag
            else mirror.settings.mirror_title,
            heading=f"#{tag}" if tag else mirror.settings.mirror_title,
            home="/mirror",
            posts=[mirror.view(p, wanted, base) for p in posts],
            page=page,
            pages=pages,
            newer=f"{here}?page={page - 1}" if page > 1 else None,
            older=f"{here}?page={page + 1}" if page < pages else None,
            feeds={"json": "/mirror/feed.json", "atom": "/mirror/feed.atom"},
            page_language=wanted[0].split("-")[0] if wanted and wanted[0] != "*" else "en",
        )
        return _html(text, 200 if page <= pages else 404)

    @router.get("", response_class=HTMLResponse, summary="The mirror: newest posts first")
    def index(request: Request, page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> HTMLResponse:
        return page_of(request, page, None)

    @router.get("/tags/{tag}", response_class=HTMLResponse, summary="Posts with a hashtag")
    def by_tag(request: Request, tag: str, page: int = Query(1, ge=1, le=100_000)) -> HTMLResponse:
        return page_of(request, page, tag[:100])

    def one(request: Request, post_id: str, template: str, embed: bool) -> HTMLResponse:
        post = mirror.store.get(post_id)
        if post is None:
            return _html(mirror.render("base.html", title="Not found"), 404, embed)
        view = mirror.view(post, preferred_languages(request.headers.get("accept-language")), "")
        text = mirror.render(
            template,
            title=_title(view["languages"][0]),
            home="/mirror",
            post=view,
            embed=embed,
            page_language=view["languages"][0]["code"],
        )
        return _html(text, embed=embed)

    @router.get("/posts/{post_id}", response_class=HTMLResponse, summary="A post's permalink")
    def permalink(request: Request, post_id: str) -> HTMLResponse:
        return one(request, post_id, "post.html", embed=False)

    @router.get("/embed/{post_id}", response_class=HTMLResponse, summary="A post for an iframe")
    def embed(request: Request, post_id: str) -> HTMLResponse:
        return one(request, post_id, "embed.html", embed=True)

    @router.get("/feed.json", summary="JSON Feed 1.1")
    def feed_json(request: Request) -> Response:
        feed = json_feed(mirror, mirror.store.page(limit=FEED_ITEMS), _base(request))
        return Response(json.dumps(feed, ensure_ascii=False), media_type="application/feed+json")

    @router.get("/feed.atom", summary="Atom feed")
    def feed_atom(request: Request) -> Response:
        body = atom_feed(mirror, mirror.store.page(limit=FEED_ITEMS), _base(request))
        return Response(body, media_type="application/atom+xml")

    @router.get("/media/{name}", summary="A media file by its content digest")
    def media(name: str) -> Response:
        found = mirror.media.path(name)
        if found is None:
            return JSONResponse({"detail": "no such media"}, 404)
        return FileResponse(
            found,
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @router.post(
        "/hook",
        summary="Receive a signed post event (Standard Webhooks)",
        responses={401: {"description": "bad signature"}, 400: {"description": "bad payload"}},
    )
    async def hook(request: Request) -> JSONResponse:
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_EVENT_BYTES:
                return JSONResponse({"error": f"over {MAX_EVENT_BYTES} bytes"}, 413)
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, answer = await run_in_threadpool(mirror.receive, bytes(body), headers)
        return JSONResponse(answer, status)

    return router


LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def ensure_mirror_secrets(settings: Settings, targets: Targets) -> list[str]:
    """Make a webhook secret, once, for each target that sends to this service's own mirror
    and whose secret variable is unset, so the example configuration works with no setup.

    The secret is written to `data/secrets/<VARIABLE>` (mode 0600), where `Settings.secret`
    finds it; a value in the environment or `.env` always wins. Returns the variables made."""
    made = []
    for config in targets.values():
        url = getattr(config, "url", None)
        variable = config.secret_variable()
        if url is None or not variable or settings.secret(variable) is not None:
            continue
        parts = urlsplit(str(url))
        own_host = parts.hostname in LOCAL_HOSTS | {settings.api_host}
        if not own_host or parts.port != settings.api_port:
            continue
        if parts.path.rstrip("/") != HOOK_PATH:
            continue
        folder = settings.generated_secrets_dir
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(folder / variable, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # another process made it a moment ago
        value = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        made.append(variable)
    return made
