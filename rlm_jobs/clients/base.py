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


class LLMClient(Protocol):
    """One provider's chat API. Raises ProviderError / ProviderRetryableError, nothing else."""

    def complete(
        self, messages: Sequence[ChatMessage], *, model: str, max_output_tokens: int
    ) -> Completion: ...

    def close(self) -> None: ...
