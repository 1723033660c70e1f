"""deploy/k8s against real Kubernetes schemas, offline (kubernetes-validate's bundled
OpenAPI schemas, strict: an unknown field is an error), and what they must say about
batchinfer: grpc-named ports with appProtocol grpc, readiness on gRPC health, grace
periods longer than each process's drain, the SQLite gateway on a volume claim, disruption
budgets, and an autoscaler on a metric that a process really emits. deploy/compose.yaml
runs the same image with the same flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from collector.metrics import CATALOGUE, prometheus_series_names

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "deploy" / "compose.yaml"
KUBERNETES_VERSION = "1.30"  # the oldest version these manifests are checked against
WORKLOADS = ("Deployment", "StatefulSet")
GRACE_MARGIN_S = 10  # beyond --grace-s: the stop steps after the drain


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        message = "kubernetes-validate is not installed: `make install` (dev extras)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return kubernetes_validate


def documents() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def objects(kind: str | tuple[str, ...]) -> list[dict]:
    kinds = (kind,) if isinstance(kind, str) else kind
    return [doc for _, doc in documents() if doc["kind"] in kinds]


def named(kind: str, name: str) -> dict:
    (found,) = [o for o in objects(kind) if o["metadata"]["name"] == name]
    return found


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def selects(selector: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


def test_every_manifest_is_valid_for_kubernetes():
    validator = kubernetes_validate()
    found = documents()
    assert len(found) >= 9
    for path, doc in found:
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.relative_to(REPO)}: {doc['kind']} {where}: {exc.message}")


def test_grpc_ports_are_named_grpc_and_declare_app_protocol():
    for service in objects("Service"):
        for port in service["spec"]["ports"]:
            if port["port"] in (50051, 50061):
                assert port["name"] == "grpc" and port["appProtocol"] == "grpc", service
    for workload in objects(WORKLOADS):
        ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
        assert flag(container(workload)["args"], "--port") == str(ports["grpc"])


def test_readiness_follows_grpc_health_and_the_grace_outlasts_the_drain():
    for workload in objects(WORKLOADS):
        spec = workload["spec"]["template"]["spec"]
        main = container(workload)
        grpc_port = next(p["containerPort"] for p in main["ports"] if p["name"] == "grpc")
        readiness = main["readinessProbe"]
        # NOT_SERVING while loading and draining: a grpc probe, not a TCP one.
        assert readiness["grpc"]["port"] == grpc_port, workload["metadata"]["name"]
        assert readiness.get("failureThreshold", 3) * readiness["periodSeconds"] <= 10
        grace = float(flag(main["args"], "--grace-s"))
        assert spec["terminationGracePeriodSeconds"] >= grace + GRACE_MARGIN_S


def test_the_sqlite_gateway_keeps_its_store_on_a_volume_claim():
    gateway = named("StatefulSet", "batchinfer-gateway")
    assert gateway["spec"]["replicas"] == 1  # one gateway per SQLite store
    data_dir = flag(container(gateway)["args"], "--data-dir")
    (mount,) = [m for m in container(gateway)["volumeMounts"] if m["mountPath"] == data_dir]
    claims = {c["metadata"]["name"] for c in gateway["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims
    governing = named("Service", gateway["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert flag(container(gateway)["args"], "--workers-dns") == "batchinfer-inference:50061"
    assert named("Service", "batchinfer-inference")["spec"]["clusterIP"] == "None"


def test_every_workload_has_a_disruption_budget():
    budgets = objects("PodDisruptionBudget")
    for workload in objects(WORKLOADS):
        covering = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], workload)]
        assert len(covering) == 1, workload["metadata"]["name"]


def test_the_autoscaler_scales_servers_on_queue_depth_per_server_with_cpu_as_fallback():
    (hpa,) = objects("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    inference = named(target["kind"], target["name"])
    assert container(inference)["resources"]["requests"]["cpu"]  # Utilization needs it
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    external = metrics["External"]["external"]
    assert external["target"]["type"] == "AverageValue"  # divided by the replicas: per server
    queue = next(s for s in CATALOGUE if s.name == "batchinfer.queue.depth")
    assert external["metric"]["name"] == queue.prometheus_name in prometheus_series_names()
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    adapter = yaml.safe_load(named("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    (rule,) = adapter["externalRules"]
    assert rule["seriesQuery"].startswith(external["metric"]["name"] + "{")
    assert rule["name"]["as"] == external["metric"]["name"]


def test_compose_runs_the_same_image_and_flags():
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    per_host = {"--worker", "--workers-dns", "--advertise"}  # how each finds the others
    for name, k8s_name in (
        ("gateway", "batchinfer-gateway"),
        ("inference-1", "batchinfer-inference"),
        ("inference-2", "batchinfer-inference"),
    ):
        service = compose[name]
        workload = next(o for o in objects(WORKLOADS) if o["metadata"]["name"] == k8s_name)
        main = container(workload)
        assert service["image"] == main["image"]
        assert _flags(service["command"], per_host) == _flags(main["args"], per_host), name
        grace = float(flag(service["command"], "--grace-s"))
        assert int(service["stop_grace_period"].rstrip("s")) >= grace + GRACE_MARGIN_S
        health = " ".join(service["healthcheck"]["test"])
        assert "HealthCheckRequest" in health and flag(service["command"], "--port") in health


def _flags(argv: list[str], ignored: set[str]) -> dict[str, list[str]]:
    """The command and its --flags with their values (repeated flags in order)."""
    out: dict[str, list[str]] = {"": [argv[0]]}
    for index, item in enumerate(argv):
        if item.startswith("--") and item not in ignored:
            value = argv[index + 1] if index + 1 < len(argv) else ""
            out.setdefault(item, []).append("" if value.startswith("--") else value)
    return out
