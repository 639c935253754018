"""Custom tools: the user's Python functions, called from the REPL, run on the host.

``ToolSet`` (``registry``) is what the user registered (``RLM(custom_tools=...)`` in
library mode, the module named by ``RLM_JOBS_TOOLS`` on workers); ``Toolbox`` adds what
runs them (``runner``: a bounded set of threads, each call with a time limit) and the JSON
limits at the boundary (``values``). ``ToolCallsForJob`` (``calls``) answers one job's
tool requests: journaled, so a resumed job replays what its tools returned.
"""

from rlm_jobs.tools.registry import Tool, Toolbox, ToolSet

__all__ = ["Tool", "ToolSet", "Toolbox"]
