"""The retry loop and the status → error mapping, with sleeping and jitter injected."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from rlm_jobs.clients.base import ChatMessage, Completion
from rlm_jobs.clients.retry import RetryingClient, RetryPolicy, call_with_retries, retry_delay_s
from rlm_jobs.clients.translate import parse_retry_after, provider_message, status_error
from rlm_jobs.errors import ProviderError, ProviderRetryableError

POLICY = RetryPolicy(max_retries=4, base_s=0.5, max_s=5.0)


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    assert [retry_delay_s(POLICY, n, None, highest) for n in range(6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert retry_delay_s(POLICY, 3, None, lowest) == 0.0


def test_retry_after_is_a_floor_and_jitter_goes_on_top() -> None:
    assert retry_delay_s(POLICY, 0, 3.0, lowest) == 3.0
    # Jitter never pushes a wait past retry_max_s.
    assert retry_delay_s(POLICY, 3, 3.0, highest) == 5.0
    assert retry_delay_s(POLICY, 0, 0.0, highest) == 0.5


def test_retry_after_beyond_the_cap_means_give_up_now() -> None:
    assert retry_delay_s(POLICY, 0, 5.01, lowest) is None


class Flaky:
    def __init__(self, failures: Sequence[ProviderError]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_retryable_errors_are_retried_with_the_computed_waits() -> None:
    slept: list[float] = []
    call = Flaky(
        [ProviderRetryableError("busy"), ProviderRetryableError("slow", retry_after_s=2.5)]
    )
    assert call_with_retries(call, POLICY, sleep=slept.append, uniform=lowest) == "ok"
    assert call.calls == 3
    assert slept == [0.0, 2.5]


def test_permanent_errors_are_not_retried() -> None:
    slept: list[float] = []
    call = Flaky([ProviderError("bad request", status_code=400)])
    with pytest.raises(ProviderError, match="bad request") as info:
        call_with_retries(call, POLICY, sleep=slept.append)
    assert type(info.value) is ProviderError
    assert (call.calls, slept) == (1, [])


def test_exhausted_retries_raise_a_retryable_error_saying_so() -> None:
    slept: list[float] = []
    call = Flaky([ProviderRetryableError("down", status_code=503)] * 5)
    with pytest.raises(ProviderRetryableError, match="gave up after 5 attempts") as info:
        call_with_retries(call, POLICY, sleep=slept.append, uniform=lowest)
    assert info.value.status_code == 503
    assert isinstance(info.value.__cause__, ProviderRetryableError)
    assert (call.calls, len(slept)) == (5, 4)


def test_a_long_retry_after_is_raised_for_the_caller_to_reschedule() -> None:
    slept: list[float] = []
    call = Flaky([ProviderRetryableError("limited", status_code=429, retry_after_s=60.0)])
    with pytest.raises(ProviderRetryableError, match="exceeds retry_max_s") as info:
        call_with_retries(call, POLICY, sleep=slept.append)
    assert info.value.retry_after_s == 60.0
    assert (call.calls, slept) == (1, [])


def test_zero_retries_means_one_attempt() -> None:
    call = Flaky([ProviderRetryableError("busy")])
    with pytest.raises(ProviderRetryableError, match="gave up after 1 attempt\\)"):
        call_with_retries(call, RetryPolicy(0, 0.1, 1.0), sleep=lambda s: None)


class ScriptedClient:
    def __init__(self, failures: Sequence[ProviderError]) -> None:
        self.flaky = Flaky(failures)
        self.closed = False

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_output_tokens: int,
        handle: object = None,
    ) -> Completion:
        return Completion(self.flaky(), 1, 1)

    def close(self) -> None:
        self.closed = True


def test_retrying_client_wraps_complete_and_close() -> None:
    inner = ScriptedClient([ProviderRetryableError("busy")])
    slept: list[float] = []
    client = RetryingClient(inner, POLICY, sleep=slept.append, uniform=lowest)
    assert client.complete([], model="m", max_output_tokens=5) == Completion("ok", 1, 1)
    assert len(slept) == 1
    client.close()
    assert inner.closed


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, 0.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(headers, now=lambda: now) == expected


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, False),
        (422, False),
        (429, True),
        (500, True),
        (503, True),
        (529, True),
    ],
)
def test_status_error_types(status: int, retryable: bool) -> None:
    error = status_error("acme", status, "the message", {"Retry-After": "2"})
    assert isinstance(error, ProviderRetryableError) is retryable
    assert error.status_code == status
    assert "the message" in str(error) and "acme" in str(error)


def test_provider_message_reads_both_error_shapes() -> None:
    openai_inner = {"message": "bad key", "type": "invalid_request_error"}
    anthropic_body = {"type": "error", "error": {"type": "x", "message": "overloaded"}}
    assert provider_message(openai_inner, "fallback") == "bad key"
    assert provider_message(anthropic_body, "fallback") == "overloaded"
    assert provider_message("<html>gateway</html>", "fallback") == "<html>gateway</html>"
    assert provider_message(None, "fallback") == "fallback"
