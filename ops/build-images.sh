#!/usr/bin/env bash
# Build the rlm-jobs images: the sandbox (rlm-jobs-sandbox:latest) and the worker
# (rlm-jobs-worker:latest).
#
#   ops/build-images.sh              # both
#   ops/build-images.sh sandbox      # only the sandbox image (all the tests need)
#
# Base image: $BASE_IMAGE if set; else python:3.12-slim if present or pullable; else a
# local Debian base built without any registry by ops/build-base-image.sh
# (rlm-jobs-base:local). Docker's layer cache makes a rebuild with no changes take seconds.
#
# Builds use `--network host`, so pip reaches the package index even when dockerd runs
# without a bridge (--bridge=none, see ops/start-dockerd.sh).
#
# Environment:
#   BASE_IMAGE             base for both images (skips the detection above)
#   RLM_JOBS_SANDBOX_IMAGE tag of the sandbox image (default rlm-jobs-sandbox:latest)
#   RLM_JOBS_WORKER_IMAGE  tag of the worker image  (default rlm-jobs-worker:latest)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DEFAULT_BASE="python:3.12-slim"
LOCAL_BASE="${RLM_JOBS_BASE_IMAGE:-rlm-jobs-base:local}"
SANDBOX_IMAGE="${RLM_JOBS_SANDBOX_IMAGE:-rlm-jobs-sandbox:latest}"
WORKER_IMAGE="${RLM_JOBS_WORKER_IMAGE:-rlm-jobs-worker:latest}"

log() { printf 'build-images: %s\n' "$*" >&2; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sandbox worker)
for t in "${targets[@]}"; do
    case "$t" in
        sandbox | worker) ;;
        *) log "unknown target $t (choose sandbox, worker)"; exit 2 ;;
    esac
done

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers; start one first (sudo ops/start-dockerd.sh)"
    exit 1
fi

if [ -z "${BASE_IMAGE:-}" ]; then
    if docker image inspect "$DEFAULT_BASE" >/dev/null 2>&1 \
        || timeout 300 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
        BASE_IMAGE="$DEFAULT_BASE"
    else
        log "cannot pull $DEFAULT_BASE (no registry?); using the local base $LOCAL_BASE"
        RLM_JOBS_BASE_IMAGE="$LOCAL_BASE" "$HERE/build-base-image.sh"
        BASE_IMAGE="$LOCAL_BASE"
    fi
fi
log "base image: $BASE_IMAGE"

# Without the buildx plugin the CLI falls back to the classic builder anyway; say so
# explicitly to skip its warning. The Dockerfiles work with both.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

build() {
    local tag="$1" dockerfile="$2" start=$SECONDS
    log "building $tag from $dockerfile"
    docker build --network host --pull=false \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --label "rlm-jobs.base-image=$BASE_IMAGE" \
        -f "$ROOT/$dockerfile" -t "$tag" "$ROOT" >&2
    log "built $tag in $((SECONDS - start))s"
}

for t in "${targets[@]}"; do
    case "$t" in
        sandbox) build "$SANDBOX_IMAGE" sandbox/Dockerfile ;;
        worker) build "$WORKER_IMAGE" Dockerfile ;;
    esac
done
