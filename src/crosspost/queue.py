"""The queue: the only module that speaks SQL.

Posts, their deliveries (one per post × target) and every attempt live in three tables. Workers
claim due deliveries with a lease and a fence: `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL,
`BEGIN IMMEDIATE` on SQLite (every write transaction takes the write lock up front, so two
processes never both claim a row). A delivery's `due_at` is the one moment the queue looks at it
next — its publish time, its retry time, or the end of its lease — so "what is due" is one range
scan over a partial index, whatever the state.

Every result leaves as a frozen value from `crosspost.delivery`; every driver error leaves as
`QueueError`, translated in `_translated()`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from crosspost.delivery import (
    ACTIVE_STATES,
    PENDING_STATES,
    RETRYABLE_STATES,
    AddResult,
    Attempt,
    AttemptRecord,
    Claim,
    Delivery,
    DeliveryState,
    Finish,
    NewPost,
    PostRecord,
    check_transition,
)
from crosspost.errors import Conflict, NotFound, QueueError

S = DeliveryState
V = TypeVar("V", Delivery, Attempt, PostRecord)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the queue")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
_ACTIVE = [str(s) for s in ACTIVE_STATES]
_ACTIVE_SQL = "state IN ({})".format(", ".join(f"'{s}'" for s in sorted(_ACTIVE)))
# Literal, not bound: only a literal condition lets SQLite use the partial index below.
_is_active = sa.text(_ACTIVE_SQL)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

posts = sa.Table(
    "posts",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("campaign", sa.String(100)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
posts_created = sa.Index("ix_posts_created_at", posts.c.created_at)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "post_id", sa.String(100), sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("scheduled_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
    sa.Column("maybe_landed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("remote_id", sa.Text),
    sa.Column("remote_url", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_kind", sa.String(20)),
    sa.Column("published_at", UTCDateTime),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("post_id", "target", name="uq_deliveries_post_target"),
    sa.CheckConstraint(
        "state IN ({})".format(", ".join(f"'{s}'" for s in DeliveryState)),
        name="ck_deliveries_state",
    ),
)
deliveries_due = sa.Index(
    "ix_deliveries_due",
    deliveries.c.due_at,
    sqlite_where=sa.text(_ACTIVE_SQL),
    postgresql_where=sa.text(_ACTIVE_SQL),
)
deliveries_target = sa.Index("ix_deliveries_target_state", deliveries.c.target, deliveries.c.state)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id", Id, sa.ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("error_kind", sa.String(20)),
    sa.Column("error_message", sa.Text),
    sa.Column("remote_id", sa.Text),
    sa.Column("remote_url", sa.Text),
)
attempts_delivery = sa.Index("ix_attempts_delivery", attempts.c.delivery_id)


NOTIFY_CHANNEL = "crosspost_queue"


def new_idempotency_key() -> str:
    return f"cp_{uuid.uuid4().hex}"


def create_engine(url: str) -> Engine:
    """An engine configured for a queue: WAL, busy timeout and BEGIN IMMEDIATE on SQLite."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            mode = "DEFERRED" if connection.get_execution_options().get("readonly") else "IMMEDIATE"
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)


class _ClaimedRow:
    """A leased row with its old state and its post's body, as PostgreSQL's RETURNING gives."""

    def __init__(self, row: Row[Any], old_state: str, body: Any) -> None:
        self._mapping = row._mapping
        self.old_state = old_state
        self.body = body


def _value(cls: type[V], row: Any, **given: Any) -> V:
    """A frozen value from a row: each dataclass field from the column of the same name."""
    columns = row._mapping
    return cls(
        **{f.name: columns[f.name] for f in fields(cls) if f.name not in given},
        **given,
    )


def _delivery(row: Any) -> Delivery:
    columns = row._mapping
    return _value(
        Delivery,
        row,
        state=DeliveryState(columns["state"]),
        maybe_landed=bool(columns["maybe_landed"]),
    )


def _attempt(row: Row[Any]) -> Attempt:
    return _value(Attempt, row)


