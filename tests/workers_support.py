"""Helpers for the worker and reliability tests: real `crosspost run` processes, bulk-queued
posts, and the checks that every delivery landed exactly once — counted on the fakes and in
the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from crosspost.delivery import Attempt, Delivery, DeliveryState, NewDelivery, NewPost
from crosspost.post import Post
from crosspost.queue import Queue, attempts, deliveries
from platforms import FAST_RETRY, Platforms, targets_yaml

REPO = Path(__file__).resolve().parents[1]
CROSSPOST = Path(sys.executable).parent / "crosspost"
ALL_TARGETS = ("facebook-page", "mastodon-en", "mastodon-es", "website")
SUCCESS = ("published", "found")
S = DeliveryState


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    workers: Sequence[Worker] = (),
) -> None:
    """Poll `predicate`; fail at `timeout`, or at once if one of `workers` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [w for w in workers if w.process is not None and w.process.poll() is not None]
        if dead:
            raise AssertionError(f"a worker exited while waiting for {what}\n{logs(dead)}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs(workers)}")


def new_posts(
    count: int, at: datetime, *, prefix: str, targets: Sequence[str] = ALL_TARGETS
) -> list[NewPost]:
    """`count` posts, each with its own text (Graph refuses a repeated message), due at `at`."""
    batch = []
    for number in range(count):
        post = Post(
            id=f"{prefix}-{number:04d}",
            text={
                "en": f"{prefix} post number {number}: peace and security for all",
                "es": f"{prefix} publicación número {number}: paz y seguridad para todos",
            },
            hashtags=["Peace"],
            publish_at=at,
            targets=list(targets),
        )
        assert post.id is not None
        batch.append(
            NewPost(
                id=post.id,
                source=f"{prefix}.yaml",
                body=post.canonical_json(),
                campaign=None,
                deliveries=tuple(NewDelivery(target, at) for target in targets),
            )
        )
    return batch


def write_targets(platforms: Platforms, directory: Path, *, concurrency: int) -> Path:
    path = directory / f"targets-c{concurrency}.yaml"
    path.write_text(targets_yaml(platforms.urls, FAST_RETRY, concurrency))
    return path


def worker_env(
    platforms: Platforms,
    database_url: str,
    targets_file: Path,
    *,
    lease: float,
    workers: int,
    http_timeout: float = 5.0,
) -> dict[str, str]:
    return {
        **os.environ,
        **platforms.env(),
        "CROSSPOST_DATABASE_URL": database_url,
        "CROSSPOST_TARGETS": str(targets_file),
        "CROSSPOST_LEASE_SECONDS": str(lease),
        "CROSSPOST_WORKERS": str(workers),
        "CROSSPOST_HTTP_TIMEOUT": str(http_timeout),
        "CROSSPOST_CAMPAIGNS_DIR": str(REPO / "config" / "campaigns"),
        "CROSSPOST_DATA_DIR": str(targets_file.parent / "data"),
    }


