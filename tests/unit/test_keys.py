"""What the sandbox keeps a stdlib copy of equals the host's: the key names it derives
(rlm_jobs.keys) and its reconnect backoff (rlm_jobs.timing)."""

from rlm_jobs import keys, timing
from sandbox import runtime, wire


def test_the_sandbox_derives_the_same_message_keys_as_the_host() -> None:
    for sandbox_id, message_id in [("abc", "0123"), ("f" * 32, "e" * 32), ("s", "reply")]:
        prefix = keys.sandbox_message_prefix(sandbox_id)
        assert prefix.startswith(keys.sandbox_prefix(sandbox_id))
        assert wire.message_key(prefix, message_id) == keys.sandbox_message(sandbox_id, message_id)
        assert wire.reply_key(prefix, message_id) == keys.sandbox_reply(sandbox_id, message_id)
        # A reply's key can never be taken for a message's.
        assert wire.reply_key(prefix, message_id) != wire.message_key(prefix, message_id)


def test_the_runtime_backs_off_like_the_host_while_redis_is_away() -> None:
    assert (runtime.RECONNECT_FIRST_S, runtime.RECONNECT_CAP_S) == (
        timing.REDIS_RETRY_FIRST_S,
        timing.REDIS_RETRY_CAP_S,
    )
