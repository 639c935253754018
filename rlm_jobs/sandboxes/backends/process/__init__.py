"""The process backend: one bubblewrap-isolated runtime child process per sandbox.

``backend`` starts them; ``sandbox`` is one started process; ``isolation`` checks once that
bubblewrap works here; ``bwrap`` builds its command line, ``cgroups`` and ``seccomp`` the
limits around it, ``spawn`` forks the child into them, ``output`` keeps the end of every
child's log.
"""

from rlm_jobs.sandboxes.backends.process.backend import ProcessBackend
from rlm_jobs.sandboxes.backends.process.sandbox import ProcessSandbox

__all__ = ["ProcessBackend", "ProcessSandbox"]
