"""llm tasks in chunks: real Redis, real `celery -A workers worker -Q rlm.llm` processes,
the scripted provider over real HTTP.

This process plays the orchestrator: the same ``CeleryDispatcher`` and ``ReplyCollector``
an orchestrator worker's engine uses send batches to the workers and wait for the replies.
Tests that need to act as a misbehaving broker send task messages themselves.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlm_jobs import keys
from rlm_jobs.calls import CallStore
from rlm_jobs.clients.calls import CallContext
from rlm_jobs.config import Settings
from rlm_jobs.dispatch import CallBatch, Stop, user_message
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.store import Store
from rlm_jobs.testing.policies.sub import NEEDLE_ASK
from rlm_jobs.testing.provider import ScriptedProvider
from sandbox.records import SubcallResult
from tests.support import Worker, wait_for
from workers.app import create_app
from workers.dispatcher import SPREAD_TASKS, CeleryDispatcher, chunk_sizes
from workers.names import LLM_QUEUE, LLM_TASK
from workers.replies import Reply, ReplyCollector

pytestmark = pytest.mark.timeout(120)

MODEL = "scripted/needle"
CHUNK_SIZE = 5
# Smaller than the default spread, so a 40-prompt batch shows full chunks of CHUNK_SIZE.
SPREAD = 8


def prompt(i: int) -> str:
    """A prompt the scripted needle model answers with ``C<i>``: replies show their order."""
    return f"{NEEDLE_ASK}\nsome text. The secret code is C{i}. more text."


class LlmStack:
    """llm workers started on demand, and a dispatcher in this process to feed them."""

    def __init__(self, server: RedisServer, provider: ScriptedProvider, logdir: Path) -> None:
        self.provider = provider
        self.logdir = logdir
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_URL": server.url,
            "RLM_JOBS_SCRIPTED_BASE_URL": provider.url,
        }
        self.workers: list[Worker] = []
        settings = Settings(redis_url=server.url, scripted_base_url=provider.url)
        self.app = create_app(settings)
        self.client = redis.Redis.from_url(server.url)
        self.store = Store(self.client)
        self.calls = CallStore(self.client)
        blocking = redis.Redis.from_url(server.url, socket_timeout=30)
        self.collector = ReplyCollector(blocking, f"test-{uuid.uuid4().hex[:8]}")
        self.dispatcher = CeleryDispatcher(
            self.app, self.calls, self.collector, chunk_size=CHUNK_SIZE, spread_tasks=SPREAD
        )

    def start(self, concurrency: int = 4, **env: str) -> Worker:
        worker = Worker(LLM_QUEUE, {**self.env, **env}, self.logdir, concurrency=concurrency)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def run(
        self,
        n: int,
        *,
        job_id: str = "job-1",
        on_result: Callable[[int, SubcallResult], None] | None = None,
        stop: Callable[[], Stop | None] = lambda: None,
    ) -> list[SubcallResult]:
        batch = CallBatch.of_prompts(
            job_id,
            MODEL,
            [prompt(i) for i in range(n)],
            [f"{job_id}:{uuid.uuid4().hex}" for _ in range(n)],
            CallContext(job_id=job_id, kind="sub"),
        )
        return self.dispatcher.run_batch(
            batch, on_result=on_result or (lambda i, r: None), stop=stop
        )

    def tasks_finished(self) -> list[str]:
        """What each llm task a worker finished returned, from the workers' logs."""
        return [
            line.split("] succeeded in ", 1)[1].split(": ", 1)[1]
            for w in self.workers
            for line in w.log().splitlines()
            if f"Task {LLM_TASK}[" in line and "] succeeded in " in line
        ]

    def wait_tasks_finished(self, count: int, timeout_s: float) -> list[str]:
        wait_for(lambda: len(self.tasks_finished()) >= count, timeout_s, f"{count} llm tasks")
        return self.tasks_finished()

    def outcomes(self) -> Counter[str]:
        """What happened to each prompt, summed over every finished task ('ok', 'gone',
        'not run', ...; 'forwarded' counts prompts a task sent on to another task)."""
        total: Counter[str] = Counter()
        for finished in self.tasks_finished():
            for part in finished.strip("'").split(", "):
                what, _, count = part.rpartition(" ")
                total[what] += int(count)
        return total

    def wait_prompts_ended(self, n: int, timeout_s: float) -> Counter[str]:
        """The outcomes once every one of ``n`` prompts ended in some task."""

        def ended() -> int:
            return sum(c for what, c in self.outcomes().items() if what != "forwarded")

        wait_for(lambda: ended() >= n, timeout_s, f"{n} prompts ended")
        return self.outcomes()

    def tasks_received(self) -> int:
        return sum(
            1
            for w in self.workers
            for line in w.log().splitlines()
            if f"Task {LLM_TASK}[" in line and line.endswith("] received")
        )

    def provider_calls(self) -> int:
        entry = self.provider.ledger().get(MODEL)
        return entry.calls if entry is not None else 0

    def stop(self) -> None:
        self.dispatcher.close()
        for worker in self.workers:
            worker.stop()
        self.client.close()


