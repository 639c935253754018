#!/usr/bin/env bash
# Build the rlm-jobs images: the sandbox (rlm-jobs-sandbox:latest), the worker
# (rlm-jobs-worker:latest) and Redis for the compose stack (rlm-jobs-redis:latest); on
# request, Prometheus from Debian's package for an offline stack (rlm-jobs-prometheus:local).
#
#   ops/build-images.sh              # sandbox, worker, redis
#   ops/build-images.sh sandbox      # only the sandbox image (all the tests need)
#   ops/build-images.sh prometheus   # ops/compose.sh does this when no registry answers
#
# Base image: $BASE_IMAGE if set; else python:3.12-slim if present or pullable; else a
# local Debian base built without any registry (ops/detect-base-image.sh).
# Docker's layer cache makes a rebuild with no changes take seconds.
#
# Builds use `--network host`, so pip reaches the package index even when dockerd runs
# without a bridge (--bridge=none, see ops/start-dockerd.sh).
#
# Environment:
#   BASE_IMAGE             base for both images (skips the detection above)
#   RLM_JOBS_BASE_IMAGE    tag of the local base    (default rlm-jobs-base:local)
#   RLM_JOBS_SANDBOX_IMAGE tag of the sandbox image (default rlm-jobs-sandbox:latest)
#   RLM_JOBS_WORKER_IMAGE  tag of the worker image  (default rlm-jobs-worker:latest)
#   RLM_JOBS_REDIS_IMAGE   tag of the Redis image   (default rlm-jobs-redis:latest)
#   RLM_JOBS_PROMETHEUS_LOCAL_IMAGE  tag of the Debian Prometheus (rlm-jobs-prometheus:local)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SANDBOX_IMAGE="${RLM_JOBS_SANDBOX_IMAGE:-rlm-jobs-sandbox:latest}"
WORKER_IMAGE="${RLM_JOBS_WORKER_IMAGE:-rlm-jobs-worker:latest}"

log() { printf 'build-images: %s\n' "$*" >&2; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sandbox worker redis)
for t in "${targets[@]}"; do
    case "$t" in
        sandbox | worker | redis | prometheus) ;;
        *) log "unknown target $t (choose sandbox, worker, redis, prometheus)"; exit 2 ;;
    esac
done

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers; start one first (sudo ops/start-dockerd.sh)"
    exit 1
fi

BASE_IMAGE="$("$HERE/detect-base-image.sh")"
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
        redis) build "${RLM_JOBS_REDIS_IMAGE:-rlm-jobs-redis:latest}" ops/redis.Dockerfile ;;
        prometheus)
            build "${RLM_JOBS_PROMETHEUS_LOCAL_IMAGE:-rlm-jobs-prometheus:local}" \
                ops/prometheus.Dockerfile
            ;;
    esac
done
