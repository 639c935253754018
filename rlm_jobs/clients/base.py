"""The protocol every LLM client implements, and what a call returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


class ResponseHandle(Protocol):
    """Where a call keeps the provider's id of a response generated in the background.

    A client that supports background responses keeps the id here as soon as the provider
    accepts the request, and fetches that response instead of asking again when the id is
    already set: a worker that takes a call over after another one died mid-call picks up
    what was paid for. ``keep(None)`` forgets a response that failed or expired.

    ``keep`` returns False when the call is no longer this caller's (answered or given up
    meanwhile, or taken over by another worker): nothing was kept, and the client stops
    with ``rlm_jobs.errors.CallAbandoned``. While it waits for the response, the client
    asks ``standing`` before each poll, so a call its job gave up (cancelled, or past
    one of its limits) stops the response at the provider instead of paying for it to the end.
    """

    @property
    def response_id(self) -> str | None: ...

    def keep(self, response_id: str | None) -> bool: ...

    def standing(self) -> Standing: ...


# Where a call stands for the caller waiting for its response: still "ours"; "gone"
# (answered, given up by its job, or taken over by a worker that asks afresh: nobody will
# take this response); "theirs" (taken over by a worker that fetches this response).
Standing = Literal["ours", "gone", "theirs"]


class LLMClient(Protocol):
    """One provider's chat API. Raises ProviderError / ProviderRetryableError, nothing else.

    ``handle`` asks for a background response kept under it (a client without them ignores
    it and makes an ordinary call).
    """

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_output_tokens: int,
        handle: ResponseHandle | None = None,
    ) -> Completion: ...

    def close(self) -> None: ...
