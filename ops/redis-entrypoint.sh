#!/bin/sh
# Start redis-server with the default user's password from $REDIS_PASSWORD, written to a
# config file on a tmpfs so it is in neither argv nor the image.
set -eu
if [ -z "${REDIS_PASSWORD:-}" ]; then
    echo "redis-entrypoint: REDIS_PASSWORD is empty; refusing to start an open Redis" >&2
    exit 1
fi
umask 077
printf 'requirepass "%s"\n' "$REDIS_PASSWORD" > /run/rlm-redis-auth/auth.conf
unset REDIS_PASSWORD
exec redis-server /etc/redis/rlm.conf "$@"
