"""The compose stack's monitoring files agree with each other and with the code.

Grafana cannot run here (no registry, no package), so what it would read is checked:
the provisioned datasource is the one every panel uses and points at the compose
service, every metric a panel queries is one the workers export, the dashboard is where
the provisioning and the home-dashboard setting look for it. The queries themselves run
against a real Prometheus in tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from rlm_jobs.metrics import Metrics
from rlm_jobs.models import JobStatus

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DASHBOARD = OPS / "grafana" / "dashboards" / "rlm-jobs.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "compose.yaml")
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def exported_metric_names() -> set[str]:
    """Every sample name a worker's registry exposes once each metric has a value."""
    metrics = Metrics()
    metrics.job_finished(JobStatus.COMPLETED)
    metrics.call_done("m/x", "root", 1, 1, 0.1, cached=False)
    metrics.call_done("m/x", "sub", 1, 1, 0.1, cached=True)
    metrics.provider_error("m/x", "429")
    metrics.rate_limit_wait("m/x", 1.0)
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    return names | {"rlm_jobs_queue_depth"}  # read from Redis at scrape time


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_every_panel_uses_the_provisioned_datasource() -> None:
    provisioned = load_yaml(OPS / "grafana/provisioning/datasources/rlm-jobs.yaml")
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    panels = dashboard()["panels"]
    assert panels
    for panel in panels:
        uses = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(u == {"type": "prometheus", "uid": source["uid"]} for u in uses), panel["title"]


def test_the_datasource_points_at_the_compose_prometheus() -> None:
    source = load_yaml(OPS / "grafana/provisioning/datasources/rlm-jobs.yaml")["datasources"][0]
    services = compose()["services"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])


def test_every_metric_a_panel_queries_is_exported() -> None:
    exported = exported_metric_names()
    queried = {
        name
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\brlm_jobs_\w+", target["expr"])
    }
    assert queried, "the dashboard queries no rlm_jobs metric"
    assert queried - exported == set()
    # The list: every one of them has a panel.
    wanted = {
        "rlm_jobs_jobs_total", "rlm_jobs_llm_calls_total", "rlm_jobs_tokens_total",
        "rlm_jobs_cost_usd_total", "rlm_jobs_provider_errors_total", "rlm_jobs_queue_depth",
    }  # fmt: skip
    assert wanted <= queried
    assert any(q.startswith("rlm_jobs_rate_limit_wait_seconds") for q in queried)


def test_the_dashboard_is_where_grafana_looks_for_it() -> None:
    grafana = compose()["services"]["grafana"]
    provider = load_yaml(OPS / "grafana/provisioning/dashboards/rlm-jobs.yaml")["providers"][0]
    mounted = mounts(grafana)
    assert mounted[provider["options"]["path"]] == "./ops/grafana/dashboards"
    assert mounted["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert dashboard()["uid"] == "rlm-jobs" and dashboard()["panels"][0]["gridPos"]


def test_prometheus_scrapes_every_worker_service_on_the_metrics_port() -> None:
    services = compose()["services"]
    config = load_yaml(OPS / "prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_env = services["orchestrator"]["environment"]
    port = int(worker_env["RLM_JOBS_METRICS_PORT"])
    assert worker_env["RLM_JOBS_METRICS_HOST"] == "0.0.0.0"
    for service in ("orchestrator", "llm-worker"):
        assert services[service]["environment"]["RLM_JOBS_METRICS_PORT"] == str(port)
        (sd,) = jobs[service]["dns_sd_configs"]
        assert sd == {**sd, "names": [service], "type": "A", "port": port}
    mounted = mounts(services["prometheus"])
    assert mounted["/etc/prometheus/prometheus.yml"] == "./ops/prometheus/prometheus.yml"


def test_compose_and_its_script_pin_the_same_images() -> None:
    script = (OPS / "compose.sh").read_text()
    services = compose()["services"]
    for service, variable in (("prometheus", "PROMETHEUS_IMAGE"), ("grafana", "GRAFANA_IMAGE")):
        pinned = re.search(rf'^{variable}="([^"]+)"$', script, re.M)
        assert pinned, variable
        assert services[service]["image"] == f"${{RLM_JOBS_{variable}:-{pinned.group(1)}}}"
        assert not pinned.group(1).endswith(":latest")


def test_published_ports_are_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
