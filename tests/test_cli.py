"""The command line against a real database: adding the examples, listing, showing, cancelling,
and at least twenty kinds of bad input, each naming file, field and problem, changing nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crosspost.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "config" / "examples"

TARGETS = """
targets:
  facebook-page:
    platform: facebook
    base_url: http://127.0.0.1:9
    page_id: "123456789"
    token_env: TEST_FACEBOOK_TOKEN
    languages: [en]
    timezone: Europe/Brussels
  mastodon-en:
    platform: mastodon
    base_url: http://127.0.0.1:9
    token_env: TEST_MASTODON_EN_TOKEN
    languages: [en]
    max_characters: 500
    timezone: Europe/Brussels
  mastodon-es:
    platform: mastodon
    base_url: http://127.0.0.1:9
    token_env: TEST_MASTODON_ES_TOKEN
    languages: [es]
    max_characters: 500
    timezone: America/Santiago
  website:
    platform: webhook
    url: http://127.0.0.1:9/hook
    secret_env: TEST_WEBSITE_SECRET
    languages: [en, es]
    timezone: Europe/Brussels
"""


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS)
    monkeypatch.setenv("CROSSPOST_DATABASE_URL", database_url)
    monkeypatch.setenv("CROSSPOST_TARGETS", str(targets))
    monkeypatch.setenv("CROSSPOST_CAMPAIGNS_DIR", str(REPO / "config" / "campaigns"))
    monkeypatch.setenv("TEST_MASTODON_EN_TOKEN", "secret-token-en")

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(list(argv), out=out)
        return code, out.getvalue()

    return run


def test_add_every_example_then_list_and_show(cli, capsys) -> None:
    files = sorted(str(p) for p in EXAMPLES.iterdir() if p.is_file())
    assert len(files) >= 4
    code, out = cli("add", *files)
    assert code == 0, capsys.readouterr().err
    assert "iwd-call: queued" in out
    # due times are shown in each target's own zone
    assert "CET" in out and "-03" in out
    err = capsys.readouterr().err
    assert "TEST_FACEBOOK_TOKEN is not set" in err and "secret-token-en" not in err
    code, out = cli("add", *files)
    assert code == 0 and "unchanged" in out and "queued" not in out

    code, out = cli("list", "--json")
    listed = json.loads(out)
    assert {p["id"] for p in listed} >= {"iwd-call", "stand-with-ukraine-2027"}
    code, out = cli("show", "iwd-call", "--json")
    shown = json.loads(out)
    assert [d["target"] for d in shown["deliveries"]] == [
        "facebook-page",
        "mastodon-en",
        "mastodon-es",
        "website",
    ]
    for delivery in shown["deliveries"]:
        assert {
            "target",
            "state",
            "due_at",
            "attempts",
            "remote_id",
            "remote_url",
            "last_error",
        } <= set(delivery)
        assert delivery["state"] == "scheduled"
    # 8 March 09:00 in Brussels and in Santiago are different instants
    due = {d["target"]: d["due_at"] for d in shown["deliveries"]}
    assert due["mastodon-en"].endswith("08:00:00+00:00")
    assert due["mastodon-es"].endswith("12:00:00+00:00")
    assert "secret-token-en" not in out


def test_show_cancel_and_unknown_id(cli, capsys) -> None:
    cli("add", str(EXAMPLES / "boric-chile.yaml"))
    code, out = cli("show", "boric-toma-de-mando")
    assert code == 0 and "mastodon-es: scheduled" in out
    code, out = cli("cancel", "boric-toma-de-mando")
    assert code == 0 and out.count("cancelled") == 2
    code, _ = cli("show", "nope")
    assert code == 1 and "no post with id 'nope'" in capsys.readouterr().err
    code, out = cli("list", "--state", "cancelled")
    assert "boric-toma-de-mando" in out


def test_usage_error_exits_2(cli, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("frobnicate")
    assert exit_info.value.code == 2


LONG_ES = "Palabra " * 70  # 560 characters

BAD_INPUTS = [
    (
        "unknown-target.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [twitter]\n",
        ["unknown-target.yaml: targets:", "unknown target 'twitter'"],
    ),
    (
        "bad-language.yaml",
        "text: {xx: hi}\npublish_at: now\ntargets: [website]\n",
        ["bad-language.yaml: text.xx", "not a valid language tag"],
    ),
    (
        "naive.yaml",
        "text: {en: hi}\npublish_at: 2030-03-08T09:00:00\ntargets: [website]\n",
        ["naive.yaml", "publish_at 2030-03-08T09:00:00 has no UTC offset"],
    ),
    (
        "missing-image.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\nmedia: [{path: nope.jpg}]\n",
        ["missing-image.yaml: media.0", "nope.jpg: no such file"],
    ),
    (
        "not-an-image.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\nmedia: [{path: fake.jpg}]\n",
        ["not-an-image.yaml: media.0", "fake.jpg: content is not an image or video"],
    ),
    (
        "spaced-hashtag.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\nhashtags: [Stand With Ukraine]\n",
        ["spaced-hashtag.yaml: hashtags.0", "'Stand With Ukraine' is not a hashtag"],
    ),
    ("empty.yaml", "", ["empty.yaml: the file is empty"]),
    (
        "malformed.yaml",
        "text: {en: hi\npublish_at: now\n",
        ["malformed.yaml: line", "not valid YAML"],
    ),
    (
        "past.yaml",
        "text: {en: hi}\npublish_at: 2020-01-01T09:00:00+01:00\ntargets: [website]\n",
        ["past.yaml: publish_at", "is already past"],
    ),
    ("malformed.json", '{"text": {"en": "hi"},', ["malformed.json: line 1", "not valid JSON"]),
    (
        "too-long.yaml",
        f"text: {{es: '{LONG_ES}'}}\npublish_at: now\ntargets: [mastodon-es]\n",
        ["too-long.yaml: text.es", "mastodon-es allows 500"],
    ),
    (
        "no-text.yaml",
        "text: {}\npublish_at: now\ntargets: [website]\n",
        ["no-text.yaml: text", "has no text"],
    ),
    (
        "blank-text.yaml",
        "text: {en: '   '}\npublish_at: now\ntargets: [website]\n",
        ["blank-text.yaml: text.en", "is empty"],
    ),
    (
        "default-language.yaml",
        "text: {en: hi}\ndefault_language: es\npublish_at: now\ntargets: [website]\n",
        ["default-language.yaml", "default_language 'es' has no text"],
    ),
    (
        "typo-field.yaml",
        "text: {en: hi}\nhashtag: [x]\npublish_at: now\ntargets: [website]\n",
        ["typo-field.yaml: hashtag", "unknown field"],
    ),
    (
        "two-times.yaml",
        "text: {en: hi}\npublish_at: now\ncampaign: international-womens-day\ntargets: [website]\n",
        ["two-times.yaml", "give only one of publish_at: now and campaign"],
    ),
    ("no-time.yaml", "text: {en: hi}\ntargets: [website]\n", ["no-time.yaml", "say when"]),
    (
        "unknown-campaign.yaml",
        "text: {en: hi}\ncampaign: christmas\ntargets: [website]\n",
        ["unknown-campaign.yaml: campaign", "unknown campaign 'christmas'"],
    ),
    (
        "bad-zone.yaml",
        "text: {en: hi}\npublish_at: 2030-01-01T09:00:00\ntimezone: Mars/Olympus\n"
        "targets: [website]\n",
        ["bad-zone.yaml: timezone", "not an IANA time zone"],
    ),
    (
        "http-media.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\n"
        "media: [{url: 'http://example.org/a.jpg'}]\n",
        ["http-media.yaml: media.0.url", "media URLs must be https"],
    ),
    (
        "bad-link.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\nlinks: [{url: 'example.org'}]\n",
        ["bad-link.yaml: links.0.url", "is not an http(s) URL"],
    ),
    ("post.txt", "hello", ["post.txt", "unsupported file type .txt"]),
    (
        "doubled-target.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website, website]\n",
        ["doubled-target.yaml: targets", "named more than once: website"],
    ),
    (
        "stray-override.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\n"
        "overrides: {mastodon-en: {hashtags: [x]}}\n",
        ["stray-override.yaml", "overrides for targets the post does not name: mastodon-en"],
    ),
    (
        "bad-id.yaml",
        "id: my post\ntext: {en: hi}\npublish_at: now\ntargets: [website]\n",
        ["bad-id.yaml: id", "'my post'"],
    ),
    ("no-front-matter.md", "# Just markdown\n", ["no-front-matter.md", "YAML front matter"]),
    (
        "digits-hashtag.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\nhashtags: ['2027']\n",
        ["digits-hashtag.yaml: hashtags.0", "needs at least one letter"],
    ),
    (
        "bad-time.yaml",
        "text: {en: hi}\npublish_at: next tuesday\ntargets: [website]\n",
        ["bad-time.yaml: publish_at", "not an ISO 8601 time"],
    ),
    (
        "override-language.yaml",
        "text: {en: hi}\npublish_at: now\ntargets: [website]\n"
        "overrides: {website: {language: fr}}\n",
        ["override-language.yaml", "'fr' has no text"],
    ),
    (
        "not-a-mapping.yaml",
        "- just\n- a list\n",
        ["not-a-mapping.yaml", "expected a mapping of post fields"],
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_refused_clearly_and_changes_nothing(
    cli, capsys, tmp_path: Path, name: str, content: str, expected: list[str]
) -> None:
    assert cli("add", str(EXAMPLES / "boric-chile.yaml"))[0] == 0
    before = cli("list", "--json")[1]
    (tmp_path / "fake.jpg").write_text("this is not a JPEG")
    bad = tmp_path / name
    bad.write_text(content)
    capsys.readouterr()
    code, _ = cli("add", str(bad))
    err = capsys.readouterr().err
    assert code == 1
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert cli("list", "--json")[1] == before


def test_a_bad_file_among_good_ones_queues_none(cli, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("text: {en: hi}\npublish_at: now\ntargets: [nowhere]\n")
    code, _ = cli("add", str(EXAMPLES / "boric-chile.yaml"), str(bad))
    assert code == 1
    assert cli("list", "--json")[1].strip() == "[]"


def test_nonexistent_file(cli, capsys) -> None:
    code, _ = cli("add", "/nonexistent/post.yaml")
    assert code == 1
    assert "post.yaml: no such file" in capsys.readouterr().err


def test_broken_targets_file_is_reported_without_traceback(cli, capsys, tmp_path, monkeypatch):
    broken = tmp_path / "broken-targets.yaml"
    broken.write_text("targets:\n  m:\n    platform: mastodon\n    base_url: nope\n")
    monkeypatch.setenv("CROSSPOST_TARGETS", str(broken))
    code, _ = cli("add", str(EXAMPLES / "boric-chile.yaml"))
    err = capsys.readouterr().err
    assert code == 1
    assert "broken-targets.yaml: targets.m.base_url" in err
    assert "broken-targets.yaml: targets.m.token_env: Field required" in err


def test_console_script_runs_as_a_process(database_url: str, tmp_path: Path) -> None:
    """The installed `crosspost` command: real process, real exit codes."""
    exe = shutil.which("crosspost", path=str(Path(sys.executable).parent))
    assert exe is not None
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS)
    env = {**os.environ, "CROSSPOST_DATABASE_URL": database_url, "CROSSPOST_TARGETS": str(targets)}
    ok = subprocess.run(
        [exe, "add", str(EXAMPLES / "stand-with-ukraine.yaml")],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert "stand-with-ukraine-2027: queued" in ok.stdout
    bad = subprocess.run(
        [exe, "add", str(tmp_path / "missing.yaml")],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 1 and "missing.yaml: no such file" in bad.stderr
    usage = subprocess.run([exe], env=env, capture_output=True, text=True, cwd=REPO)
    assert usage.returncode == 2
