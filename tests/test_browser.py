"""A real browser (Debian's chromium, headless, via Playwright) reads the mirror: the post's text,
hashtag links, alt text and language switch, and not one request leaves the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from platforms import running_platforms
from test_end_to_end import Service, start_service, stop_service, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: apt-get install -y chromium"
)


@pytest.fixture
def published(tmp_path: Path) -> Iterator[Service]:
    """A running service whose mirror shows the Ukraine example; its webhook secret is one
    the service made for itself (no WEBSITE secret in the environment)."""
    with running_platforms(tmp_path) as platforms:
        service = start_service(tmp_path, platforms, secret=False)
        try:
            import yaml

            data = yaml.safe_load((REPO / "config/examples/stand-with-ukraine.yaml").read_text())
            data["publish_at"] = "now"
            data["targets"] = ["website"]
            data["media"][0]["path"] = "ukraine-flag.png"
            flag = (REPO / "config/examples/media/ukraine-flag.png").read_bytes()
            created = service.api(
                "POST",
                "/api/posts",
                data={"post": json.dumps(data)},
                files={"media": ("ukraine-flag.png", flag, "image/png")},
            )
            assert created.status_code == 201, created.text
            wait_for(
                lambda: (
                    service.api("GET", "/api/posts/stand-with-ukraine-2027").json()["state"]
                    == "published"
                ),
                "the post to reach the mirror",
            )
            assert (tmp_path / "data/secrets/TEST_WEBSITE_SECRET").is_file()
            yield service
        finally:
            stop_service(service)


def test_the_mirror_in_a_real_browser(published: Service) -> None:
    from playwright.sync_api import sync_playwright

    requests_seen: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(locale="en-GB")
            page = context.new_page()
            page.on("request", lambda request: requests_seen.append(request.url))
            page.goto(published.url + "/mirror", wait_until="networkidle")
            post = page.locator("article.post").first
            english = post.locator('.variant[lang="en"]')
            spanish = post.locator('.variant[lang="es"]')
            assert english.is_visible() and not spanish.is_visible()
            assert "Three years on, we #StandWithUkraine" in english.inner_text()
            tag = english.locator("a.hashtag", has_text="#StandWithUkraine").first
            assert tag.get_attribute("href") == "/mirror/tags/standwithukraine"
            image = english.locator("img")
            assert (
                image.get_attribute("alt") == "The flag of Ukraine: a blue band above a yellow band"
            )
            loaded = image.evaluate("img => img.complete && img.naturalWidth > 0")
            assert loaded, "the image did not load from the mirror"

            post.locator('label[data-lang="es"]').click()
            assert spanish.is_visible() and not english.is_visible()
            assert "Tres años después" in spanish.inner_text()
            assert spanish.locator("img").get_attribute("alt", timeout=2000) == (
                "La bandera de Ucrania: una franja azul sobre una franja amarilla"
            )

            page.goto(published.url + "/mirror/tags/standwithukraine", wait_until="networkidle")
            assert "Three years on" in page.content()

            reader = browser.new_context(locale="es-CL")
            spanish_page = reader.new_page()
            spanish_page.on("request", lambda request: requests_seen.append(request.url))
            spanish_page.goto(
                published.url + "/mirror/posts/stand-with-ukraine-2027", wait_until="networkidle"
            )
            first = spanish_page.locator("article.post .variant").first
            assert first.get_attribute("lang") == "es" and first.is_visible()
            reader.close()
            context.close()
        finally:
            browser.close()
    assert requests_seen
    outside = [url for url in requests_seen if not url.startswith(published.url + "/")]
    assert outside == [], f"requests left the server: {outside}"
