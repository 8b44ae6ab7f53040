"""Idle precision: single posts, each added while the service is idle, due a moment later.

    .venv/bin/python benchmarks/idle_precision.py                 # 20 posts, SQLite
    .venv/bin/python benchmarks/idle_precision.py --postgres      # PG: the add NOTIFYs the service
    .venv/bin/python benchmarks/idle_precision.py --no-wake       # nobody calls wake(): the
                                                                  # safety poll (SQLite) finds it

Each post is due 0.5-1 s after it is added; lag is from the due time to the request's arrival
at the fake. By default the adding code calls `service.wake()`, as the in-process API does
after it queues a post.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from crosspost.queue import Queue
from crosspost.scheduler import Service
from crosspost.targets import load_targets
from harness import (
    PG_SERVER,
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

GOAL_P99 = 0.100  # seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.15, help="seconds per fake reply")
    parser.add_argument("--min-lead", type=float, default=0.5, help="seconds from add to due")
    parser.add_argument("--max-lead", type=float, default=1.0)
    parser.add_argument("--target", default="mastodon-1")
    parser.add_argument("--no-wake", action="store_true", help="do not call service.wake()")
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database")
    parser.add_argument("--pg-server", default=PG_SERVER)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    chance = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="crosspost-idle-") as tmp:
        directory = Path(tmp)
        kind = "postgresql" if args.postgres else "sqlite"
        with (
            fake_platforms(directory, args.latency, accounts=1, concurrency=4) as fakes,
            database(kind, directory, args.pg_server) as url,
        ):
            queue = Queue(url)
            queue.upgrade()
            service = Service(settings(url, 8), queue, load_targets(fakes.targets_file), {})
            service.start()
            print(
                f"idle precision: {args.posts} posts to {args.target}, each added while idle and"
                f" due {args.min_lead}-{args.max_lead} s later; queue {kind};"
                f" {'no wake() (poll/NOTIFY only)' if args.no_wake else 'wake() after each add'}"
            )
            lags: list[float] = []
            run = uuid.uuid4().hex[:6]
            try:
                for i in range(args.posts):
                    due = utc_now() + timedelta(
                        seconds=chance.uniform(args.min_lead, args.max_lead)
                    )
                    queue.add(new_post(i, [args.target], due, run), utc_now())
                    if not args.no_wake:
                        service.wake()
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        found = [a for a in fakes.arrivals() if a.marker == i]
                        if found and sum(service.outcomes.values()) > i:
                            lags.append(min(a.at for a in found) - due.timestamp())
                            break
                        time.sleep(0.05)
                    time.sleep(chance.uniform(0.0, 0.3))  # idle again before the next one
            finally:
                stop_service(service, 5)
                queue.close()

    rows = [
        [
            f"{len(lags)}/{args.posts}",
            f"{percentile(lags, 50) * 1000:.1f}",
            f"{percentile(lags, 99) * 1000:.1f}",
            f"{max(lags, default=float('nan')) * 1000:.1f}",
            f"{min(lags, default=float('nan')) * 1000:.1f}",
        ]
    ]
    print(table(rows, ["delivered", "p50 ms", "p99 ms", "max ms", "min ms"]))
    p99 = percentile(lags, 99)
    ok = len(lags) == args.posts and p99 <= GOAL_P99
    print(f"p99 lag {p99 * 1000:.1f} ms (goal <= {GOAL_P99 * 1000:.0f} ms): {verdict(ok)}")


if __name__ == "__main__":
    main()
