"""The sandbox's stdlib copy of the key names it derives equals the host's (rlm_jobs.keys)."""

from rlm_jobs import keys
from sandbox import wire


def test_the_sandbox_derives_the_same_message_keys_as_the_host() -> None:
    for sandbox_id, message_id in [("abc", "0123"), ("f" * 32, "e" * 32), ("s", "reply")]:
        prefix = keys.sandbox_message_prefix(sandbox_id)
        assert prefix.startswith(keys.sandbox_prefix(sandbox_id))
        assert wire.message_key(prefix, message_id) == keys.sandbox_message(sandbox_id, message_id)
        assert wire.reply_key(prefix, message_id) == keys.sandbox_reply(sandbox_id, message_id)
        # A reply's key can never be taken for a message's.
        assert wire.reply_key(prefix, message_id) != wire.message_key(prefix, message_id)
