#!/usr/bin/env bash
# The sample batch end to end on this machine: ten incident reports, one question each.
#
#   examples/run_sample.sh [results.jsonl]
#
# Without RLM_JOBS_REDIS_URL, `rlm-jobs run` starts a private stack (redis-server and Celery
# workers in its own process) and tears it down afterwards; with it, the batch goes to that
# cluster. Without OPENAI_API_KEY / ANTHROPIC_API_KEY the offline scripted model answers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-results.jsonl}"
# The installed command, else the repository's virtualenv.
cli="$(command -v rlm-jobs || echo "$here/../.venv/bin/rlm-jobs")"

"$cli" run "$here/docs" -q "What was the root cause of the incident?" -o "$out"

echo "Each line of $out is one document's result row; the first one:"
head -n 1 "$out"
