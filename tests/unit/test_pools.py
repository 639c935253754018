from celery.concurrency import get_implementation

from workers.pools import pool_asked_on_command_line, refusal


def test_the_pool_option_is_read_in_every_spelling() -> None:
    for argv in (
        ["-A", "workers", "worker", "--pool", "prefork"],
        ["-A", "workers", "worker", "--pool=prefork"],
        ["-A", "workers", "worker", "-P", "prefork", "-c", "4"],
        ["-A", "workers", "worker", "-Pprefork"],
    ):
        assert pool_asked_on_command_line(argv) == "prefork", argv
    assert pool_asked_on_command_line(["-A", "workers", "worker", "-Q", "rlm.llm"]) is None


def test_only_threads_and_solo_are_accepted() -> None:
    assert refusal(get_implementation("threads")) is None
    assert refusal(get_implementation("solo")) is None
    problem = refusal(get_implementation("prefork"))
    assert problem is not None and "not prefork" in problem and "\n" not in problem
    # Celery runs the configured pool for `--pool prefork`; asking for it is still refused.
    assert refusal(get_implementation("threads"), prefork_asked=True) is not None
