"""Text assembly shared by the adapters: links kept, hashtags once, counting, opt-in shortening."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import regex

from crosspost.post import Link

ELLIPSIS = "…"
_GRAPHEME = regex.compile(r"\X")


def grapheme_count(text: str) -> int:
    """User-perceived characters: 🇺🇦 and 👩🏽‍💻 count once, as do Cyrillic letters."""
    return len(_GRAPHEME.findall(text))


def graphemes(text: str) -> list[str]:
    found: list[str] = _GRAPHEME.findall(text)
    return found


def has_hashtag(text: str, tag: str) -> bool:
    """Whether `#tag` already stands in `text` as a whole hashtag, in any letter case."""
    pattern = r"(?<![\w#])#" + regex.escape(tag) + r"(?![\w])"
    return regex.search(pattern, text, flags=regex.IGNORECASE | regex.V1) is not None


def missing_hashtags(text: str, tags: Sequence[str]) -> list[str]:
    return [tag for tag in tags if not has_hashtag(text, tag)]


def link_lines(text: str, links: Sequence[Link], language: str | None = None) -> list[str]:
    """A line per link whose URL the text does not already carry: `title: url` or `url`."""
    lines = []
    for link in links:
        if link.url in text:
            continue
        title = link.title_for(language)
        lines.append(f"{title}: {link.url}" if title else link.url)
    return lines


def compose(
    body: str, links: Sequence[Link], hashtags: Sequence[str], language: str | None = None
) -> str:
    """The body, then the links it lacks (titled in `language`), then the hashtags it lacks,
    each block on its own."""
    blocks = [body.rstrip()]
    lines = link_lines(body, links, language)
    if lines:
        blocks.append("\n".join(lines))
    tags = missing_hashtags(body, hashtags)
    if tags:
        blocks.append(" ".join(f"#{tag}" for tag in tags))
    return "\n\n".join(blocks)


def shorten(text: str, limit: int, count: Callable[[str], int], full_post_url: str) -> str:
    """Cut `text` at a word boundary so that `text… full_post_url` fits in `limit`."""
    tail = f"{ELLIPSIS}\n{full_post_url}"
    if count(tail) > limit:
        raise ValueError("the limit is too small to hold even the link to the full post")
    pieces = graphemes(text)
    low, high = 0, len(pieces)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if count("".join(pieces[:middle]).rstrip() + tail) <= limit:
            low = middle
        else:
            high = middle - 1
    prefix = "".join(pieces[:low])
    cut = max(prefix.rfind(" "), prefix.rfind("\n"))
    if cut > len(prefix) // 2:
        prefix = prefix[:cut]
    return prefix.rstrip() + tail
