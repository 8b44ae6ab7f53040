"""Exactly once with real processes: several `crosspost run` workers on one queue, workers
killed with SIGKILL mid-publish, SIGTERM, a restart after downtime, and SQLite shared by two
processes. The fakes are real HTTP servers; every count is taken on them and in the queue."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crosspost.delivery import DeliveryState
from crosspost.queue import Queue
from platforms import Platforms, running_platforms
from workers_support import (
    CROSSPOST,
    Worker,
    all_deliveries,
    all_published,
    assert_each_published_once,
    attempts_by_delivery,
    logs,
    new_posts,
    state_counts,
    wait_until,
    worker_env,
    write_targets,
)

S = DeliveryState
PUBLISH_PATHS = ("/api/v1/statuses", "/crosspost/hook")


@contextmanager
def open_queue(url: str) -> Iterator[Queue]:
    queue = Queue(url)
    queue.upgrade()
    try:
        yield queue
    finally:
        queue.close()


@contextmanager
def workers_running(workers: list[Worker]) -> Iterator[list[Worker]]:
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop_quietly()


def published_this_run(worker: Worker) -> int:
    """The count in the worker's last line: `stopped; this run: published: N`."""
    found = re.findall(r"this run: (.*)", worker.log.read_text())
    assert found, logs([worker])
    counts = dict(part.split(": ") for part in found[-1].split(", ") if ": " in part)
    return int(counts.get("published", 0))


def publish_requests(platforms: Platforms) -> list[float]:
    """Arrival times of every request that publishes (not reads, not media)."""
    found = [
        r.at
        for fake in (platforms.mastodon, platforms.website)
        for r in list(fake.requests)
        if r.method == "POST" and r.path in PUBLISH_PATHS
    ]
    found += [
        r.at
        for r in list(platforms.graph.requests)
        if r.method == "POST" and r.path.endswith("/feed")
    ]
    return sorted(found)


@pytest.mark.slow
def test_four_workers_publish_a_thousand_deliveries_exactly_once(
    pg_url: str, tmp_path: Path
) -> None:
    with (
        running_platforms(tmp_path, requests_per_window=100_000) as platforms,
        open_queue(pg_url) as queue,
    ):
        platforms.set_latency(0.02)
        targets = write_targets(platforms, tmp_path, concurrency=4)
        now = datetime.now(UTC)
        assert queue.add_many(new_posts(250, now, prefix="bulk"), now) == 250
        env = worker_env(platforms, pg_url, targets, lease=30, workers=8)
        workers = [Worker(f"worker{n}", env, tmp_path) for n in range(4)]
        with workers_running(workers):
            wait_until(all_published(queue, 1000), 180, "1,000 deliveries published", workers)
            codes = [w.terminate() for w in workers]
        assert codes == [0, 0, 0, 0], logs(workers)
        report = assert_each_published_once(queue, platforms, 1000)
        assert report.retried == 0 and report.repeated_keys == 0 and report.found == 0
        # Each process reports what it published; together they published each one once.
        shares = [published_this_run(w) for w in workers]
        assert sum(shares) == 1000, shares
        assert sum(share > 0 for share in shares) >= 2, shares
        print(f"published per worker: {shares}")


@pytest.mark.slow
def test_workers_killed_mid_publish_lose_nothing_and_double_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    with running_platforms(tmp_path) as platforms, open_queue(pg_url) as queue:
        platforms.set_latency(0.3)
        # One publish per target at a time, so each worker is always in the middle of some.
        targets = write_targets(platforms, tmp_path, concurrency=1)
        now = datetime.now(UTC)
        queue.add_many(new_posts(40, now, prefix="killed"), now)
        env = worker_env(platforms, pg_url, targets, lease=2, workers=4)
        workers = [Worker(f"worker{n}", env, tmp_path) for n in range(3)]
        rng = random.Random(4)
        kills = 0
        with workers_running(workers):
            time.sleep(1.5)  # let the first ones start up and claim
            for round_ in range(7):
                platforms.set_latency(rng.uniform(0.2, 0.4))
                victim = workers[round_ % len(workers)]
                victim.kill()
                kills += 1
                victim.start()
                time.sleep(1.0)
            platforms.set_latency(0.05)
            wait_until(all_published(queue, 160), 120, "160 deliveries published", workers)
            codes = [w.terminate() for w in workers]
        assert codes == [0, 0, 0], logs(workers)
        assert all(code == -signal.SIGKILL for w in workers for code in w.codes[:-1])
        report = assert_each_published_once(queue, platforms, 160)
        # The kills did interrupt claims: some deliveries were taken over after a lease ran out.
        assert kills == 7 and report.retried > 0, report
        print(f"after {kills} kills: {report}")


