"""Library mode end to end: `RLM(...).completion()` with real sandboxes, Redis and HTTP."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from rlm_jobs.api import RLM, RLMCompletion
from rlm_jobs.config import Settings
from rlm_jobs.contexts import put_context
from rlm_jobs.errors import ConfigError, SpecError
from rlm_jobs.models import JobSpec, JobStatus, Limits
from rlm_jobs.redis_server import RedisServer
from rlm_jobs.testing.policies.sub import NEGATIVE_WORDS, POSITIVE_WORDS
from rlm_jobs.testing.provider import ScriptedProvider
from tests.support import sandbox_pids, wait_for, wait_sandboxes_gone

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def settings(
    scripted_settings: Settings, redis_server: RedisServer, redis_client: redis.Redis
) -> Settings:
    return scripted_settings.model_copy(
        update={"redis_url": redis_server.url, "sandbox_redis_socket": redis_server.unix_socket}
    )


@pytest.fixture
def make_rlm(settings: Settings, redis_server: RedisServer) -> Iterator[type[RLM]]:
    made: list[RLM] = []
    marker = str(redis_server.workdir)

    def factory(policy: str, **kwargs: object) -> RLM:
        rlm = RLM(
            backend="scripted", backend_kwargs={"model_name": policy}, settings=settings, **kwargs
        )  # type: ignore[arg-type]
        made.append(rlm)
        return rlm

    yield factory  # type: ignore[misc]
    for rlm in made:
        rlm.close()
    wait_sandboxes_gone(marker)


def assert_usage_matches_provider(result: RLMCompletion, provider: ScriptedProvider) -> None:
    ledger = provider.ledger()
    assert set(result.usage.by_model) == set(ledger)
    for model, entry in ledger.items():
        ours = result.usage.by_model[model]
        assert (ours.calls, ours.input_tokens, ours.output_tokens) == (
            entry.calls,
            entry.input_tokens,
            entry.output_tokens,
        )


def test_needle_in_a_million_characters(make_rlm, scripted_provider: ScriptedProvider) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    words = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango"]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(20_000)]
    lines.insert(13_579, "The secret code is NEEDLE-31337.")
    context = "\n".join(lines)
    assert len(context) >= 1_000_000
    result = make_rlm("needle").completion(context, root_prompt="What is the secret code?")
    assert result.status is JobStatus.COMPLETED
    assert result.response == "NEEDLE-31337"
    subcalls = [
        c for e in result.trajectory[1:] for b in e["code_blocks"] for c in b["result"]["rlm_calls"]
    ]
    assert len(subcalls) >= 20  # chunked, and asked in one batch
    assert_usage_matches_provider(result, scripted_provider)


def test_aggregation_over_600_records(make_rlm, scripted_provider: ScriptedProvider) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    good, bad = sorted(POSITIVE_WORDS), sorted(NEGATIVE_WORDS)
    records, positives = [], 0
    for i in range(600):
        positive = rng.random() < 0.4
        positives += positive
        word = rng.choice(good if positive else bad)
        records.append(f"id={i}; review: the product was {word} overall")
    result = make_rlm("aggregate").completion(records, root_prompt="How many reviews are positive?")
    assert result.status is JobStatus.COMPLETED
    assert result.response == str(positives)
    assert_usage_matches_provider(result, scripted_provider)


def test_depth_two_recursion_counts_children_usage(
    make_rlm,  # type: ignore[no-untyped-def]
    scripted_provider: ScriptedProvider,
) -> None:
    facts = [f"Fact {i}: the tower number {i} is painted blue." for i in range(9)]
    filler = "Nothing important is said in this sentence at all. " * 12
    context = "\n".join(f"{filler}\n{fact}" for fact in facts)
    result = make_rlm("recurse", max_depth=2).completion(
        context, root_prompt="Which towers are painted blue?"
    )
    assert result.status is JobStatus.COMPLETED
    assert result.response is not None
    for i in range(9):
        assert f"tower number {i}" in result.response
    children = [
        c
        for e in result.trajectory[1:]
        for b in e["code_blocks"]
        for c in b["result"]["rlm_calls"]
        if c["kind"] == "rlm"
    ]
    assert len(children) == 3
    # Every call of the depth-2 tree is in the root's usage, exactly as the provider counted.
    assert_usage_matches_provider(result, scripted_provider)
    assert scripted_provider.ledger()["scripted/recurse"].calls > 3 * 3


def test_recovery_after_a_cell_raises(make_rlm) -> None:  # type: ignore[no-untyped-def]
    result = make_rlm("recover").completion(["a b", "c d e"], root_prompt="How big is it?")
    assert result.status is JobStatus.COMPLETED
    assert result.response == "2 items, 5 words"
    first_block = result.trajectory[1]["code_blocks"][0]["result"]
    assert "KeyError" in first_block["stderr"]


@pytest.mark.parametrize(
    ("policy", "limits", "status"),
    [
        ("stall", {"max_iterations": 3}, JobStatus.MAX_ITERATIONS),
        ("errors", {"max_errors": 2}, JobStatus.ERROR_LIMIT),
        ("chatty", {"max_tokens": 5_000}, JobStatus.TOKEN_LIMIT),
        ("chatty", {"max_budget": 0.002}, JobStatus.BUDGET_EXCEEDED),
        ("spin", {"max_timeout": 3}, JobStatus.TIMEOUT),
    ],
)
def test_each_limit_ends_the_job_with_its_own_status(
    make_rlm,  # type: ignore[no-untyped-def]
    policy: str,
    limits: dict[str, float],
    status: JobStatus,
) -> None:
    result = make_rlm(policy, **limits).completion("some context", root_prompt="Go on.")
    assert result.status is status, result.reason
    assert result.reason
    if status is JobStatus.MAX_ITERATIONS:
        assert result.iterations == 3
        assert result.response and "no REPL turns left" not in result.response
        last = result.trajectory[-1]["prompt"][-1]
        assert last["role"] == "user"  # the last request is a user message, not a prefill


def test_cancelling_a_running_job_stops_it(
    settings: Settings, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    from rlm_jobs.clients.router import LLMRouter
    from rlm_jobs.dispatch import InProcessDispatcher
    from rlm_jobs.engine import Engine, JobControl
    from rlm_jobs.journal import JournalStore
    from rlm_jobs.loop import run_loop
    from rlm_jobs.sandboxes.services import SandboxServices
    from rlm_jobs.sandboxes.session import open_repl_factory

    router = LLMRouter(settings)
    journals = JournalStore(redis_client)
    dispatcher = InProcessDispatcher(router, journals.calls, concurrency=4)
    services = SandboxServices(redis_client, settings)
    engine = Engine.build(
        settings,
        redis_client,
        dispatcher=dispatcher,
        repl_factory=open_repl_factory(services),
        journals=journals,
    )
    spec = JobSpec(
        query="spin",
        context=put_context(redis_client, "x"),
        model="scripted/spin",
        limits=Limits(cell_timeout_s=60),
    )
    flag: list[str] = []
    control = JobControl.for_root(spec, cancelled=lambda: flag[0] if flag else None)
    box: list[JobStatus] = []
    marker = str(redis_server.workdir)
    thread = threading.Thread(
        target=lambda: box.append(run_loop(spec, "c1", engine, control).status)
    )
    thread.start()
    wait_for(lambda: sandbox_pids(marker), 20, "the sandbox to start")
    flag.append("stopped by test")
    control.repls.interrupt()
    thread.join(timeout=30)
    assert box == [JobStatus.CANCELLED]
    wait_sandboxes_gone(marker)
    services.close()
    dispatcher.close()
    router.close()


def test_bad_input_is_refused_with_a_clear_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        RLM(backend="nope", settings=settings)
    with pytest.raises(ConfigError, match="unknown environment"):
        RLM(backend="scripted", environment="modal", settings=settings)
    with pytest.raises(SpecError, match="max_iterations"):
        RLM(backend="scripted", max_iterations=0, settings=settings)
    rlm = RLM(
        backend="scripted", backend_kwargs={"model_name": "no-such-policy"}, settings=settings
    )
    result = rlm.completion("ctx", root_prompt="q")
    rlm.close()
    assert result.status is JobStatus.FAILED and "no-such-policy" in result.reason


def test_trajectory_exports_in_the_reference_format(make_rlm) -> None:  # type: ignore[no-untyped-def]
    result = make_rlm("recover").completion(["a b"], root_prompt="How big?")
    lines = [json.loads(line) for line in result.trajectory_jsonl().splitlines()]
    assert lines[0]["type"] == "metadata" and lines[0]["root_model"] == "scripted/recover"
    iterations = lines[1:]
    assert [e["iteration"] for e in iterations] == list(range(1, len(iterations) + 1))
    for entry in iterations:
        assert {"prompt", "response", "code_blocks", "final_answer", "iteration_time"} <= set(entry)
        for block in entry["code_blocks"]:
            assert {"stdout", "stderr", "locals", "execution_time", "rlm_calls"} <= set(
                block["result"]
            )
    assert iterations[-1]["final_answer"] == result.response


def test_library_mode_starts_its_own_redis_when_none_is_configured(
    scripted_settings: Settings,
) -> None:
    rlm = RLM(
        backend="scripted", backend_kwargs={"model_name": "recover"}, settings=scripted_settings
    )
    try:
        result = rlm.completion(["x y z"], root_prompt="size?")
    finally:
        rlm.close()
    assert result.status is JobStatus.COMPLETED and result.response == "1 items, 3 words"
    assert uuid.UUID(hex=result.job_id)
