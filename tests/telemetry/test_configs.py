"""Structure of the Collector config, dashboards, compose file and Kubernetes manifests.

None of those binaries runs here, so the tests check what would break them: names that
point nowhere, metrics nobody emits, files that are missing, selectors that match nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from collector.metrics import CATALOGUE, prometheus_series_names

REPO = Path(__file__).resolve().parents[2]
OTELCOL = REPO / "collector" / "otelcol.yaml"
DASHBOARDS = sorted((REPO / "collector" / "dashboards").glob("*.json"))
COMPOSE = REPO / "deploy" / "compose.yaml"
K8S = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))

PROMQL_WORDS = frozenset(
    [
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "by",
        "without",
        "le",
        "on",
        "ignoring",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "topk",
        "bottomk",
        "clamp_min",
        "clamp_max",
        "abs",
    ]
)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# --- OpenTelemetry Collector


def test_every_pipeline_names_defined_components() -> None:
    config = load_yaml(OTELCOL)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline[section]:
                assert component in config[section], (
                    f"pipeline {name}: {section} {component} undefined"
                )
        assert pipeline["processors"][0] == "memory_limiter", f"pipeline {name}"
        assert "attributes/redaction" in pipeline["processors"], f"pipeline {name}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]


def test_receivers_and_exporters_are_the_documented_ones() -> None:
    config = load_yaml(OTELCOL)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert config["exporters"]["otlphttp/loki"]["endpoint"].endswith("/otlp")


def test_redaction_deletes_prompt_and_completion_attributes() -> None:
    actions = load_yaml(OTELCOL)["processors"]["attributes/redaction"]["actions"]
    deleted = {a["key"] for a in actions if a["action"] == "delete" and "key" in a}
    for key in ("gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages",
                "gen_ai.output.messages", "batchinfer.prompt", "batchinfer.output"):  # fmt: skip
        assert key in deleted, key
    patterns = [re.compile(a["pattern"]) for a in actions if "pattern" in a]
    assert any(p.match("gen_ai.prompt.0.content") for p in patterns)


# --- Grafana dashboards


def dashboard_exprs(dashboard: dict, datasource: str) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["datasource"]["type"] == datasource
        for target in panel.get("targets", [])
    ]


def promql_metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)", " ", without_strings)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels))
    return words - PROMQL_WORDS


def promql_label_names(expr: str) -> set[str]:
    grouped = {
        label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")
    }
    matched = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", expr))
    return (grouped | matched) - {""}


def catalogue_labels() -> set[str]:
    return {re.sub(r"[^a-zA-Z0-9]", "_", a) for spec in CATALOGUE for a in spec.attributes} | {"le"}


def test_promql_helpers_find_names() -> None:
    expr = 'sum by (a_b) (rate(x_total{c="d.e"}[5m])) / histogram_quantile(0.5, y_bucket)'
    assert promql_metric_names(expr) == {"x_total", "y_bucket"}
    assert promql_label_names(expr) == {"a_b", "c"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_emitted_metrics_and_labels(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exprs = dashboard_exprs(dashboard, "prometheus")
    assert exprs, "no Prometheus query"
    emitted = prometheus_series_names()
    for expr in exprs:
        assert promql_metric_names(expr) <= emitted, expr
        assert promql_label_names(expr) <= catalogue_labels(), expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_logs_panel_and_trace_link(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard_exprs(dashboard, "loki"), "no Loki logs panel"
    assert any(p["type"] == "logs" for p in dashboard["panels"])
    assert any("jaeger" in link["url"] for link in dashboard["links"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboards_cover_the_issue_panels() -> None:
    exprs = " ".join(
        e for p in DASHBOARDS for e in dashboard_exprs(json.loads(p.read_text()), "prometheus")
    )
    for series in ("batchinfer_tasks_total", "batchinfer_queue_depth", "batchinfer_batch_size_bucket",
                   "batchinfer_batch_tokens_bucket", "batchinfer_server_tokens_total",
                   "gen_ai_server_request_duration_seconds_bucket", "batchinfer_task_retries_total",
                   "batchinfer_inflight", "batchinfer_server_busy"):  # fmt: skip
        assert series in exprs, series


def test_grafana_datasources_match_dashboard_uids() -> None:
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    sources = load_yaml(provisioning / "datasources" / "datasources.yaml")["datasources"]
    uids = {s["uid"] for s in sources}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids, panel["title"]
    loki = next(s for s in sources if s["type"] == "loki")
    assert loki["jsonData"]["derivedFields"][0]["datasourceUid"] in uids


# --- docker compose


def compose_path(spec: str) -> Path:
    return (COMPOSE.parent / spec.split(":", 1)[0]).resolve()


def test_compose_services_images_dependencies_and_volumes() -> None:
    compose = load_yaml(COMPOSE)
    services, named_volumes = compose["services"], set(compose.get("volumes") or {})
    expected = {"gateway", "inference-1", "inference-2", "otel-collector", "jaeger",
                "prometheus", "loki", "grafana"}  # fmt: skip
    assert expected <= set(services)
    for name, service in services.items():
        assert service.get("image"), f"{name}: no image"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name}: depends_on {dependency} undefined"
        for volume in service.get("volumes", []):
            if volume.split(":", 1)[0] in named_volumes:
                continue
            assert compose_path(volume).exists(), f"{name}: volume {volume} not found"
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().exists()


def test_compose_processes_send_otlp_to_the_collector_and_prometheus_scrapes_it() -> None:
    services = load_yaml(COMPOSE)["services"]
    for name in ("gateway", "inference-1", "inference-2"):
        assert (
            services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
            == "http://otel-collector:4317"
        )
    prometheus = load_yaml(REPO / "deploy" / "prometheus" / "prometheus.yml")
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    exporter_port = load_yaml(OTELCOL)["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert f"otel-collector:{exporter_port}" in targets


# --- Kubernetes


def k8s_objects() -> list[dict]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_k8s_services_select_deployments_and_ports_exist() -> None:
    objects = k8s_objects()
    deployments = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    services = [o for o in objects if o["kind"] == "Service"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "batchinfer-gateway",
        "batchinfer-inference",
        "batchinfer-postgres",  # the trial database (postgres.yaml)
    }
    for deployment in deployments:
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), deployment["metadata"]["name"]
    for service in services:
        [target] = [
            d for d in deployments
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        port_names = {
            p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{service['metadata']['name']}: {port}"
    inference = next(s for s in services if s["metadata"]["name"] == "batchinfer-inference")
    assert inference["spec"]["clusterIP"] == "None"  # headless, for DNS discovery


def test_k8s_probes_use_grpc_health_and_scrape_annotations_point_at_metrics() -> None:
    workloads = [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]
    # The trial PostgreSQL runs no batchinfer process: nothing of ours to probe or scrape.
    for deployment in (w for w in workloads if w["metadata"]["name"] != "batchinfer-postgres"):
        template = deployment["spec"]["template"]
        [container] = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"], deployment["metadata"]["name"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(ports["metrics"])
        assert args[args.index("--port") + 1] == str(ports["grpc"])
        config_maps = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
        defined = {o["metadata"]["name"] for o in k8s_objects() if o["kind"] == "ConfigMap"}
        assert config_maps <= defined


def test_docs_metric_table_is_generated_from_the_catalogue() -> None:
    from collector.metrics import markdown_table

    doc = (REPO / "docs" / "observability.md").read_text()
    table = doc.split("<!-- metrics-table:start -->\n", 1)[1].split(
        "\n<!-- metrics-table:end -->", 1
    )[0]
    assert table == markdown_table(), "run `python -m collector.metrics` and paste the table"
