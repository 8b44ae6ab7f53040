"""Reading post files (YAML, JSON, Markdown with YAML front matter) into canonical posts.

Every problem is reported as `file: field: what is wrong`, all of them at once, and a file with
any problem is never queued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from frontmatter.default_handlers import YAMLHandler
from pydantic import ValidationError

from crosspost.errors import InputError, Problem
from crosspost.post import Post

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".md": "markdown"}


class _PostLoader(yaml.SafeLoader):
    """Safe YAML that keeps times as text, so pydantic sees a naive time as naive."""


_PostLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def validation_problems(source: str, error: ValidationError) -> list[Problem]:
    """pydantic's errors as problems: `text.es`, `media.0.path`, … and a plain message."""
    problems = []
    for err in error.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "is required"
        problems.append(Problem(source, field_path(loc), message))
    return problems


def parse_yaml(text: str, source: str) -> Any:
    """YAML as post files are read (times kept as text); errors name the line and column."""
    try:
        return yaml.load(text, Loader=_PostLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError.one(source, where, f"not valid YAML: {problem}") from None


def _markdown(text: str, source: str) -> Any:
    handler = YAMLHandler()
    if not handler.detect(text):
        raise InputError.one(
            source, "", "a Markdown post starts with YAML front matter between `---` lines"
        )
    front, body = handler.split(text)
    data = parse_yaml(front, source)
    if not isinstance(data, dict):
        raise InputError.one(source, "", "the front matter must be a mapping of fields")
    texts = dict(data.get("text") or {})
    language = data.get("default_language") or "en"
    if body.strip():
        if language in texts:
            raise InputError.one(
                source, f"text.{language}", "given twice: in the front matter and as the body"
            )
        texts = {language: body.strip(), **texts}
    return {**data, "text": texts, "default_language": language}


def parse_post_data(text: str, kind: str, source: str) -> Mapping[str, Any]:
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError.one(
                source, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON: {exc.msg}"
            ) from None
    elif kind == "markdown":
        data = _markdown(text, source)
    else:
        data = parse_yaml(text, source)
    if data is None:
        raise InputError.one(source, "", "the file is empty")
    if not isinstance(data, dict):
        raise InputError.one(
            source, "", f"expected a mapping of post fields, found {type(data).__name__}"
        )
    return data


def build_post(data: Mapping[str, Any], source: str, base_dir: Path) -> Post:
    try:
        return Post.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise InputError(validation_problems(source, exc)) from None


def read_post_file(path: Path) -> Post:
    """The post in `path`, checked on its own (targets and schedule are checked by intake)."""
    source = path.name
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError.one(
            source, "", f"unsupported file type {path.suffix or '(none)'}: use .yaml, .json or .md"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError.one(source, "", f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise InputError.one(source, "", "not UTF-8 text") from None
    except OSError as exc:
        raise InputError.one(source, "", f"cannot be read: {exc.strerror}") from None
    return build_post(parse_post_data(text, kind, source), source, path.parent)
