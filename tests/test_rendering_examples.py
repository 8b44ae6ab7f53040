"""Renditions of the shipped example posts for the shipped targets: language per target,
hashtags once, links intact, URLs counted as 23, emoji and Cyrillic as graphemes, alt text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from crosspost.adapter import Rendition
from crosspost.campaigns import load_campaigns
from crosspost.intake import Intake
from crosspost.postfile import read_post_file
from crosspost.rendering import grapheme_count
from crosspost.settings import Settings
from crosspost.targets import load_targets
from crosspost_adapters.mastodon import countable_length

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "config" / "examples"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def renditions(name: str) -> dict[str, Rendition]:
    targets = load_targets(REPO / "config" / "targets.yaml")
    intake = Intake(targets, Settings(), load_campaigns(REPO / "config" / "campaigns"))
    checked = intake.check(read_post_file(EXAMPLES / name), name, NOW)
    assert checked.problems == []
    return dict(checked.renditions)


def test_every_example_renders_without_problems() -> None:
    names = [p.name for p in EXAMPLES.iterdir() if p.is_file()]
    assert len(names) >= 4
    for name in names:
        assert renditions(name)


def test_each_target_gets_its_language() -> None:
    r = renditions("iwd-2027.yaml")
    assert r["mastodon-es"].language == "es"
    assert r["mastodon-es"].options["language"] == "es"
    assert r["mastodon-es"].text.startswith("En el Día Internacional de la Mujer 2027")
    assert r["mastodon-en"].language == "en"
    assert r["facebook-page"].text.startswith("On International Women's Day 2027")
    assert "Nuestro llamamiento para el 8 de marzo: https://example.org/iwd" in (
        r["mastodon-es"].text
    )


def test_hashtags_once_even_when_the_text_has_them() -> None:
    r = renditions("stand-with-ukraine.yaml")
    for rendition in r.values():
        assert rendition.text.count("#StandWithUkraine") == 1
        assert rendition.text.count("#PeaceandSecurity") == 1
    iwd = renditions("iwd-2027.yaml")
    assert iwd["mastodon-es"].text.endswith("#IWD #EqualPay #8M")
    assert "#8M" not in iwd["mastodon-en"].text
    podcast = renditions("podcast-peace-and-security-3.md")
    assert podcast["mastodon-en"].text.count("#PeaceandSecurity") == 1


def test_podcast_links_are_intact_on_every_target() -> None:
    r = renditions("podcast-peace-and-security-3.md")
    for rendition in r.values():
        assert "Listen to it on our website: https://example.org/podcasts/peace-and-security-3" in (
            rendition.text
        )
        assert "or on Spotify: https://open.spotify.com/episode/4rOoJ6Egrf8K2IrywzwOMk" in (
            rendition.text
        )
    assert r["facebook-page"].link == "https://example.org/podcasts/peace-and-security-3"


def test_mastodon_counts_urls_as_23_and_graphemes_once() -> None:
    r = renditions("podcast-peace-and-security-3.md")["mastodon-en"]
    spotify = "https://open.spotify.com/episode/4rOoJ6Egrf8K2IrywzwOMk"
    assert len(spotify) > 23
    assert r.length == countable_length(r.text)
    assert r.length < grapheme_count(r.text)  # the long URLs count as 23 each
    assert countable_length("🇺🇦 " + spotify) == 1 + 1 + 23
    assert countable_length("👩🏽‍💻") == 1
    assert countable_length("СД Платформа") == 12
    partner = renditions("partner-sd-platform.json")["mastodon-en"]
    assert "СД Платформа" in partner.text
    assert partner.length == countable_length(partner.text)


def test_alt_text_in_the_target_language() -> None:
    r = renditions("stand-with-ukraine.yaml")
    assert r["mastodon-es"].media[0].alt.startswith("La bandera de Ucrania")
    assert r["mastodon-en"].media[0].alt.startswith("The flag of Ukraine")
    assert r["facebook-page"].media[0].mime_type == "image/png"


@pytest.mark.parametrize("name", ["iwd-2027.yaml", "stand-with-ukraine.yaml"])
def test_website_payload_carries_every_language_in_full(name: str) -> None:
    website = renditions(name)["website"]
    languages = website.options["payload"]["data"]["languages"]
    assert set(languages) == {"en", "es"}
    assert all("…" not in variant["text"] for variant in languages.values())
