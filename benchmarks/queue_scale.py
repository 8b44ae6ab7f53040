"""Queue scale: a million queued deliveries on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/queue_scale.py                     # 1,000,000 rows, both
    .venv/bin/python benchmarks/queue_scale.py --rows 10000        # a quick run
    .venv/bin/python benchmarks/queue_scale.py --backends sqlite

Figures per backend: the bulk enqueue rate through `Queue.add_many`; then, in a fresh process
that only opens the queue (so the bulk insert's memory does not count), the time of
`claim_due` (batches of 10 and of 1), of `next_due`, and that process's peak RSS.
The PostgreSQL database gets a unique name on 127.0.0.1:5432 and is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from crosspost.delivery import NewDelivery, NewPost
from crosspost.queue import Queue
from harness import PG_SERVER, database, new_post, percentile, table, utc_now, verdict

GOAL_POSTS_PER_SECOND = 5000
GOAL_CLAIM_MS = 5.0
GOAL_RSS_MB = 150.0
TARGETS = ("facebook-page", "mastodon-1", "mastodon-2", "website")


def posts_batch(
    start: int, count: int, now: datetime, due_now: int, per_post: int
) -> list[NewPost]:
    """Posts `start`..`start+count`: the first `due_now` posts are due already, the rest spread
    over the coming year. All share one body (the queue stores it as given)."""
    body = new_post(0, TARGETS[:per_post], now).body
    batch = []
    for i in range(start, start + count):
        at = now - timedelta(minutes=1) if i < due_now else now + timedelta(seconds=30 * i)
        batch.append(
            NewPost(
                id=f"scale-{i}",
                source="benchmark",
                body=body,
                campaign=None,
                deliveries=tuple(NewDelivery(t, at) for t in TARGETS[:per_post]),
            )
        )
    return batch


def fill(url: str, rows: int, per_post: int, batch_size: int, due_now: int) -> dict[str, Any]:
    queue = Queue(url)
    queue.upgrade()
    posts = rows // per_post
    now = utc_now()
    spent = 0.0
    for start in range(0, posts, batch_size):
        batch = posts_batch(start, min(batch_size, posts - start), now, due_now, per_post)
        began = time.perf_counter()
        queue.add_many(batch, now)
        spent += time.perf_counter() - began
    queue.close()
    return {"posts": posts, "deliveries": posts * per_post, "seconds": spent}


def settle(url: str) -> float:
    """On PostgreSQL, VACUUM ANALYZE after the bulk load (what autovacuum would soon do anyway,
    but then in the middle of the timed claims); returns the seconds it took."""
    if not url.startswith("postgresql"):
        return 0.0
    import psycopg

    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


def worker(url: str, claims: int) -> None:
    """In a fresh process: open the queue, claim, read the next due time; print JSON."""
    queue = Queue(url)
    timings: dict[str, list[float]] = {
        "claim 10": [],
        "claim 1": [],
        "next_due": [],
        "claim 10, 1 target skipped": [],
    }
    queue.next_due()  # connect once before timing
    for name, limit, skip in (
        ("claim 10", 10, ()),
        ("claim 1", 1, ()),
        ("claim 10, 1 target skipped", 10, ("website",)),
    ):
        for _ in range(claims):
            now = utc_now()
            began = time.perf_counter()
            got = queue.claim_due("bench-worker", now, now + timedelta(minutes=2), limit, skip)
            timings[name].append(time.perf_counter() - began)
            if len(got) != limit:
                raise SystemExit(f"{name}: claimed {len(got)}, expected {limit}")
    for _ in range(claims):
        began = time.perf_counter()
        queue.next_due()
        timings["next_due"].append(time.perf_counter() - began)
    queue.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"timings": timings, "rss_mb": rss}))


def measure(url: str, claims: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", url, "--claims", str(claims)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="deliveries to queue")
    parser.add_argument(
        "--per-post", type=int, default=4, choices=range(1, 5), help="deliveries (targets) per post"
    )
    parser.add_argument("--batch", type=int, default=1000, help="posts per add_many call")
    parser.add_argument("--claims", type=int, default=200, help="claims timed per kind")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-server", default=PG_SERVER)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.claims)
        return

    # Enough due deliveries for every timed claim, with room to spare.
    due_posts = (args.claims * 21 * 2) // args.per_post + 1
    print(
        f"queue scale: {args.rows:,} deliveries ({args.rows // args.per_post:,} posts x"
        f" {args.per_post} targets), add_many batches of {args.batch} posts;"
        f" {due_posts * args.per_post:,} due now, the rest over the coming"
        f" {args.rows // args.per_post * 30 / 86400:.0f} days; {args.claims} claims per kind"
    )
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for kind in args.backends.split(","):
        with (
            tempfile.TemporaryDirectory(prefix="crosspost-scale-") as tmp,
            database(kind, Path(tmp), args.pg_server) as url,
        ):
            filled = fill(url, args.rows, args.per_post, args.batch, due_posts)
            settled = settle(url)
            measured = measure(url, args.claims)
        rate = filled["posts"] / filled["seconds"]
        rows.append(
            [
                kind,
                "add_many",
                f"{rate:,.0f} posts/s",
                f"{filled['deliveries'] / filled['seconds']:,.0f} deliveries/s",
                f"{filled['seconds']:.1f} s total",
            ]
        )
        if settled:
            rows.append([kind, "VACUUM ANALYZE (untimed)", f"{settled:.1f} s", "", ""])
        for name, values in measured["timings"].items():
            rows.append(
                [
                    kind,
                    name,
                    f"p50 {percentile(values, 50) * 1000:.2f} ms",
                    f"p99 {percentile(values, 99) * 1000:.2f} ms",
                    f"max {max(values) * 1000:.2f} ms",
                ]
            )
        rows.append([kind, "worker peak RSS", f"{measured['rss_mb']:.0f} MB", "", ""])
        verdicts.append(
            f"{kind}: enqueue {rate:,.0f} posts/s (goal >= {GOAL_POSTS_PER_SECOND:,}):"
            f" {verdict(rate >= GOAL_POSTS_PER_SECOND)}"
        )
        for name in ("claim 10", "claim 1"):
            p99 = percentile(measured["timings"][name], 99) * 1000
            verdicts.append(
                f"{kind}: {name} p99 {p99:.2f} ms (goal <= {GOAL_CLAIM_MS:.0f} ms):"
                f" {verdict(p99 <= GOAL_CLAIM_MS)}"
            )
        verdicts.append(
            f"{kind}: worker RSS {measured['rss_mb']:.0f} MB (goal <="
            f" {GOAL_RSS_MB:.0f} MB): {verdict(measured['rss_mb'] <= GOAL_RSS_MB)}"
        )
    print(table(rows, ["queue", "figure", "", "", ""]))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
