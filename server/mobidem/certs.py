"""TLS for the gRPC server: credentials from PEM files, and a development CA (`mobidem certs dev DIR`).

Settings: ``tls_cert`` + ``tls_key`` (both: TLS); ``tls_client_ca`` (also: mutual TLS, clients must
present a certificate that this CA signed).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import grpc

from mobidem.errors import InvalidArgument


def _read(path: str, setting: str) -> bytes:
    p = Path(os.path.expanduser(path))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{setting} {str(p)!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise InvalidArgument(f"{setting} {str(p)!r} is not a PEM file")
    return data


def server_credentials(tls_cert: str, tls_key: str, tls_client_ca: str = "") -> grpc.ServerCredentials | None:
    """None when TLS is off (neither cert nor key set)."""
    if not tls_cert and not tls_key:
        if tls_client_ca:
            raise InvalidArgument("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")
        return None
    if not (tls_cert and tls_key):
        raise InvalidArgument("TLS needs both tls_cert and tls_key (PEM files)")
    pair = (_read(tls_key, "tls_key"), _read(tls_cert, "tls_cert"))
    ca = _read(tls_client_ca, "tls_client_ca") if tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def triton_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """TLS credentials for the gateway's calls to grpcs:// Tritons (settings ``triton_tls_ca``,
    ``triton_tls_cert``, ``triton_tls_key``); None when none is set (grpcs:// then trusts the system's roots)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise InvalidArgument("a client certificate for Triton needs both triton_tls_cert and triton_tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "triton_tls_ca") if ca else None,
        private_key=_read(key, "triton_tls_key") if key else None,
        certificate_chain=_read(cert, "triton_tls_cert") if cert else None)


# --------------------------------------------------------------------------- development CA


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mobidem development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_key, subject: str, issuer_key, issuer_name, *, ca: bool, days: int, hosts=(), client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name or _name(subject))
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                          crl_sign=False, content_commitment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if hosts:
            names = []
            for h in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    names.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_dev(directory: str | Path, hosts=("localhost", "127.0.0.1", "::1"), client_name: str = "mobidem-client",
             days: int = 365, force: bool = False) -> dict[str, Path]:
    """A development CA and, signed by it, a server certificate for ``hosts`` and one client certificate.

    Writes ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem, client-key.pem (keys mode 0600).
    """
    from cryptography.hazmat.primitives import serialization

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise InvalidArgument(f"{d}: would overwrite {existing}; pass --force to replace them")

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem_cert(c):
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key = _key()
    ca = _cert(ca_key, "mobidem development CA", ca_key, None, ca=True, days=days)
    server_key, client_key = _key(), _key()
    server = _cert(server_key, hosts[0], ca_key, ca.subject, ca=False, days=days, hosts=hosts)
    client = _cert(client_key, client_name, ca_key, ca.subject, ca=False, days=days, client=True)
    _write(files["ca"], pem_cert(ca), False)
    _write(files["ca-key"], pem_key(ca_key), True)
    _write(files["server"], pem_cert(server), False)
    _write(files["server-key"], pem_key(server_key), True)
    _write(files["client"], pem_cert(client), False)
    _write(files["client-key"], pem_key(client_key), True)
    return files
