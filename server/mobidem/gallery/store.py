"""Durable identity gallery: the ``GalleryStore`` interface and its SQLite implementation.

Only this module speaks SQL. Embeddings are stored as float32 little-endian BLOBs.
``SqliteGallery`` uses one connection guarded by a lock (safe from gRPC worker
threads), WAL with ``synchronous=FULL`` (an acknowledged enrolment survives power
loss), foreign keys, ``secure_delete`` and an integrity check on open.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .crypto import TemplateCipher, TemplateKeyError
from .errors import GalleryCorrupt, GalleryError, IdempotencyConflict, InvalidArgument, NotFound, SchemaTooNew
from .records import DEFAULT_DIM, EnrollResult, Identity, ModelVersion, TemplateIn, TemplateRecord

MAX_DISPLAY_NAME = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_TEMPLATES_PER_ENROLL = 100
MAX_MODEL_FIELD = 128
MAX_IDEMPOTENCY_KEY = 256
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

# Ordered migrations; index i (0-based) is schema version i + 1. Append only, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE identities (
        id           TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        metadata     TEXT NOT NULL DEFAULT '{}',   -- JSON object str -> str
        created_at   REAL NOT NULL,                -- UTC epoch seconds
        updated_at   REAL NOT NULL
    );
    CREATE INDEX identities_created ON identities (created_at, id);
    CREATE TABLE templates (
        id            TEXT PRIMARY KEY,
        identity_id   TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
        embedding     BLOB NOT NULL,               -- float32 little-endian
        dim           INTEGER NOT NULL,
        model_name    TEXT NOT NULL,
        model_version TEXT NOT NULL,
        quality       REAL,
        created_at    REAL NOT NULL,
        CHECK (length(embedding) = 4 * dim)
    );
    CREATE INDEX templates_identity ON templates (identity_id);
    CREATE TABLE idempotency (
        key          TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        identity_id  TEXT REFERENCES identities (id) ON DELETE CASCADE,
        response     TEXT NOT NULL,                -- JSON of the first answer
        created_at   REAL NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created_at);
    """,
    # 2: templates encrypted at rest (gallery/crypto.py). NULL: embedding is plaintext float32;
    # else 12-byte nonce || 16-byte AES-GCM tag, and embedding holds the ciphertext (same length).
    """
    ALTER TABLE templates ADD COLUMN sealing BLOB;
    """,
    # 3: idempotency records outlive the identity they created (no cascade): a replay after a
    # deletion is answered NOT_FOUND, never with a second identity; delete() scrubs their response.
    """
    CREATE TABLE idempotency_v3 (
        key          TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        identity_id  TEXT,
        response     TEXT NOT NULL,
        created_at   REAL NOT NULL
    );
    INSERT INTO idempotency_v3 SELECT key, request_hash, identity_id, response, created_at FROM idempotency;
    DROP TABLE idempotency;
    ALTER TABLE idempotency_v3 RENAME TO idempotency;
    CREATE INDEX idempotency_created ON idempotency (created_at);
    """,
    # 4: enrolment photos, kept only when the operator opts in (keep_enrolment_images) so that templates of
    # a new embedder can be made from them (`mobidem gallery reembed`). PNG bytes, sealed like templates when
    # a template key is set (sealing NULL: plaintext); deleted with their identity (cascade, secure_delete).
    """
    CREATE TABLE enrolment_images (
        id          TEXT PRIMARY KEY,
        identity_id TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
        data        BLOB NOT NULL,
        sealing     BLOB,
        face_index  INTEGER,                       -- the face the enrolment took (counted from the largest)
        created_at  REAL NOT NULL
    );
    CREATE INDEX enrolment_images_identity ON enrolment_images (identity_id);
    """,
)

# Created only when store_images=True (kept out of MIGRATIONS so that galleries
# without images never hold an images table).
_IMAGES_DDL = """
CREATE TABLE IF NOT EXISTS images (
    id          TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    mime_type   TEXT NOT NULL,
    data        BLOB NOT NULL,
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_template ON images (template_id);
"""


