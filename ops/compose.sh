#!/usr/bin/env bash
# Run Compose on compose.yaml with what it needs worked out:
#   - `docker compose` (v2 plugin) if present, else `docker-compose` (v1; Debian 12's
#     package is v1.29, installed with apt-get install docker-compose)
#   - DOCKER_GID: the group of the Docker socket, given to the orchestrators
#   - BASE_IMAGE: python:3.12-slim, or the local Debian base when no registry is reachable
#   - RLM_JOBS_REDIS_PASSWORD: kept in $RLM_JOBS_CACHE_DIR/redis-password (mode 600),
#     made on first use, unless set by the caller
#   - the sandbox image, built if missing (orchestrators start containers from it)
#
#   ops/compose.sh up -d --build
#   ops/compose.sh up -d --scale llm-worker=4
#   ops/compose.sh down
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE_DIR="${RLM_JOBS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rlm-jobs}"

log() { printf 'compose: %s\n' "$*" >&2; }

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    log "neither 'docker compose' nor 'docker-compose' found (Debian: apt-get install docker-compose)"
    exit 1
fi

socket="${DOCKER_SOCKET:-/var/run/docker.sock}"
export DOCKER_SOCKET="$socket"
export DOCKER_GID="${DOCKER_GID:-$(stat -c %g "$socket")}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-rlm-jobs}"

if [ -z "${RLM_JOBS_REDIS_PASSWORD:-}" ]; then
    mkdir -p "$CACHE_DIR"
    if [ ! -s "$CACHE_DIR/redis-password" ]; then
        (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$CACHE_DIR/redis-password")
        log "made a Redis password in $CACHE_DIR/redis-password"
    fi
    RLM_JOBS_REDIS_PASSWORD="$(cat "$CACHE_DIR/redis-password")"
    export RLM_JOBS_REDIS_PASSWORD
fi

needs_images=0
for arg in "$@"; do
    case "$arg" in up | build | create | run) needs_images=1 ;; esac
done
case "$needs_images" in
    1)
        BASE_IMAGE="$("$HERE/detect-base-image.sh")"
        export BASE_IMAGE
        if ! docker image inspect "${RLM_JOBS_DOCKER_IMAGE:-rlm-jobs-sandbox:latest}" >/dev/null 2>&1; then
            "$HERE/build-images.sh" sandbox
        fi
        # Builds need the network for pip: without buildx the classic builder is used.
        docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
        ;;
esac

cd "$ROOT"
exec "${compose[@]}" -f "$ROOT/compose.yaml" "$@"
