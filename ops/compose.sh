#!/usr/bin/env bash
# Run Compose on compose.yaml with what it needs worked out:
#   - `docker compose` (v2 plugin) if present, else `docker-compose` (v1; Debian 12's
#     package is v1.29, installed with apt-get install docker-compose)
#   - DOCKER_GID: the group of the Docker socket, given to the orchestrators
#   - BASE_IMAGE: python:3.12-slim, or the local Debian base when no registry is reachable
#   - RLM_JOBS_REDIS_PASSWORD, RLM_JOBS_GRAFANA_PASSWORD: kept in $RLM_JOBS_CACHE_DIR
#     (mode 600), made on first use, unless set by the caller
#   - the sandbox image, built if missing (orchestrators start containers from it)
#   - Prometheus: the official image, or one built from Debian's package when it cannot
#     be pulled; Grafana (profile `dashboard`): on when its image is here or pullable
#
#   ops/compose.sh up -d --build
#   ops/compose.sh up -d --scale llm-worker=4
#   eval "$(ops/compose.sh env)"    # RLM_JOBS_REDIS_URL for rlm-jobs on this host
#   ops/compose.sh down
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE_DIR="${RLM_JOBS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rlm-jobs}"

log() { printf 'compose: %s\n' "$*" >&2; }

# Pinned defaults (compose.yaml names the same ones for runs without this script).
PROMETHEUS_IMAGE="prom/prometheus:v3.5.0"
PROMETHEUS_LOCAL_IMAGE="rlm-jobs-prometheus:local"
GRAFANA_IMAGE="grafana/grafana:12.0.2"

# A secret kept in $CACHE_DIR/NAME (mode 600), made on first use.
secret() {
    local file="$CACHE_DIR/$1"
    mkdir -p "$CACHE_DIR"
    if [ ! -s "$file" ]; then
        (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$file")
        log "made a secret in $file"
    fi
    cat "$file"
}

if [ -z "${RLM_JOBS_REDIS_PASSWORD:-}" ]; then
    RLM_JOBS_REDIS_PASSWORD="$(secret redis-password)"
fi
export RLM_JOBS_REDIS_PASSWORD
if [ -z "${RLM_JOBS_GRAFANA_PASSWORD:-}" ]; then
    RLM_JOBS_GRAFANA_PASSWORD="$(secret grafana-password)"
fi
export RLM_JOBS_GRAFANA_PASSWORD

# `env`: what a submitter on this host needs (Redis is published on loopback only).
if [ "${1:-}" = "env" ]; then
    password="$(printf '%s' "$RLM_JOBS_REDIS_PASSWORD" \
        | python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read(), safe=""))')"
    printf "export RLM_JOBS_REDIS_URL='redis://:%s@127.0.0.1:%s/0'\n" \
        "$password" "${RLM_JOBS_REDIS_PORT:-6380}"
    exit 0
fi

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

# Present, or pulled now.
have_image() {
    docker image inspect "$1" >/dev/null 2>&1 || timeout 600 docker pull -q "$1" >/dev/null 2>&1
}

needs_images=0
for arg in "$@"; do
    case "$arg" in up | build | create | run) needs_images=1 ;; esac
done
case "$needs_images" in
    1)
        BASE_IMAGE="$("$HERE/detect-base-image.sh")"
        export BASE_IMAGE
        sandbox_image="${RLM_JOBS_DOCKER_IMAGE:-rlm-jobs-sandbox:latest}"
        if ! docker image inspect "$sandbox_image" >/dev/null 2>&1; then
            RLM_JOBS_SANDBOX_IMAGE="$sandbox_image" "$HERE/build-images.sh" sandbox
        fi
        # Builds need the network for pip: without buildx the classic builder is used.
        docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
        if [ -z "${RLM_JOBS_PROMETHEUS_IMAGE:-}" ] && ! have_image "$PROMETHEUS_IMAGE"; then
            log "cannot pull $PROMETHEUS_IMAGE (no registry?): using Debian's Prometheus"
            docker image inspect "$PROMETHEUS_LOCAL_IMAGE" >/dev/null 2>&1 \
                || "$HERE/build-images.sh" prometheus
            export RLM_JOBS_PROMETHEUS_IMAGE="$PROMETHEUS_LOCAL_IMAGE"
        fi
        ;;
esac
export RLM_JOBS_PROMETHEUS_IMAGE="${RLM_JOBS_PROMETHEUS_IMAGE:-$PROMETHEUS_IMAGE}"

# Grafana only when its image can be had: offline there is none (no Debian package).
profiles=()
export RLM_JOBS_GRAFANA_IMAGE="${RLM_JOBS_GRAFANA_IMAGE:-$GRAFANA_IMAGE}"
if docker image inspect "$RLM_JOBS_GRAFANA_IMAGE" >/dev/null 2>&1 \
    || { [ "$needs_images" = 1 ] && have_image "$RLM_JOBS_GRAFANA_IMAGE"; }; then
    profiles=(--profile dashboard)
elif [ "$needs_images" = 1 ]; then
    log "cannot pull $RLM_JOBS_GRAFANA_IMAGE (no registry?): no Grafana; Prometheus has the" \
        "same numbers at http://127.0.0.1:${RLM_JOBS_PROMETHEUS_PORT:-9090}"
fi

for arg in "$@"; do
    if [ "$arg" = up ]; then
        urls="Flower http://127.0.0.1:${RLM_JOBS_FLOWER_PORT:-5555}"
        urls+=", Prometheus http://127.0.0.1:${RLM_JOBS_PROMETHEUS_PORT:-9090}"
        if [ ${#profiles[@]} -gt 0 ]; then
            urls+=", Grafana http://127.0.0.1:${RLM_JOBS_GRAFANA_PORT:-3000}"
        fi
        log "$urls"
        log "submit from this host: eval \"\$(ops/compose.sh env)\"; rlm-jobs batch DIR -q ..."
        break
    fi
done

cd "$ROOT"
exec "${compose[@]}" -f "$ROOT/compose.yaml" "${profiles[@]}" "$@"
