"""TLS on both hops with real certificates (made here with `cryptography`): an echo
inference server that requires the gateway's client certificate, a gateway whose public
port requires client certificates and maps their CN to a principal, and the CLI running a
whole job through both; expired, wrong-CA and missing certificates are turned away; spans
and logs carry the principal and never a token."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.local import Process, gateway_argv, start_process, worker_argv
from tests.security.certs import Pair, Pki, make_pki
from tests.security.harness import TOKENS, cli, job_yaml, log_files, metadata, principals_yaml
from tests.telemetry.otlp_receiver import OtlpReceiver, attributes_dict
from tests.telemetry_e2e.harness import telemetry_env

pytestmark = pytest.mark.slow


class TlsFleet:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pki: Pki = make_pki(folder / "pki")
        self.receiver = OtlpReceiver()
        env = telemetry_env(self.receiver.start(), capture_content=False)
        p = self.pki
        tls = ["--tls-cert", str(p.worker.cert), "--tls-key", str(p.worker.key)]
        self.worker: Process = start_process(
            "inference server",
            worker_argv("echo", "echo", extra=[*tls, "--tls-client-ca", str(p.ca)]),
            folder / "worker.log",
            timeout=60,
        )
        auth = folder / "principals.yaml"
        auth.write_text(principals_yaml(cert_cns={"alice": "alice"}))
        extra = ["--auth-file", str(auth), "--log-level", "INFO"]
        extra += ["--tls-cert", str(p.server.cert), "--tls-key", str(p.server.key)]
        extra += ["--tls-client-ca", str(p.ca), "--worker-tls-ca", str(p.ca)]
        extra += ["--worker-tls-cert", str(p.gateway_client.cert)]
        extra += ["--worker-tls-key", str(p.gateway_client.key)]
        argv = gateway_argv([self.worker.address], folder / "gw", extra=extra)
        self.gateway: Process = start_process("gateway", argv, folder / "gateway.log", 60, env)

    def channel(self, address: str, pair: Pair | None, ca: Path | None = None) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(ca or self.pki.ca).read_bytes(),
            private_key=pair.key.read_bytes() if pair else None,
            certificate_chain=pair.cert.read_bytes() if pair else None,
        )
        return grpc.secure_channel(address, credentials)

    def tls_flags(self, pair: Pair | None) -> list[str]:
        flags = ["--tls-ca", str(self.pki.ca)]
        if pair is not None:
            flags += ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
        return flags

    def stop(self) -> None:
        for process in (self.gateway, self.worker):
            process.stop(timeout=20)  # SIGTERM: the gateway flushes its telemetry
        self.receiver.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    fleet = TlsFleet(tmp_path_factory.mktemp("tls"))
    try:
        yield fleet
    finally:
        fleet.stop()


def _health(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("client", ["none", "expired", "wrong_ca", "plaintext"])
def test_the_inference_server_refuses_a_client_without_a_valid_certificate(
    fleet: TlsFleet, client: str
) -> None:
    address = fleet.worker.address
    if client == "plaintext":
        channel = grpc.insecure_channel(address)
    else:
        pair = None if client == "none" else getattr(fleet.pki, client)
        channel = fleet.channel(address, pair)
    assert _health(channel) == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    # The gateway's client certificate is let in.
    assert _health(fleet.channel(address, fleet.pki.gateway_client)) == grpc.StatusCode.OK


@pytest.mark.parametrize("client", ["none", "expired", "wrong_ca", "plaintext"])
def test_the_gateway_refuses_a_client_without_a_valid_certificate(
    fleet: TlsFleet, client: str
) -> None:
    address = fleet.gateway.address
    if client == "plaintext":
        channel = grpc.insecure_channel(address)
    else:
        pair = None if client == "none" else getattr(fleet.pki, client)
        channel = fleet.channel(address, pair)
    assert _health(channel) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_is_a_principal_by_its_cn(fleet: TlsFleet) -> None:
    def list_jobs(pair: Pair, token: str | None = None) -> grpc.StatusCode:
        channel = fleet.channel(fleet.gateway.address, pair)
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        try:
            stub.ListJobs(gateway_pb2.ListJobsRequest(), metadata=metadata(token), timeout=10)
        except grpc.RpcError as exc:
            assert token is None or token not in (exc.details() or "")
            return exc.code()
        finally:
            channel.close()
        return grpc.StatusCode.OK

    assert list_jobs(fleet.pki.alice) == grpc.StatusCode.OK  # cert_cn: alice
    # A certificate from the CA whose CN no principal has is no one.
    assert list_jobs(fleet.pki.gateway_client) == grpc.StatusCode.UNAUTHENTICATED
    # With a token as well, the token says who it is.
    assert list_jobs(fleet.pki.gateway_client, TOKENS["bob"]) == grpc.StatusCode.OK
    assert list_jobs(fleet.pki.alice, "tok-not-known-5a5a") == grpc.StatusCode.UNAUTHENTICATED


def test_a_full_job_over_tls_on_both_hops(fleet: TlsFleet) -> None:
    folder = fleet.folder / "job"
    folder.mkdir()
    (folder / "job.yaml").write_text(job_yaml("tls-job", rows=6))
    out, log = folder / "out.jsonl", fleet.folder / "cli.log"
    args = ["submit", str(folder / "job.yaml"), "-g", fleet.gateway.address, "--watch"]
    code, output = cli([*args, "-o", str(out), *fleet.tls_flags(fleet.pki.alice)], log)
    assert code == 0, output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == [f"t{i}" for i in range(6)]
    assert all(line["status"] == "succeeded" for line in lines)
    job_id = output.split()[0]
    # A token over TLS: bob cannot see alice's job, ops can.
    status = ["status", job_id, "-g", fleet.gateway.address, *fleet.tls_flags(fleet.pki.alice)]
    code, output = cli([*status, "--token", TOKENS["bob"]], log)
    assert code == 1 and "not found" in output
    code, output = cli(status, log, env={"BATCHINFER_TOKEN": TOKENS["ops"]})
    assert code == 0 and "team-a" in output
    # Without the CA the CLI does not trust the gateway.
    alice = fleet.pki.alice
    bare = ["status", job_id, "-g", fleet.gateway.address]
    code, output = cli([*bare, "--tls-cert", str(alice.cert), "--tls-key", str(alice.key)], log)
    assert code == 1 and "cannot reach the gateway" in output


def test_spans_carry_the_principal_and_nothing_carries_a_token(fleet: TlsFleet) -> None:
    """Last in the module: stops the fleet so the gateway flushes what it exports."""
    fleet.stop()
    spans = fleet.receiver.spans()
    rpc = [
        attributes_dict(s.attributes)
        for s in spans
        if s.name == "/batchinfer.v1.BatchGateway/SubmitJob"
    ]
    assert rpc and all(a.get("enduser.id") == "alice" for a in rpc), rpc
    assert any(a.get("batchinfer.tenant") == "team-a" for a in rpc)
    jobs = [attributes_dict(s.attributes) for s in spans if s.name == "job"]
    assert any(a.get("enduser.id") == "alice" and a.get("batchinfer.tenant") == "team-a" for a in jobs)  # fmt: skip
    exported = b"".join(
        r.SerializeToString() for signal in ("traces", "logs", "metrics")
        for r in fleet.receiver.requests(signal)
    )  # fmt: skip
    assert b"gateway.audit" in exported or fleet.receiver.requests("logs")
    secrets = [*TOKENS.values(), "tok-not-known-5a5a"]
    for secret in secrets:
        assert secret.encode() not in exported
    for path in log_files(fleet.folder):
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret} in {path}"