def test_restart_after_downtime_publishes_the_overdue_once_and_marks_the_too_late_missed(
    pg_url: str, tmp_path: Path
) -> None:
    with running_platforms(tmp_path) as platforms, open_queue(pg_url) as queue:
        now = datetime.now(UTC)
        targets = ("mastodon-en", "website")
        overdue = new_posts(3, now - timedelta(hours=2), prefix="overdue", targets=targets)
        too_late = new_posts(2, now - timedelta(hours=7), prefix="toolate", targets=targets)
        queue.add_many([*overdue, *too_late], now)
        env = worker_env(platforms, pg_url, platforms.targets_file, lease=10, workers=4)

        def crosspost(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(CROSSPOST), *args],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        for _ in range(2):  # the second run is another restart: it must change nothing
            run = crosspost("run", "--until-idle", "--no-api")
            assert run.returncode == 0, run.stderr
        counts = state_counts(queue)
        assert counts == {"published": 6, "missed": 4}, counts
        assert len(platforms.mastodon.statuses) == 3 and len(platforms.website.events) == 3
        for d in all_deliveries(queue):
            if d.post_id.startswith("toolate"):
                assert d.state == S.MISSED and d.last_error and "max_lateness" in d.last_error
            else:
                assert d.state == S.PUBLISHED
        listed = crosspost("list", "--state", "missed")
        assert listed.returncode == 0, listed.stderr
        assert "toolate-0000" in listed.stdout and "toolate-0001" in listed.stdout
        assert "overdue" not in listed.stdout
        shown = crosspost("show", "toolate-0000")
        assert "missed" in shown.stdout and "max_lateness" in shown.stdout


def test_sigterm_stops_claiming_lets_running_publishes_finish_and_exits_0(
    pg_url: str, tmp_path: Path
) -> None:
    with running_platforms(tmp_path) as platforms, open_queue(pg_url) as queue:
        platforms.set_latency(1.0)
        targets = write_targets(platforms, tmp_path, concurrency=2)
        now = datetime.now(UTC)
        queue.add_many(new_posts(20, now, prefix="term"), now)
        env = worker_env(platforms, pg_url, targets, lease=10, workers=4)
        worker = Worker("worker", env, tmp_path)
        with workers_running([worker]):
            wait_until(
                lambda: len(publish_requests(platforms)) > 0, 30, "a publish in flight", [worker]
            )
            code = worker.terminate(timeout=30)
        assert code == 0, logs([worker])
        rows = all_deliveries(queue)
        counts = state_counts(queue)
        # Nothing left claimed: what was running finished, what was waiting was given back.
        assert set(counts) <= {"published", "scheduled"}, counts
        published = [d for d in rows if d.state == S.PUBLISHED]
        assert 0 < len(published) < len(rows), counts
        assert all(d.attempts == 0 for d in rows if d.state == S.SCHEDULED)
        history = attempts_by_delivery(queue)
        assert all(d.id not in history for d in rows if d.state == S.SCHEDULED)
        # Every publish that reached a platform is recorded, and none began after SIGTERM:
        # only the 4 the pool was running (CROSSPOST_WORKERS=4) went out, not the ones queued.
        assert len(publish_requests(platforms)) == len(published) <= 4, counts
        # The rest goes out, once, when a worker runs again.
        platforms.set_latency(0.02)
        worker.start()
        try:
            wait_until(all_published(queue, 80), 90, "the rest published", [worker])
        finally:
            assert worker.terminate() == 0
        assert_each_published_once(queue, platforms, 80)


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_do_not_collide(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    with running_platforms(tmp_path) as platforms, open_queue(url) as queue:
        platforms.set_latency(0.02)
        targets = write_targets(platforms, tmp_path, concurrency=4)
        now = datetime.now(UTC)
        queue.add_many(new_posts(50, now, prefix="lite"), now)
        env = worker_env(platforms, url, targets, lease=15, workers=4)
        workers = [Worker(f"worker{n}", env, tmp_path) for n in range(2)]
        with workers_running(workers):
            wait_until(all_published(queue, 200), 120, "200 deliveries published", workers)
            codes = [w.terminate() for w in workers]
        assert codes == [0, 0], logs(workers)
        report = assert_each_published_once(queue, platforms, 200)
        assert report.retried == 0, report
