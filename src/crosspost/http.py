"""The HTTP boundary shared by the adapters: transport failures become classified errors here.

Messages name the host and the status, never a URL's query or a header, so tokens cannot leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from crosspost.errors import OutcomeUnknown, Permanent, PublishError, RateLimited, Transient


def send(
    session: requests.Session, method: str, url: str, *, timeout: float, **kwargs: Any
) -> requests.Response:
    """One request; a transport failure raises Transient (nothing sent) or OutcomeUnknown."""
    host = urlsplit(url).netloc
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except requests.ConnectTimeout:
        raise Transient(f"{method} {host}: connection timed out") from None
    except requests.ReadTimeout:
        raise OutcomeUnknown(
            f"{method} {host}: no answer within {timeout:g}s; the request may have landed"
        ) from None
    except requests.ConnectionError as exc:
        if _before_sending(exc):
            raise Transient(f"{method} {host}: could not connect") from None
        raise OutcomeUnknown(
            f"{method} {host}: connection lost after sending; the request may have landed"
        ) from None
    except requests.RequestException as exc:
        raise Transient(f"{method} {host}: {type(exc).__name__}") from None


def _before_sending(exc: requests.ConnectionError) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError | ConnectionRefusedError):
            return True
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
            continue
        args = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        current = args[0] if args else (current.__cause__ or current.__context__)
    return False


def retry_at_from_headers(headers: Mapping[str, str], now: datetime) -> datetime | None:
    """The earliest time to send again, from `Retry-After` or an `X-RateLimit-Reset` header."""
    retry_after = headers.get("Retry-After")
    if retry_after:
        value = retry_after.strip()
        if value.isdigit():
            return now + timedelta(seconds=int(value))
        try:
            return parsedate_to_datetime(value).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        value = reset.strip()
        try:
            number = float(value)
        except ValueError:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                return None
        # Small numbers are seconds to wait, large ones epoch seconds.
        if number < 10**9:
            return now + timedelta(seconds=number)
        return datetime.fromtimestamp(number, UTC)
    return None


def classify_status(
    response: requests.Response, message: str, now: datetime | None = None
) -> PublishError:
    """The default mapping of an unsuccessful status: 429 waits, 5xx retries, other 4xx stop."""
    now = now or datetime.now(UTC)
    status = response.status_code
    if status == 429:
        retry_at = retry_at_from_headers(response.headers, now) or now + timedelta(minutes=1)
        return RateLimited(message, retry_at=retry_at, http_status=status)
    if status >= 500 or status == 408:
        return Transient(message, http_status=status)
    return Permanent(message, http_status=status)
