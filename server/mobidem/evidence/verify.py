"""Offline check of one evidence record (``mobidem evidence verify``): its signature and its type."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mobidem.evidence import jws, records


def evidence(token: str, keys: dict[str, Ed25519PublicKey]) -> dict:
    """The claims of an evidence record signed by one of ``keys``; JwsError otherwise."""
    header, claims = jws.verify(token, keys)
    if header.get("typ") != records.TYP:
        raise jws.JwsError(f"typ is {header.get('typ')!r}, not {records.TYP!r}: not a decision's evidence")
    return claims
