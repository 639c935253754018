# The worker image: the rlm-jobs package with its dependencies, for the orchestrator
# workers, the llm workers and Flower (see compose.yaml). Sandboxes use sandbox/Dockerfile.
#
#   docker build -t rlm-jobs-worker:latest .
#   docker build --build-arg BASE_IMAGE=rlm-jobs-base:local -t rlm-jobs-worker:latest .
# Written for the classic builder and BuildKit alike (no RUN --mount, no heredocs).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Dependencies first, from pyproject.toml alone, so a code change reuses this layer.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -c "import subprocess, sys, tomllib; deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', '--disable-pip-version-check', *deps])"

# Then the package itself (rlm_jobs, workers, sandbox; .dockerignore keeps tests out).
COPY . /src
RUN /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-deps /src \
    && rm -rf /src \
    && /opt/venv/bin/python -c "import rlm_jobs, workers, sandbox.wire"

# Non-root. The orchestrator service adds the group of the Docker socket (compose.yaml).
RUN groupadd --gid 10002 rlm \
    && useradd --uid 10002 --gid 10002 --create-home --home-dir /home/rlm \
        --shell /usr/sbin/nologin rlm
USER 10002:10002
WORKDIR /home/rlm

CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
LABEL org.opencontainers.image.title="rlm-jobs worker"
