"""The service end to end, in process: queue → scheduler → dispatcher → adapters → fakes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crosspost.campaigns import load_campaigns
from crosspost.delivery import DeliveryState
from crosspost.intake import Intake
from crosspost.postfile import read_post_file
from crosspost.queue import Queue
from crosspost.scheduler import Service
from crosspost.settings import Settings
from crosspost.targets import load_targets
from platforms import Platforms, running_platforms

REPO = Path(__file__).resolve().parents[1]
S = DeliveryState


@pytest.fixture
def platforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platforms]:
    with running_platforms(tmp_path) as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


def settings(**overrides: object) -> Settings:
    return Settings(lease_seconds=5, workers=16, **overrides)  # type: ignore[arg-type]


def queue_post(queue: Queue, intake: Intake, path: Path, now: datetime) -> str:
    checked = intake.check(read_post_file(path), path.name, now)
    queue.add(checked.new_post(), now)
    return checked.post_id


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_examples_are_published_once_to_every_target(
    queue: Queue, platforms: Platforms, tmp_path: Path
) -> None:
    config = settings()
    targets = load_targets(platforms.targets_file)
    campaigns = load_campaigns(REPO / "config/campaigns")
    intake = Intake(targets, config, campaigns)
    now = datetime.now(UTC)
    post = tmp_path / "post.yaml"
    post.write_text(
        (REPO / "config/examples/stand-with-ukraine.yaml")
        .read_text()
        .replace("publish_at: 2027-02-24T09:00:00+01:00", "publish_at: now")
        .replace("media/", str(REPO / "config/examples/media") + "/")
    )
    post_id = queue_post(queue, intake, post, now)
    service = Service(config, queue, targets, campaigns)
    service.start()
    try:
        wait_for(lambda: all(d.state == S.PUBLISHED for d in queue.get(post_id).deliveries))
    finally:
        service.stop(grace=5)
    record = queue.get(post_id)
    assert {d.target for d in record.deliveries} == {
        "facebook-page",
        "mastodon-en",
        "mastodon-es",
        "website",
    }
    assert all(d.remote_id for d in record.deliveries)
    languages = sorted(s.language for s in platforms.mastodon.statuses)
    assert languages == ["en", "es"]
    assert len(platforms.graph.posts) == 1
    assert len(platforms.website.events) == 1


def test_a_post_added_while_running_goes_out_at_its_time(
    queue: Queue, platforms: Platforms, tmp_path: Path
) -> None:
    config = settings()
    targets = load_targets(platforms.targets_file)
    intake = Intake(targets, config, {})
    service = Service(config, queue, targets, {})
    service.start()
    try:
        now = datetime.now(UTC)
        due = now + timedelta(seconds=1.5)
        post = tmp_path / "soon.yaml"
        post.write_text(
            f"text: {{en: 'Soon #PeaceandSecurity'}}\npublish_at: '{due.isoformat()}'\n"
            "targets: [mastodon-en]\n"
        )
        post_id = queue_post(queue, intake, post, now)
        service.wake()
        wait_for(lambda: queue.get(post_id).deliveries[0].state == S.PUBLISHED)
    finally:
        service.stop(grace=5)
    arrival = [r.at for r in platforms.mastodon.requests if r.path == "/api/v1/statuses"]
    assert len(arrival) == 1
    assert arrival[0] >= due.timestamp()  # never early
