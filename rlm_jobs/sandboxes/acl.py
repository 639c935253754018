"""One Redis ACL user per sandbox: its own channels, its own keys and its context read-only.

The command list is the minimum the runtime uses, found by running it with nothing else
allowed and reading ``ACL LOG`` (a test keeps it that way): AUTH needs no permission, the
runtime's own client (``sandbox.resp``) sends no ``HELLO`` or ``CLIENT SETINFO``, and
closing a pub/sub connection sends no UNSUBSCRIBE. Only the SHA-256 of the password is sent
to Redis, so the password itself never appears in MONITOR or ``ACL LIST``.

The ACL only confines sandboxes if Redis's ``default`` user has a password: the sandbox can
reach the server's socket and could otherwise simply not log in as its own user.

Every user made here is remembered (``identities``) so that a Redis restarted on its
append-only file, which keeps no ACL users, is told them again.
"""

from __future__ import annotations

import hashlib
import secrets

import redis

from rlm_jobs import keys
from rlm_jobs.errors import ConfigError, SandboxError
from rlm_jobs.sandboxes.identities import Identities

# Everything a sandbox may do, and none of it writes a key (the host is the only writer):
# SUBSCRIBE its input channel, PUBLISH on its output channel (its only way out), GET its
# context and the copies of the host's messages.
SANDBOX_COMMANDS = ("subscribe", "publish", "get")


def create_user(
    client: redis.Redis, identities: Identities, sandbox_id: str, context_key: str | None
) -> str:
    """Create the sandbox's user and return its password (kept only in the bootstrap).

    Without ``context_key`` (a pooled sandbox) the user can read no context until
    ``grant_context`` gives it its job's.
    """
    password = secrets.token_urlsafe(32)
    prefix = keys.sandbox_prefix(sandbox_id)
    rules = [
        "reset",
        "on",
        "#" + hashlib.sha256(password.encode()).hexdigest(),
        f"%R~{prefix}*",
        *([f"%R~{context_key}"] if context_key is not None else []),
        f"&{prefix}*",
        "-@all",
        *(f"+{c}" for c in SANDBOX_COMMANDS),
    ]
    user = keys.sandbox_user(sandbox_id)
    try:
        # redis-py's acl_setuser cannot express a read-only %R~ key pattern.
        client.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        raise ConfigError(
            f"Redis refused to create a sandbox ACL user (needs Redis 7+): {exc}"
        ) from exc
    except redis.RedisError as exc:
        raise SandboxError(f"could not create the sandbox's ACL user: {exc}") from exc
    identities.remember(sandbox_id, rules)
    return password


def grant_context(
    client: redis.Redis, identities: Identities, sandbox_id: str, context_key: str
) -> None:
    """Let the sandbox read one context blob (read-only); its other rules stay.

    The user's whole rule set goes again with the grant (without ``reset``, which would
    cut its subscription): a user forgotten by a Redis restart and not yet restored would
    otherwise come back as a disabled user holding nothing but the grant.
    """
    user, rule = keys.sandbox_user(sandbox_id), f"%R~{context_key}"
    known = identities.add_rule(sandbox_id, rule)
    rules = [r for r in known if r != "reset"] if known else [rule]
    try:
        client.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]
    except redis.RedisError as exc:
        raise SandboxError(f"could not grant the sandbox its context: {exc}") from exc


def delete_user(client: redis.Redis, identities: Identities, sandbox_id: str) -> None:
    """Remove the user and close its connections (ACL DELUSER disconnects them)."""
    user = keys.sandbox_user(sandbox_id)
    identities.forget(sandbox_id)  # first: no restore may bring it back
    try:
        client.acl_deluser(user)
    except redis.RedisError as exc:
        raise SandboxError(f"could not delete the sandbox's ACL user: {exc}") from exc


def delete_keys(client: redis.Redis, sandbox_id: str) -> int:
    """Delete every key in the sandbox's namespace; returns how many there were."""
    pattern = keys.sandbox_prefix(sandbox_id) + "*"
    deleted = 0
    try:
        batch: list[str] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    except redis.RedisError as exc:
        raise SandboxError(f"could not delete the sandbox's keys: {exc}") from exc
    return deleted


def default_user_is_open(client: redis.Redis) -> bool:
    """Whether Redis's ``default`` user needs no password.

    Then a sandbox, which can reach the server through its socket, could skip its own ACL
    user and connect as ``default`` with full access to every key.
    """
    try:
        info = client.acl_getuser("default")
    except redis.RedisError:
        return False  # we may not be allowed to look; then we cannot tell
    flags = info.get("flags") if isinstance(info, dict) else None
    return isinstance(flags, list) and "on" in flags and "nopass" in flags
