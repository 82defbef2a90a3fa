"""Templates at rest: AES-256-GCM over each embedding BLOB.

The ciphertext has the plaintext's length, so it lives in ``templates.embedding`` itself
(the ``length(embedding) = 4 * dim`` check still holds); ``templates.sealing`` holds the
random 96-bit nonce and the 128-bit tag (28 bytes). The associated data binds the
ciphertext to its row: the template id and the identity id, so a sealed embedding copied
to another row or identity does not decrypt. ``sealing IS NULL`` marks a plaintext row.

The key is 256 bits, given as 64 hex digits or base64 (file or environment variable).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from mobidem import errors

from .errors import GalleryError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEALING_BYTES = NONCE_BYTES + TAG_BYTES


class TemplateKeyError(GalleryError, errors.FailedPrecondition):
    """The template key is missing, malformed or does not decrypt the gallery's templates."""


def parse_key(text: str | bytes, source: str) -> bytes:
    """A 256-bit key from 64 hex digits or base64 (standard or URL-safe); raw 32 bytes also pass."""
    if isinstance(text, bytes):
        if len(text) == KEY_BYTES and not _is_text(text):
            return text
        text = text.decode("ascii", "replace")
    text = text.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise TemplateKeyError(f"{source}: the template key must be 256 bits, written as 64 hex digits or base64 "
                           f"(make one with `mobidem keys template-key FILE`)")


def _is_text(data: bytes) -> bool:
    try:
        data.decode("ascii")
        return True
    except UnicodeDecodeError:
        return False


def load_key(key_file: str = "", key_text: str = "") -> bytes | None:
    """The key from ``key_file`` (preferred) or ``key_text`` (MOBIDEM_TEMPLATE_KEY); None when neither is set."""
    if key_file:
        path = Path(os.path.expanduser(key_file))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TemplateKeyError(f"template_key_file {str(path)!r}: {exc.strerror or exc}") from None
        return parse_key(data, f"template_key_file {str(path)!r}")
    if key_text:
        return parse_key(key_text, "MOBIDEM_TEMPLATE_KEY (template_key)")
    return None


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class TemplateCipher:
    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise TemplateKeyError(f"the template key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    @staticmethod
    def _ad(template_id: str, identity_id: str) -> bytes:
        return f"mobidem-template-v1\0{template_id}\0{identity_id}".encode()

    def seal(self, plaintext: bytes, template_id: str, identity_id: str) -> tuple[bytes, bytes]:
        """-> (ciphertext of the same length, sealing = nonce || tag)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        out = self._aead.encrypt(nonce, plaintext, self._ad(template_id, identity_id))
        return out[:-TAG_BYTES], nonce + out[-TAG_BYTES:]

    def seal_bytes(self, nonce: bytes, data, associated_data: bytes) -> bytes:
        """AES-GCM under the template key for other things at rest (index snapshots): ciphertext || tag."""
        return self._aead.encrypt(nonce, bytes(data), associated_data)

    def open_bytes(self, nonce: bytes, data, associated_data: bytes) -> bytes | None:
        """The plaintext of ``seal_bytes``'s output, or None when it does not open (another key, altered)."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, data, associated_data)
        except InvalidTag:
            return None

    def open(self, ciphertext: bytes, sealing: bytes, template_id: str, identity_id: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(sealing) != SEALING_BYTES:
            raise TemplateKeyError(f"template {template_id!r}: malformed sealing ({len(sealing)} bytes)")
        try:
            return self._aead.decrypt(sealing[:NONCE_BYTES], bytes(ciphertext) + sealing[NONCE_BYTES:],
                                      self._ad(template_id, identity_id))
        except InvalidTag:
            raise TemplateKeyError(
                f"the template key does not decrypt template {template_id!r}: wrong key "
                f"(or the row was altered); start with the key the gallery was encrypted with"
            ) from None
