"""deploy/k8s against real Kubernetes schemas, offline (kubernetes-validate's bundled
OpenAPI schemas, strict: an unknown field is an error), and what they must say about
batchinfer: grpc-named ports with appProtocol grpc, readiness on gRPC health, grace
periods longer than each process's drain, three gateway replicas on PostgreSQL (the URL
from a Secret, spread over nodes, a budget that keeps two), the one-gateway alternative on
SQLite (deploy/k8s/sqlite/) on a volume claim, disruption budgets, and an autoscaler on a
metric that a process really emits. deploy/compose.yaml runs the same image with the same
flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from collector.metrics import CATALOGUE, prometheus_series_names

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SQLITE = K8S / "sqlite"  # applied instead of gateway.yaml and postgres.yaml
SETS = (None, SQLITE)  # the two ways to apply deploy/k8s
ALL = Path("all")  # every file, for the schema check
COMPOSE = REPO / "deploy" / "compose.yaml"
KUBERNETES_VERSION = "1.30"  # the oldest version these manifests are checked against
WORKLOADS = ("Deployment", "StatefulSet")
GRACE_MARGIN_S = 10  # beyond --grace-s: the stop steps after the drain
IMAGE = "batchinfer:dev"


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        message = "kubernetes-validate is not installed: `make install` (dev extras)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return kubernetes_validate


def documents(alternative: Path | None = None) -> list[tuple[Path, dict]]:
    """The objects applied together: deploy/k8s/ (and its prometheus-adapter), or, with
    `alternative`, that folder's in place of the gateway's; every file when "all"."""
    paths = sorted(K8S.rglob("*.yaml"))
    if alternative is not ALL:
        paths = [p for p in paths if SQLITE not in p.parents]
        if alternative is not None:
            gateway = {K8S / "gateway.yaml", K8S / "postgres.yaml"}
            paths = [p for p in paths if p not in gateway] + sorted(alternative.glob("*.yaml"))
    return [(path, doc) for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects(kind: str | tuple[str, ...], alternative: Path | None = None) -> list[dict]:
    kinds = (kind,) if isinstance(kind, str) else kind
    return [doc for _, doc in documents(alternative) if doc["kind"] in kinds]


def named(kind: str, name: str, alternative: Path | None = None) -> dict:
    (found,) = [o for o in objects(kind, alternative) if o["metadata"]["name"] == name]
    return found


def batchinfer_workloads(alternative: Path | None = None) -> list[dict]:
    """The workloads that run the batchinfer image (PostgreSQL's is only for trying)."""
    return [w for w in objects(WORKLOADS, alternative) if container(w)["image"] == IMAGE]


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
    found = documents(ALL)
    assert len(found) >= 18
    for path, doc in found:
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.relative_to(REPO)}: {doc['kind']} {where}: {exc.message}")


@pytest.mark.parametrize("alternative", SETS)
def test_grpc_ports_are_named_grpc_and_declare_app_protocol(alternative):
    for service in objects("Service", alternative):
        for port in service["spec"]["ports"]:
            if port["port"] in (50051, 50061):
                assert port["name"] == "grpc" and port["appProtocol"] == "grpc", service
    for workload in batchinfer_workloads(alternative):
        ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
        assert flag(container(workload)["args"], "--port") == str(ports["grpc"])


@pytest.mark.parametrize("alternative", SETS)
def test_readiness_follows_grpc_health_and_the_grace_outlasts_the_drain(alternative):
    for workload in batchinfer_workloads(alternative):
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
    gateway = named("StatefulSet", "batchinfer-gateway", SQLITE)
    assert gateway["spec"]["replicas"] == 1  # one gateway per SQLite store
    data_dir = flag(container(gateway)["args"], "--data-dir")
    (mount,) = [m for m in container(gateway)["volumeMounts"] if m["mountPath"] == data_dir]
    claims = {c["metadata"]["name"] for c in gateway["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims
    governing = named("Service", gateway["spec"]["serviceName"], SQLITE)
    assert governing["spec"]["clusterIP"] == "None"
    assert flag(container(gateway)["args"], "--workers-dns") == "batchinfer-inference:50061"
    assert named("Service", "batchinfer-inference", SQLITE)["spec"]["clusterIP"] == "None"
    assert "BATCHINFER_STORE_URL" not in {e["name"] for e in container(gateway).get("env", [])}


@pytest.mark.parametrize("alternative", SETS)
def test_every_workload_has_a_disruption_budget(alternative):
    budgets = objects("PodDisruptionBudget", alternative)
    for workload in objects(WORKLOADS, alternative):
        covering = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], workload)]
        assert len(covering) == 1, workload["metadata"]["name"]


def test_the_gateway_runs_three_replicas_on_postgresql_from_a_secret():
    gateway = named("Deployment", "batchinfer-gateway")
    assert gateway["spec"]["replicas"] == 3
    main = container(gateway)
    assert "--store-url" not in main["args"]  # a password: from the Secret, not a flag
    (store_url,) = [e for e in main["env"] if e["name"] == "BATCHINFER_STORE_URL"]
    ref = store_url["valueFrom"]["secretKeyRef"]
    url = named("Secret", ref["name"])["stringData"][ref["key"]]
    assert url.startswith("postgresql+asyncpg://")
    # The trial database answers at the URL's host, and its Service selects its pods.
    host = url.split("@", 1)[1].split(":", 1)[0]
    database = named("StatefulSet", "batchinfer-postgres")
    assert selects(named("Service", host)["spec"]["selector"], database)
    # Two of three keep serving through a node drain.
    (budget,) = [
        b
        for b in objects("PodDisruptionBudget")
        if selects(b["spec"]["selector"]["matchLabels"], gateway)
    ]
    assert budget["spec"].get("minAvailable") == 2 or budget["spec"].get("maxUnavailable") == 1
    # Spread over nodes, counting its own pods.
    pod = gateway["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    by_node = spread["kubernetes.io/hostname"]
    assert by_node["whenUnsatisfiable"] == "DoNotSchedule" and by_node["maxSkew"] == 1
    assert selects(by_node["labelSelector"]["matchLabels"], gateway)
    grace = float(flag(main["args"], "--grace-s"))
    assert pod["terminationGracePeriodSeconds"] > grace
    # The principals file from its Secret, the one docs/security.md says to create.
    auth_dir = Path(flag(main["args"], "--auth-file")).parent
    (mount,) = [m for m in main["volumeMounts"] if Path(m["mountPath"]) == auth_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "batchinfer-principals"
    # Clients that balance themselves find every ready replica by DNS.
    headless = named("Service", "batchinfer-gateway-pods")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], gateway)


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
