"""Settings and secrets: the only module that reads the environment and `.env`.

Every setting is `CROSSPOST_<NAME>` (e.g. `CROSSPOST_DATABASE_URL`). Platform secrets are read by
the variable *name* a target declares (`token_env`, `secret_env`); their values are held in
`SecretStr` and never written to the database, a log line, an error or API output.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

from dotenv import dotenv_values
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CROSSPOST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        default=Path("data"), description="Where the SQLite file and media live."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in the data folder."
    )
    targets: Path = Field(default=Path("config/targets.yaml"), description="The targets file.")
    campaigns_dir: Path = Field(default=Path("config/campaigns"))
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: SecretStr | None = None
    workers: int = Field(default=32, ge=1, le=512, description="Concurrent publishes per process.")
    lease_seconds: float = Field(default=120.0, gt=0)
    http_timeout: float = Field(default=15.0, gt=0)
    env_file: Path = Path(".env")
    public_url: str | None = Field(
        default=None,
        description="The mirror's public base URL (feeds, permalinks); default: the request's.",
    )
    mirror_title: str = "crosspost mirror"
    mirror_page_size: int = Field(default=20, ge=1, le=200)
    media_fetch: bool = Field(
        default=True,
        description="Fetch media given by https URL (API posts, the mirror); off: never fetch,"
        " pass such URLs to the platforms as they are and link to them from the mirror.",
    )
    media_fetch_timeout: float = Field(default=10.0, gt=0)
    media_fetch_allow: list[str] = Field(
        default_factory=list,
        description="host:port pairs a media fetch may reach although private (tests only).",
    )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'crosspost.db').resolve()}"

    @cached_property
    def _dotenv(self) -> dict[str, str | None]:
        return dotenv_values(self.env_file) if self.env_file.is_file() else {}

    @property
    def generated_secrets_dir(self) -> Path:
        """Secrets crosspost made for itself (the mirror's own webhook secret), one per file."""
        return self.data_dir / "secrets"

    def secret(self, name: str) -> SecretStr | None:
        """The value of the environment variable `name` (or its `.env` entry), else one that
        crosspost generated for itself under `generated_secrets_dir`, if any."""
        value = os.environ.get(name)
        if value is None:
            value = self._dotenv.get(name)
        if not value and _SECRET_NAME.fullmatch(name):
            generated = self.generated_secrets_dir / name
            if generated.is_file():
                value = generated.read_text(encoding="utf-8").strip()
        return SecretStr(value) if value else None


def load_settings() -> Settings:
    env_file = Path(os.environ.get("CROSSPOST_ENV_FILE", ".env"))
    return Settings(_env_file=env_file, env_file=env_file)  # type: ignore[call-arg]
