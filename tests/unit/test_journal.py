"""The journal in memory: what a replay gives back, where it stops, what it keeps."""

from __future__ import annotations

import json

import pytest

from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.errors import ReplayEnded
from rlm_jobs.journal import MemoryJournals, _load

FIRST: list[ChatMessage] = [{"role": "user", "content": "What is the code?"}]
SECOND: list[ChatMessage] = [*FIRST, {"role": "assistant", "content": "looking"}]


def record_run(journals: MemoryJournals) -> list[str]:
    """A first run: a root call, a batch of two prompts, a second root call; their ids."""
    journal = journals.open("job")
    first = journal.root("scripted/test", FIRST)
    request = journal.request("llm", "scripted/sub", ["a", "b"])
    second = journal.root("scripted/test", SECOND)
    assert not (first.replayed or request.replayed or second.replayed)
    return [*first.call_ids, *request.call_ids, *second.call_ids]


def test_a_new_journal_replays_nothing_and_records_everything() -> None:
    journals = MemoryJournals()
    call_ids = record_run(journals)
    assert [e["kind"] for e in journals.logs["job"]] == ["root", "llm", "root"]
    assert [e["seq"] for e in journals.logs["job"]] == [0, 1, 2]
    assert len(set(call_ids)) == 4
    assert [c.split(":")[1].split(".")[0] for c in call_ids] == ["0", "1", "1", "2"]


def test_a_reopened_journal_replays_the_same_steps_with_the_same_ids() -> None:
    # Given a journal written by a first run
    journals = MemoryJournals()
    call_ids = record_run(journals)
    # When a second run asks the same things in the same order
    journal = journals.open("job")
    assert journal.replaying
    first = journal.root("scripted/test", FIRST)
    request = journal.request("llm", "scripted/sub", ["a", "b"])
    second = journal.root("scripted/test", SECOND)
    # Then every step is the journal's, under the same ids, and nothing new is written
    assert first.replayed and request.replayed and second.replayed
    assert [*first.call_ids, *request.call_ids, *second.call_ids] == call_ids
    assert not journal.replaying
    assert len(journals.logs["job"]) == 3
    # The first live step after the replay is noted once
    assert not journal.root("scripted/test", [*SECOND, {"role": "user", "content": "x"}]).replayed
    note = journal.take_note()
    assert note is not None and "3 steps replayed" in note and "live from here" in note
    assert journal.take_note() is None


def test_a_request_that_differs_ends_the_replay_and_drops_what_followed() -> None:
    journals = MemoryJournals()
    old_ids = record_run(journals)
    journal = journals.open("job")
    assert journal.root("scripted/test", FIRST).replayed
    # The cell asks something else this time (its prompt depends on the time, say)
    request = journal.request("llm", "scripted/sub", ["a", "c"])
    assert not request.replayed
    # The prompt that is the same question at the same place keeps its id (its answer is
    # still good); the new one gets a new id, so it can never get the old answer.
    assert request.call_ids[0] == old_ids[1]
    assert request.call_ids[1] != old_ids[2]
    assert not journal.replaying
    # The journal now holds the replayed step and the new request; the old second call is gone
    assert [e["kind"] for e in journals.logs["job"]] == ["root", "llm"]
    assert not journal.root("scripted/test", SECOND).replayed
    note = journal.take_note()
    assert note is not None and "replay ended at step 2" in note and "1 steps replayed" in note


def test_the_same_question_at_the_same_place_keeps_its_id_across_runs() -> None:
    journals = MemoryJournals()
    a = journals.open("job").request("llm", "m", ["q"]).call_ids
    # A later run that diverged earlier and asks this again at the same position
    journals.logs["job"].clear()
    b = journals.open("job").request("llm", "m", ["q"]).call_ids
    assert a == b
    assert journals.open("job").request("llm", "other-model", ["q"]).call_ids != a


def test_child_rlm_ids_are_child_job_ids_of_the_parent() -> None:
    ids = MemoryJournals().open("root").request("rlm", "m", ["x", "y"]).call_ids
    assert all(i.startswith("root.0-") for i in ids) and ids[0] != ids[1]


def test_loading_drops_repeated_writes_and_stops_at_a_gap() -> None:
    rows = [json.dumps({"seq": s, "kind": "root"}) for s in (0, 1, 1, 2, 4, 5)]
    assert [e["seq"] for e in _load(rows, "job")] == [0, 1, 2]
    assert [e["seq"] for e in _load([*rows[:2], "not json", rows[3]], "job")] == [0, 1]


def test_a_replay_only_journal_never_writes_and_stops_where_it_ends() -> None:
    # Given a journal written by a finished run
    journals = MemoryJournals()
    call_ids = record_run(journals)
    written = [dict(e) for e in journals.logs["job"]]
    # When a session replays it only to rebuild its state
    journal = journals.open("job", replay_only=True)
    assert journal.root("scripted/test", FIRST).call_ids == call_ids[:1]
    # Then the first step it does not hold raises, and so does every step after it
    with pytest.raises(ReplayEnded, match=r"step 2: a sub-call request .* differs"):
        journal.request("llm", "scripted/sub", ["a", "changed"])
    with pytest.raises(ReplayEnded, match="step 2"):
        journal.root("scripted/test", SECOND)
    assert journal.replay_ended is not None and journal.replay_ended.startswith("step 2")
    # and the journal is as the run left it
    assert journals.logs["job"] == written


def test_a_replay_only_journal_past_its_end_raises() -> None:
    journals = MemoryJournals()
    record_run(journals)
    journal = journals.open("job", replay_only=True)
    journal.root("scripted/test", FIRST)
    journal.request("llm", "scripted/sub", ["a", "b"])
    journal.root("scripted/test", SECOND)
    with pytest.raises(ReplayEnded, match="step 4: the journal ends"):
        journal.request("tool", "lookup", ['{"args": [], "kwargs": {}}'])


def test_tool_calls_are_steps_with_ids_of_their_own() -> None:
    journal = MemoryJournals().open("job")
    first = journal.request("tool", "lookup", ['{"args": ["a"], "kwargs": {}}'])
    other = journal.request("tool", "lookup", ['{"args": ["b"], "kwargs": {}}'])
    assert first.call_ids[0].startswith("job:0.0.") and other.call_ids[0].startswith("job:1.0.")
