"""Shared pieces of the benchmarks: fake platforms in their own process, databases, posts, figures.

The fakes (Mastodon, Graph API, website) run in a child process (`python harness.py`), so the
CPU time and RSS a benchmark reports are the dispatcher's own. The child prints one JSON line
with its addresses, then answers commands on stdin, one per line:

    arrivals   → one JSON line: every publish request received so far (server, account, marker,
                 arrival time as `time.time()`)
    reset      → forget the requests received so far
    (EOF)      → stop

A benchmark post carries a marker `bench-<n>` in its text, so each request names its post.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crosspost.delivery import NewDelivery, NewPost
from crosspost.fakes.facebook import FakeGraph
from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import FakePlatform, RunningFake
from crosspost.fakes.website import FakeWebsite
from crosspost.post import Post
from crosspost.scheduler import Service
from crosspost.settings import Settings

PAGE_ID = "123456789"
FACEBOOK_TOKEN = "bench-fb-page-token-0123456789"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
_MARKER = re.compile(rb"bench-(\d+)")


def mastodon_token(account: int) -> str:
    return f"bench-mastodon-token-{account:04d}"


# -- the child process: fakes ---------------------------------------------------------------


def _records(name: str, fake: FakePlatform, tokens: dict[str, int]) -> list[dict[str, Any]]:
    with fake.lock:
        requests = list(fake.requests)
    found = []
    for request in requests:
        marker = _MARKER.search(request.body) if request.method == "POST" else None
        if marker is None:
            continue
        token = request.headers.get("authorization", "").partition(" ")[2]
        found.append(
            {
                "server": name,
                "account": tokens.get(token, 0),
                "marker": int(marker.group(1)),
                "at": request.at,
            }
        )
    return found


def serve(latency: float, accounts: int, secret: str) -> None:
    tokens = {mastodon_token(i): i for i in range(1, accounts + 1)}
    fakes: dict[str, FakePlatform] = {
        # The real per-account limit (300 per 5 minutes) would throttle a 1,000-post burst
        # after 300; the benchmark measures the dispatcher, not the rate limiter.
        "mastodon": FakeMastodon(tokens=tokens, requests_per_window=1_000_000),
        "graph": FakeGraph(page_id=PAGE_ID, token=FACEBOOK_TOKEN),
        "website": FakeWebsite(secret),
    }
    with ExitStack() as stack:
        urls = {}
        for name, fake in fakes.items():
            fake.latency = latency
            urls[name] = stack.enter_context(RunningFake(fake)).url
        print(json.dumps(urls), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "arrivals":
                found = [r for n, f in fakes.items() for r in _records(n, f, tokens)]
                print(json.dumps(found), flush=True)
            elif command == "reset":
                for fake in fakes.values():
                    with fake.lock:
                        fake.requests.clear()
                print("[]", flush=True)


# -- the parent: talking to the child ----------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    server: str
    account: int
    marker: int
    at: float  # time.time() at the fake


class FakePlatforms:
    """The fakes' child process, and a targets file pointing at them."""

    def __init__(self, directory: Path, latency: float, accounts: int, concurrency: int) -> None:
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.accounts = accounts
        self._child = subprocess.Popen(
            [sys.executable, __file__, "--latency", str(latency), "--accounts", str(accounts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "BENCH_WEBHOOK_SECRET": self.secret},
            text=True,
        )
        self._lock = threading.Lock()
        self.urls: dict[str, str] = json.loads(self._readline())
        self.targets_file = directory / "targets.yaml"
        self.targets_file.write_text(self._targets_yaml(concurrency))

    @property
    def pid(self) -> int:
        return self._child.pid

    def _readline(self) -> str:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError("the fake platforms' process stopped")
        return line

    def _ask(self, command: str) -> Any:
        assert self._child.stdin is not None
        with self._lock:
            self._child.stdin.write(command + "\n")
            self._child.stdin.flush()
            return json.loads(self._readline())

    def arrivals(self) -> list[Arrival]:
        return [Arrival(**r) for r in self._ask("arrivals")]

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        try:
            self._child.wait(10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()

    @property
    def target_names(self) -> list[str]:
        return ["facebook-page", *self.mastodon_targets, "website"]

    @property
    def mastodon_targets(self) -> list[str]:
        return [f"mastodon-{i}" for i in range(1, self.accounts + 1)]

    def secrets(self) -> dict[str, str]:
        """Environment variables the targets file names."""
        found = {"BENCH_FACEBOOK_TOKEN": FACEBOOK_TOKEN, "BENCH_WEBHOOK_SECRET": self.secret}
        for i in range(1, self.accounts + 1):
            found[f"BENCH_MASTODON_TOKEN_{i}"] = mastodon_token(i)
        return found

    def _targets_yaml(self, concurrency: int) -> str:
        common = f"    timezone: UTC\n    concurrency: {concurrency}\n"
        text = (
            "targets:\n"
            "  facebook-page:\n"
            "    platform: facebook\n"
            f"    base_url: {self.urls['graph']}\n"
            f'    page_id: "{PAGE_ID}"\n'
            "    token_env: BENCH_FACEBOOK_TOKEN\n"
            "    languages: [en]\n" + common
        )
        for i in range(1, self.accounts + 1):
            text += (
                f"  mastodon-{i}:\n"
                "    platform: mastodon\n"
                f"    base_url: {self.urls['mastodon']}\n"
                f"    token_env: BENCH_MASTODON_TOKEN_{i}\n"
                "    languages: [en]\n"
                "    max_characters: 500\n" + common
            )
        return text + (
            "  website:\n"
            "    platform: webhook\n"
            f"    url: {self.urls['website']}/crosspost/hook\n"
            "    secret_env: BENCH_WEBHOOK_SECRET\n"
            "    languages: [en]\n" + common
        )


@contextmanager
def fake_platforms(
    directory: Path, latency: float, accounts: int = 2, concurrency: int = 64
) -> Iterator[FakePlatforms]:
    platforms = FakePlatforms(directory, latency, accounts, concurrency)
    saved = {name: os.environ.get(name) for name in platforms.secrets()}
    os.environ.update(platforms.secrets())
    try:
        yield platforms
    finally:
        platforms.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- databases ------------------------------------------------------------------------------


@contextmanager
def database(kind: str, directory: Path, pg_server: str = PG_SERVER) -> Iterator[str]:
    """A fresh queue database: a SQLite file in `directory`, or a uniquely named PostgreSQL
    database on `pg_server`, dropped at the end."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'queue.db'}"
        return
    import psycopg

    name = f"crosspost_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_server}/{name}"
    finally:
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop_service(service: Service, grace: float) -> None:
    """Stop the service, and give a look at the queue already under way time to end before the
    database goes (`Service.stop` does not wait for the scheduler's threads)."""
    service.stop(grace=grace)
    time.sleep(0.5)


def settings(database_url: str, workers: int) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        env_file=Path("/nonexistent/.env"),
        database_url=database_url,
        workers=workers,
        lease_seconds=120,
    )


# -- posts ----------------------------------------------------------------------------------


def post_body(post_id: str, marker: int, targets: Sequence[str], at: datetime) -> dict[str, Any]:
    """A realistic post (text, hashtags, a link) whose text carries `bench-<marker>`."""
    return Post.model_validate(
        {
            "id": post_id,
            "publish_at": at.isoformat(),
            "text": {
                "en": f"Campaign update bench-{marker}: every person has the right to life,"
                " liberty and security of person. Read more and share.",
            },
            "hashtags": ["HumanRights", "StandUp4HumanRights"],
            "links": [{"url": f"https://example.org/campaign/{marker}", "title": "Read more"}],
            "targets": list(targets),
        }
    ).canonical_json()


def new_post(marker: int, targets: Sequence[str], at: datetime, run: str = "") -> NewPost:
    """A post due at `at` on every target; `run` keeps ids unique across runs on one database."""
    post_id = f"bench-{marker}-{run}" if run else f"bench-{marker}"
    return NewPost(
        id=post_id,
        source="benchmark",
        body=post_body(post_id, marker, targets, at),
        campaign=None,
        deliveries=tuple(NewDelivery(t, at) for t in targets),
    )


# -- figures --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def utc_now() -> datetime:
    return datetime.now(UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake platforms for the benchmarks.")
    parser.add_argument("--latency", type=float, default=0.15)
    parser.add_argument("--accounts", type=int, default=2)
    args = parser.parse_args()
    serve(args.latency, args.accounts, os.environ["BENCH_WEBHOOK_SECRET"])


if __name__ == "__main__":
    main()
