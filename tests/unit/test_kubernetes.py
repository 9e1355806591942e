"""The Kubernetes manifests in deploy/kubernetes/, validated offline and against the code.

``kubernetes-validate`` checks every object against the API schemas of the oldest and the
newest Kubernetes versions it knows of here (strict: no unknown fields). Then what the
schemas cannot know: selectors select, probes probe the real routes, the grace period
outlasts the drain, every variable is a setting, every secret key exists, and the
Prometheus annotations name the ports the processes listen on.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core.settings import Settings, load_settings
from throttler.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = MANIFESTS / "secret.yaml.example"
SETTING_NAMES = {name.upper() for name in Settings.__struct_fields__}
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


@functools.cache
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, of every file `kubectl apply -f deploy/kubernetes/` applies
    and of the example Secret."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in [*sorted(MANIFESTS.glob("*.yaml")), SECRET_EXAMPLE]:
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{path.name}: {key} defined twice"
            found[key] = doc
    return found


def container(kind_name: tuple[str, str]) -> dict[str, Any]:
    (only,) = objects()[kind_name]["spec"]["template"]["spec"]["containers"]
    spec: dict[str, Any] = only
    return spec


def environment(spec: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable for variable in spec["env"]}


API = ("Deployment", "throttler-api")
WORKER = ("Deployment", "throttler-worker")


def test_the_set_of_objects() -> None:
    assert set(objects()) == {
        API,
        WORKER,
        ("Service", "throttler-api"),
        ("HorizontalPodAutoscaler", "throttler-api"),
        ("PodDisruptionBudget", "throttler-api"),
        ("PodDisruptionBudget", "throttler-worker"),
        ("Secret", "throttler"),
    }
    # The example Secret is not applied with the rest (its values are placeholders).
    assert not SECRET_EXAMPLE.name.endswith((".yaml", ".yml", ".json"))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    for key, doc in objects().items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key} on Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_validation_rejects_what_it_should() -> None:
    """The validator is strict here: an unknown field and a wrong type are errors."""
    broken = yaml.safe_load(yaml.safe_dump(objects()[API]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(objects()[API]))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_selectors_select_the_pods() -> None:
    for kind_name in (API, WORKER):
        spec = objects()[kind_name]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
    api_labels = objects()[API]["spec"]["template"]["metadata"]["labels"]
    worker_labels = objects()[WORKER]["spec"]["template"]["metadata"]["labels"]
    service = objects()[("Service", "throttler-api")]["spec"]
    assert service["selector"].items() <= api_labels.items()
    assert not service["selector"].items() <= worker_labels.items()
    http, rls = service["ports"]
    names = {p["name"] for p in container(API)["ports"]}
    assert {http["targetPort"], rls["targetPort"]} <= names
    # Envoy's rate limit service: the container listens where the grpc port says.
    env = {e["name"]: e.get("value") for e in container(API)["env"]}
    grpc_port = next(p["containerPort"] for p in container(API)["ports"] if p["name"] == "grpc")
    rls_bind = load_settings({"RLS_BIND_ADDRESS": env["RLS_BIND_ADDRESS"]}, env_file=None)
    assert rls_bind.rls_bind_address.endswith(f":{grpc_port}")
    for name, labels in (("throttler-api", api_labels), ("throttler-worker", worker_labels)):
        pdb = objects()[("PodDisruptionBudget", name)]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects()[("HorizontalPodAutoscaler", "throttler-api")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": API[0], "name": API[1]}
    assert "replicas" not in objects()[API]["spec"]  # the autoscaler owns the count
    assert hpa["minReplicas"] >= 2


def test_every_variable_is_a_setting_with_a_valid_value() -> None:
    for kind_name in (API, WORKER):
        env = environment(container(kind_name))
        for name in env:
            assert name in SETTING_NAMES or name.startswith("OTEL_"), f"{kind_name}: {name}"
        literal = {k: v["value"] for k, v in env.items() if "value" in v and k in SETTING_NAMES}
        load_settings(literal, env_file=None)  # the service would start with them


def test_secret_references_exist_in_the_example_secret() -> None:
    secret = objects()[("Secret", "throttler")]
    for kind_name in (API, WORKER):
        for name, variable in environment(container(kind_name)).items():
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"], name
                assert ref["key"] in secret["stringData"], name
    # Placeholders that cannot pass for real values.
    assert all("REPLACE" in value for value in secret["stringData"].values())


def test_api_probes_and_a_grace_period_that_outlasts_the_drain() -> None:
    pod = objects()[API]["spec"]["template"]["spec"]
    api = container(API)
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    settings = load_settings(
        {k: v["value"] for k, v in environment(api).items() if k in SETTING_NAMES and "value" in v},
        env_file=None,
    )
    args = _parser().parse_args(api["command"][1:])
    assert args.command == "serve"
    assert args.no_worker
    drain_s = settings.shutdown_drain_ms / 1000
    # SIGTERM: drain, then in-flight requests (up to --grace), then the worker-less exit.
    assert pod["terminationGracePeriodSeconds"] >= drain_s + args.grace + 5
    assert "lifecycle" not in api  # no preStop sleep: the drain does that job
    strategy = objects()[API]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_worker_probe_and_grace_period() -> None:
    pod = objects()[WORKER]["spec"]["template"]["spec"]
    worker = container(WORKER)
    assert worker["command"] == ["throttler", "worker"]
    assert worker["livenessProbe"]["exec"]["command"] == ["throttler", "worker", "--check"]
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_pods_run_unprivileged() -> None:
    for kind_name in (API, WORKER):
        pod = objects()[kind_name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        spec = container(kind_name)
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["resources"]["requests"]


def test_prometheus_annotations_name_the_ports_the_processes_listen_on() -> None:
    api_env = environment(container(API))
    worker_env = environment(container(WORKER))
    bind = load_settings({"BIND_ADDRESS": api_env["BIND_ADDRESS"]["value"]}, env_file=None)
    worker = load_settings(
        {k: worker_env[k]["value"] for k in ("WORKER_METRICS_HOST", "WORKER_METRICS_PORT")},
        env_file=None,
    )
    assert worker.worker_metrics_host == "0.0.0.0"  # reachable from Prometheus
    for kind_name, port in ((API, bind.port), (WORKER, worker.worker_metrics_port)):
        template = objects()[kind_name]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == str(port)
        assert port in {p["containerPort"] for p in container(kind_name)["ports"]}
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert component in {"api", "worker"}  # the job names of otel/alerts.yml


def test_operations_doc_shows_how_to_apply_them() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("## Deploying to Kubernetes", 1)[1].split("\n## ", 1)[0]
    assert "kubectl apply -f deploy/kubernetes/" in section
    for path in [*MANIFESTS.glob("*.yaml"), SECRET_EXAMPLE]:
        assert f"`{path.name}`" in section, f"docs/operations.md does not mention {path.name}"
    assert re.search(r"SHUTDOWN_DRAIN_MS", section)
