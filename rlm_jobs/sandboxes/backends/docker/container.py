"""The arguments of one sandbox container: every lock-down in one place.

No network, a read-only root file system, size-limited tmpfs for ``/scratch`` and
``/tmp``, memory (swap included), CPU and process limits, a non-root uid, no capabilities,
``no-new-privileges``, and only the image's environment. Its one way out is the Redis Unix
socket mount (``socket_mount``). docs/docker.md has the table with the reason for each.
"""

from __future__ import annotations

import re
from typing import Any

from rlm_jobs.config import Settings
from rlm_jobs.sandboxes.backends.docker import owner
from sandbox import determinism
from sandbox.wire import Bootstrap

# The uid:gid the image creates for the runtime; never root.
SANDBOX_USER = "10001:10001"
# The runtime's working directory and home: a tmpfs, like /tmp.
SCRATCH_DIR = "/scratch"
# Open files per sandbox: plenty for Python and Redis, not enough to exhaust the host.
MAX_OPEN_FILES = 1024
# The runtime's own stdout/stderr kept by Docker: enough for a traceback, bounded for spam.
LOG_MAX_SIZE = "1m"

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def container_args(
    docker_types: Any, settings: Settings, boot: Bootstrap, *, socket_mount: Any, cpus: float
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` (``docker_types`` is ``docker.types``)."""
    memory = f"{settings.sandbox_memory_mb}m"
    scratch = f"size={settings.sandbox_scratch_mb}m,noexec,nosuid,nodev"
    return {
        "image": settings.docker_image,
        "name": "rlm-sbx-" + _NAME_UNSAFE.sub("-", boot.sandbox_id)[:48],
        "labels": owner.labels(boot.sandbox_id),
        # The bootstrap arrives on stdin, which closes when our attach ends.
        "stdin_open": True,
        "detach": False,
        "tty": False,
        # The image's environment (PATH, HOME, LANG) and the fixed hash seed, nothing else:
        # no proxies from the CLI config.
        "environment": dict(determinism.ENVIRONMENT),
        "use_config_proxy": False,
        "user": SANDBOX_USER,
        "working_dir": SCRATCH_DIR,
        "hostname": "sandbox",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {
            SCRATCH_DIR: f"{scratch},uid=10001,gid=10001,mode=0700",
            "/tmp": f"{scratch},mode=1777",
        },
        "mounts": [socket_mount],
        "mem_limit": memory,
        "memswap_limit": memory,  # equal: no swap on top of the memory limit
        "nano_cpus": int(cpus * 1e9),
        "pids_limit": settings.sandbox_max_processes,
        "ulimits": [
            docker_types.Ulimit(name="nofile", soft=MAX_OPEN_FILES, hard=MAX_OPEN_FILES),
            docker_types.Ulimit(name="core", soft=0, hard=0),
        ],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "ipc_mode": "private",
        # tini as pid 1: reaps zombies of model-started processes, forwards signals.
        "init": True,
        "log_config": docker_types.LogConfig(
            type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "1"}
        ),
    }
