"""Library mode: one RLM completion in this process, with the reference's API.

    python examples/library_mode.py                        # offline, the scripted model
    OPENAI_API_KEY=sk-... python examples/library_mode.py  # a real model

The REPL still runs in a sandbox reached through Redis: RLM_JOBS_REDIS_URL, or a private
redis-server started for this process. The ten sample reports go in as one dict context.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlm_jobs import RLM

DOCS = Path(__file__).resolve().parent / "docs"
QUERY = "What was the root cause of each incident?"


def ask(rlm: RLM) -> None:
    context = {path.name: path.read_text() for path in sorted(DOCS.iterdir())}
    with rlm:
        completion = rlm.completion(context, root_prompt=QUERY)
    print(f"status: {completion.status.value} after {completion.iterations} iterations")
    print(f"answer: {completion.response}")
    for model, usage in completion.usage_summary.model_usage_summaries.items():
        print(
            f"usage:  {model}: {usage.total_calls} calls, {usage.total_input_tokens} in / "
            f"{usage.total_output_tokens} out tokens, ${usage.total_cost_usd:.4f}"
        )
    print(f"time:   {completion.execution_time:.1f} s")


def main() -> None:
    if os.environ.get("OPENAI_API_KEY"):
        ask(RLM(backend="openai", backend_kwargs={"model_name": "gpt-4o-mini"}))
        return
    # No key: the offline scripted provider, a real HTTP server speaking the OpenAI format.
    from rlm_jobs.testing import ScriptedProvider

    with ScriptedProvider() as provider:
        ask(
            RLM(
                backend="scripted",
                backend_kwargs={"model_name": "generic", "base_url": provider.url},
            )
        )


if __name__ == "__main__":
    main()
