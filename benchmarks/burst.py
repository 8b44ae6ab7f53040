"""Campaign burst: N deliveries due at the same instant, through crosspost and through a plain
APScheduler one-job-per-delivery setup (the baseline), against fakes with a set latency.

    .venv/bin/python benchmarks/burst.py                      # 1,000 deliveries, 150 ms, SQLite
    .venv/bin/python benchmarks/burst.py --postgres           # the same on a fresh PG database
    .venv/bin/python benchmarks/burst.py --deliveries 40 --lead 1   # a quick look

Lag is measured from the due time to the request's arrival at the fake (the fakes run in a
child process and stamp every request). CPU time and peak RSS are this process's own.
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from crosspost.adapter import Adapter, RenderContext
from crosspost.post import Post
from crosspost.queue import Queue
from crosspost.scheduler import Service
from crosspost.settings import Settings
from crosspost.targets import Targets, load_targets
from harness import (
    PG_SERVER,
    Arrival,
    FakePlatforms,
    database,
    fake_platforms,
    new_post,
    percentile,
    settings,
    stop_service,
    table,
    utc_now,
    verdict,
)

GOAL_P99 = 2.5  # seconds, for 1,000 deliveries at 150 ms on 2 cores
GOAL_RATIO = 5.0


@dataclass
class Run:
    name: str
    lags: list[float]
    expected: int
    wall: float  # seconds from the due time to the last arrival
    cpu: tuple[float, float]  # process CPU seconds over the run: user, system
    rss_mb: float | None
    errors: int

    def row(self) -> list[str]:
        n = len(self.lags)
        per_second = n / self.wall if self.wall > 0 else math.nan
        return [
            self.name,
            f"{n}/{self.expected}",
            f"{percentile(self.lags, 50) * 1000:.0f}",
            f"{percentile(self.lags, 99) * 1000:.0f}",
            f"{max(self.lags, default=math.nan) * 1000:.0f}",
            f"{per_second:.0f}",
            f"{sum(self.cpu) * 1000 / max(n, 1):.2f} ({self.cpu[1] * 1000 / max(n, 1):.2f})",
            "-" if self.rss_mb is None else f"{self.rss_mb:.0f}",
            str(self.errors),
        ]


HEADER = [
    "run",
    "delivered",
    "p50 ms",
    "p99 ms",
    "max ms",
    "deliv/s",
    "CPU ms/deliv (sys)",
    "peak RSS MB",
    "errors",
]


def cpu_times(since: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """This process's user and system CPU seconds (all threads), minus `since`."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime - since[0], used.ru_stime - since[1]


def lags_of(arrivals: list[Arrival], due: datetime) -> tuple[list[float], int]:
    """Lags of the first request of each delivery, and how many requests were repeats."""
    first: dict[tuple[str, int, int], float] = {}
    for a in arrivals:
        key = (a.server, a.account, a.marker)
        first[key] = min(a.at, first.get(key, a.at))
    return [at - due.timestamp() for at in first.values()], len(arrivals) - len(first)


def wait_for_arrivals(platforms: FakePlatforms, count: int, deadline: float) -> list[Arrival]:
    while True:
        arrivals = platforms.arrivals()
        if len(arrivals) >= count or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.1)


def run_crosspost(
    platforms: FakePlatforms, url: str, posts: int, lead: float, config: Settings, timeout: float
) -> Run:
    queue = Queue(url)
    queue.upgrade()
    names = platforms.target_names
    tag = uuid.uuid4().hex[:6]
    due = utc_now() + timedelta(seconds=lead)
    queue.add_many([new_post(i, names, due, tag) for i in range(posts)], utc_now())
    expected = posts * len(names)
    service = Service(config, queue, load_targets(platforms.targets_file), {})
    cpu = cpu_times()
    service.start()
    try:
        arrivals = wait_for_arrivals(platforms, expected, time.monotonic() + lead + timeout)
        # The last replies are still on their way back; count their outcomes too.
        finish_by = time.monotonic() + 30
        while sum(service.outcomes.values()) < len(arrivals) and time.monotonic() < finish_by:
            time.sleep(0.02)
        cpu = cpu_times(cpu)
    finally:
        stop_service(service, 10)
        queue.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lags, repeats = lags_of(arrivals, due)
    failed = sum(n for state, n in service.outcomes.items() if state != "published")
    return Run("crosspost", lags, expected, max(lags, default=0.0), cpu, rss, failed + repeats)


