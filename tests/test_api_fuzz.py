"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): no input makes
a 5xx, and a rejected request leaves the queue and the mirror exactly as they were."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode

from crosspost.api import create_app
from crosspost.campaigns import load_campaigns
from crosspost.intake import Intake
from crosspost.mirror_store import MirrorStore
from crosspost.post import Post
from crosspost.queue import Queue
from crosspost.settings import Settings
from crosspost.targets import load_targets
from platforms import new_secret, targets_yaml

REPO = Path(__file__).resolve().parents[1]
TOKEN = "fuzz-token-0123456789"
EXAMPLES = 25


class Fuzzed:
    queue: Queue
    mirror: MirrorStore

    def snapshot(self) -> Any:
        posts = [(p, p.deliveries) for p in self.queue.list_posts(limit=10_000)]
        shown = [(p.id, p.data, p.updated_at) for p in self.mirror.page(limit=10_000)]
        return posts, shown


STATE = Fuzzed()


@pytest.fixture
def app_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TEST_WEBSITE_SECRET", new_secret())
    for name in ("TEST_MASTODON_EN_TOKEN", "TEST_MASTODON_ES_TOKEN", "TEST_FACEBOOK_TOKEN"):
        monkeypatch.setenv(name, "token-0123456789")
    targets_file = tmp_path / "targets.yaml"
    unused = "http://127.0.0.1:9"
    targets_file.write_text(targets_yaml({"graph": unused, "mastodon": unused, "website": unused}))
    config = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'fuzz.db'}",
        targets=targets_file,
        campaigns_dir=REPO / "config/campaigns",
        api_token=SecretStr(TOKEN),
        media_fetch=False,  # tests talk to 127.0.0.1 only: a generated URL is never fetched
    )
    queue = Queue(config.effective_database_url)
    queue.upgrade()
    targets = load_targets(targets_file)
    campaigns = load_campaigns(config.campaigns_dir)
    # Something to find, change, cancel and retry: one pending post.
    post = Post.model_validate(
        {
            "id": "seed",
            "text": {"en": "Seed #post"},
            "targets": ["website", "mastodon-en"],
            "publish_at": (datetime.now(UTC) + timedelta(days=9)).isoformat(),
        }
    )
    intake = Intake(targets, config, campaigns)
    queue.add(intake.check(post, "seed", datetime.now(UTC)).new_post(), datetime.now(UTC))
    STATE.queue = queue
    STATE.mirror = MirrorStore(queue.db)
    app = create_app(config, queue, targets, campaigns, mirror_secrets=[new_secret()])
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    queue.close()


def check(case: Any) -> None:
    before = STATE.snapshot()
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert STATE.snapshot() == before, f"{where} was refused but changed the queue"
    assert TOKEN not in response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error(app_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in app_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        fuzz = settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )(given(case=operation.as_strategy(mode))(check))
        try:
            fuzz()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