class Database:
    """Connections to one SQL database, for the queue and the mirror's store.

    SQLite lets one connection write at a time, and a connection that finds the lock taken
    sleeps in SQLite's busy handler (1, 2, 5 … 100 ms steps), on past the moment the lock is
    free. Threads of this process therefore take turns to write; other processes still meet the
    busy handler. Every driver error leaves as `QueueError`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._write_turn: AbstractContextManager[Any] = (
            nullcontext() if self.is_postgres else threading.Lock()
        )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def translated(self) -> Iterator[None]:
        try:
            yield
        except (Conflict, NotFound):
            raise
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise QueueError(f"database error ({self.engine.dialect.name}): {reason}") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._write_turn, self.translated(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with (
            self.translated(),
            self.engine.connect().execution_options(readonly=True) as conn,
            conn.begin(),
        ):
            yield conn


class Queue:
    """Posts, deliveries and attempts in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.url = url
        self.engine = self.db.engine
        self.is_postgres = self.db.is_postgres
        self._write = self.db.write
        self._read = self.db.read
        self._translated = self.db.translated

    def close(self) -> None:
        self.db.close()

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (Alembic)."""
        from crosspost.migrations import upgrade

        with self._translated(), self.engine.begin() as conn:
            upgrade(conn)

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- posts -----------------------------------------------------------------------------

    def add(self, new: NewPost, now: datetime) -> AddResult:
        """Queue a post, or update its pending deliveries; idempotent for an unchanged post."""
        with self._write() as conn:
            existing = conn.execute(
                sa.select(posts.c.body, posts.c.campaign)
                .where(posts.c.id == new.id)
                .with_for_update()
            ).first()
            self.notify(conn)
            if existing is None:
                self._insert(conn, new, now)
                return AddResult("queued", self._post(conn, new.id))
            current = {
                d.target: d
                for d in map(
                    _delivery,
                    conn.execute(sa.select(deliveries).where(deliveries.c.post_id == new.id)),
                )
            }
            wanted = {d.target: d.scheduled_at for d in new.deliveries}
            same_schedule = {t: d.scheduled_at for t, d in current.items()} == wanted
            if existing.body == new.body and same_schedule:
                return AddResult("unchanged", self._post(conn, new.id))
            changeable = {*PENDING_STATES, S.FAILED, S.MISSED, S.CANCELLED}
            settled = sorted(
                f"{d.target} ({d.state})" for d in current.values() if d.state not in changeable
            )
            if settled:
                raise Conflict(
                    f"post {new.id!r} is already published or publishing to {', '.join(settled)};"
                    " nothing was changed (give the new version another id)"
                )
            conn.execute(
                posts.update()
                .where(posts.c.id == new.id)
                .values(body=new.body, campaign=new.campaign, source=new.source, updated_at=now)
            )
            for target, delivery in current.items():
                if target not in wanted:
                    conn.execute(deliveries.delete().where(deliveries.c.id == delivery.id))
            for target, scheduled_at in wanted.items():
                if target in current:
                    self._set_state(
                        conn,
                        current[target],
                        S.SCHEDULED,
                        scheduled_at=scheduled_at,
                        due_at=scheduled_at,
                        last_error=None,
                        last_error_kind=None,
                    )
                else:
                    conn.execute(
                        deliveries.insert(), [self._delivery_row(new.id, target, scheduled_at)]
                    )
            return AddResult("updated", self._post(conn, new.id))

    def ensure(self, new: NewPost, now: datetime) -> AddResult:
        """Create the post if it is missing, and those of its deliveries that are missing;
        change nothing that exists (the next occurrence of a recurring campaign). Safe when
        several workers ensure the same post at once: conflicting inserts do nothing."""
        insert = pg_insert if self.is_postgres else sqlite_insert
        with self._write() as conn:
            created = conn.execute(
                insert(posts)
                .values(
                    id=new.id,
                    source=new.source,
                    body=new.body,
                    campaign=new.campaign,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(posts.c.id)
            ).all()
            added = conn.execute(
                insert(deliveries)
                .on_conflict_do_nothing(index_elements=["post_id", "target"])
                .returning(deliveries.c.id),
                [self._delivery_row(new.id, d.target, d.scheduled_at) for d in new.deliveries],
            ).all()
            self.notify(conn)
            outcome = "queued" if created else ("updated" if added else "unchanged")
            return AddResult(outcome, self._post(conn, new.id))

    def add_many(self, batch: Sequence[NewPost], now: datetime) -> int:
        """Bulk-queue new posts in one transaction (ids already present are skipped)."""
        if not batch:
            return 0
        with self._write() as conn:
            ids = [p.id for p in batch]
            present = set(conn.execute(sa.select(posts.c.id).where(posts.c.id.in_(ids))).scalars())
            fresh = [p for p in batch if p.id not in present]
            self.notify(conn)
            if not fresh:
                return 0
            conn.execute(
                posts.insert(),
                [
                    {
                        "id": p.id,
                        "source": p.source,
                        "body": p.body,
                        "campaign": p.campaign,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for p in fresh
                ],
            )
            conn.execute(
                deliveries.insert(),
                [
                    self._delivery_row(p.id, d.target, d.scheduled_at)
                    for p in fresh
                    for d in p.deliveries
                ],
            )
            return len(fresh)

    def _insert(self, conn: Connection, new: NewPost, now: datetime) -> None:
        try:
            conn.execute(
                posts.insert().values(
                    id=new.id,
                    source=new.source,
                    body=new.body,
                    campaign=new.campaign,
                    created_at=now,
                    updated_at=now,
                )
            )
        except IntegrityError:
            raise Conflict(
                f"post {new.id!r} was added at the same moment by another process"
            ) from None
        conn.execute(
            deliveries.insert(),
            [self._delivery_row(new.id, d.target, d.scheduled_at) for d in new.deliveries],
        )

    @staticmethod
    def _delivery_row(post_id: str, target: str, scheduled_at: datetime) -> dict[str, Any]:
        return {
            "post_id": post_id,
            "target": target,
            "state": str(S.SCHEDULED),
            "scheduled_at": scheduled_at,
            "due_at": scheduled_at,
            "attempts": 0,
            "idempotency_key": new_idempotency_key(),
            "maybe_landed": False,
            "fence": 0,
        }

    def get(self, post_id: str) -> PostRecord:
        with self._read() as conn:
            return self._post(conn, post_id)

    def _post(self, conn: Connection, post_id: str) -> PostRecord:
        row = conn.execute(sa.select(posts).where(posts.c.id == post_id)).first()
        if row is None:
            raise NotFound(f"no post with id {post_id!r}")
        found = conn.execute(
            sa.select(deliveries).where(deliveries.c.post_id == post_id).order_by(deliveries.c.id)
        )
        return self._record(row, tuple(map(_delivery, found)))

    @staticmethod
    def _record(row: Row[Any], found: tuple[Delivery, ...]) -> PostRecord:
        return _value(PostRecord, row, deliveries=found)

    def list_posts(
        self,
        *,
        state: DeliveryState | None = None,
        target: str | None = None,
        campaign: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[PostRecord]:
        """Posts, newest first, that have a delivery matching every filter given."""
        conditions = []
        if state is not None:
            conditions.append(deliveries.c.state == str(state))
        if target is not None:
            conditions.append(deliveries.c.target == target)
        if since is not None:
            conditions.append(deliveries.c.scheduled_at >= since)
        if until is not None:
            conditions.append(deliveries.c.scheduled_at < until)
        query = sa.select(posts)
        if conditions:
            query = query.where(posts.c.id.in_(sa.select(deliveries.c.post_id).where(*conditions)))
        if campaign is not None:
            query = query.where(posts.c.campaign == campaign)
        query = query.order_by(posts.c.created_at.desc(), posts.c.id).limit(limit).offset(offset)
        with self._read() as conn:
            rows = conn.execute(query).all()
            ids = [r.id for r in rows]
            by_post: dict[str, list[Delivery]] = {i: [] for i in ids}
            for d in map(
                _delivery,
                conn.execute(
                    sa.select(deliveries)
                    .where(deliveries.c.post_id.in_(ids))
                    .order_by(deliveries.c.id)
                ),
            ):
                by_post[d.post_id].append(d)
            return [self._record(r, tuple(by_post[r.id])) for r in rows]

    def attempts(self, delivery_id: int) -> list[Attempt]:
        with self._read() as conn:
            return [
                _attempt(r)
                for r in conn.execute(
                    sa.select(attempts)
                    .where(attempts.c.delivery_id == delivery_id)
                    .order_by(attempts.c.id)
                )
            ]

    def cancel(self, post_id: str) -> list[Delivery]:
        """Cancel every delivery that has not gone out; published ones stay as they are."""
        with self._write() as conn:
            record = self._post(conn, post_id)
            pending = [d for d in record.deliveries if d.state in PENDING_STATES]
            if not pending:
                raise Conflict(
                    f"post {post_id!r} has nothing left to cancel ("
                    + ", ".join(f"{d.target}: {d.state}" for d in record.deliveries)
                    + ")"
                )
            for d in pending:
                self._set_state(conn, d, S.CANCELLED)
            return [d for d in self._post(conn, post_id).deliveries if d.state == S.CANCELLED]

    def retry(self, post_id: str, now: datetime, target: str | None = None) -> list[Delivery]:
        """Re-queue the failed, missed or needs-review deliveries; never a published one."""
        with self._write() as conn:
            record = self._post(conn, post_id)
            if target is not None and target not in {d.target for d in record.deliveries}:
                raise NotFound(f"post {post_id!r} has no delivery to {target!r}")
            chosen = [
                d
                for d in record.deliveries
                if d.state in RETRYABLE_STATES and (target is None or d.target == target)
            ]
            if not chosen:
                raise Conflict(
                    f"post {post_id!r} has nothing to retry ("
                    + ", ".join(f"{d.target}: {d.state}" for d in record.deliveries)
                    + ")"
                )
            for d in chosen:
                self._set_state(
                    conn,
                    d,
                    S.SCHEDULED,
                    scheduled_at=now,
                    due_at=now,
                    last_error=None,
                    last_error_kind=None,
                )
            self.notify(conn)
            ids = {d.id for d in chosen}
            return [d for d in self._post(conn, post_id).deliveries if d.id in ids]

    def _set_state(
        self, conn: Connection, delivery: Delivery, state: DeliveryState, **values: Any
    ) -> None:
        check_transition(delivery.state, state)
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery.id)
            .values(state=str(state), **values)
        )

    # -- workers ---------------------------------------------------------------------------

    def claim_due(
        self,
        worker: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        skip_targets: Sequence[str] = (),
    ) -> list[Claim]:
        """Take up to `limit` due deliveries, oldest first, leased to `worker`."""
        if limit <= 0:
            return []
        pick = (
            sa.select(deliveries.c.id, deliveries.c.state.label("old_state"))
            .where(_is_active, deliveries.c.due_at <= now)
            .order_by(deliveries.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if skip_targets:
            pick = pick.where(deliveries.c.target.not_in(list(skip_targets)))
        lease = {
            "state": str(S.CLAIMED),
            "due_at": lease_until,
            "lease_owner": worker,
            "fence": deliveries.c.fence + 1,
            "attempts": deliveries.c.attempts + 1,
            # A lease that ran out means that worker may have sent the request.
            "maybe_landed": sa.or_(deliveries.c.maybe_landed, deliveries.c.state == str(S.CLAIMED)),
        }
        with self._write() as conn:
            if self.is_postgres:
                rows = self._claim_in_one_statement(conn, pick, lease)
            else:
                rows = self._claim_in_steps(conn, pick, lease)
        claims = [
            Claim(
                delivery := _delivery(row),
                row.body,
                delivery.fence,
                lease_until,
                reclaimed=row.old_state == str(S.CLAIMED),
            )
            for row in rows
        ]
        return sorted(claims, key=lambda c: (c.delivery.scheduled_at, c.delivery.id))

    @staticmethod
    def _claim_in_one_statement(
        conn: Connection, pick: sa.Select[Any], lease: dict[str, Any]
    ) -> Sequence[Any]:
        """PostgreSQL: pick (skipping rows other workers hold), lease and return each row with
        its post in one round trip. SET expressions see the row as it was."""
        picked = pick.cte("picked")
        return conn.execute(
            deliveries.update()
            .where(deliveries.c.id == picked.c.id, posts.c.id == deliveries.c.post_id)
            .values(**lease)
            .returning(*deliveries.c, picked.c.old_state, posts.c.body)
        ).all()

    @staticmethod
    def _claim_in_steps(
        conn: Connection, pick: sa.Select[Any], lease: dict[str, Any]
    ) -> Sequence[Any]:
        """SQLite (whose RETURNING cannot name a joined table): the write lock is already ours
        (BEGIN IMMEDIATE), so pick, lease, then read the posts."""
        old_states: dict[int, str] = {row.id: row.old_state for row in conn.execute(pick)}
        if not old_states:
            return []
        leased = conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(list(old_states)))
            .values(**lease)
            .returning(*deliveries.c)
        ).all()
        bodies = {
            row.id: row.body
            for row in conn.execute(
                sa.select(posts.c.id, posts.c.body).where(
                    posts.c.id.in_({row.post_id for row in leased})
                )
            )
        }
        return [_ClaimedRow(row, old_states[row.id], bodies[row.post_id]) for row in leased]

    def renew(self, delivery_id: int, fence: int, lease_until: datetime) -> bool:
        """Extend a lease; False when another worker has taken the delivery over."""
        with self._write() as conn:
            result = conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.fence == fence,
                    deliveries.c.state == str(S.CLAIMED),
                )
                .values(due_at=lease_until)
            )
            return result.rowcount == 1

    def finish(
        self,
        delivery_id: int,
        fence: int,
        state: DeliveryState,
        attempt: AttemptRecord | None,
        *,
        due_at: datetime | None = None,
        maybe_landed: bool | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Record the end of a claim: published, retry-waiting (at `due_at`), failed,
        needs-review, missed, or scheduled (given back). False, and nothing written, when the
        fence shows another worker has taken the delivery over."""
        end = Finish(delivery_id, fence, state, attempt, due_at, maybe_landed, now)
        return self.finish_many([end])[0]

    def finish_many(self, ends: Sequence[Finish]) -> list[bool]:
        """Record several ends of claims in one transaction (one commit for a burst); each is
        fenced on its own. Rows are updated in id order, so two batches never deadlock."""
        values = [self._finish_values(end) for end in ends]  # all checked before writing
        kept = [False] * len(ends)
        with self._write() as conn:
            for i in sorted(range(len(ends)), key=lambda i: ends[i].delivery_id):
                end = ends[i]
                result = conn.execute(
                    deliveries.update()
                    .where(
                        deliveries.c.id == end.delivery_id,
                        deliveries.c.fence == end.fence,
                        deliveries.c.state == str(S.CLAIMED),
                    )
                    .values(**values[i])
                )
                kept[i] = result.rowcount == 1
                if kept[i] and end.attempt is not None:
                    conn.execute(
                        attempts.insert().values(
                            delivery_id=end.delivery_id, **end.attempt.__dict__
                        )
                    )
        return kept

    @staticmethod
    def _finish_values(end: Finish) -> dict[str, Any]:
        check_transition(S.CLAIMED, end.state)
        values: dict[str, Any] = {"state": str(end.state), "lease_owner": None}
        if end.state in (S.RETRY_WAITING, S.SCHEDULED):
            if end.due_at is None:
                raise ValueError(f"{end.state} needs a due time")
            values["due_at"] = end.due_at
        if end.maybe_landed is not None:
            values["maybe_landed"] = end.maybe_landed
        attempt = end.attempt
        if attempt is not None:
            if attempt.error_kind:
                values["last_error"] = attempt.error_message
                values["last_error_kind"] = attempt.error_kind
            if end.state == S.PUBLISHED:
                values.update(
                    remote_id=attempt.remote_id,
                    remote_url=attempt.remote_url,
                    published_at=end.now or attempt.started_at,
                    last_error=None,
                    last_error_kind=None,
                    maybe_landed=False,
                )
        if end.state == S.SCHEDULED:  # given back unsent: the attempt did not happen
            values["attempts"] = deliveries.c.attempts - 1
        return values

    def next_due(self, skip_targets: Sequence[str] = ()) -> datetime | None:
        """When the queue next has something to look at (ignoring `skip_targets`)."""
        query = sa.select(sa.func.min(deliveries.c.due_at)).where(_is_active)
        if skip_targets:
            query = query.where(deliveries.c.target.not_in(list(skip_targets)))
        with self._read() as conn:
            value: datetime | None = conn.execute(query).scalar()
            return value

    def notify(self, conn: Connection) -> None:
        """Tell every listening process that the queue changed (PostgreSQL only)."""
        if self.is_postgres:
            conn.execute(sa.text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Call `on_change` whenever another process changes the queue, until `stop`."""
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            on_change()
            except psycopg.Error:
                stop.wait(1.0)  # the server went away: listen again when it is back

    def published_copies(self, post_id: str) -> dict[str, str]:
        """Remote URLs of the post's published deliveries, by target."""
        with self._read() as conn:
            return {
                r.target: r.remote_url
                for r in conn.execute(
                    sa.select(deliveries.c.target, deliveries.c.remote_url).where(
                        deliveries.c.post_id == post_id,
                        deliveries.c.state == str(S.PUBLISHED),
                        deliveries.c.remote_url.is_not(None),
                    )
                )
            }

    def counts(self) -> dict[tuple[str, str], int]:
        """Deliveries by (target, state), for metrics and `health`."""
        with self._read() as conn:
            return {
                (r.target, r.state): r.n
                for r in conn.execute(
                    sa.select(
                        deliveries.c.target,
                        deliveries.c.state,
                        sa.func.count().label("n"),
                    ).group_by(deliveries.c.target, deliveries.c.state)
                )
            }