@dataclass
class Worker:
    """One `crosspost run` process; its output goes to a log file shown when a test fails."""

    name: str
    env: dict[str, str]
    directory: Path
    args: tuple[str, ...] = ("--no-api",)  # several workers on one host: no API port each
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    codes: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> Worker:
        self.runs += 1
        with self.log.open("ab") as out:
            out.write(f"--- run {self.runs} ---\n".encode())
            self.process = subprocess.Popen(
                [str(CROSSPOST), "run", *self.args],
                env=self.env,
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash or an OOM kill."""
        assert self.process is not None
        self.process.kill()
        self.codes.append(self.process.wait(10))

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.codes.append(code)
        return code

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.codes.append(code)
        return code

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        return f"== {self.name} ==\n" + "\n".join(text[-lines:])


def logs(workers: Iterable[Worker]) -> str:
    return "\n".join(w.tail() for w in workers)


# -- reading the queue back ------------------------------------------------------------------


def all_deliveries(queue: Queue) -> list[Delivery]:
    from crosspost.queue import _delivery

    with queue.engine.connect() as conn:
        return [_delivery(row) for row in conn.execute(sa.select(deliveries))]


def attempts_by_delivery(queue: Queue) -> dict[int, list[Attempt]]:
    from crosspost.queue import _attempt

    found: dict[int, list[Attempt]] = {}
    with queue.engine.connect() as conn:
        for row in conn.execute(sa.select(attempts).order_by(attempts.c.id)):
            attempt = _attempt(row)
            found.setdefault(attempt.delivery_id, []).append(attempt)
    return found


def state_counts(queue: Queue) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (_, state), n in queue.counts().items():
        counts[state] += n
    return counts


def all_published(queue: Queue, expected: int) -> Callable[[], bool]:
    return lambda: state_counts(queue)[str(S.PUBLISHED)] == expected


# -- exactly once ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnceReport:
    """What the fakes saw beyond one clean request per delivery (evidence of the crashes)."""

    repeated_keys: int  # Mastodon POSTs that re-sent an Idempotency-Key already used
    website_repeats: int  # webhooks re-sent with a webhook-id the site already had
    found: int  # deliveries recorded from a platform look-up rather than a publish
    retried: int  # deliveries with more than one attempt


def assert_each_published_once(queue: Queue, platforms: Platforms, expected: int) -> OnceReport:
    """Every delivery `published`, and each exactly once on its platform."""
    rows = all_deliveries(queue)
    states = Counter(str(d.state) for d in rows)
    assert len(rows) == expected, states
    assert states == {str(S.PUBLISHED): expected}, states
    by_target: dict[str, list[Delivery]] = {}
    for d in rows:
        by_target.setdefault(d.target, []).append(d)

    # Mastodon: one status per delivery, per idempotency key and per text.
    toots = [d for t, ds in by_target.items() if t.startswith("mastodon") for d in ds]
    statuses = platforms.mastodon.live_statuses()
    per_key = Counter(s.idempotency_key for s in statuses)
    per_text = Counter((s.language, s.text) for s in statuses)
    assert len(statuses) == len(toots)
    assert max(per_key.values(), default=1) == 1, per_key.most_common(3)
    assert max(per_text.values(), default=1) == 1, per_text.most_common(3)
    by_id = {s.id: s for s in statuses}
    for d in toots:
        assert d.remote_id in by_id, d
        assert by_id[d.remote_id].idempotency_key == d.idempotency_key

    # The website: one stored event per post, under the delivery's webhook-id.
    hooks = by_target.get("website", [])
    per_post = Counter(e["data"]["id"] for e in platforms.website.events)
    assert len(platforms.website.events) == len(hooks)
    assert max(per_post.values(), default=1) == 1, per_post.most_common(3)
    assert {d.post_id for d in hooks} == set(per_post)
    assert all(d.remote_id == d.idempotency_key for d in hooks)

    # Facebook: one Page post per delivery and per message (Graph has no idempotency key).
    pages = by_target.get("facebook-page", [])
    posts = platforms.graph.posted()
    per_message = Counter(p.message for p in posts)
    assert len(posts) == len(pages)
    assert max(per_message.values(), default=1) == 1, per_message.most_common(3)
    assert {d.remote_id for d in pages} == {p.id for p in posts}

    # The queue: exactly one successful attempt row per delivery.
    history = attempts_by_delivery(queue)
    found = 0
    for d in rows:
        outcomes = [a.outcome for a in history.get(d.id, [])]
        assert sum(o in SUCCESS for o in outcomes) == 1, (d, outcomes)
        assert outcomes[-1] in SUCCESS, (d, outcomes)
        found += outcomes[-1] == "found"
    posted_keys = [
        r.headers.get("idempotency-key")
        for r in platforms.mastodon.requests
        if r.method == "POST" and r.path == "/api/v1/statuses"
    ]
    return OnceReport(
        repeated_keys=len(posted_keys) - len(set(posted_keys)),
        website_repeats=platforms.website.repeats,
        found=found,
        retried=sum(d.attempts > 1 for d in rows),
    )
