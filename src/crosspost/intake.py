"""From a canonical post to queued deliveries: targets, schedule and every rendition checked.

`crosspost add`, `crosspost preview` and the HTTP API all go through `Intake.check`, so a post is
accepted or refused by the same rules wherever it comes from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from crosspost.adapter import Adapter, Rendition
from crosspost.campaigns import Campaign, fill_year, schedule_campaign
from crosspost.delivery import NewDelivery, NewPost
from crosspost.errors import InputError, Problem
from crosspost.post import Post
from crosspost.settings import Settings
from crosspost.targets import Targets

# A publish time this far in the past is still taken as "now" (clock skew, slow typing).
PAST_TOLERANCE = timedelta(minutes=1)


@dataclass(frozen=True)
class Checked:
    """A post with its schedule and renditions; `problems` empty means it may be queued."""

    post: Post
    post_id: str
    source: str
    schedule: Mapping[str, datetime]
    renditions: Mapping[str, Rendition]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def new_post(self) -> NewPost:
        if self.problems:
            raise InputError(self.problems)
        return NewPost(
            id=self.post_id,
            source=self.source,
            body=self.post.canonical_json(),
            campaign=self.post.campaign,
            deliveries=tuple(NewDelivery(t, at) for t, at in self.schedule.items()),
        )


def derived_post_id(post: Post, source: str) -> str:
    """An id for a post file without one: its name and a digest of its content, so adding the
    same file twice queues it once."""
    digest = hashlib.sha256(json.dumps(post.canonical_json(), sort_keys=True).encode()).hexdigest()[
        :10
    ]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in source.rsplit(".", 1)[0])
    return f"{stem.strip('-')[:80] or 'post'}-{digest}"


def with_year(post: Post, year: int) -> Post:
    """The post with `{year}` filled in every text (campaign posts)."""
    return post.model_copy(
        update={
            "text": {lang: fill_year(text, year) for lang, text in post.text.items()},
            "overrides": {
                name: o.model_copy(
                    update={"text": {lang: fill_year(t, year) for lang, t in o.text.items()}}
                )
                for name, o in post.overrides.items()
            },
        }
    )


class Intake:
    """Checks posts against the configured targets and campaigns."""

    def __init__(
        self, targets: Targets, settings: Settings, campaigns: Mapping[str, Campaign]
    ) -> None:
        self.targets = targets
        self.settings = settings
        self.campaigns = campaigns
        self._adapters: dict[str, Adapter] = {}

    def adapter(self, target: str) -> Adapter:
        if target not in self._adapters:
            self._adapters[target] = self.targets.adapter(target, self.settings)
        return self._adapters[target]

    def check(self, post: Post, source: str, now: datetime) -> Checked:
        post_id = post.id or derived_post_id(post, source)
        problems: list[Problem] = []
        warnings: list[str] = []
        unknown = [t for t in post.targets if t not in self.targets]
        if unknown:
            problems.append(
                Problem(
                    source,
                    "targets",
                    f"unknown target {', '.join(map(repr, unknown))};"
                    f" configured: {', '.join(self.targets) or 'none'}",
                )
            )
        known = [t for t in post.targets if t in self.targets]
        schedule = self._schedule(post, source, known, now, problems)
        renditions: dict[str, Rendition] = {}
        for target in known:
            missing = self.targets.missing_secret(target, self.settings)
            if missing:
                warnings.append(
                    f"{target}: {missing} is not set; set it in the environment or .env"
                    " before `crosspost run` publishes to this target"
                )
            config = self.targets[target]
            rendered_post = post
            if post.campaign and target in schedule:
                rendered_post = with_year(post, schedule[target].astimezone(config.zone).year)
            rendition = self.adapter(target).render(rendered_post, post_id)
            renditions[target] = rendition
            for message in self.adapter(target).validate(rendition):
                problems.append(Problem(source, f"text.{rendition.language}", message))
        return Checked(post, post_id, source, schedule, renditions, problems, warnings)

    def _schedule(
        self,
        post: Post,
        source: str,
        targets: list[str],
        now: datetime,
        problems: list[Problem],
    ) -> dict[str, datetime]:
        if post.publish_now:
            return dict.fromkeys(targets, now)
        if post.publish_at is not None:
            if post.publish_at < now - PAST_TOLERANCE:
                problems.append(
                    Problem(
                        source,
                        "publish_at",
                        f"{post.publish_at.isoformat()} is already past (now is"
                        f" {now.isoformat(timespec='seconds')}); use `publish_at: now` to"
                        " publish at once",
                    )
                )
                return {}
            return dict.fromkeys(targets, post.publish_at)
        assert post.campaign is not None
        campaign = self.campaigns.get(post.campaign)
        if campaign is None:
            problems.append(
                Problem(
                    source,
                    "campaign",
                    f"unknown campaign {post.campaign!r}; known: "
                    + (", ".join(sorted(self.campaigns)) or "none"),
                )
            )
            return {}
        zones = [(t, self.targets[t].zone) for t in targets]
        return dict(schedule_campaign(campaign, zones, now))
