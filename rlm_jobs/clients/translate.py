"""Provider failures → our error types, decided in one place for every client.

Status codes: 408 (the server timed out on us), 429 (rate limit) and every 5xx (Anthropic's
529 "overloaded" included) are ``ProviderRetryableError``; every other status means the
request itself is wrong and is a plain ``ProviderError`` carrying the provider's own message.

A body we cannot parse (invalid JSON, HTML from a proxy, a JSON object without the fields
every completion has) is retryable: in practice it comes from a response cut off mid-body or
an error page served by a gateway during an incident, both transient. A server that is
wrong every time still fails after ``max_retries`` with a message that says "malformed".
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from rlm_jobs.errors import ProviderError, ProviderRetryableError

__all__ = ["malformed", "parse_retry_after", "provider_message", "status_error"]

_RETRYABLE_4XX = frozenset({408, 429})


def status_error(
    provider: str, status_code: int, message: str, headers: Mapping[str, str]
) -> ProviderError:
    text = f"{provider} returned HTTP {status_code}: {message}"
    if status_code in _RETRYABLE_4XX or status_code >= 500:
        return ProviderRetryableError(
            text, status_code=status_code, retry_after_s=parse_retry_after(headers)
        )
    return ProviderError(text, status_code=status_code)


def malformed(provider: str, detail: str) -> ProviderRetryableError:
    return ProviderRetryableError(
        f"{provider} sent a malformed response: {detail}", code="malformed"
    )


def provider_message(body: object, fallback: str) -> str:
    """The human-readable message in an error body, in either provider's shape.

    OpenAI's SDK hands us the inner ``error`` object, Anthropic's the whole body
    (``{"type": "error", "error": {"message": ...}}``); proxies send plain text.
    """
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(inner, str) and inner:
            return inner
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def parse_retry_after(
    headers: Mapping[str, str], now: Callable[[], datetime] | None = None
) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3). An
    unreadable value is ignored rather than guessed at.
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # SDK header objects are case-insensitive; plain dicts in tests may not be.
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip()
    return None


def translate_sdk_error(sdk: Any, provider: str, exc: Exception, timeout_s: float) -> ProviderError:
    """Map an ``openai`` or ``anthropic`` exception (same class names in both SDKs) to ours."""
    if isinstance(exc, sdk.APIStatusError):
        message = provider_message(exc.body, exc.message)
        return status_error(provider, exc.status_code, message, exc.response.headers)
    if isinstance(exc, sdk.APITimeoutError):  # before APIConnectionError: it is a subclass
        return ProviderRetryableError(
            f"{provider} did not answer within {timeout_s:g}s", code="timeout"
        )
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderRetryableError(
            f"{provider} connection failed: {exc.message}", code="connection"
        )
    if isinstance(exc, sdk.APIResponseValidationError):
        return malformed(provider, exc.message)
    return ProviderError(f"{provider} client error: {exc}", code="client")
