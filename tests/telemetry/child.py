"""Runs in a subprocess for the telemetry tests: sets up telemetry like a real process.

python tests/telemetry/child.py emit      # a span, metrics and a log inside the span
python tests/telemetry/child.py grpc      # an instrumented grpc.aio call and a health check
python tests/telemetry/child.py serve     # /metrics on port 0; prints the port, waits on stdin
"""

from __future__ import annotations

import asyncio
import logging
import sys

from opentelemetry import metrics, trace

from collector import TelemetryConfig, setup_telemetry
from collector.metrics import BY_NAME

log = logging.getLogger("batchinfer.test.child")


def record_metrics() -> None:
    meter = metrics.get_meter("batchinfer.test")
    meter.create_counter("batchinfer.tasks", unit="{task}").add(
        3, {"batchinfer.task.status": "succeeded", "batchinfer.tenant": "team-a"}
    )
    spec = BY_NAME["batchinfer.batch.size"]
    meter.create_histogram(spec.name, unit=spec.unit).record(
        12, {"batchinfer.component": "gateway"}
    )


def emit() -> None:
    telemetry = setup_telemetry(TelemetryConfig("batchinfer-gateway", service_version="9.9.9"))
    record_metrics()
    with trace.get_tracer("batchinfer.test").start_as_current_span("job.submit") as span:
        span.set_attribute("batchinfer.job.id", "job-1")
        log.info("job accepted", extra={"job_id": "job-1"})
    log.warning("outside any span")
    telemetry.shutdown()


async def grpc_call() -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        log.info("handling Say")
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await channel.unary_unary("/test.Echo/Say")(b"hi") == b"hi"
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    await server.stop(None)


def grpc_scenario() -> None:
    telemetry = setup_telemetry(TelemetryConfig("batchinfer-inference"))
    asyncio.run(grpc_call())
    telemetry.shutdown()


def serve() -> None:
    telemetry = setup_telemetry(TelemetryConfig("batchinfer-inference", metrics_port=0))
    record_metrics()
    print(telemetry.metrics_port, flush=True)
    sys.stdin.read()  # the test closes stdin when it has scraped
    telemetry.shutdown()


if __name__ == "__main__":
    {"emit": emit, "grpc": grpc_scenario, "serve": serve}[sys.argv[1]]()
