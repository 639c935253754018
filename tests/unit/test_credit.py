"""PromptCredit's arithmetic on a real kombu QoS (the broker-facing side is in
tests/integration/test_llm_chunks.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kombu.common import QoS

from workers.credit import PromptCredit, prompts_in


def everything_live() -> set[str]:
    return {"t1", "t2", "t3", "big"}


def consumer(prefetch: int) -> SimpleNamespace:
    applied: list[int] = []
    qos = QoS(lambda prefetch_count: applied.append(prefetch_count), prefetch)
    return SimpleNamespace(qos=qos, applied=applied)


@pytest.mark.parametrize(
    ("args", "prompts"),
    [
        (["job", ["a", "b", "c"], "waiter"], 3),
        (("job", ["a"], "waiter"), 1),
        (["job", [], "waiter"], 1),  # rejected by the task at once
        (["job", "not-a-list", "waiter"], 1),
        (["job", ["a", "b"]], 1),
        (None, 1),
    ],
)
def test_prompts_in_counts_call_ids_and_treats_anything_else_as_one(
    args: object, prompts: int
) -> None:
    assert prompts_in(args) == prompts


def test_the_prefetch_is_cut_once_the_prompts_fill_the_slots_and_restored_as_chunks_end() -> None:
    c = consumer(prefetch=16)
    credit = PromptCredit(c, slots=16, live_ids=everything_live)

    credit.take("t1", 8)
    assert c.qos.value == 16  # 8 of 16 slots: room for more
    credit.take("t2", 8)
    assert c.qos.value == 2  # full: no message beyond the two held
    credit.take("t3", 8)  # one already on its way when the cut applied
    assert c.qos.value == 3
    assert credit.prompts == 24

    credit.give_back("t1")  # out of order
    assert c.qos.value == 2  # 16 prompts still fill the slots
    credit.give_back("t3")
    assert c.qos.value == 16
    credit.give_back("t2")
    credit.give_back("t2")  # a second postrun for the same delivery changes nothing
    assert (c.qos.value, credit.prompts) == (16, 0)


def test_a_chunk_bigger_than_the_slots_holds_the_prefetch_at_one() -> None:
    c = consumer(prefetch=4)
    credit = PromptCredit(c, slots=4, live_ids=everything_live)
    credit.take("big", 30)
    assert c.qos.value == 1  # never 0, which kombu reads as "no limit"
    credit.give_back("big")
    assert c.qos.value == 4


def test_celery_changes_to_the_prefetch_are_kept_under_the_cut() -> None:
    c = consumer(prefetch=8)
    credit = PromptCredit(c, slots=8, live_ids=everything_live)
    credit.take("t1", 8)
    assert c.qos.value == 1
    c.qos.increment_eventually(1)  # Celery holding a task with an ETA (a retry's countdown)
    credit.give_back("t1")
    assert c.qos.value == 9


def test_a_redelivery_of_a_running_task_is_counted_twice() -> None:
    c = consumer(prefetch=10)
    credit = PromptCredit(c, slots=10, live_ids=everything_live)
    credit.take("t1", 5)
    credit.take("t1", 5)
    assert (credit.prompts, c.qos.value) == (10, 2)
    credit.give_back("t1")
    assert (credit.prompts, c.qos.value) == (5, 10)


def test_a_fresh_qos_after_a_reconnect_starts_uncut() -> None:
    c = consumer(prefetch=8)
    credit = PromptCredit(c, slots=8, live_ids=everything_live)
    credit.take("t1", 8)
    assert c.qos.value == 1
    c.qos = QoS(lambda prefetch_count: None, 8)  # what Celery builds on a new connection
    credit.give_back("t1")
    assert c.qos.value == 8


def test_a_disabled_prefetch_stays_disabled() -> None:
    c = consumer(prefetch=0)
    credit = PromptCredit(c, slots=2, live_ids=everything_live)
    credit.take("t1", 5)
    assert c.qos.value == 0


def test_a_chunk_whose_end_was_never_heard_of_is_dropped_once_it_would_block() -> None:
    live = {"lost", "t1"}
    c = consumer(prefetch=8)
    credit = PromptCredit(c, slots=8, live_ids=lambda: live)
    credit.take("lost", 6)
    live.discard("lost")  # Celery finished it, but no task_postrun reached the credit
    credit.take("t1", 4)  # would fill the slots with the lost chunk counted
    assert (credit.prompts, c.qos.value) == (4, 8)
    credit.give_back("lost")  # a late give-back of the dropped chunk changes nothing
    assert (credit.prompts, c.qos.value) == (4, 8)
