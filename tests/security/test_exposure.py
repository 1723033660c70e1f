"""Safe by default: a gateway or an inference server bound to a non-loopback address
without authentication refuses to start and says what to add; --insecure (or
authentication) lets it start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.local import gateway_argv, start_process, worker_argv
from tests.security.harness import ROOT, principals_yaml

pytestmark = pytest.mark.slow


def _on_all_interfaces(argv: list[str]) -> list[str]:
    argv = list(argv)
    argv[argv.index("--host") + 1] = "0.0.0.0"
    return argv


def _refused(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_gateway_refuses_0_0_0_0_without_authentication(tmp_path: Path) -> None:
    argv = _on_all_interfaces(gateway_argv([], tmp_path / "gw"))
    done = _refused(argv)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "refusing to serve on 0.0.0.0 without authentication" in message
    for flag in ("--auth-file", "--tls-client-ca", "--insecure"):
        assert flag in message
    assert not (tmp_path / "gw").exists()  # nothing was started or created


@pytest.mark.parametrize("how", ["insecure", "auth-file"])
def test_the_gateway_starts_on_0_0_0_0_with_insecure_or_authentication(
    tmp_path: Path, how: str
) -> None:
    argv = _on_all_interfaces(gateway_argv([], tmp_path / "gw"))
    if how == "insecure":
        argv.append("--insecure")
    else:
        (tmp_path / "principals.yaml").write_text(principals_yaml())
        argv += ["--auth-file", str(tmp_path / "principals.yaml")]
    process = start_process("gateway", argv, tmp_path / "gateway.log", timeout=60)
    try:
        assert process.address.startswith("0.0.0.0:")
    finally:
        assert process.stop(timeout=20) == 0


def test_the_inference_server_refuses_0_0_0_0_without_client_certificates(
    tmp_path: Path,
) -> None:
    done = _refused(_on_all_interfaces(worker_argv("echo", "echo")))
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "refusing to serve on 0.0.0.0 without client certificates" in message
    assert "--tls-client-ca" in message and "--insecure" in message
    argv = [*_on_all_interfaces(worker_argv("echo", "echo")), "--insecure"]
    process = start_process("inference server", argv, tmp_path / "worker.log", timeout=60)
    assert process.stop(timeout=20) == 0


def test_a_bad_principals_file_stops_the_gateway_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "principals.yaml"
    bad.write_text("principals: [{name: a, token_sha256: plain-token-here, tenants: [t]}]\n")
    argv = [*gateway_argv([], tmp_path / "gw"), "--auth-file", str(bad)]
    done = _refused(argv)
    assert done.returncode == 1
    assert "64 hex digits" in done.stderr and "plain-token-here" not in done.stderr
