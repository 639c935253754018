"""Queue and task names: what the submitter, the workers and the tests agree on."""

from __future__ import annotations

# Job loops: minutes each, acknowledged when done.
ORCHESTRATE_QUEUE = "rlm.orchestrate"
# Chunks of sub-calls: seconds each.
LLM_QUEUE = "rlm.llm"
RUN_JOB_TASK = "rlm.orchestrate.run_job"
LLM_TASK = "rlm.llm.complete"