@pytest.fixture
def stack(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[LlmStack]:
    with ScriptedProvider() as provider:
        s = LlmStack(redis_server, provider, tmp_path)
        yield s
        s.stop()


def store_prompts(stack: LlmStack, job_id: str, n: int, waiter_id: str) -> list[str]:
    """Prompts recorded as the dispatcher records them; their call ids."""
    call_ids = [uuid.uuid4().hex for _ in range(n)]
    requests = [[user_message(prompt(i))] for i in range(n)]
    stack.calls.prepare(
        job_id, MODEL, waiter_id, call_ids, requests, CallContext(job_id=job_id, kind="sub")
    )
    return call_ids


def replies(stack: LlmStack, waiter_id: str) -> list[Reply]:
    raw = stack.client.lrange(keys.subcall_replies(waiter_id), 0, -1)
    return [Reply.from_json(r) for r in raw]


@pytest.mark.parametrize(
    ("n", "max_chunk", "spread", "sizes"),
    [
        (1, 10, 8, [1]),  # a lone llm_query is a task of its own
        (5, 10, 8, [1] * 5),  # small batches spread one prompt per task
        (20, 10, 8, [3, 3, 3, 3, 2, 2, 2, 2]),  # shared evenly once past the spread
        (200, 10, 8, [10] * 20),  # full chunks
        (23, 2, 8, [2] * 11 + [1]),
        (32, 10, SPREAD_TASKS, [1] * 32),  # the default spread
        (100, 10, SPREAD_TASKS, [4] * 4 + [3] * 28),
        (1000, 10, SPREAD_TASKS, [10] * 100),
    ],
)
def test_chunk_sizes_spread_small_batches_and_cap_big_ones(
    n: int, max_chunk: int, spread: int, sizes: list[int]
) -> None:
    assert chunk_sizes(n, max_chunk, spread) == sizes


def test_a_batch_bigger_than_a_chunk_is_answered_in_order_over_several_tasks(
    stack: LlmStack,
) -> None:
    stack.provider.configure(sub_latency_s=0.2)
    stack.start()
    stack.start()
    n = 40
    streamed: list[int] = []

    results = stack.run(n, on_result=lambda i, r: streamed.append(i))

    assert [r.text for r in results] == [f"C{i}" for i in range(n)]
    assert all(r.ok for r in results)
    assert sorted(streamed) == list(range(n))  # each result streamed once, as it arrived
    assert stack.provider_calls() == n
    # 8 tasks of 5 (CHUNK_SIZE), spread over both workers.
    assert len({r.worker for r in results}) == 2
    finished = stack.wait_tasks_finished(8, 10)
    assert finished == ["'ok 5'"] * 8
    assert stack.tasks_received() == 8

    # A lone prompt is one task of one prompt.
    assert [r.text for r in stack.run(1)] == ["C0"]
    # (Logs are read worker by worker, so the order is not the order tasks ran in.)
    assert sorted(stack.wait_tasks_finished(9, 10)) == ["'ok 1'"] + ["'ok 5'"] * 8


def test_a_chunk_of_a_job_cancelled_mid_way_calls_the_provider_no_more(stack: LlmStack) -> None:
    # One provider call at a time: the first chunk's later prompts queue behind its first.
    # A call lasts long enough for the cancel to land before the second one ends, even on a
    # loaded machine.
    stack.provider.configure(sub_latency_s=0.5)
    stack.start(concurrency=1, RLM_JOBS_LLM_WORKER_CONCURRENCY="1")
    n = 40
    cancelled = threading.Event()

    def cancel_after_first(index: int, result: SubcallResult) -> None:
        if not cancelled.is_set():
            stack.store.request_cancel("job-2", "test cancel")
            cancelled.set()

    results = stack.run(n, job_id="job-2", on_result=cancel_after_first)

    calls = stack.provider_calls()
    # The first answer sets the flag; the prompt started meanwhile may still run.
    assert 1 <= calls <= 2 < CHUNK_SIZE
    assert all(r.ok for r in results[:calls])
    assert [r.text for r in results[calls:]] == ["Error: not run: test cancel"] * (n - calls)
    # Each chunk ran what its one slot allowed and sent the rest on (forwarded): every
    # prompt after the first answers ended unrun, wherever it went.
    outcomes = stack.wait_prompts_ended(n, 15)
    assert (outcomes["ok"], outcomes["not run"]) == (calls, n - calls)
    assert outcomes["forwarded"] >= CHUNK_SIZE - 1


def test_a_batch_its_job_gave_up_on_leaves_queued_prompts_unrun(stack: LlmStack) -> None:
    stack.provider.configure(sub_latency_s=0.2)
    stack.start(concurrency=1, RLM_JOBS_LLM_WORKER_CONCURRENCY="1")
    n = 40
    answered = threading.Event()

    results = stack.run(
        n,
        on_result=lambda i, r: answered.set(),
        stop=lambda: Stop("budget exceeded") if answered.is_set() else None,
    )

    assert results[0].ok
    assert [r.text for r in results[1:]] == ["Error: not run: budget exceeded"] * (n - 1)
    # The workers see the prompts gone (the dispatcher deleted them) and skip them all.
    outcomes = stack.wait_prompts_ended(n, 15)
    assert stack.provider_calls() <= 2
    assert outcomes["ok"] == stack.provider_calls()
    assert outcomes["gone"] == n - outcomes["ok"]


def test_a_chunk_delivered_twice_answers_each_prompt_once(stack: LlmStack) -> None:
    stack.start()
    waiter = "dup-waiter"
    call_ids = store_prompts(stack, "job-3", 3, waiter)

    for delivery in (1, 2):
        stack.app.send_task(LLM_TASK, args=["job-3", call_ids], queue=LLM_QUEUE)
        stack.wait_tasks_finished(delivery, 15)

    assert stack.tasks_finished() == ["'ok 3'", "'gone 3'"]
    got = replies(stack, waiter)
    assert sorted(r.call_id for r in got) == sorted(call_ids)
    assert [r.result.text for r in got if r.call_id == call_ids[2]] == ["C2"]
    assert stack.provider_calls() == 3
    assert not stack.client.exists(*[keys.subcall(c) for c in call_ids])
    # Each answer is kept for good in the job's results, where a resumed job finds it.
    assert [stack.calls.lookup("job-3", call_ids)[c].result.text for c in call_ids] == [
        "C0",
        "C1",
        "C2",
    ]


def test_calls_of_a_killed_llm_worker_are_run_again_within_seconds(stack: LlmStack) -> None:
    # Given one llm worker running a batch one call at a time, and a waiting orchestrator
    stack.provider.configure(sub_latency_s=0.4)
    first = stack.start(concurrency=2, RLM_JOBS_LLM_WORKER_CONCURRENCY="1")
    n = 10
    streamed: list[int] = []
    results: list[SubcallResult] = []
    batch = threading.Thread(
        target=lambda: results.extend(stack.run(n, on_result=lambda i, r: streamed.append(i)))
    )
    batch.start()
    wait_for(lambda: len(streamed) >= 3, 15, "three calls answered")
    # When the worker is killed mid-batch and another one starts (the broker's visibility
    # timeout is an hour: nothing but the lapsed claims can bring the calls back)
    first.kill()
    answered_before = stack.provider_calls()
    killed_at = time.monotonic()
    stack.start(concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    batch.join(timeout=40)
    # Then every call is answered, in order, once, within seconds of the kill
    assert not batch.is_alive()
    took = time.monotonic() - killed_at
    assert [r.text for r in results] == [f"C{i}" for i in range(n)]
    assert sorted(streamed) == list(range(n))
    assert took < 6.0 + 10.0  # claim TTL, plus the new worker's start and the calls left
    # Only the calls in flight when the worker died (one slot) reached the provider twice.
    assert stack.provider_calls() <= n + 1
    assert answered_before >= 3


def test_malformed_llm_messages_are_rejected_alone(stack: LlmStack) -> None:
    worker = stack.start()
    good = store_prompts(stack, "job-5", 1, "w")
    corrupt = uuid.uuid4().hex
    stack.client.hset(keys.subcall(corrupt), mapping={"job": "job-5", "waiter": "w"})
    bad_args: list[Any] = [
        [{"job": 1}, good],
        ["job-5", "not-a-list"],
        ["job-5", []],
        ["job-5", ["bad id!"]],
        ["job-5", good + good],
        ["job-5", [uuid.uuid4().hex for _ in range(101)]],
        ["job-5"],  # a missing argument: Celery fails the task, not the worker
    ]
    for args in bad_args:
        stack.app.send_task(LLM_TASK, args=args, queue=LLM_QUEUE)
    stack.app.send_task(LLM_TASK, args=["job-5", [corrupt]], queue=LLM_QUEUE)

    # The worker carries on: a real batch after them is answered in full.
    assert [r.text for r in stack.run(12)] == [f"C{i}" for i in range(12)]
    wait_for(lambda: worker.log().count("rejected llm message") == 6, 10, "six rejections")
    assert worker.alive()
    assert stack.provider_calls() == 12  # no rejected message reached the provider
    # A corrupt prompt record is answered with an error, so nobody waits for it forever.
    reply = wait_for(lambda: replies(stack, "w"), 10, "the corrupt record's reply")
    assert [(r.call_id, r.result.ok) for r in reply] == [(corrupt, False)]
    assert reply[0].result.text == "Error: malformed sub-call record"


def broker_holds(stack: LlmStack) -> tuple[int, int]:
    """(messages waiting in the llm queue, messages delivered and not yet acknowledged)."""
    pipe = stack.client.pipeline(transaction=False)
    pipe.llen(LLM_QUEUE)
    pipe.hlen("unacked")  # kombu's Redis transport keeps delivered messages here
    waiting, unacked = pipe.execute()
    return int(waiting), int(unacked)


def test_a_worker_reserves_chunks_by_their_prompts_not_by_their_count(stack: LlmStack) -> None:
    # 10 threads and 10 provider slots. Counting messages, Celery would reserve all 8 chunks
    # of 5 (40 prompts for 10 slots) and leave nothing for a second worker; counting
    # prompts, it holds 2 chunks and the other 6 wait in the queue.
    stack.provider.configure(sub_latency_s=1.0)
    worker = stack.start(concurrency=10, RLM_JOBS_LLM_WORKER_CONCURRENCY="10")
    results: list[SubcallResult] = []
    batch = threading.Thread(target=lambda: results.extend(stack.run(40)))
    batch.start()
    try:
        wait_for(lambda: broker_holds(stack) == (6, 2), 10, "two chunks taken, six waiting")
        # The provider records a call when it answers: until then no chunk has ended, and
        # the worker must take nothing more.
        samples = []
        while not stack.provider.requests() and batch.is_alive():
            samples.append(broker_holds(stack))
        assert samples, "the first call was answered before the broker could be read"
        assert set(samples) == {(6, 2)}
    finally:
        batch.join(timeout=30)
    assert [r.text for r in results] == [f"C{i}" for i in range(40)]
    # Credit comes back as chunks end: all 8 ran, and the queue is empty again.
    assert stack.wait_tasks_finished(8, 10) == [f"'ok {CHUNK_SIZE}'"] * 8
    wait_for(lambda: broker_holds(stack) == (0, 0), 10, "every chunk acknowledged")
    # Every chunk gave its prompts back as it ended; none had to be found by the safety net.
    assert "ended unseen" not in worker.log()


def test_a_chunk_bigger_than_the_free_slots_runs_what_fits_and_sends_the_rest_on(
    stack: LlmStack,
) -> None:
    stack.provider.configure(sub_latency_s=0.5)
    stack.start(concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    waiter = "big-waiter"
    chunks = [store_prompts(stack, "job-6", 6, waiter) for _ in range(3)]
    for call_ids in chunks:
        stack.app.send_task(LLM_TASK, args=["job-6", call_ids], queue=LLM_QUEUE)

    # The first chunk of 6 starts 4 calls on the 4 slots and sends 2 back to the queue
    # (for a worker with room): the queue holds the other two chunks and that one, and the
    # worker, its slots full, takes nothing more until the first answers.
    wait_for(lambda: broker_holds(stack) == (3, 1), 10, "4 calls started, 2 sent on")
    samples = []
    while not stack.provider.requests():
        samples.append(broker_holds(stack))
    assert samples and set(samples) == {(3, 1)}
    wait_for(lambda: len(replies(stack, waiter)) == 18, 30, "all three chunks answered")
    outcomes = stack.wait_prompts_ended(18, 10)
    assert outcomes["ok"] == 18
    assert stack.tasks_finished()[0] == "'forwarded 2, ok 4'"
    assert stack.provider_calls() == 18


def test_prompts_a_worker_has_no_slot_for_go_to_a_worker_that_has(stack: LlmStack) -> None:
    # Two workers of 4 slots and one chunk of 8: without sending on what does not fit, 4
    # prompts would wait a whole provider latency on the first worker beside an idle one.
    stack.provider.configure(sub_latency_s=1.0)
    first = stack.start(concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    second = stack.start(concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4")
    dispatcher = CeleryDispatcher(
        stack.app, stack.calls, stack.collector, chunk_size=8, spread_tasks=1
    )
    batch = CallBatch.of_prompts(
        "job-7",
        MODEL,
        [prompt(i) for i in range(8)],
        [f"job-7:{uuid.uuid4().hex}" for _ in range(8)],
        CallContext(job_id="job-7", kind="sub"),
    )

    results = dispatcher.run_batch(batch, on_result=lambda i, r: None, stop=lambda: None)

    assert [r.text for r in results] == [f"C{i}" for i in range(8)]
    # Half on each worker: the one that took the chunk ran 4 and sent 4 on.
    served = Counter(r.worker for r in results)
    assert sorted(served.values()) == [4, 4]
    assert {w.split("@", 1)[0] for w in served} == {first.name, second.name}
    assert sorted(stack.wait_tasks_finished(2, 10)) == ["'forwarded 4, ok 4'", "'ok 4'"]
    assert stack.provider_calls() == 8


def test_background_calls_of_a_killed_llm_worker_are_fetched_not_paid_again(
    stack: LlmStack,
) -> None:
    # Given an llm worker making every call a background response, four at a time, and a
    # batch waiting on eight of them
    stack.provider.configure(sub_latency_s=3.0)
    first = stack.start(
        concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4", RLM_JOBS_BACKGROUND_CALLS="all"
    )
    n = 8
    results: list[SubcallResult] = []
    batch = threading.Thread(target=lambda: results.extend(stack.run(n)))
    batch.start()

    def kept_responses() -> int:
        records = stack.client.keys(keys.subcall("*"))
        found = [stack.client.hget(r, "response") for r in records if not r.endswith(b":claim")]
        return sum(1 for f in found if f)

    # When it is killed with four calls accepted by the provider and none answered yet
    wait_for(lambda: kept_responses() >= 4, 20, "four background responses kept")
    first.kill()
    killed_at = time.time()
    assert stack.provider_calls() == 4
    # (killed before any of the four could have been answered to it)
    assert killed_at < min(r.timestamp for r in stack.provider.requests()) + 3.0
    stack.start(concurrency=4, RLM_JOBS_LLM_WORKER_CONCURRENCY="4", RLM_JOBS_BACKGROUND_CALLS="all")
    batch.join(timeout=60)
    # Then every call is answered, in order, and the provider was asked once per prompt:
    # the new worker fetched the four responses the dead one left
    assert not batch.is_alive()
    assert [r.text for r in results] == [f"C{i}" for i in range(n)]
    assert stack.provider_calls() == n
    requests = stack.provider.requests()
    assert [r.wire for r in requests] == ["responses"] * n
    assert stack.provider.ledger()[MODEL].retrievals >= n
    # and no record is left holding a response
    assert kept_responses() == 0
