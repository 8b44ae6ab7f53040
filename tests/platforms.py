"""Fake Mastodon, Graph and website servers on 127.0.0.1, and a targets file pointing at them.

Used by the service, worker and end-to-end tests (and by `benchmarks/`), so every test that
publishes talks real HTTP to fakes that enforce the platforms' rules.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from crosspost.fakes.facebook import FakeGraph
from crosspost.fakes.mastodon import FakeMastodon
from crosspost.fakes.server import RunningFake
from crosspost.fakes.website import FakeWebsite

MASTODON_TOKENS = {"mastodon-en": "token-en-0123456789", "mastodon-es": "token-es-0123456789"}
FACEBOOK_TOKEN = "fb-page-token-0123456789"
PAGE_ID = "123456789"

FAST_RETRY = "    retry: {initial: 0.05, cap: 0.3, jitter: 0.01, max_attempts: 6}\n"


@dataclass
class Platforms:
    mastodon: FakeMastodon
    graph: FakeGraph
    website: FakeWebsite
    urls: dict[str, str]
    secret: str
    targets_file: Path

    def env(self) -> dict[str, str]:
        return {
            "CROSSPOST_TARGETS": str(self.targets_file),
            "TEST_MASTODON_EN_TOKEN": MASTODON_TOKENS["mastodon-en"],
            "TEST_MASTODON_ES_TOKEN": MASTODON_TOKENS["mastodon-es"],
            "TEST_FACEBOOK_TOKEN": FACEBOOK_TOKEN,
            "TEST_WEBSITE_SECRET": self.secret,
        }

    def set_latency(self, seconds: float) -> None:
        for fake in (self.mastodon, self.graph, self.website):
            fake.latency = seconds


def targets_yaml(urls: dict[str, str], extra: str = FAST_RETRY, concurrency: int = 8) -> str:
    common = f"{extra}    concurrency: {concurrency}\n"
    return (
        "targets:\n"
        "  facebook-page:\n"
        "    platform: facebook\n"
        f"    base_url: {urls['graph']}\n"
        f'    page_id: "{PAGE_ID}"\n'
        "    token_env: TEST_FACEBOOK_TOKEN\n"
        "    languages: [en]\n"
        "    timezone: Europe/Brussels\n" + common + "  mastodon-en:\n"
        "    platform: mastodon\n"
        f"    base_url: {urls['mastodon']}\n"
        "    token_env: TEST_MASTODON_EN_TOKEN\n"
        "    languages: [en]\n"
        "    timezone: Europe/Brussels\n" + common + "  mastodon-es:\n"
        "    platform: mastodon\n"
        f"    base_url: {urls['mastodon']}\n"
        "    token_env: TEST_MASTODON_ES_TOKEN\n"
        "    languages: [es]\n"
        "    timezone: America/Santiago\n" + common + "  website:\n"
        "    platform: webhook\n"
        f"    url: {urls['website']}/crosspost/hook\n"
        "    secret_env: TEST_WEBSITE_SECRET\n"
        "    languages: [en, es]\n"
        "    timezone: Europe/Brussels\n" + common
    )


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@contextmanager
def running_platforms(directory: Path, **fake_options: int) -> Iterator[Platforms]:
    secret = new_secret()
    mastodon = FakeMastodon(tokens=MASTODON_TOKENS.values(), **fake_options)
    graph = FakeGraph(page_id=PAGE_ID, token=FACEBOOK_TOKEN)
    website = FakeWebsite(secret)
    with ExitStack() as stack:
        urls = {
            "mastodon": stack.enter_context(RunningFake(mastodon)).url,
            "graph": stack.enter_context(RunningFake(graph)).url,
            "website": stack.enter_context(RunningFake(website)).url,
        }
        targets_file = directory / "targets.yaml"
        targets_file.write_text(targets_yaml(urls))
        yield Platforms(mastodon, graph, website, urls, secret, targets_file)
