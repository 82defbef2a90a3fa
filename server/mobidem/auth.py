"""API keys and roles (transport-agnostic; the gRPC interceptor is mobidem.api.auth).

A key is 256 random bits (``mbk_`` + URL-safe base64). The keys file stores only its
SHA-256 digest, a name and roles, never the key: a slow KDF (scrypt) protects guessable
passwords, not random 256-bit secrets, and would cost milliseconds on every RPC.

Keys file (YAML or JSON)::

    keys:
      - name: camera-1
        sha256: 3f1c...            # hex SHA-256 of the key
        roles: [stream, analyze]
        created: "2025-01-01T00:00:00Z"

The file is re-read when it changes, so ``mobidem keys add/remove`` take effect without a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mobidem.errors import InvalidArgument

ROLES = ("stream", "analyze", "verify", "liveness", "ceremony", "admin")
KEY_PREFIX = "mbk_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")

# The role each RPC needs; ``admin`` may call everything. Methods not listed need ``admin`` (default deny).
METHOD_ROLES = {
    "/mobidem.v1.FaceAnalysis/Stream": "stream",
    "/mobidem.v1.FaceAnalysis/Analyze": "analyze",
    "/mobidem.v1.Gallery/Verify": "verify",
    "/mobidem.v1.Gallery/Identify": "verify",
    "/mobidem.v1.Gallery/GetIdentity": "verify",      # one identity by id: re-enrolment status for partners
    "/mobidem.v1.Gallery/ListIdentities": "admin",    # enumerates everyone enrolled: admin only
    "/mobidem.v1.Gallery/Enroll": "admin",
    "/mobidem.v1.Gallery/EnrollStream": "admin",
    "/mobidem.v1.Gallery/DeleteIdentity": "admin",
    "/mobidem.v1.Gallery/GetEvidenceKeys": "*",       # public keys: any valid key (ANY_ROLE)
    "/mobidem.v1.Liveness/Ceremony": "liveness",      # a ceremony, with its optional 1:1
    "/mobidem.v1.Ceremonies/CreateCeremony": "ceremony",  # a one-time link to the web ceremony page
    "/mobidem.v1.Ceremonies/GetCeremony": "ceremony",     # its state and outcome (the creating key only)
}
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
ANY_ROLE = "*"  # health/reflection when not exempt: any valid key


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_roles(text: str | list) -> tuple[str, ...]:
    roles = [r.strip() for r in (text.split(",") if isinstance(text, str) else text) if str(r).strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise InvalidArgument(f"roles must be a non-empty subset of {list(ROLES)}, got {roles}")
    return tuple(dict.fromkeys(roles))


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    roles: tuple[str, ...]
    created: str = ""

    def allows(self, role: str) -> bool:
        return role == ANY_ROLE or "admin" in self.roles or role in self.roles


def read_keys(path: Path) -> list[ApiKey]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InvalidArgument(f"api_keys_file {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"api_keys_file {str(path)!r} is not YAML/JSON: {exc}") from None
    entries = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InvalidArgument(f"api_keys_file {str(path)!r}: expected a mapping with a list `keys`")
    keys, names = [], set()
    for i, e in enumerate(entries):
        where = f"api_keys_file {str(path)!r} keys[{i}]"
        if not isinstance(e, dict):
            raise InvalidArgument(f"{where}: expected a mapping with name, sha256, roles")
        name, h = str(e.get("name", "")), str(e.get("sha256", "")).lower()
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"{where}: name must be 1-64 characters of [A-Za-z0-9._@-]")
        if name in names:
            raise InvalidArgument(f"{where}: duplicate name {name!r}")
        if not _HEX_RE.match(h):
            raise InvalidArgument(f"{where} ({name}): sha256 must be 64 hex digits (the key's digest, not the key)")
        try:
            roles = parse_roles(e.get("roles") or [])
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where} ({name}): {exc}") from None
        names.add(name)
        keys.append(ApiKey(name, h, roles, str(e.get("created", ""))))
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Atomically replace the keys file (mode 0600)."""
    data = {"keys": [{"name": k.name, "sha256": k.sha256, "roles": list(k.roles), "created": k.created}
                     for k in keys]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("# mobidem API keys: SHA-256 digests only (mobidem keys add/remove; docs/SECURITY.md)\n")
            yaml.safe_dump(data, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_key(path: Path, name: str, roles: str | list) -> str:
    """Create a key, store its digest in ``path``; returns the key (shown once, never stored)."""
    keys = read_keys(path) if path.exists() else []
    if any(k.name == name for k in keys):
        raise InvalidArgument(f"a key named {name!r} exists in {str(path)!r}; remove it first")
    if not _NAME_RE.match(name):
        raise InvalidArgument("the key name must be 1-64 characters of [A-Za-z0-9._@-]")
    key = new_key()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_keys(path, [*keys, ApiKey(name, digest(key), parse_roles(roles), created)])
    return key


def remove_key(path: Path, name: str) -> None:
    keys = read_keys(path)
    if not any(k.name == name for k in keys):
        raise InvalidArgument(f"no key named {name!r} in {str(path)!r}")
    write_keys(path, [k for k in keys if k.name != name])


class KeyStore:
    """The server's view of the keys file; re-read at most every ``recheck_s`` seconds when it changed."""

    def __init__(self, path: str | Path, recheck_s: float = 2.0):
        self.path = Path(os.path.expanduser(str(path)))
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._by_digest: dict[str, ApiKey] = {}
        self._stamp = None
        self._checked = 0.0
        self._load()  # a missing or malformed file fails at start

    def _load(self) -> None:
        st = self.path.stat() if self.path.exists() else None
        if st is None:
            raise InvalidArgument(f"api_keys_file {str(self.path)!r} does not exist "
                                  f"(make one with `mobidem keys add NAME --roles ... --file {self.path}`)")
        keys = read_keys(self.path)
        self._by_digest = {k.sha256: k for k in keys}
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
                if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
                    self._load()
            except (OSError, InvalidArgument) as exc:  # keep the last good keys; say so
                import logging

                logging.getLogger(__name__).error("api_keys_file not reloaded, keeping the previous keys: %s", exc)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str) -> ApiKey | None:
        self._refresh()
        return self._by_digest.get(digest(key))
