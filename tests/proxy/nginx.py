"""A real L7 proxy for the tests: Debian's nginx as a gRPC (HTTP/2 both sides) reverse
proxy on 127.0.0.1, a non-daemon process whose config, pid, logs and temp paths all live
in one folder, so it can be reloaded (`nginx -s reload`) and restarted mid-job.

The timeouts are the settings a deployment needs for long gRPC streams (docs/api.md,
"Behind a proxy"): nginx's defaults would cut a quiet stream after 60 s
(grpc_read_timeout, grpc_send_timeout, client_body_timeout), refuse a stream whose
requests add up to over 1 MiB (client_max_body_size) and end a connection after 1,000
calls (keepalive_requests).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NGINX = "/usr/sbin/nginx"
INSTALL_HINT = (
    "nginx is not installed: `make install` runs tests/proxy/setup.sh (apt-get install nginx)"
)


def nginx_binary() -> str:
    """The nginx binary, or a failure in CI (where setup must have installed it) and a
    skip elsewhere."""
    found = shutil.which("nginx") or (NGINX if Path(NGINX).exists() else None)
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


@dataclass(frozen=True)
class Route:
    """One listener: gRPC on 127.0.0.1:listen, passed to 127.0.0.1:upstream."""

    listen: int
    upstream: str  # HOST:PORT


# Long streams: a Process stream or a StreamResults follower may be quiet for a long time
# (a long batch, a paused job); 1 h is the deployment advice, the tests use the same.
STREAM_TIMEOUT = "3600s"

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
# On reload the old worker closes what is still open after this: long streams re-open.
worker_shutdown_timeout {shutdown_timeout};
events {{ worker_connections 1024; }}
http {{
    log_format grpc '$server_port $upstream_addr "$request" $status $request_time';
    access_log {folder}/access.log grpc;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    # A stream's requests add up: no cap on the "body" (each message is capped by gRPC).
    client_max_body_size 0;
    client_body_timeout {stream_timeout};
    grpc_read_timeout {stream_timeout};
    grpc_send_timeout {stream_timeout};
    keepalive_timeout {stream_timeout};
    keepalive_requests 1000000;
    http2_max_concurrent_streams 1024;
{servers}
}}
"""

SERVER = """\
    server {{
        listen 127.0.0.1:{listen} http2;
        location / {{ grpc_pass grpc://{upstream}; }}
    }}
"""


@dataclass
class Nginx:
    """nginx in front of some gRPC servers; start(), reload(), restart(), stop()."""

    folder: Path
    routes: list[Route]
    shutdown_timeout_s: float = 2.0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    binary: str = field(default_factory=nginx_binary)

    @property
    def conf(self) -> Path:
        return self.folder / "nginx.conf"

    def _argv(self, *extra: str) -> list[str]:
        folder = str(self.folder)
        return [
            self.binary,
            "-p",
            folder,
            "-c",
            str(self.conf),
            "-e",
            f"{folder}/error.log",
            *extra,
        ]

    def write_config(self) -> None:
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        servers = "".join(SERVER.format(listen=r.listen, upstream=r.upstream) for r in self.routes)
        # As root, nginx's workers would run as nobody; keep them the folder's owner.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf.write_text(
            CONFIG.format(
                folder=self.folder,
                user=user,
                servers=servers,
                stream_timeout=STREAM_TIMEOUT,
                shutdown_timeout=f"{self.shutdown_timeout_s:g}s",
            )
        )

    def start(self, timeout: float = 15.0) -> Nginx:
        self.write_config()
        check = subprocess.run(self._argv("-t"), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
        log = (self.folder / "nginx.stderr").open("ab")
        self.process = subprocess.Popen(
            self._argv(), stdout=log, stderr=log, start_new_session=True
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        for route in self.routes:
            while not _listening(route.listen):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start:\n{self.error_log()}")
                time.sleep(0.05)
        return self

    def reload(self) -> None:
        """`nginx -s reload` with the same -p/-c: new workers, the old ones finish."""
        done = subprocess.run(
            self._argv("-s", "reload"), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"nginx -s reload failed:\n{done.stderr}"

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGTERM): every connection is closed at once."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def access_log(self) -> list[str]:
        path = self.folder / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
