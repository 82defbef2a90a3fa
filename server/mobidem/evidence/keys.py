"""The evidence signing keys: one file (a JWK Set with the private part of the active key, mode 0600).

Each key is an Ed25519 JWK (RFC 8037) whose ``kid`` is its RFC 7638 thumbprint. The newest key
signs; :func:`rotate` adds a new one and drops the private part of the old ones, which stay in the
file (public only) so that records and checkpoints they signed still verify. :func:`public_jwks`
is what the server publishes and ``mobidem evidence jwks`` exports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mobidem.evidence.jws import b64url, b64url_decode, canonical, sign

log = logging.getLogger(__name__)


class KeyFileError(Exception):
    pass


def thumbprint(x: str) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an Ed25519 public key given as its JWK ``x``."""
    return b64url(hashlib.sha256(canonical({"crv": "Ed25519", "kty": "OKP", "x": x})).digest())


def _public_jwk(entry: dict) -> dict:
    return {k: entry[k] for k in ("kty", "crv", "x", "kid", "alg", "use")}


def _new_entry() -> dict:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    x = b64url(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "d": b64url(raw), "kid": thumbprint(x), "alg": "EdDSA",
            "use": "sig", "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _write(path: Path, entries: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": entries}, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())["keys"]
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist; create it with `mobidem evidence keygen {path}`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an evidence key file (a JWK Set): {exc}") from None
    if not entries or not all(isinstance(e, dict) and e.get("crv") == "Ed25519" and "x" in e for e in entries):
        raise KeyFileError(f"{path} holds no Ed25519 keys")
    return entries


def create(path: str | Path) -> str:
    """A new key file with one key; returns its kid. Refuses to replace an existing file."""
    path = Path(path).expanduser()
    if path.exists():
        raise KeyFileError(f"{path} exists; rotate its key with `mobidem evidence rotate {path}`")
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = _new_entry()
    _write(path, [entry])
    return entry["kid"]


def rotate(path: str | Path) -> str:
    """Add a new signing key; the old ones keep only their public part. Returns the new kid."""
    path = Path(path).expanduser()
    entries = [{k: v for k, v in e.items() if k != "d"} for e in _read(path)]
    entry = _new_entry()
    _write(path, [*entries, entry])
    return entry["kid"]


def public_jwks(path: str | Path) -> dict:
    return {"keys": [_public_jwk(e) for e in _read(Path(path).expanduser())]}


def public_key(x: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(b64url_decode(x))


def trusted_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """kid -> key from a PEM public key, one JWK, or a JWK Set (what --public-key and --jwks take)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("the PEM public key is not an Ed25519 key")
        x = b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        return {thumbprint(x): key}
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyFileError("expected a PEM public key, a JWK or a JWK Set (JSON)") from None
    entries = data.get("keys", [data]) if isinstance(data, dict) else []
    keys = {}
    for e in entries:
        if not isinstance(e, dict) or e.get("kty") != "OKP" or e.get("crv") != "Ed25519" or "x" not in e:
            raise KeyFileError("only Ed25519 (OKP) JWKs are accepted")
        keys[e.get("kid") or thumbprint(e["x"])] = public_key(e["x"])
    if not keys:
        raise KeyFileError("no key found")
    return keys


def load_trusted(path: str | Path) -> dict[str, Ed25519PublicKey]:
    return trusted_keys(Path(path).expanduser().read_text())


def public_pem(path: str | Path) -> str:
    """The active (newest) key's public key as PEM (SubjectPublicKeyInfo)."""
    entry = _read(Path(path).expanduser())[-1]
    return public_key(entry["x"]).public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class Signer:
    """The active key of a key file: signs evidence records and checkpoints."""

    kid: str
    key: Ed25519PrivateKey
    path: Path

    @classmethod
    def load(cls, path: str | Path) -> "Signer":
        path = Path(path).expanduser()
        entries = _read(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s was mode %o; setting 0600 (it holds the evidence signing key)", path, mode)
            os.chmod(path, 0o600)
        active = entries[-1]
        if "d" not in active:
            raise KeyFileError(f"{path}: its newest key has no private part; run `mobidem evidence rotate {path}`")
        key = Ed25519PrivateKey.from_private_bytes(b64url_decode(active["d"]))
        return cls(active["kid"], key, path)

    def sign(self, claims: dict, typ: str) -> str:
        return sign(claims, self.key, self.kid, typ)

    def jwks(self) -> dict:
        return public_jwks(self.path)

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        return trusted_keys(json.dumps(self.jwks()))
