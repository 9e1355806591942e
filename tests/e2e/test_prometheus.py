"""A real Prometheus scrapes a real `throttler serve` and `throttler worker`.

Prometheus is Debian's `prometheus` package (`.ci/run` installs it). The configuration is
the one of the ops kit, adapted to the test's ports only:

* `otel/prometheus.yml` with `otel/alerts.yml`: the targets are up, the throttler series
  exist, every alert rule loads and evaluates without error, and ThrottlerRedisErrors fires
  once Redis is really stopped and checks fail. The rules' `for:` durations are shortened
  (expressions, labels and annotations are untouched) so the test does not wait minutes.
* `otel/prometheus-kubernetes.yml`: its relabelling turns pods annotated as in
  `deploy/kubernetes/` into the jobs `api` and `worker` (this Prometheus build has no
  Kubernetes discovery, so static targets carry the labels that discovery would set).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from core.embedded import free_port
from tests.support.poll import until
from tests.support.prometheus import PROMETHEUS, PrometheusProcess
from tests.support.service import ServiceProcess, running

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tests.support.servers import RedisProcess

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus is not installed (Debian: apt-get install -y "
        "--no-install-recommends prometheus; .ci/run installs it)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
OTEL = ROOT / "otel"
KEPT_JOBS = ["api", "worker", "prometheus"]  # the collector jobs: no collector runs here


def throttler(redis_url: str, prefix: str) -> tuple[ServiceProcess, ServiceProcess]:
    """The API without its in-process worker, and a `throttler worker` with metrics."""
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "100"}
    api = ServiceProcess({**env, "WORKER_METRICS_PORT": "0"}, ["serve", "--no-worker"])
    worker_port = free_port()
    worker = ServiceProcess(
        {**env, "WORKER_METRICS_PORT": str(worker_port)}, ["worker", "--consumer", "prom"]
    )
    worker.port = worker_port  # its health is its metrics port
    return api, worker


def compose_config(api: str, worker: str, prometheus: str) -> dict[str, Any]:
    """otel/prometheus.yml pointed at the test's processes, scraping every second."""
    config: dict[str, Any] = yaml.safe_load((OTEL / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {"api": api, "worker": worker, "prometheus": prometheus}
    kept = []
    for name in KEPT_JOBS:
        job = jobs[name]
        job.pop("dns_sd_configs", None)  # compose finds worker replicas by DNS
        job["static_configs"] = [{"targets": [targets[name]]}]
        kept.append(job)
    config["scrape_configs"] = kept
    return config


def quick_rules() -> str:
    """otel/alerts.yml with every `for:` shortened to 2 s."""
    text = (OTEL / "alerts.yml").read_text()
    quick, count = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 2s", text)
    assert count == len(alert_names())
    return quick


def alert_names() -> list[str]:
    groups = yaml.safe_load((OTEL / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


async def test_prometheus_scrapes_the_service_and_an_alert_fires_when_redis_stops(
    own_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    api, worker = throttler(own_redis.url, prefix)
    prom = PrometheusProcess(tmp_path / "prometheus")
    with running([api, worker], tmp_path):
        config = compose_config(f"127.0.0.1:{api.port}", f"127.0.0.1:{worker.port}", prom.address)
        assert config["rule_files"] == ["alerts.yml"]
        prom.start(config, {"alerts.yml": quick_rules()})
        try:
            async with httpx.AsyncClient(base_url=api.base_url, timeout=5) as http:
                for _ in range(5):
                    assert (await http.post("/rate-limit/prom-key/check")).status_code == 200

                async def targets_up() -> bool:
                    active = (await prom.api("targets"))["activeTargets"]
                    health = {t["labels"]["job"]: t["health"] for t in active}
                    return health == dict.fromkeys(KEPT_JOBS, "up")

                await until(targets_up, 30)
                checks = await until(series(prom, 'throttler_checks_total{job="api"}'), 30)
                assert {r["metric"]["decision"] for r in checks} == {"allowed"}
                assert await until(series(prom, 'throttler_http_requests_total{job="api"}'), 30)
                assert await until(series(prom, 'throttler_stream_length{job="worker"}'), 30)

                rules = await until(lambda: evaluated_rules(prom), 30)
                assert sorted(r["name"] for r in rules) == sorted(alert_names())
                assert {(r["health"], r.get("lastError", "")) for r in rules} == {("ok", "")}

                async def quiet() -> bool:  # e.g. ThrottlerWorkerAbsent before the first scrape
                    return not await firing(prom)

                await until(quiet, 30)
                own_redis.stop()  # for real: the process is gone

                async def redis_errors_fire() -> bool:
                    assert (await http.post("/rate-limit/prom-key/check")).status_code == 503
                    return "ThrottlerRedisErrors" in await firing(prom)

                await until(redis_errors_fire, 60, interval=0.2)
            alerts = (await prom.api("alerts"))["alerts"]
        finally:
            prom.stop()
    # Every operation that needs Redis fails once it is gone (a scrape's stream lengths too):
    # one alert per (job, instance, operation); the checks' is the one looked for.
    fired = [a for a in alerts if a["labels"]["alertname"] == "ThrottlerRedisErrors"]
    (alert,) = [a for a in fired if a["labels"]["operation"] == "check"]
    assert alert["labels"]["job"] == "api"
    assert alert["labels"]["severity"] == "warning"
    assert f"127.0.0.1:{api.port}" in alert["annotations"]["summary"]


def series(prom: PrometheusProcess, query: str) -> Callable[[], Awaitable[list[Any]]]:
    async def probe() -> list[Any]:
        result: list[Any] = (await prom.api("query", query=query))["result"]
        return result

    return probe


async def evaluated_rules(prom: PrometheusProcess) -> list[dict[str, Any]]:
    """Every alert rule, once each has been evaluated (else nothing)."""
    groups = (await prom.api("rules"))["groups"]
    rules: list[dict[str, Any]] = [rule for group in groups for rule in group["rules"]]
    return rules if all(not r["lastEvaluation"].startswith("0001") for r in rules) else []


async def firing(prom: PrometheusProcess) -> set[str]:
    alerts = (await prom.api("alerts"))["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def kubernetes_config(api_port: int, worker_port: int) -> dict[str, Any]:
    """otel/prometheus-kubernetes.yml, its pod discovery replaced by static targets that
    carry what discovery would report for the pods of deploy/kubernetes/ (and one pod that
    does not ask to be scraped)."""
    config: dict[str, Any] = yaml.safe_load((OTEL / "prometheus-kubernetes.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    config.pop("rule_files")
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]

    def pod(name: str, component: str, port: int, *, scrape: str = "true") -> dict[str, Any]:
        return {
            "targets": ["127.0.0.1"],  # a pod IP; the port comes from the annotation
            "labels": {
                "__meta_kubernetes_namespace": "throttler",
                "__meta_kubernetes_pod_name": name,
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "throttler",
                "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            },
        }

    job["static_configs"] = [
        pod("throttler-api-1", "api", api_port),
        pod("throttler-worker-1", "worker", worker_port),
        pod("throttler-api-2", "api", free_port(), scrape="false"),
    ]
    return config


async def test_kubernetes_scrape_config_finds_api_and_worker_pods(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    api, worker = throttler(redis_url, prefix)
    prom = PrometheusProcess(tmp_path / "prometheus")
    with running([api, worker], tmp_path):
        prom.start(kubernetes_config(api.port, worker.port), {})
        try:

            async def scraped() -> list[dict[str, Any]]:
                active: list[dict[str, Any]] = (await prom.api("targets"))["activeTargets"]
                return active if active and all(t["health"] == "up" for t in active) else []

            active = await until(scraped, 30)
            up = await until(series(prom, "up"), 30)
        finally:
            prom.stop()
    assert sorted((t["labels"]["job"], t["labels"]["pod"]) for t in active) == [
        ("api", "throttler-api-1"),
        ("worker", "throttler-worker-1"),
    ]
    assert {t["scrapeUrl"] for t in active} == {
        f"http://127.0.0.1:{api.port}/metrics",
        f"http://127.0.0.1:{worker.port}/metrics",
    }
    assert {(r["metric"]["job"], r["metric"]["namespace"], r["value"][1]) for r in up} == {
        ("api", "throttler", "1"),
        ("worker", "throttler", "1"),
    }
