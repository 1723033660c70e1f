"""Who may call the gateway: principals, their tenants and roles, read from a YAML file.

A principals file (``batchinfer gateway --auth-file FILE``) lists principals; each has a
name, a bearer token's SHA-256 (never the token) and/or a client certificate's subject
CN, the tenants whose jobs it sees and controls, and optional rights::

    principals:
      - name: alice
        token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        tenants: [team-a, team-b]   # the first is where its jobs go by default
        roles: [templates]          # may register templates for its tenants
      - name: ops
        token_sha256: ...
        admin: true                 # sees and controls every tenant's jobs
      - name: ci
        cert_cn: ci.example.com     # a client certificate with this subject CN

The file is read again when its modification time, size or inode change; a file that
no longer parses keeps the principals that were loaded last (and says why in the log).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

ROLES = frozenset({"templates"})
"""templates: may register templates for its tenants (admins may also register shared ones)."""
RELOAD_CHECK_S = 1.0  # at most one stat() of the file a second
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_KEYS = frozenset({"name", "token_sha256", "cert_cn", "tenants", "admin", "roles"})


class PrincipalsError(ValueError):
    """The principals file cannot be used; the message names the entry and the field."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `tenants` is ordered: the first is its default tenant."""

    name: str
    tenants: tuple[str, ...] = ()
    admin: bool = False
    roles: frozenset[str] = field(default_factory=frozenset)
    token_sha256: str | None = None
    cert_cn: str | None = None

    def sees(self, tenant: str) -> bool:
        """May it see and control this tenant's jobs?"""
        return self.admin or tenant in self.tenants

    def may_submit_for(self, tenant: str) -> bool:
        return self.sees(tenant)

    @property
    def default_tenant(self) -> str | None:
        return self.tenants[0] if self.tenants else None

    def may_register_templates(self) -> bool:
        return self.admin or "templates" in self.roles

    def describe_tenants(self) -> str:
        return ", ".join(self.tenants) if self.tenants else "none"


ANONYMOUS = Principal(name="", admin=True, roles=ROLES)
"""The caller when the gateway authenticates nobody: one trusted user, as before."""


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a bearer token, as a principals file holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PrincipalsError(f"{where}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _principal(entry: Any, index: int) -> Principal:
    where = f"principals[{index}]"
    if not isinstance(entry, dict):
        raise PrincipalsError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise PrincipalsError(f"{where}: unknown field {unknown[0]!r} (known: {sorted(_KEYS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PrincipalsError(f"{where}.name: must be a non-empty string")
    where = f"principals[{index}] ({name})"
    digest = entry.get("token_sha256")
    if digest is not None:
        digest = str(digest).lower()
        if not _HEX64.match(digest):
            raise PrincipalsError(
                f"{where}.token_sha256: must be 64 hex digits (the SHA-256 of the token, "
                "e.g. `printf %s TOKEN | sha256sum`), not the token itself"
            )
    cert_cn = entry.get("cert_cn")
    if cert_cn is not None and (not isinstance(cert_cn, str) or not cert_cn):
        raise PrincipalsError(f"{where}.cert_cn: must be a non-empty string")
    if digest is None and cert_cn is None:
        raise PrincipalsError(f"{where}: needs token_sha256 or cert_cn (or both)")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise PrincipalsError(f"{where}.admin: must be true or false, got {admin!r}")
    tenants = _strings(entry.get("tenants"), f"{where}.tenants")
    if not tenants and not admin:
        raise PrincipalsError(f"{where}.tenants: must list at least one tenant (or admin: true)")
    roles = _strings(entry.get("roles"), f"{where}.roles")
    for role in roles:
        if role not in ROLES:
            raise PrincipalsError(f"{where}.roles: unknown role {role!r} (known: {sorted(ROLES)})")
    return Principal(name, tenants, admin, frozenset(roles), digest, cert_cn)


@dataclass(frozen=True)
class Principals:
    """Principals by token digest and by certificate CN."""

    by_token: dict[str, Principal]
    by_cn: dict[str, Principal]

    @classmethod
    def parse(cls, text: str) -> Principals:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PrincipalsError(f"not valid YAML: {exc}") from None
        if isinstance(data, dict) and set(data) == {"principals"}:
            data = data["principals"]
        if not isinstance(data, list):
            raise PrincipalsError("expected `principals:` with a list of principals")
        return cls.of(_principal(entry, i) for i, entry in enumerate(data))

    @classmethod
    def of(cls, principals: Iterable[Principal]) -> Principals:
        by_token: dict[str, Principal] = {}
        by_cn: dict[str, Principal] = {}
        names: set[str] = set()
        for p in principals:
            if p.name in names:
                raise PrincipalsError(f"principal {p.name!r} is listed twice")
            names.add(p.name)
            if p.token_sha256 is not None:
                if p.token_sha256 in by_token:
                    other = by_token[p.token_sha256].name
                    raise PrincipalsError(f"principals {other!r} and {p.name!r} share a token")
                by_token[p.token_sha256] = p
            if p.cert_cn is not None:
                if p.cert_cn in by_cn:
                    other = by_cn[p.cert_cn].name
                    raise PrincipalsError(f"principals {other!r} and {p.name!r} share cert_cn")
                by_cn[p.cert_cn] = p
        return cls(by_token, by_cn)

    def by_bearer(self, token: str) -> Principal | None:
        return self.by_token.get(token_sha256(token))


class PrincipalsFile:
    """A principals file, read again when it changes (checked at most once a second)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._stamp = self._stat()
        self.current = self._read()  # raises PrincipalsError/OSError: the gateway won't start
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> Principals:
        try:
            return Principals.parse(self.path.read_text(encoding="utf-8"))
        except PrincipalsError as exc:
            raise PrincipalsError(f"{self.path}: {exc}") from None

    def get(self) -> Principals:
        """The principals now, reloaded first if the file changed."""
        now = self._clock()
        if now - self._checked >= RELOAD_CHECK_S:
            self._checked = now
            self.reload_if_changed()
        return self.current

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self.current = self._read()
        except (OSError, PrincipalsError) as exc:
            log.warning("principals file not reloaded, keeping the last good one: %s", exc)
            return False
        log.info(
            "principals file %s reloaded: %d principals",
            self.path,
            len({p.name for p in [*self.current.by_token.values(), *self.current.by_cn.values()]}),
        )
        return True
