"""The docker backend: one locked-down container per sandbox.

``backend`` starts them; ``container`` holds every container argument; ``socket_mount``
gives a container the Redis socket alone; ``sandbox`` is one started container; ``owner``
labels who launched it and ``orphans`` removes those whose launcher died; ``sdk`` imports
the Docker SDK lazily and names its errors.
"""

from rlm_jobs.sandboxes.backends.docker.backend import DEFAULT_CPUS, DockerBackend
from rlm_jobs.sandboxes.backends.docker.orphans import reap_orphans
from rlm_jobs.sandboxes.backends.docker.owner import (
    OWNER_CONTAINER_LABEL,
    OWNER_LABEL,
    SANDBOX_LABEL,
    Owner,
)
from rlm_jobs.sandboxes.backends.docker.sandbox import DockerSandbox
from rlm_jobs.sandboxes.backends.docker.sdk import connect

__all__ = [
    "DEFAULT_CPUS",
    "OWNER_CONTAINER_LABEL",
    "OWNER_LABEL",
    "SANDBOX_LABEL",
    "DockerBackend",
    "DockerSandbox",
    "Owner",
    "connect",
    "reap_orphans",
]
