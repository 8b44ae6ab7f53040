"""The mirror's own posts: the only module that speaks SQL for the website mirror.

It shares the queue's engine (same database, same SQLite locking rules) but not its tables: the
mirror stores what it *received* as a website, exactly as another site would, so it shows a post
only once its `post.published` event has arrived. Driver errors leave as `QueueError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from crosspost.queue import Database, UTCDateTime
from crosspost.webhook_payload import DELETED

metadata = sa.MetaData()

mirror_posts = sa.Table(
    "mirror_posts",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("webhook_id", sa.String(200), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    # Local file names (under the media folder) for `data.media`, in order; None: not stored.
    sa.Column("media", sa.JSON, nullable=False),
    # " tag1 tag2 ": lower-cased hashtags between spaces, so one LIKE finds a tag.
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

mirror_events = sa.Table(
    "mirror_events",
    metadata,
    sa.Column("webhook_id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("post_id", sa.String(100)),
    sa.Column("received_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class MirrorPost:
    id: str
    webhook_id: str
    data: dict[str, Any]
    media: tuple[str | None, ...]
    published_at: datetime
    updated_at: datetime


def tags_column(data: dict[str, Any]) -> str:
    tags = [*data.get("hashtags", [])]
    for extra in (data.get("language_hashtags") or {}).values():
        tags.extend(extra)
    return " " + " ".join(sorted({str(t).lower() for t in tags})) + " "


def _post(row: Row[Any]) -> MirrorPost:
    m = row._mapping
    return MirrorPost(
        id=m["id"],
        webhook_id=m["webhook_id"],
        data=m["data"],
        media=tuple(m["media"]),
        published_at=m["published_at"],
        updated_at=m["updated_at"],
    )


class MirrorStore:
    def __init__(self, database: Database) -> None:
        self.engine = database.engine
        self._write = database.write
        self._read = database.read

    def seen(self, webhook_id: str) -> bool:
        with self._read() as conn:
            found = conn.execute(
                sa.select(mirror_events.c.webhook_id).where(
                    mirror_events.c.webhook_id == webhook_id
                )
            ).first()
            return found is not None

    def record(
        self,
        webhook_id: str,
        event: str,
        data: dict[str, Any],
        media: Sequence[str | None],
        now: datetime,
    ) -> str | None:
        """Apply one event once: store, replace or remove the post. Returns the post id it
        concerned, or None when this `webhook-id` was already processed (nothing changes)."""
        with self._write() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        mirror_events.insert().values(
                            webhook_id=webhook_id, type=event, received_at=now
                        )
                    )
            except IntegrityError:
                return None
            post_id = self._apply(conn, webhook_id, event, data, list(media), now)
            conn.execute(
                mirror_events.update()
                .where(mirror_events.c.webhook_id == webhook_id)
                .values(post_id=post_id)
            )
            return post_id

    def _apply(
        self,
        conn: Connection,
        webhook_id: str,
        event: str,
        data: dict[str, Any],
        media: list[str | None],
        now: datetime,
    ) -> str | None:
        if event == DELETED:
            post_id = data.get("id")
            if post_id is None and data.get("webhook_id"):
                post_id = conn.execute(
                    sa.select(mirror_posts.c.id).where(
                        mirror_posts.c.webhook_id == data["webhook_id"]
                    )
                ).scalar()
            if post_id is not None:
                conn.execute(mirror_posts.delete().where(mirror_posts.c.id == post_id))
            return str(post_id) if post_id is not None else None
        post_id = str(data["id"])
        values = {"data": data, "media": media, "tags": tags_column(data), "updated_at": now}
        exists = conn.execute(
            sa.select(mirror_posts.c.id).where(mirror_posts.c.id == post_id)
        ).first()
        if exists is None:
            conn.execute(
                mirror_posts.insert().values(
                    id=post_id, webhook_id=webhook_id, published_at=now, **values
                )
            )
        else:
            conn.execute(mirror_posts.update().where(mirror_posts.c.id == post_id).values(**values))
        return post_id

    def get(self, post_id: str) -> MirrorPost | None:
        with self._read() as conn:
            row = conn.execute(sa.select(mirror_posts).where(mirror_posts.c.id == post_id)).first()
            return _post(row) if row is not None else None

    def page(self, *, limit: int, offset: int = 0, tag: str | None = None) -> list[MirrorPost]:
        """Newest first."""
        query = sa.select(mirror_posts)
        if tag is not None:
            query = query.where(mirror_posts.c.tags.contains(f" {tag.lower()} ", autoescape=True))
        query = query.order_by(mirror_posts.c.published_at.desc(), mirror_posts.c.id)
        with self._read() as conn:
            return [_post(r) for r in conn.execute(query.limit(limit).offset(offset))]

    def count(self, tag: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(mirror_posts)
        if tag is not None:
            query = query.where(mirror_posts.c.tags.contains(f" {tag.lower()} ", autoescape=True))
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)
