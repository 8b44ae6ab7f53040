"""The targets file: which Facebook Pages, Mastodon accounts and websites a post can go to."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from pydantic import ValidationError

from crosspost.adapter import Adapter, TargetConfig, adapter_class
from crosspost.errors import ConfigError
from crosspost.settings import Settings


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


@dataclass(frozen=True)
class Targets(Mapping[str, TargetConfig]):
    """The configured targets by name, and the adapters that publish to them."""

    source: str
    by_name: Mapping[str, TargetConfig]

    def __getitem__(self, name: str) -> TargetConfig:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def missing_secret(self, name: str, settings: Settings) -> str | None:
        """The name of the unset environment variable target `name` needs, if any."""
        env = self.by_name[name].secret_variable()
        if env is not None and settings.secret(env) is None:
            return env
        return None

    def adapter(
        self, name: str, settings: Settings, session: requests.Session | None = None
    ) -> Adapter:
        config = self.by_name[name]
        env = config.secret_variable()
        secret = settings.secret(env) if env else None
        return adapter_class(config.platform)(
            config, secret=secret, session=session, timeout=settings.http_timeout
        )


def parse_targets(data: Any, source: str) -> Targets:
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise ConfigError(f"{source}: expected a mapping `targets:` of name -> settings")
    by_name: dict[str, TargetConfig] = {}
    problems: list[str] = []
    for name, raw in data["targets"].items():
        if not isinstance(raw, dict):
            problems.append(f"{source}: targets.{name}: expected a mapping of settings")
            continue
        platform = raw.get("platform")
        try:
            cls = adapter_class(str(platform)).config_model
        except ConfigError as exc:
            problems.append(f"{source}: targets.{name}.platform: {exc}")
            continue
        try:
            by_name[str(name)] = cls.model_validate({**raw, "name": str(name)})
        except ValidationError as exc:
            for err in exc.errors():
                where = _field(("targets", name, *err["loc"]))
                problems.append(f"{source}: {where}: {err['msg']}")
    if problems:
        raise ConfigError("\n".join(problems))
    return Targets(source=source, by_name=by_name)


def load_targets(path: Path) -> Targets:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the targets file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_targets(data, str(path))
