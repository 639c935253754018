#!/usr/bin/env bash
# Start a Docker engine if none answers, and wait until it does.
#
# Idempotent: exits at once when `docker info` already works. Meant for CI and dev
# machines without systemd (run as root); where systemd manages Docker, use it instead.
#
# It tries, in order, until one daemon comes up:
#   1. overlay2 storage, default bridge + iptables (full networking: compose, builds)
#   2. overlay2, --iptables=false --bridge=none (sandboxes need no network; builds then
#      need `--network host`, which ops/build-images.sh uses)
#   3. vfs storage (slow, copies every layer) with the same networking fallback
# The configuration that worked is written to $STATE_FILE for the other ops scripts.
#
# Environment:
#   RLM_JOBS_DOCKERD_LOG        daemon log file      (default /var/log/rlm-jobs-dockerd.log)
#   RLM_JOBS_DOCKERD_TIMEOUT_S  wait per attempt, s  (default 60)
#   RLM_JOBS_DOCKERD_ARGS       extra dockerd flags, e.g. "--data-root /srv/docker"
set -euo pipefail

LOG_FILE="${RLM_JOBS_DOCKERD_LOG:-/var/log/rlm-jobs-dockerd.log}"
TIMEOUT_S="${RLM_JOBS_DOCKERD_TIMEOUT_S:-60}"
EXTRA_ARGS="${RLM_JOBS_DOCKERD_ARGS:-}"
STATE_FILE="/run/rlm-jobs-dockerd.env"

log() { printf 'start-dockerd: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    log "a Docker engine already answers ($(docker info --format '{{.ServerVersion}} {{.Driver}}'))"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    log "dockerd not found: install it (Debian: apt-get install -y docker.io)"
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    log "must run as root to start dockerd (or start Docker through systemd)"
    exit 1
fi
if ! pgrep -x dockerd >/dev/null; then
    # Leftovers of a daemon that was killed (e.g. at the end of a CI run): a stale pid
    # file makes dockerd refuse to start if the pid has been reused.
    rm -f /var/run/docker.sock /var/run/docker.pid
fi
if pgrep -x dockerd >/dev/null; then
    log "dockerd is running but not answering; waiting for it"
    for _ in $(seq 1 "$((TIMEOUT_S * 4))"); do
        docker info >/dev/null 2>&1 && exit 0
        sleep 0.25
    done
    log "dockerd runs but does not answer after ${TIMEOUT_S}s; see $LOG_FILE"
    exit 1
fi

mkdir -p "$(dirname "$LOG_FILE")"

# try_start NAME FLAGS...: start dockerd with FLAGS, return 0 once it answers.
try_start() {
    local name="$1"
    shift
    log "starting dockerd ($name), log: $LOG_FILE"
    printf '\n==== %s start-dockerd: %s: dockerd %s\n' "$(date -Is)" "$name" "$*" >>"$LOG_FILE"
    # setsid: the daemon outlives this script and its terminal.
    # shellcheck disable=SC2086
    setsid dockerd "$@" $EXTRA_ARGS >>"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    local deadline=$((SECONDS + TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if docker info >/dev/null 2>&1; then
            log "dockerd ($name) is up, pid $pid, in $((SECONDS - start_s))s"
            printf 'RLM_JOBS_DOCKERD_MODE=%s\nRLM_JOBS_DOCKERD_PID=%s\n' "$name" "$pid" >"$STATE_FILE"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd ($name) exited; last log lines:"
            tail -n 5 "$LOG_FILE" >&2 || true
            return 1
        fi
        sleep 0.25
    done
    log "dockerd ($name) did not answer within ${TIMEOUT_S}s; stopping it"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
}

start_s=$SECONDS
try_start overlay2-bridge --storage-driver=overlay2 && exit 0
try_start overlay2-nonet --storage-driver=overlay2 --iptables=false --bridge=none && exit 0
try_start vfs-bridge --storage-driver=vfs && exit 0
try_start vfs-nonet --storage-driver=vfs --iptables=false --bridge=none && exit 0
log "no dockerd configuration came up; see $LOG_FILE"
exit 1