def run_baseline(
    platforms: FakePlatforms, posts: int, lead: float, config: Settings, timeout: float
) -> Run:
    """One APScheduler DateTrigger job per delivery, default 10-thread pool, calling the same
    adapters. `misfire_grace_time=None`: APScheduler's default (1 s) would silently drop
    every job that waited in the pool for more than a second."""
    targets: Targets = load_targets(platforms.targets_file)
    adapters: dict[str, Adapter] = {n: targets.adapter(n, config) for n in targets}
    names = platforms.target_names
    due = utc_now() + timedelta(seconds=lead)
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def publish(target: str, post_id: str, body: dict[str, object]) -> None:
        try:
            post = Post.model_validate(body, context={"stored": True})
            adapter = adapters[target]
            rendition = adapter.render(post, post_id, RenderContext())
            adapter.publish(rendition, f"cp_{uuid.uuid4().hex}")
        except Exception as exc:
            errors.append(exc)
        finally:
            done.release()

    scheduler = BackgroundScheduler(timezone="UTC")  # executor: ThreadPoolExecutor(10)
    # Other markers than crosspost's run: the fake Graph refuses a repeated message.
    for i in range(posts, 2 * posts):
        body = new_post(i, names, due).body
        for target in names:
            scheduler.add_job(
                publish,
                DateTrigger(due),
                args=(target, f"bench-{i}", body),
                misfire_grace_time=None,
            )
    expected = posts * len(names)
    cpu = cpu_times()
    scheduler.start()
    try:
        arrivals = wait_for_arrivals(platforms, expected, time.monotonic() + lead + timeout)
        for _ in range(expected):
            if not done.acquire(timeout=30):
                break
        cpu = cpu_times(cpu)
    finally:
        scheduler.shutdown(wait=False)
    for kind in sorted({f"{type(e).__name__}: {e}" for e in errors})[:5]:
        print(f"  baseline error: {kind}")
    lags, repeats = lags_of(arrivals, due)
    return Run(
        "APScheduler baseline",
        lags,
        expected,
        max(lags, default=0.0),
        cpu,
        None,
        len(errors) + repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000, help="rounded up to whole posts")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds per fake reply")
    parser.add_argument("--accounts", type=int, default=2, help="Mastodon accounts (targets)")
    parser.add_argument("--workers", type=int, default=128, help="CROSSPOST_WORKERS")
    parser.add_argument("--concurrency", type=int, default=64, help="each target's concurrency")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds from start to due")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after due")
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database")
    parser.add_argument("--pg-server", default=PG_SERVER)
    parser.add_argument("--database-url", help="use this (existing) database instead")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="crosspost-burst-") as tmp:
        directory = Path(tmp)
        with fake_platforms(directory, args.latency, args.accounts, args.concurrency) as fakes:
            per_post = len(fakes.target_names)
            posts = math.ceil(args.deliveries / per_post)
            kind = "postgresql" if args.postgres else "sqlite"
            with database(kind, directory, args.pg_server) as url:
                url = args.database_url or url
                config = settings(url, args.workers)
                print(
                    f"burst: {posts} posts x {per_post} targets = {posts * per_post} deliveries"
                    f" due at once; fake latency {args.latency * 1000:.0f} ms;"
                    f" CROSSPOST_WORKERS={args.workers}; target concurrency {args.concurrency};"
                    f" queue {url.split(':', 1)[0]}; fakes in pid {fakes.pid}"
                )
                ours = run_crosspost(fakes, url, posts, args.lead, config, args.timeout)
            runs = [ours]
            if not args.no_baseline:
                fakes.reset()
                runs.append(run_baseline(fakes, posts, args.lead, config, args.timeout))
    print(table([r.row() for r in runs], HEADER))
    p99 = percentile(ours.lags, 99)
    complete = len(ours.lags) == ours.expected and ours.errors == 0
    met = complete and p99 <= GOAL_P99
    print(f"crosspost p99 lag {p99:.3f} s (goal <= {GOAL_P99} s): {verdict(met)}")
    if len(runs) > 1:
        ratio = percentile(runs[1].lags, 99) / p99 if p99 > 0 else math.inf
        print(
            f"baseline p99 / crosspost p99 = {ratio:.1f}x (goal >= {GOAL_RATIO:.0f}x):"
            f" {verdict(complete and ratio >= GOAL_RATIO)}"
        )


if __name__ == "__main__":
    main()
