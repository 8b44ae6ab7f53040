"""End to end: `crosspost run` as a process, a post through the HTTP API, published to the fake
Mastodon and Graph servers and to the service's own mirror, shown on /mirror and in both feeds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import feedparser
import pytest
import requests

from platforms import Platforms, running_platforms, targets_yaml

REPO = Path(__file__).resolve().parents[1]
TOKEN = "e2e-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    platforms: Platforms
    log: Path

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_service(
    directory: Path, platforms: Platforms, *, token: str | None = TOKEN, secret: bool = True
) -> Service:
    port = free_port()
    targets = directory / "targets.yaml"
    targets.write_text(
        targets_yaml(platforms.urls).replace(
            f"{platforms.urls['website']}/crosspost/hook", f"http://127.0.0.1:{port}/mirror/hook"
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CROSSPOST_")},
        **platforms.env(),
        "CROSSPOST_TARGETS": str(targets),
        "CROSSPOST_DATA_DIR": str(directory / "data"),
        "CROSSPOST_CAMPAIGNS_DIR": str(REPO / "config/campaigns"),
        "CROSSPOST_API_PORT": str(port),
        "CROSSPOST_ENV_FILE": str(directory / "no.env"),
        "CROSSPOST_LEASE_SECONDS": "10",
    }
    if token:
        env["CROSSPOST_API_TOKEN"] = token
    if not secret:
        env.pop("TEST_WEBSITE_SECRET")
    log = directory / "service.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "crosspost.cli", "run"],
        cwd=directory,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"crosspost run exited:\n{log.read_text()}")
        try:
            return requests.get(url + "/health", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, "the service to answer /health")
    return Service(url, process, platforms, log)


def stop_service(service: Service) -> None:
    service.process.terminate()
    try:
        service.process.wait(20)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait(5)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_platforms(tmp_path) as platforms:
        running = start_service(tmp_path, platforms)
        try:
            yield running
        finally:
            stop_service(running)


def iwd_post() -> dict[str, Any]:
    """The IWD example, to go out now rather than on 8 March, with its banner uploaded."""
    import yaml

    data = yaml.safe_load((REPO / "config/examples/iwd-2027.yaml").read_text())
    data["text"] = {lang: text.replace("{year}", "2027") for lang, text in data["text"].items()}
    data.pop("campaign")
    data["publish_at"] = "now"
    data["media"][0]["path"] = "iwd-banner.png"
    return dict(data)


def test_a_post_through_the_api_reaches_every_platform_and_the_mirror(service: Service) -> None:
    banner = (REPO / "config/examples/media/iwd-banner.png").read_bytes()
    created = service.api(
        "POST",
        "/api/posts",
        data={"post": json.dumps(iwd_post())},
        files={"media": ("iwd-banner.png", banner, "image/png")},
    )
    assert created.status_code == 201, created.text

    def published() -> bool:
        post = service.api("GET", "/api/posts/iwd-call").json()
        return all(d["state"] == "published" for d in post["deliveries"])

    wait_for(published, "every delivery to be published")
    post = service.api("GET", "/api/posts/iwd-call").json()
    assert {d["target"] for d in post["deliveries"]} == {
        "facebook-page",
        "mastodon-en",
        "mastodon-es",
        "website",
    }
    website = next(d for d in post["deliveries"] if d["target"] == "website")
    assert website["remote_url"] == f"{service.url}/mirror/posts/iwd-call"

    statuses = service.platforms.mastodon.statuses
    assert sorted(s.language for s in statuses) == ["en", "es"]
    assert any("#8M" in s.text for s in statuses if s.language == "es")
    graph = service.platforms.graph
    (page_post,) = graph.posts.values()
    assert "equal pay" in page_post.message
    assert [p.alt for p in graph.photos.values()] == [
        "A purple banner for International Women's Day"
    ]

    page = requests.get(service.url + "/mirror", timeout=5).text
    assert "Day 2027 we call for an end to gender violence" in page
    assert 'href="/mirror/tags/iwd"' in page
    assert 'alt="A purple banner for International Women&#39;s Day"' in page
    assert "Día Internacional de la Mujer 2027" in page
    # The Facebook and Mastodon copies are linked once they are published.
    wait_for(
        lambda: (
            "mastodon-es" in requests.get(service.url + "/mirror/posts/iwd-call", timeout=5).text
        ),
        "the copies to be linked",
    )
    image = page.split('<img src="', 1)[1].split('"', 1)[0]
    assert requests.get(service.url + image, timeout=5).content == banner

    feed = requests.get(service.url + "/mirror/feed.json", timeout=5).json()
    assert feed["items"][0]["url"] == f"{service.url}/mirror/posts/iwd-call"
    assert "equal pay" in feed["items"][0]["content_text"]
    atom = feedparser.parse(requests.get(service.url + "/mirror/feed.atom", timeout=5).content)
    assert not atom.bozo
    assert atom.entries[0].link == f"{service.url}/mirror/posts/iwd-call"

    metrics = requests.get(service.url + "/metrics", timeout=5).text
    assert 'crosspost_published{platform="mastodon"} 2.0' in metrics
    assert "crosspost_publish_lag_seconds_count" in metrics
    assert requests.get(service.url + "/health", timeout=5).json()["scheduler"] == "alive"
    assert TOKEN not in service.log.read_text()
    assert service.platforms.secret not in service.log.read_text()


def test_no_token_means_loopback_only(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CROSSPOST_")},
        "CROSSPOST_API_HOST": "0.0.0.0",
        "CROSSPOST_DATA_DIR": str(tmp_path / "data"),
        "CROSSPOST_TARGETS": str(REPO / "config/targets.yaml"),
        "CROSSPOST_CAMPAIGNS_DIR": str(REPO / "config/campaigns"),
        "CROSSPOST_ENV_FILE": str(tmp_path / "no.env"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "crosspost.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "CROSSPOST_API_TOKEN" in done.stderr