@runtime_checkable
class GalleryStore(Protocol):
    """What the server needs from a durable gallery. ``SqliteGallery`` is the default."""

    dim: int

    def enroll(
        self,
        identity_id: str | None,
        display_name: str | None,
        metadata: Mapping[str, str] | None,
        templates: Sequence[TemplateIn],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        merge_metadata: bool = False,
    ) -> EnrollResult: ...

    def get(self, identity_id: str) -> Identity | None: ...

    def list(self, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None) -> tuple[list[Identity], str]: ...

    def delete(self, identity_id: str) -> int: ...

    def count(self) -> int: ...

    def template_count(self) -> int: ...

    def iter_templates(self) -> Iterator[TemplateRecord]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- validation


def _check_str(name: str, value: object, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(f"{name} is longer than {max_len} characters")
    return value


def _check_identity_id(identity_id: object) -> str:
    if not isinstance(identity_id, str) or not _ID_RE.match(identity_id):
        raise InvalidArgument(
            "identity_id must be 1-128 characters of [A-Za-z0-9._:@-], starting with a letter or digit"
        )
    return identity_id


def _check_metadata(metadata: object) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument(f"metadata must map str to str, got {type(k).__name__} -> {type(v).__name__}")
        _check_str("metadata key", k, MAX_METADATA_KEY)
        _check_str(f"metadata[{k!r}]", v, MAX_METADATA_VALUE, allow_empty=True)
        out[k] = v
    return out


def _check_embedding(embedding: object, dim: int) -> np.ndarray:
    try:
        arr = np.asarray(embedding)
    except Exception as e:  # noqa: BLE001
        raise InvalidArgument(f"embedding is not an array: {e}") from e
    if arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"embedding must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 1 and not (arr.ndim == 2 and 1 in arr.shape):
        raise InvalidArgument(f"embedding must be a vector, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr.reshape(-1), dtype="<f4")
    if arr.shape[0] != dim:
        raise InvalidArgument(f"embedding dimension mismatch: got {arr.shape[0]}, gallery expects {dim}")
    if not np.isfinite(arr).all():
        raise InvalidArgument("embedding contains NaN or infinity")
    return arr


def check_enroll(identity_id: str | None, display_name: str | None, metadata: Mapping[str, str] | None,
                 templates: Sequence[TemplateIn], dim: int, idempotency_key: str | None,
                 request_hash: str | None) -> tuple[dict | None, list, str | None]:
    """An enrolment request checked before any store touches its database: (metadata, checked
    templates, request hash: computed from the content when an idempotency key comes without one)."""
    if identity_id is not None:
        _check_identity_id(identity_id)
    if display_name is not None:
        _check_str("display_name", display_name, MAX_DISPLAY_NAME)
    meta = None if metadata is None else _check_metadata(metadata)
    if isinstance(templates, (TemplateIn, np.ndarray)) or not isinstance(templates, Sequence):
        raise InvalidArgument("templates must be a sequence of TemplateIn")
    if not templates:
        raise InvalidArgument("at least one template is required")
    if len(templates) > MAX_TEMPLATES_PER_ENROLL:
        raise InvalidArgument(f"at most {MAX_TEMPLATES_PER_ENROLL} templates per enrolment")
    checked = [_check_template(t, dim) for t in templates]
    if idempotency_key is not None:
        _check_str("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        if request_hash is None:
            request_hash = compute_request_hash(identity_id, display_name, meta, templates)
        _check_str("request_hash", request_hash, 1024)
    return meta, checked, request_hash


def _check_template(t: object, dim: int) -> tuple[np.ndarray, str, str, float | None]:
    if not isinstance(t, TemplateIn):
        raise InvalidArgument(f"templates must be TemplateIn, got {type(t).__name__}")
    emb = _check_embedding(t.embedding, dim)
    name = _check_str("model_name", t.model_name, MAX_MODEL_FIELD)
    version = _check_str("model_version", t.model_version, MAX_MODEL_FIELD)
    q = t.quality
    if q is not None:
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) or not math.isfinite(q):
            raise InvalidArgument("quality must be a finite number or None")
        q = float(q)
    return emb, name, version, q


def compute_request_hash(
    identity_id: str | None,
    display_name: str | None,
    metadata: Mapping[str, str] | None,
    templates: Sequence[TemplateIn],
) -> str:
    """Canonical SHA-256 of an enrol request (used when the caller supplies no hash)."""
    h = hashlib.sha256()
    head = {
        "identity_id": identity_id,
        "display_name": display_name,
        "metadata": None if metadata is None else dict(sorted(metadata.items())),
        "templates": [
            [t.model_name, t.model_version, None if t.quality is None else float(t.quality)] for t in templates
        ],
    }
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
    for t in templates:
        h.update(np.ascontiguousarray(np.asarray(t.embedding, dtype="<f4").reshape(-1)).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- page tokens


def _encode_token(created_at: float, identity_id: str) -> str:
    raw = json.dumps([created_at, identity_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created_at, identity_id = json.loads(raw)
        if not isinstance(identity_id, str) or isinstance(created_at, bool):
            raise ValueError
        return float(created_at), identity_id
    except Exception as e:  # noqa: BLE001
        raise InvalidArgument("invalid page_token") from e


# --------------------------------------------------------------------------- store


def _identity_to_json(ident: Identity) -> dict:
    return {
        "id": ident.id,
        "display_name": ident.display_name,
        "metadata": ident.metadata,
        "created_at": ident.created_at,
        "updated_at": ident.updated_at,
        "template_count": ident.template_count,
        "model_versions": [[m.model_name, m.model_version, m.template_count] for m in ident.model_versions],
    }


def _identity_from_json(d: dict) -> Identity:
    return Identity(
        id=d["id"],
        display_name=d["display_name"],
        metadata=dict(d["metadata"]),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        template_count=d["template_count"],
        model_versions=tuple(ModelVersion(*m) for m in d["model_versions"]),
    )


class SqliteGallery:
    """Embedded SQLite gallery (the default ``GalleryStore``).

    ``path``: database file (``":memory:"`` works for tests but is not durable).
    ``store_images``: create the optional ``images`` table (``add_image``).
    ``dim``: embedding dimension accepted by ``enroll`` (128 for dlib).
    ``integrity_check``: run ``PRAGMA integrity_check`` on open (O(file size)).
    """

    def __init__(
        self,
        path: str,
        *,
        store_images: bool = False,
        dim: int = DEFAULT_DIM,
        integrity_check: bool = True,
        clock=time.time,
        template_key: bytes | None = None,
    ) -> None:
        self.path = str(path)
        self.dim = int(dim)
        self.store_images = store_images
        self._clock = clock
        self._cipher = TemplateCipher(template_key) if template_key is not None else None
        self._lock = threading.RLock()
        self._closed = False
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"cannot open gallery {self.path!r}: {e}") from e
        try:
            self._open(integrity_check)
            self._check_encryption()
        except sqlite3.OperationalError as e:
            self._conn.close()
            raise GalleryError(f"cannot open gallery {self.path!r}: {e}") from e
        except sqlite3.DatabaseError as e:  # "file is not a database", "malformed", ...
            self._conn.close()
            raise GalleryCorrupt(f"gallery {self.path!r} is corrupt: {e}") from e
        except BaseException:
            self._conn.close()
            raise

    # -- open / schema

    def _open(self, integrity_check: bool) -> None:
        c = self._conn
        c.execute("PRAGMA foreign_keys = ON")
        c.execute("PRAGMA secure_delete = ON")
        if integrity_check:
            rows = [r[0] for r in c.execute("PRAGMA integrity_check(20)")]
            if rows != ["ok"]:
                raise GalleryCorrupt(f"gallery {self.path!r} failed its integrity check: " + "; ".join(rows))
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and self.path != ":memory:":
            raise GalleryError(f"cannot enable WAL on {self.path!r} (journal_mode={mode})")
        c.execute("PRAGMA synchronous = FULL")
        self._migrate()
        if self.store_images:
            c.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _split_sql(_IMAGES_DDL):
                    c.execute(stmt)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = c.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"gallery {self.path!r} has schema version {current}, this mobidem knows {len(MIGRATIONS)}"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for stmt in _split_sql(MIGRATIONS[version - 1]):
                    c.execute(stmt)
                c.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, self._clock()))
            c.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    # -- encryption at rest (gallery/crypto.py)

    def _check_encryption(self) -> None:
        """No key + sealed rows: refuse. Key: check it on one sealed row, then seal any plaintext rows."""
        c = self._conn
        sealed = c.execute("SELECT id, identity_id, embedding, sealing FROM templates WHERE sealing IS NOT NULL"
                           " LIMIT 1").fetchone()
        if self._cipher is None:
            if sealed is not None:
                raise TemplateKeyError(
                    f"gallery {self.path!r} holds encrypted templates but no template key is configured: "
                    "set template_key_file or MOBIDEM_TEMPLATE_KEY to the key it was encrypted with")
            return
        if sealed is not None:
            self._unseal(sealed[2], sealed[3], sealed[0], sealed[1])
        plain = c.execute("SELECT id, identity_id, embedding FROM templates WHERE sealing IS NULL").fetchall()
        photos = c.execute("SELECT id, identity_id, data FROM enrolment_images WHERE sealing IS NULL").fetchall()
        if not plain and not photos:
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("UPDATE templates SET embedding = ?, sealing = ? WHERE id = ?",
                          [(*self._cipher.seal(blob, tid, iid), tid) for tid, iid, blob in plain])
            c.executemany("UPDATE enrolment_images SET data = ?, sealing = ? WHERE id = ?",
                          [(*self._cipher.seal(blob, pid, iid), pid) for pid, iid, blob in photos])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # secure_delete zeroes the old pages

    def _seal(self, blob: bytes, template_id: str, identity_id: str) -> tuple[bytes, bytes | None]:
        return (blob, None) if self._cipher is None else self._cipher.seal(blob, template_id, identity_id)

    def _unseal(self, blob: bytes, sealing: bytes, template_id: str, identity_id: str) -> bytes:
        if self._cipher is None:
            raise TemplateKeyError(f"gallery {self.path!r}: template {template_id!r} is encrypted and no template "
                                   "key is configured (template_key_file or MOBIDEM_TEMPLATE_KEY)")
        return self._cipher.open(blob, sealing, template_id, identity_id)

    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    # -- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError("gallery is closed")

    def _load_identity(self, identity_id: str) -> Identity | None:
        row = self._conn.execute(
            "SELECT id, display_name, metadata, created_at, updated_at FROM identities WHERE id = ?", (identity_id,)
        ).fetchone()
        if row is None:
            return None
        return self._identities_with_counts([row])[0]

    def _identities_with_counts(self, rows: list[tuple]) -> list[Identity]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        per: dict[str, list[ModelVersion]] = {i: [] for i in ids}
        q = (
            "SELECT identity_id, model_name, model_version, count(*) FROM templates "
            f"WHERE identity_id IN ({','.join('?' * len(ids))}) "
            "GROUP BY identity_id, model_name, model_version ORDER BY identity_id, model_name, model_version"
        )
        for iid, name, version, n in self._conn.execute(q, ids):
            per[iid].append(ModelVersion(name, version, n))
        return [
            Identity(
                id=r[0],
                display_name=r[1],
                metadata=json.loads(r[2]),
                created_at=r[3],
                updated_at=r[4],
                template_count=sum(m.template_count for m in per[r[0]]),
                model_versions=tuple(per[r[0]]),
            )
            for r in rows
        ]

    # -- API

    def enroll(
        self,
        identity_id: str | None,
        display_name: str | None,
        metadata: Mapping[str, str] | None,
        templates: Sequence[TemplateIn],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        merge_metadata: bool = False,
    ) -> EnrollResult:
        """Create ``identity_id`` (uuid4 hex if None) or append templates to it, in one transaction.

        On an existing identity ``display_name``/``metadata`` replace the stored values only
        when not None (``merge_metadata``: the given entries are merged into the stored ones). Returns after COMMIT (durable). With ``idempotency_key``, a retry with
        the same key returns the first answer (``replayed=True``) and changes nothing; the
        same key with a different ``request_hash`` raises ``IdempotencyConflict``. When
        ``request_hash`` is None it is computed from the request content.
        """
        # Validate everything before touching the database.
        meta, checked, request_hash = check_enroll(identity_id, display_name, metadata, templates, self.dim,
                                                   idempotency_key, request_hash)

        with self._lock:
            self._check_open()
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                if idempotency_key is not None:
                    row = c.execute(
                        "SELECT request_hash, response FROM idempotency WHERE key = ?", (idempotency_key,)
                    ).fetchone()
                    if row is not None:
                        c.execute("ROLLBACK")
                        if row[0] != request_hash:
                            raise IdempotencyConflict(
                                f"idempotency key {idempotency_key!r} was already used for a different request"
                            )
                        d = json.loads(row[1])
                        if d.get("deleted"):
                            raise NotFound(f"idempotency key {idempotency_key!r} enrolled an identity that has "
                                           "since been deleted; enrol again with a new key")
                        return EnrollResult(
                            identity=_identity_from_json(d["identity"]),
                            template_ids=tuple(d["template_ids"]),
                            created=d["created"],
                            replayed=True,
                        )
                now = self._clock()
                existing = None
                if identity_id is not None:
                    existing = c.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone()
                if existing is None:
                    if display_name is None:
                        raise InvalidArgument("display_name is required to create an identity")
                    new_id = identity_id if identity_id is not None else uuid.uuid4().hex
                    c.execute(
                        "INSERT INTO identities (id, display_name, metadata, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (new_id, display_name, json.dumps(meta or {}, sort_keys=True), now, now),
                    )
                    created = True
                else:
                    new_id = identity_id
                    sets, args = ["updated_at = ?"], [now]
                    if display_name is not None:
                        sets.append("display_name = ?")
                        args.append(display_name)
                    if meta is not None:
                        if merge_metadata:
                            stored = c.execute("SELECT metadata FROM identities WHERE id = ?", (new_id,)).fetchone()
                            meta = _check_metadata({**json.loads(stored[0]), **meta})
                        sets.append("metadata = ?")
                        args.append(json.dumps(meta, sort_keys=True))
                    c.execute(f"UPDATE identities SET {', '.join(sets)} WHERE id = ?", (*args, new_id))
                    created = False
                tids = tuple(uuid.uuid4().hex for _ in checked)
                c.executemany(
                    "INSERT INTO templates (id, identity_id, embedding, sealing, dim, model_name, model_version,"
                    " quality, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (tid, new_id, *self._seal(emb.tobytes(), tid, new_id), emb.shape[0], name, version, q, now)
                        for tid, (emb, name, version, q) in zip(tids, checked)
                    ],
                )
                ident = self._load_identity(new_id)
                assert ident is not None
                result = EnrollResult(identity=ident, template_ids=tids, created=created)
                if idempotency_key is not None:
                    response = {"identity": _identity_to_json(ident), "template_ids": list(tids), "created": created}
                    c.execute(
                        "INSERT INTO idempotency (key, request_hash, identity_id, response, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (idempotency_key, request_hash, new_id, json.dumps(response), now),
                    )
                c.execute("COMMIT")
                return result
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def get(self, identity_id: str) -> Identity | None:
        if not isinstance(identity_id, str):
            raise InvalidArgument("identity_id must be a string")
        with self._lock:
            self._check_open()
            return self._load_identity(identity_id)

    def list(self, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None) -> tuple[list[Identity], str]:
        """One page ordered by (created_at, id). ``page_size`` 0/None -> 100, else clamped to 1..1000.

        Returns ``(identities, next_page_token)``; the token is "" on the last page.
        """
        size = DEFAULT_PAGE_SIZE if not page_size else max(1, min(MAX_PAGE_SIZE, int(page_size)))
        with self._lock:
            self._check_open()
            cols = "SELECT id, display_name, metadata, created_at, updated_at FROM identities"
            if page_token:
                ts, last = _decode_token(page_token)
                rows = self._conn.execute(
                    f"{cols} WHERE created_at > ? OR (created_at = ? AND id > ?) ORDER BY created_at, id LIMIT ?",
                    (ts, ts, last, size + 1),
                ).fetchall()
            else:
                rows = self._conn.execute(f"{cols} ORDER BY created_at, id LIMIT ?", (size + 1,)).fetchall()
            more = len(rows) > size
            rows = rows[:size]
            token = _encode_token(rows[-1][3], rows[-1][0]) if more else ""
            return self._identities_with_counts(rows), token

    def delete(self, identity_id: str) -> int:
        """Delete the identity, its templates (and images, idempotency records). Returns templates deleted.

        ``secure_delete`` zeroes freed pages and a TRUNCATE checkpoint then rewrites the
        main file and empties the WAL, so deleted embeddings do not linger on disk.
        """
        if not isinstance(identity_id, str):
            raise InvalidArgument("identity_id must be a string")
        with self._lock:
            self._check_open()
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                n = c.execute("SELECT count(*) FROM templates WHERE identity_id = ?", (identity_id,)).fetchone()[0]
                # its idempotency records stay (a replay must not create the identity anew) without its data
                c.execute("UPDATE idempotency SET response = ? WHERE identity_id = ?",
                          (json.dumps({"deleted": True}), identity_id))
                cur = c.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
                if cur.rowcount == 0:
                    raise NotFound(f"identity {identity_id!r} not found")
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            try:
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.OperationalError:
                pass  # best effort; the next checkpoint will do it
            return n

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return self._conn.execute("SELECT count(*) FROM identities").fetchone()[0]

    def template_count(self) -> int:
        with self._lock:
            self._check_open()
            return self._conn.execute("SELECT count(*) FROM templates").fetchone()[0]

    def iter_templates(self, batch_size: int = 10_000) -> Iterator[TemplateRecord]:
        """All templates in insertion order, read in batches (the lock is not held between batches)."""
        last = 0
        while True:
            with self._lock:
                self._check_open()
                rows = self._conn.execute(
                    "SELECT rowid, id, identity_id, embedding, dim, model_name, model_version, quality, created_at,"
                    " sealing FROM templates WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            for rowid, tid, iid, blob, dim, name, version, q, ts, sealing in rows:
                if sealing is not None:
                    blob = self._unseal(blob, sealing, tid, iid)
                yield TemplateRecord(tid, iid, np.frombuffer(blob, dtype="<f4", count=dim), name, version, q, ts)
            last = rows[-1][0]

    # -- enrolment photos (keep_enrolment_images; mobidem gallery reembed)

    def add_enrolment_images(self, identity_id: str, images: Sequence[tuple[bytes, int | None]]) -> int:
        """Keep an identity's enrolment photos: (encoded image, face index) each, sealed with the template key
        when one is set. NotFound when the identity is gone. Returns how many were stored."""
        with self._lock:
            self._check_open()
            c = self._conn
            now = self._clock()
            rows = []
            for data, face_index in images:
                pid = uuid.uuid4().hex
                blob, sealing = self._seal(bytes(data), pid, identity_id)
                rows.append((pid, identity_id, blob, sealing, face_index, now))
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany("INSERT INTO enrolment_images (id, identity_id, data, sealing, face_index, created_at)"
                              " VALUES (?, ?, ?, ?, ?, ?)", rows)
                c.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                c.execute("ROLLBACK")
                raise NotFound(f"identity {identity_id!r} not found") from e
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return len(rows)

    def enrolment_images(self, identity_id: str) -> list[tuple[bytes, int | None]]:
        """An identity's kept enrolment photos, oldest first: (encoded image, face index)."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("SELECT id, data, sealing, face_index FROM enrolment_images WHERE identity_id = ?"
                                      " ORDER BY created_at, rowid", (identity_id,)).fetchall()
        return [(self._unseal(d, s, pid, identity_id) if s is not None else bytes(d), f) for pid, d, s, f in rows]

    def identities_with_enrolment_images(self) -> list[str]:
        with self._lock:
            self._check_open()
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT identity_id FROM enrolment_images ORDER BY identity_id")]

    def add_image(self, template_id: str, data: bytes, mime_type: str = "image/jpeg") -> str:
        """Store the source image of a template (only when opened with ``store_images=True``)."""
        if not self.store_images:
            raise GalleryError("this gallery was opened without store_images")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument("image data must be bytes")
        with self._lock:
            self._check_open()
            image_id = uuid.uuid4().hex
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO images (id, template_id, mime_type, data, created_at) VALUES (?, ?, ?, ?, ?)",
                    (image_id, template_id, mime_type, bytes(data), self._clock()),
                )
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as e:
                self._conn.execute("ROLLBACK")
                raise NotFound(f"template {template_id!r} not found") from e
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return image_id

    def purge_idempotency(self, older_than_s: float) -> int:
        """Forget idempotency records older than ``older_than_s`` seconds. Returns how many."""
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            n = self._conn.execute(
                "DELETE FROM idempotency WHERE created_at < ?", (self._clock() - older_than_s,)
            ).rowcount
            self._conn.execute("COMMIT")
            return n

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            self._conn.close()

    def __enter__(self) -> SqliteGallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (scripts hold no ';' inside literals or triggers)."""
    out = []
    for stmt in script.split(";"):
        lines = [ln.split("--", 1)[0] for ln in stmt.splitlines()]
        s = "\n".join(lines).strip()
        if s:
            out.append(s)
    return out
