"""PostgreSQL as the gallery's system of record, shared by several gateways (psycopg 3 and its pool).

Same semantics as ``SqliteGallery``: a write returns after COMMIT (``synchronous_commit`` as the server
has it; PostgreSQL's default, ``on``, makes it durable), idempotency keys with the same schema and
rules, templates AES-GCM-sealed at rest (gallery/crypto.py, same associated data), model-versioned
templates, paging by (created_at, id) in byte order (ids are ``COLLATE "C"``, as SQLite compares).

What it adds (``ChangeFeed``): every write appends one row to ``changes`` (a sequence per change) and
sends ``NOTIFY mobidem_gallery`` in its transaction. Writers take one transaction-scoped advisory lock
first, so sequence order is commit order: a follower that has applied everything up to ``seq`` has
missed nothing below it, whatever it missed of the notifications.

A database that cannot be reached raises ``GalleryUnavailable`` (gRPC UNAVAILABLE) with what to check.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from mobidem import errors

from .crypto import TemplateCipher, TemplateKeyError
from .errors import ChangesTrimmed, GalleryError, IdempotencyConflict, InvalidArgument, NotFound, SchemaTooNew
from .interfaces import Change
from .records import DEFAULT_DIM, EnrollResult, Identity, ModelVersion, TemplateIn, TemplateRecord
from .store import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    _check_metadata,
    _decode_token,
    _encode_token,
    _identity_from_json,
    _identity_to_json,
    check_enroll,
)

log = logging.getLogger(__name__)

CHANNEL = "mobidem_gallery"
_WRITE_LOCK = 0x6D6F6269  # pg_advisory_xact_lock key: one writer at a time, so seq order = commit order

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE identities (
        id           TEXT COLLATE "C" PRIMARY KEY,
        display_name TEXT NOT NULL,
        metadata     TEXT NOT NULL DEFAULT '{}',
        created_at   DOUBLE PRECISION NOT NULL,
        updated_at   DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX identities_created ON identities (created_at, id);
    CREATE TABLE templates (
        pos           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,   -- insertion order (SQLite's rowid)
        id            TEXT COLLATE "C" PRIMARY KEY,
        identity_id   TEXT COLLATE "C" NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
        embedding     BYTEA NOT NULL,              -- float32 little-endian, or its AES-GCM ciphertext
        sealing       BYTEA,                       -- NULL: plaintext; else nonce || tag (gallery/crypto.py)
        dim           INTEGER NOT NULL,
        model_name    TEXT NOT NULL,
        model_version TEXT NOT NULL,
        quality       DOUBLE PRECISION,
        created_at    DOUBLE PRECISION NOT NULL,
        CHECK (length(embedding) = 4 * dim)
    );
    CREATE INDEX templates_identity ON templates (identity_id);
    CREATE TABLE idempotency (
        key          TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        identity_id  TEXT,
        response     TEXT NOT NULL,
        created_at   DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created_at);
    CREATE TABLE changes (
        seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        op           TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
        identity_id  TEXT NOT NULL,
        display_name TEXT,
        template_ids TEXT[] NOT NULL DEFAULT '{}',
        at           DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: enrolment photos kept for re-embedding (keep_enrolment_images), as SQLite's migration 4
    """
    CREATE TABLE enrolment_images (
        id          TEXT COLLATE "C" PRIMARY KEY,
        identity_id TEXT COLLATE "C" NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
        data        BYTEA NOT NULL,
        sealing     BYTEA,
        face_index  INTEGER,
        created_at  DOUBLE PRECISION NOT NULL,
        pos         BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX enrolment_images_identity ON enrolment_images (identity_id);
    """,
    # 3: change-log retention (trim_changes): everything up to trimmed_through is gone from ``changes``
    """
    CREATE TABLE change_log_state (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        trimmed_through BIGINT NOT NULL
    );
    INSERT INTO change_log_state (id, trimmed_through) VALUES (1, 0);
    """,
    # 4: every start looks for plaintext rows to seal (_check_encryption); without these partial indexes that
    # read the whole templates table (seconds at millions of templates, before an index snapshot could help)
    """
    CREATE INDEX templates_plaintext ON templates (pos) WHERE sealing IS NULL;
    CREATE INDEX enrolment_images_plaintext ON enrolment_images (pos) WHERE sealing IS NULL;
    """,
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class GalleryUnavailable(GalleryError, errors.Unavailable):
    """The gallery database cannot be reached (gRPC UNAVAILABLE)."""


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "<gallery_url>"


class PostgresGallery:
    """``GalleryStore`` + ``ChangeFeed`` on PostgreSQL. ``url``: a libpq URL (``postgresql://user@host:port/db``;
    the password is better in PGPASSWORD or ~/.pgpass than in the URL)."""

    channel = CHANNEL

    def __init__(self, url: str, *, dim: int = DEFAULT_DIM, clock=time.time, template_key: bytes | None = None,
                 pool_size: int = 4, timeout_s: float = 5.0, store_images: bool = False) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        if store_images:
            raise GalleryError("store_images is only supported by the SQLite gallery")
        self.url = url
        self.where = redact(url)
        self.dim = int(dim)
        self.store_images = False
        self._clock = clock
        self._timeout = float(timeout_s)
        self._cipher = TemplateCipher(template_key) if template_key is not None else None
        self._closed = False
        self._psycopg = psycopg
        try:  # first a plain connection, for a clear message when the URL is wrong or the server is down
            psycopg.connect(url, connect_timeout=max(1, int(round(self._timeout)))).close()
        except psycopg.Error as exc:
            raise GalleryUnavailable(
                f"cannot connect to the gallery database {self.where}: {_one_line(exc)}; check gallery_url "
                "(host, port, database, user; the password in PGPASSWORD or ~/.pgpass) and that PostgreSQL runs"
            ) from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max(1, int(pool_size)), open=False, timeout=self._timeout,
            check=ConnectionPool.check_connection, reconnect_timeout=24 * 3600.0, name="mobidem-gallery",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(round(self._timeout))),
                    "application_name": "mobidem-gallery"},
        )
        self._pool.open(wait=True, timeout=self._timeout + 5)
        try:
            self._migrate()
            self._check_encryption()
        except BaseException:
            self._pool.close()
            raise

    # -- plumbing

    def _conn(self, writing: bool = False):
        """A pooled connection; a lost database becomes GalleryUnavailable."""
        if self._closed:
            raise GalleryError("gallery is closed")
        return _Checkout(self, writing)

    def _unavailable(self, exc: BaseException, writing: bool) -> GalleryUnavailable:
        what = ("the write may not have been done: retry it (with the same idempotency_key for an enrolment)"
                if writing else "retry later")
        return GalleryUnavailable(f"the gallery database {self.where} is unavailable ({type(exc).__name__}: "
                                  f"{_one_line(exc)[:300]}); {what}")

    def _migrate(self) -> None:
        with self._conn() as c, c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                      "applied_at DOUBLE PRECISION NOT NULL)")
            current = c.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > len(MIGRATIONS):
                raise SchemaTooNew(f"gallery {self.where} has schema version {current}, this mobidem knows "
                                   f"{len(MIGRATIONS)}")
            for version in range(current + 1, len(MIGRATIONS) + 1):
                c.execute(MIGRATIONS[version - 1])
                c.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                          (version, self._clock()))

    def schema_version(self) -> int:
        with self._conn() as c:
            return c.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def _check_encryption(self) -> None:
        """As SqliteGallery: no key + sealed rows: refuse; a key: check it on one sealed row, seal plaintext rows."""
        with self._conn() as c:
            sealed = c.execute("SELECT id, identity_id, embedding, sealing FROM templates WHERE sealing IS NOT NULL "
                               "LIMIT 1").fetchone()
            if self._cipher is None:
                if sealed is not None:
                    raise TemplateKeyError(
                        f"gallery {self.where} holds encrypted templates but no template key is configured: "
                        "set template_key_file or MOBIDEM_TEMPLATE_KEY to the key it was encrypted with")
                return
            if sealed is not None:
                self._unseal(sealed[2], sealed[3], sealed[0], sealed[1])
            with c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                plain = c.execute("SELECT id, identity_id, embedding FROM templates WHERE sealing IS NULL").fetchall()
                if plain:
                    with c.cursor() as cur:
                        cur.executemany("UPDATE templates SET embedding = %s, sealing = %s WHERE id = %s",
                                        [(*self._cipher.seal(bytes(b), tid, iid), tid) for tid, iid, b in plain])
                photos = c.execute("SELECT id, identity_id, data FROM enrolment_images WHERE sealing IS NULL").fetchall()
                if photos:
                    with c.cursor() as cur:
                        cur.executemany("UPDATE enrolment_images SET data = %s, sealing = %s WHERE id = %s",
                                        [(*self._cipher.seal(bytes(b), pid, iid), pid) for pid, iid, b in photos])

    def _seal(self, blob: bytes, template_id: str, identity_id: str) -> tuple[bytes, bytes | None]:
        return (blob, None) if self._cipher is None else self._cipher.seal(blob, template_id, identity_id)

    def _unseal(self, blob: bytes, sealing: bytes, template_id: str, identity_id: str) -> bytes:
        if self._cipher is None:
            raise TemplateKeyError(f"gallery {self.where}: template {template_id!r} is encrypted and no template "
                                   "key is configured (template_key_file or MOBIDEM_TEMPLATE_KEY)")
        return self._cipher.open(bytes(blob), bytes(sealing), template_id, identity_id)

    def _record(self, row) -> TemplateRecord:
        tid, iid, blob, dim, name, version, q, ts, sealing = row
        blob = self._unseal(blob, sealing, tid, iid) if sealing is not None else bytes(blob)
        return TemplateRecord(tid, iid, np.frombuffer(blob, dtype="<f4", count=dim), name, version, q, ts)

    _TEMPLATE_COLS = "id, identity_id, embedding, dim, model_name, model_version, quality, created_at, sealing"

    def _identities_with_counts(self, c, rows: list[tuple]) -> list[Identity]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        per: dict[str, list[ModelVersion]] = {i: [] for i in ids}
        for iid, name, version, n in c.execute(
                "SELECT identity_id, model_name, model_version, count(*) FROM templates WHERE identity_id = ANY(%s)"
                " GROUP BY identity_id, model_name, model_version ORDER BY identity_id, model_name, model_version",
                (ids,)):
            per[iid].append(ModelVersion(name, version, n))
        return [Identity(id=r[0], display_name=r[1], metadata=json.loads(r[2]), created_at=r[3], updated_at=r[4],
                         template_count=sum(m.template_count for m in per[r[0]]), model_versions=tuple(per[r[0]]))
                for r in rows]

    def _load_identity(self, c, identity_id: str) -> Identity | None:
        row = c.execute("SELECT id, display_name, metadata, created_at, updated_at FROM identities WHERE id = %s",
                        (identity_id,)).fetchone()
        return None if row is None else self._identities_with_counts(c, [row])[0]

    # -- GalleryStore

    def enroll(self, identity_id: str | None, display_name: str | None, metadata: Mapping[str, str] | None,
               templates: Sequence[TemplateIn], idempotency_key: str | None = None, request_hash: str | None = None,
               merge_metadata: bool = False) -> EnrollResult:
        """As ``SqliteGallery.enroll``; one transaction that also appends an ``upsert`` change and notifies."""
        meta, checked, request_hash = check_enroll(identity_id, display_name, metadata, templates, self.dim,
                                                   idempotency_key, request_hash)

        with self._conn(writing=True) as c, c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            if idempotency_key is not None:
                row = c.execute("SELECT request_hash, response FROM idempotency WHERE key = %s",
                                (idempotency_key,)).fetchone()
                if row is not None:
                    if row[0] != request_hash:
                        raise IdempotencyConflict(
                            f"idempotency key {idempotency_key!r} was already used for a different request")
                    d = json.loads(row[1])
                    if d.get("deleted"):
                        raise NotFound(f"idempotency key {idempotency_key!r} enrolled an identity that has "
                                       "since been deleted; enrol again with a new key")
                    return EnrollResult(identity=_identity_from_json(d["identity"]),
                                        template_ids=tuple(d["template_ids"]), created=d["created"], replayed=True)
            now = self._clock()
            stored = None
            if identity_id is not None:
                stored = c.execute("SELECT metadata FROM identities WHERE id = %s", (identity_id,)).fetchone()
            if stored is None:
                if display_name is None:
                    raise InvalidArgument("display_name is required to create an identity")
                new_id = identity_id if identity_id is not None else uuid.uuid4().hex
                c.execute("INSERT INTO identities (id, display_name, metadata, created_at, updated_at)"
                          " VALUES (%s, %s, %s, %s, %s)",
                          (new_id, display_name, json.dumps(meta or {}, sort_keys=True), now, now))
                created = True
            else:
                new_id = identity_id
                sets, args = ["updated_at = %s"], [now]
                if display_name is not None:
                    sets.append("display_name = %s")
                    args.append(display_name)
                if meta is not None:
                    if merge_metadata:
                        meta = _check_metadata({**json.loads(stored[0]), **meta})
                    sets.append("metadata = %s")
                    args.append(json.dumps(meta, sort_keys=True))
                c.execute(f"UPDATE identities SET {', '.join(sets)} WHERE id = %s", (*args, new_id))
                created = False
            tids = tuple(uuid.uuid4().hex for _ in checked)
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO templates (id, identity_id, embedding, sealing, dim, model_name, model_version,"
                    " quality, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(tid, new_id, *self._seal(emb.tobytes(), tid, new_id), emb.shape[0], name, version, q, now)
                     for tid, (emb, name, version, q) in zip(tids, checked)])
            ident = self._load_identity(c, new_id)
            assert ident is not None
            if idempotency_key is not None:
                response = {"identity": _identity_to_json(ident), "template_ids": list(tids), "created": created}
                c.execute("INSERT INTO idempotency (key, request_hash, identity_id, response, created_at)"
                          " VALUES (%s, %s, %s, %s, %s)",
                          (idempotency_key, request_hash, new_id, json.dumps(response), now))
            self._log_change(c, "upsert", new_id, ident.display_name, list(tids), now)
            return EnrollResult(identity=ident, template_ids=tids, created=created)

    def _log_change(self, c, op: str, identity_id: str, display_name: str | None, tids: list[str], now: float) -> int:
        seq = c.execute("INSERT INTO changes (op, identity_id, display_name, template_ids, at) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING seq", (op, identity_id, display_name, tids, now)
                        ).fetchone()[0]
        c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))  # delivered at COMMIT
        return seq

    def get(self, identity_id: str) -> Identity | None:
        if not isinstance(identity_id, str):
            raise InvalidArgument("identity_id must be a string")
        with self._conn() as c:
            return self._load_identity(c, identity_id)

    def list(self, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None) -> tuple[list[Identity], str]:
        size = DEFAULT_PAGE_SIZE if not page_size else max(1, min(MAX_PAGE_SIZE, int(page_size)))
        cols = "SELECT id, display_name, metadata, created_at, updated_at FROM identities"
        with self._conn() as c:
            if page_token:
                ts, last = _decode_token(page_token)
                rows = c.execute(f"{cols} WHERE created_at > %s OR (created_at = %s AND id > %s) "
                                 "ORDER BY created_at, id LIMIT %s", (ts, ts, last, size + 1)).fetchall()
            else:
                rows = c.execute(f"{cols} ORDER BY created_at, id LIMIT %s", (size + 1,)).fetchall()
            more = len(rows) > size
            rows = rows[:size]
            token = _encode_token(rows[-1][3], rows[-1][0]) if more else ""
            return self._identities_with_counts(c, rows), token

    def delete(self, identity_id: str) -> int:
        """Delete the identity and its templates; its idempotency records stay, scrubbed. Appends a ``delete``
        change. (Dead rows are gone from disk only after VACUUM; the embeddings in them are sealed when a
        template key is set.)"""
        if not isinstance(identity_id, str):
            raise InvalidArgument("identity_id must be a string")
        with self._conn(writing=True) as c, c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            n = c.execute("SELECT count(*) FROM templates WHERE identity_id = %s", (identity_id,)).fetchone()[0]
            c.execute("UPDATE idempotency SET response = %s WHERE identity_id = %s",
                      (json.dumps({"deleted": True}), identity_id))
            if c.execute("DELETE FROM identities WHERE id = %s", (identity_id,)).rowcount == 0:
                raise NotFound(f"identity {identity_id!r} not found")
            self._log_change(c, "delete", identity_id, None, [], self._clock())
            return n

    # -- enrolment photos (keep_enrolment_images; mobidem gallery reembed), as SqliteGallery

    def add_enrolment_images(self, identity_id: str, images: Sequence[tuple[bytes, int | None]]) -> int:
        now = self._clock()
        rows = []
        for data, face_index in images:
            pid = uuid.uuid4().hex
            blob, sealing = self._seal(bytes(data), pid, identity_id)
            rows.append((pid, identity_id, blob, sealing, face_index, now))
        try:
            with self._conn(writing=True) as c, c.transaction(), c.cursor() as cur:
                cur.executemany("INSERT INTO enrolment_images (id, identity_id, data, sealing, face_index, created_at)"
                                " VALUES (%s, %s, %s, %s, %s, %s)", rows)
        except self._psycopg.errors.ForeignKeyViolation:
            raise NotFound(f"identity {identity_id!r} not found") from None
        return len(rows)

    def enrolment_images(self, identity_id: str) -> list[tuple[bytes, int | None]]:
        with self._conn() as c:
            rows = c.execute("SELECT id, data, sealing, face_index FROM enrolment_images WHERE identity_id = %s"
                             " ORDER BY pos", (identity_id,)).fetchall()
        return [(self._unseal(d, s, pid, identity_id) if s is not None else bytes(d), f) for pid, d, s, f in rows]

    def identities_with_enrolment_images(self) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT identity_id FROM enrolment_images ORDER BY identity_id")]

    def count(self) -> int:
        with self._conn() as c:
            return c.execute("SELECT count(*) FROM identities").fetchone()[0]

    def template_count(self) -> int:
        with self._conn() as c:
            return c.execute("SELECT count(*) FROM templates").fetchone()[0]

    def iter_templates(self, batch_size: int = 10_000) -> Iterator[TemplateRecord]:
        last = 0
        while True:
            with self._conn() as c:
                rows = c.execute(f"SELECT pos, {self._TEMPLATE_COLS} FROM templates WHERE pos > %s ORDER BY pos "
                                 "LIMIT %s", (last, batch_size)).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._record(row[1:])
            last = rows[-1][0]

    def purge_idempotency(self, older_than_s: float) -> int:
        with self._conn(writing=True) as c:
            return c.execute("DELETE FROM idempotency WHERE created_at < %s",
                             (self._clock() - older_than_s,)).rowcount

    # -- ChangeFeed

    def last_seq(self) -> int:
        with self._conn() as c:
            return c.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]

    def change_fingerprint(self, seq: int) -> str | None:
        """What identifies change ``seq`` in this database's log (None: not in it, trimmed or never written):
        an index snapshot that ends at ``seq`` is used only while the log still holds the same change."""
        if seq == 0:
            return "0"
        with self._conn() as c:
            row = c.execute("SELECT op, identity_id, at FROM changes WHERE seq = %s", (seq,)).fetchone()
        return None if row is None else f"{seq} {row[0]} {row[1]} {row[2]!r}"

    @property
    def cipher(self) -> TemplateCipher | None:
        """The template key's cipher (None: templates are stored in plaintext)."""
        return self._cipher

    def load_snapshot(self, sink: Callable[[Iterator[TemplateRecord]], object]) -> tuple[int, dict[str, str]]:
        with self._conn() as c, c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            seq = c.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            names = dict(c.execute("SELECT id, display_name FROM identities").fetchall())
            with c.cursor(name="mobidem_snapshot") as cur:  # server-side: the gallery is streamed, not loaded whole
                cur.itersize = 10_000
                cur.execute(f"SELECT {self._TEMPLATE_COLS} FROM templates ORDER BY pos")
                sink(self._record(row) for row in cur)
            return seq, names

    def changes_since(self, seq: int, limit: int = 1000) -> tuple[list[Change], dict[str, TemplateRecord]]:
        with self._conn() as c, c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # the trim mark and the rows agree
            trimmed = c.execute("SELECT trimmed_through FROM change_log_state").fetchone()[0]
            if seq < trimmed:
                raise ChangesTrimmed(seq, trimmed)
            rows = c.execute("SELECT seq, op, identity_id, display_name, template_ids FROM changes WHERE seq > %s "
                             "ORDER BY seq LIMIT %s", (seq, limit)).fetchall()
            changes = [Change(r[0], r[1], r[2], r[3], tuple(r[4])) for r in rows]
            wanted = [t for ch in changes if ch.op == "upsert" for t in ch.template_ids]
            records: dict[str, TemplateRecord] = {}
            if wanted:
                for row in c.execute(f"SELECT {self._TEMPLATE_COLS} FROM templates WHERE id = ANY(%s)", (wanted,)):
                    rec = self._record(row)
                    records[rec.id] = rec
            return changes, records

    def trim_changes(self, older_than_s: float) -> int:
        """Change-log retention: delete the changes written more than ``older_than_s`` ago, except the newest
        (whose seq snapshots and followers count from), and record how far the log is trimmed. A follower that
        had not applied them gets ``ChangesTrimmed`` and reloads its index from a snapshot."""
        with self._conn(writing=True) as c, c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))  # no write interleaves
            through = c.execute("SELECT coalesce(max(seq), 0) FROM changes WHERE at < %s "
                                "AND seq < (SELECT max(seq) FROM changes)", (self._clock() - older_than_s,)).fetchone()[0]
            if not through:
                return 0
            n = c.execute("DELETE FROM changes WHERE seq <= %s", (through,)).rowcount
            c.execute("UPDATE change_log_state SET trimmed_through = greatest(trimmed_through, %s)", (through,))
            return n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.close()

    def __enter__(self) -> PostgresGallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Checkout:
    """``with store._conn() as c``: a pooled connection; connection failures and pool timeouts become
    GalleryUnavailable, everything else passes unchanged."""

    def __init__(self, store: PostgresGallery, writing: bool = False) -> None:
        self.store = store
        self.writing = writing
        self._cm = None

    def __enter__(self):
        from psycopg_pool import PoolTimeout

        self._cm = self.store._pool.connection()
        try:
            return self._cm.__enter__()
        except (PoolTimeout, self.store._psycopg.OperationalError) as exc:
            raise self.store._unavailable(exc, self.writing) from None

    def __exit__(self, et, ev, tb):
        psycopg = self.store._psycopg
        lost = isinstance(ev, (psycopg.OperationalError, psycopg.InterfaceError))
        try:
            self._cm.__exit__(et, ev, tb)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self.store._unavailable(exc, self.writing) from None
        if lost:
            raise self.store._unavailable(ev, self.writing) from None
        return False
