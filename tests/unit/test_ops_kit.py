"""The ops kit (``otel/``, ``docker-compose.yml``, ``Dockerfile``) against the code.

Nothing here starts a container (no Docker engine is needed): the files are parsed and
compared with what the service really reads and exports — the settings of
``core.settings.Settings``, the metrics of ``core.metrics.Metrics`` — and the Prometheus
files are checked (and the alert rules unit-tested) with ``promtool`` when it is installed
(Debian: ``apt-get install prometheus``).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from core.metrics import Metrics
from core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
OTEL = ROOT / "otel"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ALERTS = OTEL / "alerts.yml"
PROMETHEUS = OTEL / "prometheus.yml"
COLLECTOR = OTEL / "collector.yaml"
DASHBOARDS = OTEL / "grafana" / "dashboards"
PROVISIONING = OTEL / "grafana" / "provisioning"
OPERATIONS = ROOT / "docs" / "operations.md"

SERVICES = {
    "redis",
    "redis-commander",
    "api",
    "worker",
    "otel-collector",
    "jaeger",
    "prometheus",
    "grafana",
}
SETTING_NAMES = {name.upper() for name in Settings.__struct_fields__}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install -y --no-install-recommends "
    "prometheus); the PromQL names are still checked against core/metrics.py",
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def service(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = compose()["services"][name]
    return spec


def interpolate(value: object) -> str:
    """A compose value as compose would pass it, ``${VAR:-default}`` taking its default and
    a required ``${VAR:?message}`` a value of the test's own (token-shaped: 32+ characters,
    no spaces, as the settings require of a token)."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1-from-the-environment-0123456789>", str(value))
    return re.sub(r"\$\{(\w+):?-([^}]*)\}", r"\2", value)


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def published(name: str) -> list[str]:
    ports: list[Any] = service(name).get("ports", [])
    return [p if isinstance(p, str) else f"{p.get('host_ip', '')}:..." for p in ports]


def container_ports(name: str) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in published(name)}


# -- metrics the service exports ------------------------------------------------------------


