"""The principals file, the authenticator and the refusal to serve unauthenticated: pure
unit tests, no gRPC server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.auth import Authenticator, Unauthenticated
from gateway.principals import (
    ANONYMOUS,
    Principals,
    PrincipalsError,
    PrincipalsFile,
    token_sha256,
)
from gateway.settings import GatewayConfig, SettingsError, is_loopback
from services.inference.config import ConfigError, ServerConfig

ALICE, OPS = "alice-secret-token", "ops-secret-token"


def principals_yaml(extra: str = "") -> str:
    return (
        "principals:\n"
        f"  - {{name: alice, token_sha256: {token_sha256(ALICE)}, tenants: [team-a, team-c],"
        " roles: [templates]}\n"
        f"  - {{name: ops, token_sha256: {token_sha256(OPS)}, admin: true}}\n"
        "  - {name: ci, cert_cn: ci.example.com, tenants: [team-b]}\n" + extra
    )


def auth_md(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "x"), ("authorization", f"Bearer {token}")]


def test_a_principals_file_maps_tokens_and_cns_to_principals() -> None:
    principals = Principals.parse(principals_yaml())
    alice = principals.by_bearer(ALICE)
    assert alice is not None and alice.name == "alice"
    assert alice.tenants == ("team-a", "team-c") and alice.default_tenant == "team-a"
    assert alice.may_register_templates() and not alice.admin
    assert alice.sees("team-c") and not alice.sees("team-b")
    assert principals.by_bearer("nope") is None
    assert principals.by_cn["ci.example.com"].tenants == ("team-b",)
    ops = principals.by_bearer(OPS)
    assert ops is not None and ops.admin and ops.sees("anything")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("principals: [{name: a, token_sha256: abc, tenants: [t]}]", "64 hex digits"),
        ("principals: [{name: a, tenants: [t]}]", "needs token_sha256 or cert_cn"),
        ("principals: [{name: a, cert_cn: a}]", "at least one tenant"),
        ("principals: [{name: a, cert_cn: a, tenants: [t], roles: [root]}]", "unknown role"),
        ("principals: [{name: a, cert_cn: a, tenants: [t], token: x}]", "unknown field 'token'"),
        (
            "principals: [{name: a, cert_cn: a, tenants: [t]}, {name: a, cert_cn: b, tenants: [t]}]",
            "listed twice",
        ),
        (
            "principals: [{name: a, cert_cn: x, tenants: [t]}, {name: b, cert_cn: x, tenants: [t]}]",
            "share cert_cn",
        ),
        ("principals: [{name: a, cert_cn: x, admin: 'yes'}]", "true or false"),
        ("principals: {a: 1}", "list of principals"),
        ("principals: [", "not valid YAML"),
    ],
)
def test_a_bad_principals_file_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PrincipalsError, match=message):
        Principals.parse(text)


def test_a_plain_token_in_the_file_is_refused_without_echoing_it() -> None:
    with pytest.raises(PrincipalsError) as caught:
        Principals.parse("principals: [{name: a, token_sha256: hunter2hunter2, tenants: [t]}]")
    assert "hunter2" not in str(caught.value)


def test_the_file_is_reloaded_when_it_changes_and_a_broken_one_is_not_taken(
    tmp_path: Path,
) -> None:
    path = tmp_path / "principals.yaml"
    path.write_text(principals_yaml())
    now = [0.0]
    watched = PrincipalsFile(path, clock=lambda: now[0])
    assert watched.get().by_bearer("dave-token") is None
    path.write_text(
        principals_yaml(
            f"  - {{name: dave, token_sha256: {token_sha256('dave-token')}, tenants: [d]}}\n"
        )
    )
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert watched.get().by_bearer("dave-token") is None  # checked at most once a second
    now[0] = 1.5
    dave = watched.get().by_bearer("dave-token")
    assert dave is not None and dave.tenants == ("d",)
    path.write_text("principals: [")  # a half-written file keeps the last good principals
    now[0] = 3.0
    assert watched.get().by_bearer("dave-token") is not None


def test_the_authenticator_takes_a_token_then_a_certificate(tmp_path: Path) -> None:
    path = tmp_path / "principals.yaml"
    path.write_text(principals_yaml())
    auth = Authenticator(PrincipalsFile(path), client_certs=True)
    cert = {"x509_common_name": [b"ci.example.com"]}
    assert auth.authenticate(auth_md(ALICE), {}).name == "alice"
    assert auth.authenticate(auth_md(ALICE), cert).name == "alice"  # the token wins
    assert auth.authenticate([], cert).name == "ci"
    for metadata, context, message in [
        ([], {}, "missing credentials"),
        (auth_md("wrong"), cert, "unknown bearer token"),
        ([("authorization", "Basic abc")], {}, "Bearer <token>"),
        ([], {"x509_common_name": [b"mallory"]}, "no principal has cert_cn 'mallory'"),
    ]:
        with pytest.raises(Unauthenticated, match=message) as caught:
            auth.authenticate(metadata, context)
        assert "wrong" not in str(caught.value)


def test_without_a_file_or_client_cas_everyone_is_the_trusted_user() -> None:
    assert Authenticator(None, client_certs=False).authenticate([], {}) is ANONYMOUS
    # Certificates alone: each holder is a trusted user named by its CN.
    holder = Authenticator(None, client_certs=True).authenticate(
        [], {"x509_common_name": [b"gw-client"]}
    )
    assert holder.name == "gw-client" and holder.admin


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("gw.example", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_without_authentication_is_refused_with_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        GatewayConfig(host="0.0.0.0")
    for flag in ("--auth-file", "--tls-client-ca", "--insecure"):
        assert flag in str(caught.value)
    GatewayConfig(host="0.0.0.0", insecure=True)
    GatewayConfig(host="0.0.0.0", auth_file=tmp_path / "p.yaml")
    GatewayConfig(
        host="0.0.0.0",
        tls_cert=tmp_path / "c",
        tls_key=tmp_path / "k",
        tls_client_ca=tmp_path / "a",
    )
    with pytest.raises(SettingsError, match="go together"):
        GatewayConfig(tls_cert=tmp_path / "c")
    with pytest.raises(SettingsError, match="--worker-tls-ca"):
        GatewayConfig(worker_tls_cert=tmp_path / "c", worker_tls_key=tmp_path / "k")


def test_an_inference_server_on_a_public_address_needs_client_certificates(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig(host="0.0.0.0", backend="echo").validate()
    assert "--tls-client-ca" in str(caught.value) and "--insecure" in str(caught.value)
    ServerConfig(host="0.0.0.0", backend="echo", insecure=True).validate()
    pki = {name: tmp_path / name for name in ("c", "k", "a")}
    ServerConfig(
        host="0.0.0.0", backend="echo", tls_cert=pki["c"], tls_key=pki["k"], tls_client_ca=pki["a"]
    ).validate()
    with pytest.raises(ConfigError, match="tls_client_ca needs"):
        ServerConfig(backend="echo", tls_client_ca=pki["a"]).validate()


def test_the_compose_stacks_principals_file_is_valid() -> None:
    text = (Path(__file__).parents[2] / "deploy" / "principals.dev.yaml").read_text()
    dev = Principals.parse(text).by_bearer("dev-token-change-me")
    assert dev is not None and dev.admin
