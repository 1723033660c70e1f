"""A test OTLP receiver: captures what an exporter sends, over gRPC or HTTP.

gRPC uses the opentelemetry-proto servicers on a thread-pool `grpc.server` (an aio
receiver on the exporter's event loop deadlocks on force_flush); HTTP is a small
`http.server` that accepts OTLP/HTTP protobuf POSTs on /v1/{traces,metrics,logs}.

    receiver = OtlpReceiver()            # or OtlpReceiver(protocol="http")
    endpoint = receiver.start()          # "http://127.0.0.1:PORT"
    ... run the code with OTEL_EXPORTER_OTLP_ENDPOINT=endpoint ...
    receiver.wait_for(lambda r: r.spans())
    receiver.stop()
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

_REQUEST_TYPES: dict[str, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE_TYPES: dict[str, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, list[Any]] = {signal: [] for signal in _REQUEST_TYPES}

    def add(self, signal: str, request: Any) -> None:
        with self.lock:
            self.requests[signal].append(request)


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request: Any, context: Any) -> Any:
        self.store.add("traces", request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request: Any, context: Any) -> Any:
        self.store.add("metrics", request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request: Any, context: Any) -> Any:
        self.store.add("logs", request)
        return logs_service_pb2.ExportLogsServiceResponse()


def _http_handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            signal = self.path.rstrip("/").rsplit("/", 1)[-1]
            if signal not in _REQUEST_TYPES:
                self.send_error(404, f"no OTLP signal at {self.path}")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            store.add(signal, _REQUEST_TYPES[signal].FromString(body))
            reply = _RESPONSE_TYPES[signal]().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


class OtlpReceiver:
    """Collects OTLP export requests on 127.0.0.1 (any free port)."""

    def __init__(self, protocol: str = "grpc") -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol={protocol!r}: expected grpc or http")
        self.protocol = protocol
        self._store = _Store()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> str:
        """Starts serving; returns the endpoint, e.g. "http://127.0.0.1:43123"."""
        if self.protocol == "grpc":
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
                _Traces(self._store), self._grpc
            )
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
                _Metrics(self._store), self._grpc
            )
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self._store), self._grpc)
            self.port = self._grpc.add_insecure_port("127.0.0.1:0")
            self._grpc.start()
        else:
            self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self._store))
            self.port = self._http.server_port
            self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
            self._http_thread.start()
        return self.endpoint

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("OtlpReceiver.endpoint: call start() first")
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what was received

    def requests(self, signal: str) -> list[Any]:
        """The raw Export*ServiceRequest messages of one signal, in arrival order."""
        with self._store.lock:
            return list(self._store.requests[signal])

    def resources(self, signal: str) -> list[dict[str, Any]]:
        """Resource attributes of every resource block received for a signal."""
        blocks = {
            "traces": "resource_spans",
            "metrics": "resource_metrics",
            "logs": "resource_logs",
        }
        return [
            attributes_dict(block.resource.attributes)
            for request in self.requests(signal)
            for block in getattr(request, blocks[signal])
        ]

    def spans(self) -> list[trace_pb2.Span]:
        return [
            span
            for request in self.requests("traces")
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def metrics(self) -> list[metrics_pb2.Metric]:
        return [
            metric
            for request in self.requests("metrics")
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        ]

    def logs(self) -> list[logs_pb2.LogRecord]:
        return [
            record
            for request in self.requests("logs")
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]

    def wait_for(self, condition: Callable[[OtlpReceiver], Any], timeout_s: float = 20.0) -> bool:
        """Polls `condition(self)` until it is truthy or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(0.05)
        return bool(condition(self))


def attributes_dict(attributes: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> plain dict (string, bool, int and double values)."""
    result: dict[str, Any] = {}
    for kv in attributes:
        which = kv.value.WhichOneof("value")
        result[kv.key] = getattr(kv.value, which) if which else None
    return result
