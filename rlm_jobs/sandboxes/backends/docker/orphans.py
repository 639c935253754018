"""Removing sandbox containers whose launching process is gone (a worker that died).

Every live orchestrator's reaper calls ``reap_orphans`` every ``sandbox_sweep_interval_s``.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.errors import SandboxError
from rlm_jobs.sandboxes.backends.docker import owner, sdk

log = logging.getLogger(__name__)


def reap_orphans(settings: Settings, *, client: Any = None) -> list[str]:
    """Remove sandbox containers whose launching process is gone; return their sandbox ids.

    A container launched in another pid namespace is judged by its owner container (gone,
    stopped or restarted since means orphaned); one whose owner cannot be judged from here
    is left alone.
    """
    client = client if client is not None else sdk.connect(settings)
    errors = sdk.api_errors()
    me = owner.Owner.current()
    try:
        containers = client.containers.list(all=True, filters={"label": owner.SANDBOX_LABEL})
    except errors as exc:
        raise SandboxError(f"cannot list sandbox containers: {exc}") from exc
    reaped: list[str] = []
    for container in containers:
        labels = container.labels or {}
        if _owner_alive(client, errors, me, labels, str(container.attrs.get("Created", ""))):
            continue
        sandbox_id = str(labels.get(owner.SANDBOX_LABEL, ""))
        try:
            container.remove(force=True)
        except errors as exc:
            if not sdk.is_not_found(exc):
                log.warning("could not remove orphaned sandbox %s: %s", container.name, exc)
                continue
        log.info("removed orphaned sandbox container %s (%s)", container.name, sandbox_id)
        reaped.append(sandbox_id)
    return reaped


def _owner_alive(
    client: Any,
    errors: tuple[type[BaseException], ...],
    me: owner.Owner,
    labels: dict[str, str],
    created: str,
) -> bool:
    launcher = owner.Owner.parse(labels.get(owner.OWNER_LABEL, ""))
    if launcher is None:
        return False  # ours by its sandbox label, but unaccountable: nobody will clean it
    if launcher.boot_id != me.boot_id:
        return False  # launched before the last reboot
    if launcher.pid_namespace == me.pid_namespace:
        return owner.start_ticks(launcher.pid) == launcher.start_ticks
    owner_container = labels.get(owner.OWNER_CONTAINER_LABEL)
    if not owner_container:
        return True  # another pid namespace we cannot look into
    try:
        state = client.api.inspect_container(owner_container).get("State") or {}
    except errors as exc:
        if sdk.is_not_found(exc):
            return False
        raise SandboxError(f"cannot inspect container {owner_container[:12]}: {exc}") from exc
    if not state.get("Running"):
        return False
    # Restarted after the sandbox was made: the process that made it is gone.
    started, made = _docker_time(state.get("StartedAt", "")), _docker_time(created)
    return started is None or made is None or started <= made


def _docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 timestamps carry nanoseconds; datetime takes microseconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone)
