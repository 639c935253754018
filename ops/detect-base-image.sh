#!/usr/bin/env bash
# Print the base image to build rlm-jobs images on: $BASE_IMAGE if set; else
# python:3.12-slim if present or pullable; else the local Debian base, built without any
# registry by ops/build-base-image.sh (rlm-jobs-base:local) if it does not exist yet.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEFAULT_BASE="python:3.12-slim"
LOCAL_BASE="${RLM_JOBS_BASE_IMAGE:-rlm-jobs-base:local}"

if [ -n "${BASE_IMAGE:-}" ]; then
    echo "$BASE_IMAGE"
elif docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1 \
    || timeout 300 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    echo "$DEFAULT_BASE"
else
    echo "detect-base-image: cannot pull $DEFAULT_BASE (no registry?); using $LOCAL_BASE" >&2
    RLM_JOBS_BASE_IMAGE="$LOCAL_BASE" "$HERE/build-base-image.sh" >&2
    echo "$LOCAL_BASE"
fi
