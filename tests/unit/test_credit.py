"""PromptCredit's bookkeeping (the broker-facing side is in
tests/integration/test_llm_chunks.py)."""

from __future__ import annotations

import pytest

from workers.credit import PromptCredit, prompts_in


def credit_of(slots: int, live: set[str] | None = None) -> PromptCredit:
    """A credit whose tasks Celery holds until the test says otherwise."""
    live_ids = live if live is not None else {"t1", "t2", "t3", "big"}
    return PromptCredit(slots, live_ids=lambda: live_ids)


@pytest.mark.parametrize(
    ("args", "prompts"),
    [
        (["job", ["a", "b", "c"]], 3),
        (("job", ["a"]), 1),
        (["job", []], 1),  # rejected by the task at once
        (["job", "not-a-list"], 1),
        (["job", ["a", "b"], "extra"], 1),
        (None, 1),
    ],
)
def test_prompts_in_counts_call_ids_and_treats_anything_else_as_one(
    args: object, prompts: int
) -> None:
    assert prompts_in(args) == prompts


def test_room_closes_once_the_prompts_fill_the_slots_and_opens_as_chunks_end() -> None:
    credit = credit_of(slots=16)

    credit.take("t1", 8)
    assert credit.has_room()  # 8 of 16 slots
    credit.take("t2", 8)
    assert not credit.has_room()
    credit.take("t3", 8)  # one already on its way when the room closed
    assert credit.prompts == 24

    credit.give_back("t1")  # out of order
    assert not credit.has_room()  # 16 prompts still fill the slots
    credit.give_back("t3")
    assert credit.has_room()
    credit.give_back("t2")
    credit.give_back("t2")  # a second end of the same delivery changes nothing
    assert (credit.prompts, credit.holds("t2")) == (0, False)


def test_a_chunk_bigger_than_the_slots_closes_the_room_alone() -> None:
    credit = credit_of(slots=4)
    credit.take("big", 30)
    assert not credit.has_room()
    credit.give_back("big")
    assert credit.has_room()


def test_a_redelivery_of_a_running_task_is_counted_twice() -> None:
    credit = credit_of(slots=10)
    credit.take("t1", 5)
    credit.take("t1", 5)
    assert (credit.prompts, credit.has_room()) == (10, False)
    credit.give_back("t1")
    assert (credit.prompts, credit.has_room(), credit.holds("t1")) == (5, True, True)


def test_a_chunk_whose_end_was_never_heard_of_is_dropped_once_it_would_block() -> None:
    live = {"lost", "t1"}
    credit = credit_of(slots=8, live=live)
    assert credit.take("lost", 6) == []
    live.discard("lost")  # Celery finished it, but no task_postrun reached the credit
    assert credit.take("t1", 4) == ["lost"]  # would have filled the slots
    assert (credit.prompts, credit.has_room()) == (4, True)
    credit.give_back("lost")  # a late end of the dropped chunk changes nothing
    assert credit.prompts == 4


def test_a_task_just_taken_is_never_forgotten() -> None:
    # Celery reserves a task only after task_received: the newest one is not "live" yet.
    credit = credit_of(slots=2, live=set())
    assert credit.take("new", 3) == []
    assert credit.holds("new")


def test_a_chunk_whose_end_is_on_its_way_is_dropped_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = {"done", "t1", "t2", "t3"}
    credit = credit_of(slots=8, live=live)
    credit.take("done", 6)
    credit.ending("done")  # task_postrun ran; its give_back waits for the loop thread
    live.discard("done")
    assert credit.take("t1", 4) == ["done"]
    credit.give_back("done")
    assert credit.prompts == 4
    assert "ended unseen" not in caplog.text

    credit.take("t2", 4)
    live.discard("t1")  # no task_postrun for this one
    assert credit.take("t3", 4) == ["t1"]
    assert "llm task t1 ended unseen" in caplog.text
    assert credit.prompts == 8