@functools.cache
def metrics_with_every_series() -> Metrics:
    """A fresh registry in which every labelled metric has one child (so it is exported)."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    return metrics


@functools.cache
def exported_names() -> frozenset[str]:
    """Every sample name of the exposition: ``_total``, ``_bucket``, ``_sum``, ``_count``..."""
    registry = metrics_with_every_series().registry
    return frozenset(s.name for family in registry.collect() for s in family.samples)


@functools.cache
def exported_families() -> dict[str, tuple[str, frozenset[str]]]:
    """Documented name (``_total`` for counters) -> (type, label names)."""
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in metrics_with_every_series().registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        families[name] = (family.type, labels)
    return families


def test_exported_names_are_what_prometheus_will_see() -> None:
    names = exported_names()
    assert {"throttler_checks_total", "throttler_check_duration_seconds_bucket"} <= names
    assert "throttler_checks" not in names  # counters only ever appear with _total
    assert all(n.startswith("throttler_") for n in names)


# -- PromQL -------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords dropped)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers (and Grafana's $variables)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries, $__rate_interval
    text = _GROUPING.sub(" ", text)
    return {m.group() for m in _IDENT.finditer(text)} - _KEYWORDS


def assert_real_metrics(expr: str, where: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - exported_names() - {"up"}
    assert not unknown, f"{where}: {sorted(unknown)} is not exported by core/metrics.py"
    # However the expression is written, no throttler_* name may be missing.
    for name in re.findall(r"throttler_\w+", _STRING.sub('""', expr)):
        assert name in exported_names(), f"{where}: {name} is not exported"


def test_metric_names_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, job) (rate(throttler_check_duration_seconds_bucket"
        '{instance=~"$instance", route="/throttler_fake"}[$__rate_interval]))) > 0.025 '
        "and on (job) up offset 5m == 1e3"
    )
    assert metric_names(expr) == {"throttler_check_duration_seconds_bucket", "up"}
    assert metric_names("max(throttler_dead_letters) > 0") == {"throttler_dead_letters"}
    assert metric_names("absent(up{job='worker'})") == {"up"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_every_alert_expression_names_only_exported_metrics() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert_real_metrics(rule["expr"], f"alert {rule['alert']}")


def test_alerts_cover_what_operators_must_be_told() -> None:
    used = {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    required = {
        "up",
        "throttler_redis_errors_total",
        "throttler_check_duration_seconds_bucket",
        "throttler_checks_total",
        "throttler_dead_letters",
        "throttler_worker_heartbeat_age_seconds",
        "throttler_stream_lag",
        "throttler_stream_pending",
        "throttler_circuit_open",
        "throttler_degraded_decisions_total",
    }
    assert required <= used, sorted(required - used)
    down = {rule["expr"] for rule in alert_rules() if rule["expr"].startswith("up{")}
    assert down >= {'up{job="api"} == 0', 'up{job="worker"} == 0'}


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    doc = OPERATIONS.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert len(annotations["description"]) > 80, rule["alert"]
        runbook = annotations["runbook"]
        assert runbook.startswith("docs/operations.md#"), rule["alert"]
        assert runbook.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {runbook}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# -- Prometheus config and promtool --------------------------------------------------------


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(PROMETHEUS)["scrape_configs"]}


def test_prometheus_scrapes_the_api_worker_and_collector_where_they_listen() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS.parent / "alerts.yml").is_file()
    jobs = scrape_jobs()
    api_port = int(environment("api")["BIND_ADDRESS"].rsplit(":", 1)[1])
    assert jobs["api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"
    worker_env = environment("worker")
    worker_port = int(worker_env.get("WORKER_METRICS_PORT", Settings().worker_metrics_port))
    (worker_sd,) = jobs["worker"]["dns_sd_configs"]
    assert (worker_sd["names"], worker_sd["port"]) == (["worker"], worker_port)
    collector = jobs["otel-collector"]["static_configs"][0]["targets"]
    assert collector == ["otel-collector:8888"]
    # Alert rules select jobs by name: those names must exist.
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} selects unknown job {job}"


def promtool(*args: str, cwd: Path = OTEL) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_promtool_checks_the_prometheus_config() -> None:
    assert "SUCCESS" in promtool("check", "config", str(PROMETHEUS))


@needs_promtool
def test_promtool_lints_the_exposition_format() -> None:
    assert PROMTOOL is not None
    text = generate_latest(metrics_with_every_series().registry)
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# promtool unit tests of the alert rules: series in, firing alerts out. `for` durations and
# thresholds are exercised on both sides (fires / stays quiet). Annotations are left out of
# the comparison (they are templated prose); the rules are otherwise those of alerts.yml.
A = {"job": "api", "instance": "api:8080"}
W = {"job": "worker", "instance": "10.0.0.7:9464"}
CONFIG = {"stream": "{throttler}:config", "group": "appliers"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def bucket(le: str, values: str) -> dict[str, str]:
    return series("throttler_check_duration_seconds_bucket", {**A, "le": le}, values)


def checks(decision: str, values: str) -> dict[str, str]:
    labels = {**A, "algorithm": "token_bucket", "decision": decision}
    return series("throttler_checks_total", labels, values)


ALERT_CASES: list[tuple[str, list[dict[str, str]], str, list[dict[str, str]]]] = [
    # (alert, input series, eval time, expected labels of firing alerts)
    ("ThrottlerApiDown", [series("up", A, "1 0 0 0")], "3m", [A]),
    ("ThrottlerApiDown", [series("up", A, "1 0 1 0")], "3m", []),
    ("ThrottlerWorkerDown", [series("up", W, "1 0 0 0")], "3m", [W]),
    ("ThrottlerWorkerAbsent", [series("up", A, "1x10")], "6m", [{"job": "worker"}]),
    ("ThrottlerWorkerAbsent", [series("up", W, "1x10")], "6m", []),
    (
        "ThrottlerCollectorDown",
        [series("up", {"job": "otel-collector"}, "0x10")],
        "6m",
        [{"job": "otel-collector"}],
    ),
    (
        "ThrottlerRedisErrors",
        [series("throttler_redis_errors_total", {**A, "operation": "check"}, "0+60x10")],
        "8m",
        [{**A, "operation": "check"}],
    ),
    (
        "ThrottlerRedisErrors",
        [series("throttler_redis_errors_total", {**A, "operation": "check"}, "7x10")],
        "8m",
        [],
    ),
    ("ThrottlerCircuitOpen", [series("throttler_circuit_open", A, "0 1 1 1")], "3m", [A]),
    ("ThrottlerCircuitOpen", [series("throttler_circuit_open", A, "0x5")], "3m", []),
    (
        "ThrottlerDegradedDecisions",
        [series("throttler_degraded_decisions_total", {**A, "policy": "open"}, "0+30x10")],
        "5m",
        [{**A, "policy": "open"}],
    ),
    (
        "ThrottlerCheckLatencyHigh",  # every check between 10 and 50 ms: p99 ~ 50 ms
        [bucket("0.01", "0x20"), bucket("0.05", "0+100x20"), bucket("+Inf", "0+100x20")],
        "15m",
        [A],
    ),
    (
        "ThrottlerCheckLatencyHigh",  # every check under 1 ms
        [bucket("0.001", "0+100x20"), bucket("0.05", "0+100x20"), bucket("+Inf", "0+100x20")],
        "15m",
        [],
    ),
    (
        "ThrottlerHighRejectionRate",  # 2/s denied, 1/s allowed
        [checks("denied", "0+120x30"), checks("allowed", "0+60x30")],
        "20m",
        [{"job": "api"}],
    ),
    (
        "ThrottlerHighRejectionRate",  # the same share, but too little traffic to matter
        [checks("denied", "0+2x30"), checks("allowed", "0+1x30")],
        "20m",
        [],
    ),
    (
        "ThrottlerHighRejectionRate",  # busy, mostly allowed
        [checks("denied", "0+60x30"), checks("allowed", "0+600x30")],
        "20m",
        [],
    ),
    ("ThrottlerDeadLetters", [series("throttler_dead_letters", A, "0 2 2 2")], "3m", [{}]),
    ("ThrottlerDeadLetters", [series("throttler_dead_letters", A, "0x5")], "3m", []),
    (
        "ThrottlerWorkerHeartbeatStale",
        [series("throttler_worker_heartbeat_age_seconds", W, "1 5 40 80 120")],
        "4m",
        [W],
    ),
    (
        "ThrottlerWorkerHeartbeatStale",
        [series("throttler_worker_heartbeat_age_seconds", W, "1 4 2 5 3 1")],
        "5m",
        [],
    ),
    (
        "ThrottlerStreamLag",  # never drains
        [series("throttler_stream_lag", {**W, **CONFIG}, "5+1x30")],
        "20m",
        [CONFIG],
    ),
    (
        "ThrottlerStreamLag",  # bursts that drain
        [series("throttler_stream_lag", {**W, **CONFIG}, "0 50 0 50 0 50 0 50 0 50 0 50 0 50")],
        "12m",
        [],
    ),
    (
        "ThrottlerStreamPending",
        [series("throttler_stream_pending", {**W, **CONFIG}, "150x30")],
        "20m",
        [CONFIG],
    ),
    (
        "ThrottlerStreamPending",
        [series("throttler_stream_pending", {**W, **CONFIG}, "150 0 150 0 150 0 150 0 150 0")],
        "9m",
        [],
    ),
]


def test_every_alert_has_promtool_cases() -> None:
    assert {case[0] for case in ALERT_CASES} == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules(tmp_path: Path) -> None:
    rules = load_yaml(ALERTS)
    severities = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
            severities[rule["alert"]] = rule["labels"]["severity"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = [
        {
            "interval": "1m",
            "input_series": inputs,
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [
                        {"exp_labels": {**labels, "severity": severities[alert]}}
                        for labels in expected
                    ],
                }
            ],
        }
        for alert, inputs, at, expected in ALERT_CASES
    ]
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests})
    )
    promtool("test", "rules", "tests.yml", cwd=tmp_path)


# -- Grafana -------------------------------------------------------------------------------


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files
    return [(path, json.loads(path.read_text())) for path in files]


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def provisioned_datasources() -> dict[str, str]:
    uids = {}
    for path in (PROVISIONING / "datasources").glob("*.yml"):
        for source in load_yaml(path)["datasources"]:
            uids[source["uid"]] = source["type"]
    return uids


def test_grafana_provisioning_files() -> None:
    assert provisioned_datasources() == {"prometheus": "prometheus", "jaeger": "jaeger"}
    sources = {
        s["uid"]: s
        for p in (PROVISIONING / "datasources").glob("*.yml")
        for s in load_yaml(p)["datasources"]
    }
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "dashboards.yml")["providers"]
    assert provider["type"] == "file"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service("grafana")["volumes"]}
    assert mounts[provider["options"]["path"]] == "./otel/grafana/dashboards"


def test_the_dashboard_charts_real_metrics() -> None:
    datasources = provisioned_datasources()
    for path, dashboard in dashboards():
        assert dashboard["uid"]
        assert dashboard["title"]
        panels = panels_of(dashboard)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        charts = [p for p in panels if p["type"] != "row"]
        assert len(charts) >= 10
        exprs = []
        for panel in charts:
            assert panel["datasource"]["uid"] in datasources, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert_real_metrics(target["expr"], f"{path.name}: {panel['title']}")
                exprs.append(target["expr"])
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert inner, query
            assert_real_metrics(inner.group(1), f"{path.name}: variable {variable['name']}")
        charted = {name for expr in exprs for name in metric_names(expr)}
        wanted = {
            "throttler_checks_total",
            "throttler_check_duration_seconds_bucket",
            "throttler_redis_duration_seconds_bucket",
            "throttler_redis_errors_total",
            "throttler_http_requests_total",
            "throttler_config_changes_total",
            "throttler_stream_lag",
            "throttler_stream_pending",
            "throttler_dead_letters",
            "throttler_worker_heartbeat_age_seconds",
            "throttler_circuit_open",
            "throttler_degraded_decisions_total",
        }
        assert wanted <= charted, sorted(wanted - charted)


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each target, as a recording rule (Grafana's variables given a value), is valid PromQL."""
    grafana_vars = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}
    rules = []
    for path, dashboard in dashboards():
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in grafana_vars.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name}: {panel['title']}: unknown variable"
                rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}"})
                rules[-1]["expr"] = expr
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    assert f"SUCCESS: {len(rules)} rules found" in promtool(
        "check", "rules", "dashboard.yml", cwd=tmp_path
    )


