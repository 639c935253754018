"""workers.llm_slots: a chunk reserves what fits; a forwarded chunk is counted whole."""

from __future__ import annotations

from workers.llm_slots import LlmSlots


def test_reserve_grants_only_free_slots_until_released() -> None:
    slots = LlmSlots(4)
    assert slots.reserve(3) == 3
    assert slots.reserve(3) == 1  # one left
    assert slots.reserve(2) == 0
    slots.release(2)
    assert (slots.busy, slots.reserve(5)) == (2, 2)


def test_a_forwarded_chunk_counts_whole_and_holds_later_chunks_back() -> None:
    slots = LlmSlots(2)
    assert slots.hold(5) == 5
    assert slots.reserve(1) == 0
    slots.release(4)
    assert (slots.busy, slots.reserve(3)) == (1, 1)
