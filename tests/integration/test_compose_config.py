"""compose.yaml as Compose reads it: Debian's docker-compose (v1) or the v2 plugin.

No engine is needed to interpolate and validate the file; running the stack is manual
(docs/docker.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import yaml

from tests.support import ROOT


def compose_command() -> list[str]:
    plugin = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
    ) if shutil.which("docker") else None  # fmt: skip
    if plugin is not None and plugin.returncode == 0:
        return ["docker", "compose"]
    v1 = shutil.which("docker-compose")
    assert v1, "Compose is needed (apt-get install -y docker-compose; .ci/run installs it)"
    return [v1]


def resolved(*profiles: str, **env: str) -> dict[str, Any]:
    args = [*compose_command(), "-f", str(ROOT / "compose.yaml")]
    for profile in profiles:
        args += ["--profile", profile]
    out = subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={
            "PATH": os.environ.get("PATH", ""),
            "RLM_JOBS_REDIS_PASSWORD": "test-redis-password",
            "RLM_JOBS_GRAFANA_PASSWORD": "test-grafana-password",
            "DOCKER_GID": "999",
            **env,
        },
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = yaml.safe_load(out.stdout)
    return data


def published(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):  # the long form (Compose v2)
            ports.add((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            host_ip, host, target = str(port).split("/")[0].split(":")
            ports.add((host_ip, int(host), int(target)))
    return ports


def test_compose_resolves_the_stack_with_redis_on_loopback_and_the_dashboard() -> None:
    config = resolved("dashboard", "demo")
    services = config["services"]
    assert {"redis", "orchestrator", "llm-worker", "flower", "prometheus", "grafana"} <= set(
        services
    )
    assert published(services["redis"]) == {("127.0.0.1", 6380, 6379)}
    assert published(services["grafana"]) == {("127.0.0.1", 3000, 3000)}
    assert published(services["prometheus"]) == {("127.0.0.1", 9090, 9090)}
    assert services["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == (
        "test-grafana-password"
    )


def test_the_offline_prometheus_image_and_ports_come_from_the_environment() -> None:
    config = resolved(
        RLM_JOBS_PROMETHEUS_IMAGE="rlm-jobs-prometheus:local", RLM_JOBS_REDIS_PORT="16380"
    )
    services = config["services"]
    assert services["prometheus"]["image"] == "rlm-jobs-prometheus:local"
    assert published(services["redis"]) == {("127.0.0.1", 16380, 6379)}