# -- OpenTelemetry Collector ---------------------------------------------------------------


def test_collector_pipelines() -> None:
    config = load_yaml(COLLECTOR)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{name}: {component} is not defined"
        assert pipeline["processors"][0] == "memory_limiter", name
        assert "batch" in pipeline["processors"], name
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert config["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    # The collector's own metrics are where Prometheus scrapes them.
    (reader,) = config["service"]["telemetry"]["metrics"]["readers"]
    assert reader["pull"]["exporter"]["prometheus"]["port"] == 8888
    mounts = service("otel-collector")["volumes"]
    assert any(m.startswith("./otel/collector.yaml:") for m in mounts)


# -- docker-compose.yml --------------------------------------------------------------------


def test_compose_has_exactly_the_stack() -> None:
    assert set(compose()["services"]) == SERVICES


def test_every_published_port_is_on_loopback() -> None:
    for name in SERVICES:
        for port in published(name):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_service_environment_is_what_the_code_reads() -> None:
    for name in ("api", "worker"):
        env = environment(name)
        for variable in env:
            assert variable in SETTING_NAMES or variable.startswith("OTEL_"), (
                f"{name}: {variable} is neither a setting nor an OTEL_* variable"
            )
        # The values are valid: the service would start with them.
        settings = load_settings(
            {k: v for k, v in env.items() if not k.startswith("OTEL_")}, env_file=None
        )
        assert settings.redis_url == "redis://redis:6379/0"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] in {"http/protobuf", "grpc"}
        assert env["OTEL_SERVICE_NAME"] == f"throttler-{name}"
    # Required: compose refuses to start without it, rather than use a guessable default.
    assert service("api")["environment"]["ADMIN_TOKEN"] == "${ADMIN_TOKEN:?set ADMIN_TOKEN}"
    assert environment("api")["ADMIN_TOKEN"] == "<ADMIN_TOKEN-from-the-environment-0123456789>"
    assert environment("worker")["WORKER_METRICS_HOST"] == "0.0.0.0"


