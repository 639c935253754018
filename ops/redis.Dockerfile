# Redis 7 from Debian's packages, for the compose stack: no registry needed beyond the base.
#   docker build -f ops/redis.Dockerfile --build-arg BASE_IMAGE=rlm-jobs-base:local .
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# A fixed uid, so compose.yaml can hand it a tmpfs for the password file.
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data /run/rlm-redis /run/rlm-redis-auth \
    && chown redis:redis /data /run/rlm-redis /run/rlm-redis-auth \
    && chmod 755 /run/rlm-redis

COPY ops/redis.conf /etc/redis/rlm.conf
COPY ops/redis-entrypoint.sh /usr/local/bin/rlm-redis-entrypoint
USER redis
VOLUME ["/data", "/run/rlm-redis"]
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/rlm-redis-entrypoint"]
LABEL org.opencontainers.image.title="rlm-jobs redis"
