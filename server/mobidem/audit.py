"""Append-only audit log of every Verify and Identify decision.

One SQLite database (setting ``audit_log``, default ``<data_dir>/audit.db``), kept apart from the
gallery so that its retention and permissions are separate, with one row per decision:

    seq, time (UTC ISO 8601), kind (verify | identify), caller (API key name, else the peer),
    peer, request_id, identity_ids (JSON list: the identity verified against, or Identify's
    candidates in rank order), matched_id, decision (match | no_match | known | unknown),
    distance, threshold, operating_point, far_target, embedder, models (JSON list name:version),
    prev_hash, hash

No images and no embeddings. Why SQLite and not a JSON-lines file: each record is a durable
transaction (WAL, synchronous=FULL: it is on disk before the decision is returned), it can be
queried, and triggers refuse UPDATE and DELETE, so the application cannot rewrite history even
by mistake. Against someone with write access to the file (who could drop the triggers), each
row carries ``hash = SHA-256(prev_hash || canonical JSON of the row)``: :meth:`AuditLog.verify`
finds any changed, removed or reordered row (rows cut off the end only shorten the chain: compare
the last hash with a copy kept elsewhere). A decision whose record cannot be written fails
(UNAVAILABLE) instead of going unrecorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from mobidem import logs
from mobidem.errors import Unavailable

GENESIS = "0" * 64
FIELDS = ("time", "kind", "caller", "peer", "request_id", "identity_ids", "matched_id", "decision", "distance",
          "threshold", "operating_point", "far_target", "embedder", "models")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    time            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    caller          TEXT NOT NULL,
    peer            TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    identity_ids    TEXT NOT NULL,
    matched_id      TEXT NOT NULL,
    decision        TEXT NOT NULL,
    distance        REAL,
    threshold       REAL NOT NULL,
    operating_point TEXT NOT NULL,
    far_target      REAL,
    embedder        TEXT NOT NULL,
    models          TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL UNIQUE
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
"""


class AuditError(Exception):
    pass


def _hash(prev: str, record: dict) -> str:
    body = json.dumps({k: record[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: str | Path, models: list[str] | None = None):
        self.path = Path(os.path.expanduser(str(path)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.models = list(models or [])
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # created private
        os.close(fd)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(SCHEMA)
        row = self._conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._last = row[0] if row else GENESIS

    def append(self, **fields) -> dict:
        record = {k: fields.get(k) for k in FIELDS}
        record["time"] = record["time"] or datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._lock:
            try:
                record["prev_hash"], record["hash"] = self._last, _hash(self._last, record)
                cols = (*FIELDS, "prev_hash", "hash")
                self._conn.execute(f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                   [record[c] for c in cols])
            except sqlite3.Error as exc:
                raise Unavailable(f"the audit log cannot record this decision ({exc}); it was not returned") from exc
            self._last = record["hash"]
        return record

    def _who(self) -> tuple[str, str]:
        peer = logs.peer.get()
        return logs.caller.get() or peer or "unknown", peer

    def verify_decision(self, decision, identity_id: str | None) -> dict:
        """One Verify decision (``decision``: mobidem.identity.Decision); identity_id None: 1:1 on two photos."""
        caller, peer = self._who()
        return self.append(kind="verify", caller=caller, peer=peer, request_id=decision.request_id,
                           identity_ids=json.dumps([identity_id] if identity_id else []),
                           matched_id=identity_id if identity_id and decision.match else "",
                           decision="match" if decision.match else "no_match", distance=float(decision.distance),
                           threshold=float(decision.threshold), operating_point=decision.operating_point,
                           far_target=float(decision.far_target), embedder=decision.embedder,
                           models=json.dumps(self.models))

    def identify_decision(self, match, embedder: str, far_target: float | None = None) -> dict:
        """One Identify decision (``match``: mobidem.pipeline.Match)."""
        caller, peer = self._who()
        distance = float(match.distance)
        return self.append(kind="identify", caller=caller, peer=peer, request_id=logs.request_id.get(),
                           identity_ids=json.dumps([c[0] for c in match.candidates]),
                           matched_id=match.identity_id if match.known else "",
                           decision="known" if match.known else "unknown",
                           distance=distance if distance != float("inf") else None,
                           threshold=float(match.threshold), operating_point=match.operating_point,
                           far_target=far_target, embedder=embedder, models=json.dumps(self.models))

    def records(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM audit ORDER BY seq")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def verify(self) -> int:
        """Check the hash chain; returns the number of records, raises AuditError at the first bad one."""
        prev = GENESIS
        rows = self.records()
        for row in rows:
            if row["prev_hash"] != prev or _hash(prev, row) != row["hash"]:
                raise AuditError(f"audit record {row['seq']} does not match the hash chain: altered or reordered")
            prev = row["hash"]
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