def test_ports_match_the_addresses_the_services_listen_on() -> None:
    api_port = load_settings(environment("api"), env_file=None).port
    assert container_ports("api") == {api_port}
    assert published("api") == [f"127.0.0.1:{api_port}:{api_port}"]
    worker = load_settings(
        {k: v for k, v in environment("worker").items() if not k.startswith("OTEL_")},
        env_file=None,
    )
    assert container_ports("worker") == {worker.worker_metrics_port}
    assert container_ports("otel-collector") == {4317, 4318}


def test_api_and_worker_commands_and_healthchecks() -> None:
    api, worker = service("api"), service("worker")
    assert api["build"] == "."
    assert api["command"] == ["throttler", "serve", "--no-worker"]
    assert worker["image"] == api["image"]
    assert worker["command"] == ["throttler", "worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "throttler", "worker", "--check"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert service(name)["depends_on"]["redis"]["condition"] == "service_healthy"


def seconds(duration: str) -> float:
    """A compose duration ("45s", "1m30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


def test_stop_grace_periods_outlast_the_shutdown() -> None:
    """Compose sends SIGKILL after stop_grace_period (default 10 s): the API's drain and its
    in-flight requests (`serve --grace`, 30 s by default) must fit, as must a worker's batch."""
    api_env = {k: v for k, v in environment("api").items() if not k.startswith("OTEL_")}
    drain_s = load_settings(api_env, env_file=None).shutdown_drain_ms / 1000
    grace_s = _serve_grace(service("api")["command"])
    assert seconds(service("api")["stop_grace_period"]) >= drain_s + grace_s + 5
    assert seconds(service("worker")["stop_grace_period"]) >= 10


def _serve_grace(command: list[str]) -> float:
    from throttler.cli import _parser

    grace: float = _parser().parse_args(command[1:]).grace
    return grace


def test_redis_persists_and_never_evicts() -> None:
    redis = service("redis")
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert re.search(r"--appendonly\s+yes", command)
    assert re.search(r"--maxmemory-policy\s+noeviction", command)
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    commander = service("redis-commander")
    assert commander["environment"]["REDIS_HOSTS"] == "local:redis:6379"


def test_observability_services() -> None:
    assert service("otel-collector")["image"].startswith("otel/opentelemetry-collector-contrib")
    jaeger = service("jaeger")
    assert jaeger["image"].startswith("jaegertracing/all-in-one")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    prometheus = service("prometheus")
    assert prometheus["image"].startswith("prom/prometheus")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts["./otel/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./otel/alerts.yml"] == "/etc/prometheus/alerts.yml"
    grafana = environment("grafana")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_every_mounted_file_exists() -> None:
    for name in SERVICES:
        for volume in service(name).get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in instructions if op == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "pip install ." in runs
    (expose,) = [arg.split() for op, arg in instructions if op == "EXPOSE"]
    assert set(expose) == {"8080", "9464"}
    (healthcheck,) = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "urllib" in healthcheck
    assert "/health" in healthcheck
    (cmd,) = [arg for op, arg in instructions if op == "CMD"]
    assert json.loads(cmd) == ["throttler", "serve", "--no-worker"]
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    for name in re.findall(r"\b([A-Z][A-Z0-9_]+)=", env):
        assert name in SETTING_NAMES or name.startswith(("PYTHON", "PIP_")), name


def test_dockerfile_copies_every_package_and_ignores_local_state() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[(.*?)\]", pyproject)
    assert include
    packages = {p.strip().strip('"*') for p in include.group(1).split(",") if p.strip()}
    copied = {arg.split()[0] for op, arg in dockerfile() if op == "COPY"}
    assert packages <= copied, sorted(packages - copied)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "tests"} <= ignored
    assert not packages & ignored


# -- docs/operations.md --------------------------------------------------------------------


def test_operations_doc_lists_every_metric_with_its_labels() -> None:
    doc = OPERATIONS.read_text()
    rows = re.findall(r"^\| `(throttler_\w+)` \| (\w+) \| ([^|]*) \|", doc, re.MULTILINE)
    documented = {
        name: (kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }
    assert documented == exported_families()


def test_operations_doc_sections() -> None:
    doc = OPERATIONS.read_text()
    for heading in (
        "## Deploying to Kubernetes",
        "## Rolling deploys and shutdown",
        "## Failure modes",
        "## Scaling out",
        "## Security",
        "## Troubleshooting",
    ):
        assert re.search(rf"^{re.escape(heading)}$", doc, re.MULTILINE), heading
    # The manifests live in deploy/kubernetes/ (tests/unit/test_kubernetes.py), not as
    # copies in the doc that could drift from them.
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    kinds = [m.get("kind") for block in blocks for m in yaml.safe_load_all(block) if m]
    assert "Deployment" not in kinds
