"""The one setup every batchinfer process calls: traces, metrics and logs over OTLP.

With no OTLP endpoint nothing is exported and nothing fails; trace context still
flows (over gRPC and into log lines) because a real TracerProvider is installed.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from dataclasses import dataclass, field
from importlib import metadata

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from collector import logs, settings
from collector.exporters import make_exporter
from collector.metrics import views
from collector.prometheus import MetricsServer, start_metrics_server

_log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return metadata.version("batchinfer")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class TelemetryConfig:
    """What a process asks of telemetry; None means: read the environment, then default."""

    service_name: str
    """batchinfer-gateway or batchinfer-inference."""
    service_version: str = field(default_factory=_package_version)
    metrics_port: int | None = None
    """Serve Prometheus /metrics on this port (0 = any free port); None = no endpoint."""
    metrics_host: str | None = None
    """Bind address of /metrics; else BATCHINFER_METRICS_HOST; else 127.0.0.1 (0.0.0.0 in containers)."""
    log_level: str | None = None
    """The --log-level flag; else BATCHINFER_LOG_LEVEL; else INFO."""
    json_logs: bool = True
    """JSON lines on stderr (with trace_id/span_id); False gives plain text."""
    capture_content: bool | None = None
    """Put prompts and outputs into telemetry; else BATCHINFER_CAPTURE_CONTENT; else no."""
    metric_export_interval_ms: int | None = None
    """OTLP metric export period; else OTEL_METRIC_EXPORT_INTERVAL; else 10000."""

    def __post_init__(self) -> None:
        if not self.service_name:
            raise ValueError("TelemetryConfig.service_name: must not be empty")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"TelemetryConfig.metrics_port={self.metrics_port}: expected 0..65535")


class Telemetry:
    """Handle on what setup_telemetry installed; shutdown() flushes and stops it all."""

    def __init__(self, service_name: str, capture_content: bool) -> None:
        self.service_name = service_name
        self.capture_content = capture_content
        self.metrics_port: int | None = None
        self.tracer_provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.logger_provider: LoggerProvider | None = None
        self._metrics_server: MetricsServer | None = None
        self._otlp_log_handler: logging.Handler | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        """Flush and shut down every provider, then stop /metrics. Idempotent."""
        global _active
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._otlp_log_handler is not None:
            logging.getLogger().removeHandler(self._otlp_log_handler)
        # Logs last among the flushes: shutting the others down may log.
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:  # a failing exporter must not break process exit
                    _log.warning(
                        "telemetry shutdown of %s failed", type(provider).__name__, exc_info=True
                    )
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if _active is self:
            _active = None


_active: Telemetry | None = None
_active_lock = threading.Lock()


def setup_telemetry(config: TelemetryConfig) -> Telemetry:
    """Install tracer, meter and logger providers for this process; call once at start.

    A second call while the first is active returns the first (with a warning when the
    service name differs): the OpenTelemetry API allows one global provider per process.
    """
    global _active
    with _active_lock:
        if _active is not None:
            if _active.service_name != config.service_name:
                _log.warning(
                    "telemetry already set up for %s; %s shares it",
                    _active.service_name,
                    config.service_name,
                )
            return _active
        telemetry = _build(config)
        _active = telemetry
    atexit.register(telemetry.shutdown)
    return telemetry


def _build(config: TelemetryConfig) -> Telemetry:
    level = settings.log_level(config.log_level)
    logs.configure_stderr(config.service_name, level, config.json_logs)
    telemetry = Telemetry(config.service_name, settings.capture_content(config.capture_content))
    if settings.sdk_disabled():
        _log.info("OTEL_SDK_DISABLED is set: no traces, metrics or OTLP logs")
        return telemetry
    resource = build_resource(config.service_name, config.service_version)
    telemetry.tracer_provider = _tracer_provider(resource)
    telemetry.meter_provider = _meter_provider(resource, config, telemetry)
    telemetry.logger_provider = _logger_provider(resource)
    _install_globals(telemetry)
    if telemetry.logger_provider is not None:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        handler = LoggingHandler(logger_provider=telemetry.logger_provider)
        logging.getLogger().addHandler(logs.mark(handler))
        telemetry._otlp_log_handler = handler
    instrument_grpc()
    return telemetry


class _HashedResource(Resource):
    """A Resource whose hash is computed once. The OTLP encoders group every span and log
    record they export by resource, and Resource.__hash__ serialises all its attributes
    to JSON each time: a sixth of the gateway's span encoding in a py-spy profile."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def build_resource(service_name: str, service_version: str) -> Resource:
    """service.name/version from the arguments, OTEL_RESOURCE_ATTRIBUTES for the rest."""
    resource = Resource.create({"service.name": service_name, "service.version": service_version})
    if "service.instance.id" not in resource.attributes:
        resource = resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))
    return _HashedResource(resource)


def _tracer_provider(resource: Resource) -> TracerProvider:
    # No sampler argument: the SDK picks it from OTEL_TRACES_SAMPLER(_ARG),
    # parentbased_always_on by default.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = make_exporter("traces")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _meter_provider(
    resource: Resource, config: TelemetryConfig, telemetry: Telemetry
) -> MeterProvider:
    readers: list[MetricReader] = []
    exporter = make_exporter("metrics")
    if exporter is not None:
        interval = settings.metric_export_interval_ms(config.metric_export_interval_ms)
        readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval))
    if config.metrics_port is not None:
        host = settings.metrics_host(config.metrics_host)
        server = start_metrics_server(host, config.metrics_port)
        telemetry._metrics_server = server
        telemetry.metrics_port = server.port
        readers.append(server.reader)
        # The bound port matters when 0 was asked (tests, local fleets).
        _log.info(
            "serving Prometheus /metrics on %s:%d",
            host,
            server.port,
            extra={"metrics_port": server.port},
        )
    return MeterProvider(
        resource=resource, metric_readers=readers, views=views(), shutdown_on_exit=False
    )


def _logger_provider(resource: Resource) -> LoggerProvider | None:
    exporter = make_exporter("logs")
    if exporter is None:
        return None
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider


def _install_globals(telemetry: Telemetry) -> None:
    # The API keeps the first provider of each kind for the life of the process.
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        _log.warning(
            "a global TracerProvider was set before; %s's providers are not global",
            telemetry.service_name,
        )
    assert telemetry.tracer_provider is not None and telemetry.meter_provider is not None
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    if telemetry.logger_provider is not None:
        _logs.set_logger_provider(telemetry.logger_provider)


_grpc_lock = threading.Lock()
_grpc_instrumented = False


def instrument_grpc() -> None:
    """Trace grpc.aio servers and channels created from now on. Idempotent.

    Wraps `grpc.aio.server`, `grpc.aio.insecure_channel` and `grpc.aio.secure_channel`:
    call them through the module, and create them after this runs. Health checks and
    reflection are not traced.
    """
    global _grpc_instrumented
    with _grpc_lock:
        if _grpc_instrumented:
            return
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
            filters,
        )

        quiet = filters.negate(
            filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
        )
        GrpcAioInstrumentorServer(filter_=quiet).instrument()
        GrpcAioInstrumentorClient(filter_=quiet).instrument()
        _grpc_instrumented = True


def capture_content() -> bool:
    """Whether prompts and outputs may go into spans, logs or events: decided once, at
    setup (TelemetryConfig.capture_content, else BATCHINFER_CAPTURE_CONTENT); a process
    that set no telemetry up captures nothing."""
    active = _active
    return active is not None and active.capture_content
