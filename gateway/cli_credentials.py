"""The options every command that talks to a gateway takes: a bearer token and TLS files
(docs/security.md, "Identity and isolation")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from gateway.channels import Credentials

EXIT_INVALID = 2

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BATCHINFER_TOKEN",
        show_default=False,
        help="Bearer token sent to the gateway (better: the environment variable).",
    ),
]
TlsCaOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca", envvar="BATCHINFER_TLS_CA", help="TLS: the CA (PEM) of the gateway's cert."
    ),
]
TlsCertOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert", envvar="BATCHINFER_TLS_CERT", help="mTLS: this client's certificate (PEM)."
    ),
]
TlsKeyOption = Annotated[
    Path | None,
    typer.Option("--tls-key", envvar="BATCHINFER_TLS_KEY", help="mTLS: its private key (PEM)."),
]


def credentials(
    token: str | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> Credentials:
    """The --token and --tls-* options; a file that cannot be read ends the command (2)."""

    def fail(text: str) -> typer.Exit:
        Console(stderr=True).print(
            f"[red]error[/red]: {escape(text)}", soft_wrap=True, highlight=False
        )
        return typer.Exit(EXIT_INVALID)

    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise fail(f"{flag}: cannot read {path}")
    token = (token or "").strip() or None
    return Credentials(token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
