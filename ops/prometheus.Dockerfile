# Prometheus from Debian's package, for the compose stack when no registry is reachable
# (ops/compose.sh picks it then; online, compose.yaml uses the official prom/prometheus).
#   docker build -f ops/prometheus.Dockerfile --build-arg BASE_IMAGE=rlm-jobs-base:local \
#       -t rlm-jobs-prometheus:local .
# Same entrypoint, user and data directory as the official image, so one compose service
# runs either.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus

COPY ops/prometheus/prometheus.yml /etc/prometheus/prometheus.yml
USER 65534:65534
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
LABEL org.opencontainers.image.title="rlm-jobs prometheus (Debian package)"
