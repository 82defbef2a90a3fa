"""Compact JWS with EdDSA (Ed25519, RFC 8037) over JSON claims, made and checked with `cryptography`."""

from __future__ import annotations

import base64
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class JwsError(Exception):
    """A token that is malformed, signed by an unknown key, or whose signature does not verify."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise JwsError(f"not base64url: {exc}") from None


def canonical(value) -> bytes:
    """The one JSON encoding used for claims and hashes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(claims: dict, key: Ed25519PrivateKey, kid: str, typ: str) -> str:
    header = {"alg": "EdDSA", "kid": kid, "typ": typ}
    signing_input = f"{b64url(canonical(header))}.{b64url(canonical(claims))}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


def parse(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS, without checking the signature."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwsError(f"a compact JWS has 3 dot-separated parts, this has {len(parts)}")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError as exc:
        raise JwsError(f"header or payload is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwsError("header and payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])


def verify(token: str, keys: dict[str, Ed25519PublicKey]) -> tuple[dict, dict]:
    """(header, claims) of ``token`` if an Ed25519 key of ``keys`` (by kid) signed it; else JwsError."""
    header, claims, signing_input, signature = parse(token)
    if header.get("alg") != "EdDSA":
        raise JwsError(f"alg is {header.get('alg')!r}; only EdDSA (Ed25519) is accepted")
    kid = header.get("kid")
    key = keys.get(kid)
    if key is None:
        raise JwsError(f"signed by key {kid!r}, which is not among the trusted keys ({', '.join(sorted(keys)) or 'none'})")
    try:
        key.verify(signature, signing_input)
    except InvalidSignature:
        raise JwsError(f"the signature does not verify with key {kid!r}: the token was altered") from None
    return header, claims
