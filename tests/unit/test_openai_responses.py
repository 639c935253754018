"""Reading Responses API objects, and when to poll one."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_jobs.clients.base import Completion
from rlm_jobs.clients.openai_responses import PollClock, create_body, parse_response
from rlm_jobs.errors import ProviderError, ProviderRetryableError


def response(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "resp_1", "status": status, **fields}


def message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(parts)}


USAGE = {"input_tokens": 7, "output_tokens": 2}


def test_the_create_body_asks_for_a_stored_background_response() -> None:
    body = create_body([{"role": "user", "content": "hi"}], model="m", max_output_tokens=9)
    assert body == {
        "model": "m",
        "input": [{"role": "user", "content": "hi"}],
        "max_output_tokens": 9,
        "background": True,
        "store": True,
    }


@pytest.mark.parametrize("status", ["queued", "in_progress"])
def test_a_running_response_has_no_completion_yet(status: str) -> None:
    assert parse_response("p", response(status)) == ("resp_1", None)


def test_a_completed_response_joins_its_message_text_and_skips_other_items() -> None:
    done = response(
        "completed",
        output=[
            {"type": "reasoning", "summary": []},
            message({"type": "output_text", "text": "ab"}, {"type": "output_text", "text": "c"}),
        ],
        usage=USAGE,
    )
    assert parse_response("p", done) == ("resp_1", Completion("abc", 7, 2))


def test_an_incomplete_response_keeps_what_was_generated_and_a_refusal_is_text() -> None:
    cut = response(
        "incomplete", output=[message({"type": "output_text", "text": "ha"})], usage=USAGE
    )
    assert parse_response("p", cut)[1] == Completion("ha", 7, 2)
    refused = response(
        "completed", output=[message({"type": "refusal", "refusal": "no"})], usage=USAGE
    )
    assert parse_response("p", refused)[1] == Completion("no", 7, 2)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ({"code": "server_error", "message": "boom"}, True),
        ({"code": "rate_limit_exceeded", "message": "slow down"}, True),
        (None, True),
        ({"code": "invalid_prompt", "message": "not allowed"}, False),
    ],
)
def test_a_failed_response_is_retryable_unless_the_request_was_refused(
    error: dict[str, str] | None, retryable: bool
) -> None:
    with pytest.raises(ProviderError, match="response resp_1 failed") as caught:
        parse_response("p", response("failed", error=error))
    assert isinstance(caught.value, ProviderRetryableError) is retryable


def test_a_cancelled_response_is_retryable() -> None:
    with pytest.raises(ProviderRetryableError) as caught:
        parse_response("p", response("cancelled"))
    assert caught.value.code == "cancelled"


@pytest.mark.parametrize(
    "body",
    [
        ["not", "an", "object"],
        {"status": "completed"},
        {"id": "resp_1"},
        response("thinking"),
        response("completed", usage=USAGE),
        response("completed", output=[{"type": "message", "content": "text"}], usage=USAGE),
        response("completed", output=[message({"type": "output_text", "text": 3})], usage=USAGE),
        response("completed", output=[], usage={"input_tokens": True, "output_tokens": 1}),
        response("completed", output=[]),
    ],
)
def test_a_response_missing_what_we_need_is_malformed(body: object) -> None:
    with pytest.raises(ProviderRetryableError) as caught:
        parse_response("p", body)
    assert caught.value.code == "malformed"


def test_polls_start_at_the_floor_grow_with_the_wait_and_stop_at_the_deadline() -> None:
    now = [100.0]
    clock = PollClock(0.25, 120.0, clock=lambda: now[0])
    assert clock.next_wait_s() == 0.25
    now[0] = 110.0
    assert clock.next_wait_s() == pytest.approx(1.0)  # a tenth of the 10 s waited
    now[0] = 200.0
    assert clock.next_wait_s() == 5.0  # the cap
    now[0] = 218.0
    assert clock.next_wait_s() == pytest.approx(2.0)  # never past the deadline
    assert clock.remaining_s() == pytest.approx(2.0)
    now[0] = 220.0
    assert clock.next_wait_s() is None
