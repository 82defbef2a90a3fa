"""Append-only, tamper-evident audit log of every Verify, Identify and liveness decision, with signed evidence.

One SQLite database (setting ``audit_log``, default ``<data_dir>/audit.db``), kept apart from the
gallery so that its retention and permissions are separate. Table ``audit``, one row per decision:

    seq, time (UTC ISO 8601), kind (verify | identify | liveness | purge), caller (API key name, else
    the peer), peer, request_id (a liveness ceremony's id), identity_ids (JSON list: the identity
    verified against, or Identify's candidates in rank order), matched_id, decision (match | no_match
    | known | unknown | pass | fail | purged),
    distance, threshold, operating_point, far_target, embedder, models (JSON list name:version),
    prev_hash, hash

Table ``evidence``: the decision's signed evidence (a compact JWS, mobidem.evidence.records) by
``seq`` and record id. Table ``checkpoints``: signed (record count, head hash, time) statements
(mobidem.evidence.checkpoints), written periodically, at start and at shutdown.

No images and no embeddings. Each record is a durable transaction (WAL, synchronous=FULL: record
and evidence are on disk, together or not at all, before the decision is returned), and triggers
refuse UPDATE and DELETE, so the application cannot rewrite history even by mistake (retention
purges lift them inside their own transaction). Against someone with write access to the file,
each row carries ``hash = SHA-256(prev_hash || canonical JSON of the row [+ its evidence's SHA-256])``,
each evidence JWS signs its own position in the chain (seq and prev_hash), and each checkpoint
signs the head: :func:`check` finds a changed, removed, inserted or reordered row, and a tail cut
off before the last checkpoint. A retention purge is itself a chained record with signed evidence
naming the last purged record's hash, where the remaining chain starts. A decision whose record
cannot be written fails (UNAVAILABLE) instead of going unrecorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from mobidem import logs
from mobidem.errors import Unavailable
from mobidem.evidence import checkpoints as cp
from mobidem.evidence import jws, records
from mobidem.evidence.keys import Signer

log = logging.getLogger(__name__)

GENESIS = "0" * 64
FIELDS = ("time", "kind", "caller", "peer", "request_id", "identity_ids", "matched_id", "decision", "distance",
          "threshold", "operating_point", "far_target", "embedder", "models")
PURGE_TYP = "mobidem-purge+jwt"

TABLES = """
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
CREATE TABLE IF NOT EXISTS evidence (
    seq             INTEGER PRIMARY KEY,
    record_id       TEXT NOT NULL UNIQUE,
    jws             TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    size            INTEGER NOT NULL,
    head            TEXT NOT NULL,
    time            TEXT NOT NULL,
    kid             TEXT NOT NULL,
    jws             TEXT NOT NULL,
    witness         BLOB
);
"""
TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS evidence_no_update BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
"""
SCHEMA = TABLES + TRIGGERS
DELETE_TRIGGERS = ("audit_no_delete", "evidence_no_delete", "checkpoints_no_delete")


class AuditError(Exception):
    pass


def _hash(prev: str, record: dict, evidence: str | None = None) -> str:
    body = {k: record[k] for k in FIELDS}
    if evidence is not None:
        body["evidence_sha256"] = hashlib.sha256(evidence.encode()).hexdigest()
    return hashlib.sha256((prev + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AuditLog:
    """``signer``: signs each record's evidence and the checkpoints (None: a chain without evidence,
    for reading and for tests of the chain alone); ``model_info``: [{"name", "version", "onnx_sha256"}]
    for the evidence; ``witness``: mobidem.evidence.checkpoints.Witness or None."""

    def __init__(self, path: str | Path, models: list[str] | None = None, signer: Signer | None = None,
                 model_info: list[dict] | None = None, witness: cp.Witness | None = None):
        self.path = Path(os.path.expanduser(str(path)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.models = list(models or [])
        self.signer = signer
        self.model_info = list(model_info or [])
        self.witness = witness
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # created private
        os.close(fd)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA secure_delete = ON")  # purged records are overwritten, not left in free pages
        self._conn.executescript(SCHEMA)

    # ------------------------------------------------------------------ writing

    def _head(self) -> tuple[int, str]:
        row = self._conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def append(self, evidence: Callable[[dict, str, int], tuple[dict, str]] | None = None, **fields) -> dict:
        """One chained record; ``evidence(record, record_id, seq) -> (claims, typ)`` makes its signed
        evidence (with a signer). The head is read inside the write transaction, so another writer on
        the same file (``mobidem audit purge`` beside a running server) never forks the chain."""
        record = {k: fields.get(k) for k in FIELDS}
        record["time"] = record["time"] or now_iso()
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    seq, prev = self._head()
                    seq += 1
                    record["prev_hash"] = prev
                    token = None
                    if self.signer is not None and evidence is not None:
                        record["record_id"] = uuid.uuid4().hex
                        claims, typ = evidence(record, record["record_id"], seq)
                        token = record["evidence"] = self.signer.sign(claims, typ)
                    record["seq"], record["hash"] = seq, _hash(prev, record, token)
                    cols = ("seq", *FIELDS, "prev_hash", "hash")
                    self._conn.execute(f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                       [record[c] for c in cols])
                    if token is not None:
                        self._conn.execute("INSERT INTO evidence (seq, record_id, jws) VALUES (?, ?, ?)",
                                           (seq, record["record_id"], token))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise Unavailable(f"the audit log cannot record this decision ({exc}); it was not returned") from exc
        return record

    def _who(self) -> tuple[str, str]:
        peer = logs.peer.get()
        return logs.caller.get() or peer or "unknown", peer

    def _decision_evidence(self, identity_id: str, images: list[dict], transaction_ref: str,
                           extra: dict | None = None):
        caller_key = logs.caller.get() or ""

        def make(record: dict, record_id: str, seq: int) -> tuple[dict, str]:
            claims = records.decision_claims(dict(record, identity_id=identity_id), record_id, seq, self.model_info,
                                             caller_key, images, transaction_ref)
            return {**claims, **(extra or {})}, records.TYP
        return make

    def verify_decision(self, decision, identity_id: str | None, images: list[dict] | None = None,
                        transaction_ref: str = "") -> dict:
        """One Verify decision (``decision``: mobidem.identity.Decision); identity_id None: 1:1 on two
        photos; ``images``: [{"role", "sha256"}] of the photos it used."""
        caller, peer = self._who()
        return self.append(self._decision_evidence(identity_id or "", images or [], transaction_ref),
                           kind="verify", caller=caller, peer=peer, request_id=decision.request_id,
                           identity_ids=json.dumps([identity_id] if identity_id else []),
                           matched_id=identity_id if identity_id and decision.match else "",
                           decision="match" if decision.match else "no_match", distance=float(decision.distance),
                           threshold=float(decision.threshold), operating_point=decision.operating_point,
                           far_target=float(decision.far_target), embedder=decision.embedder,
                           models=json.dumps(self.models))

    def identify_decision(self, match, embedder: str, far_target: float | None = None,
                          images: list[dict] | None = None, transaction_ref: str = "") -> dict:
        """One Identify decision (``match``: mobidem.pipeline.Match)."""
        caller, peer = self._who()
        distance = float(match.distance)
        return self.append(self._decision_evidence("", images or [], transaction_ref),
                           kind="identify", caller=caller, peer=peer, request_id=logs.request_id.get(),
                           identity_ids=json.dumps([c[0] for c in match.candidates]),
                           matched_id=match.identity_id if match.known else "",
                           decision="known" if match.known else "unknown",
                           distance=distance if distance != float("inf") else None,
                           threshold=float(match.threshold), operating_point=match.operating_point,
                           far_target=far_target, embedder=embedder, models=json.dumps(self.models))

    def liveness_decision(self, ceremony: dict, passed: bool, identity_id: str, match: bool,
                          distance: float | None, point, embedder: str, images: list[dict],
                          transaction_ref: str = "") -> dict:
        """One liveness ceremony's outcome, PASS or FAIL (``ceremony``: mobidem.evidence.records.liveness_claim);
        ``point``: the operating point of its identity checks and of its 1:1 (``distance`` None: no 1:1
        was made); ``images``: [{"role", "sha256", ...}] of every frame it was decided from and of the
        reference photo."""
        caller, peer = self._who()
        return self.append(self._decision_evidence(identity_id, images, transaction_ref, {"liveness": ceremony}),
                           kind="liveness", caller=caller, peer=peer, request_id=ceremony["ceremony_id"],
                           identity_ids=json.dumps([identity_id] if identity_id else []),
                           matched_id=identity_id if identity_id and match else "",
                           decision="pass" if passed else "fail", distance=distance,
                           threshold=float(point.threshold), operating_point=point.name,
                           far_target=float(point.far_target), embedder=embedder, models=json.dumps(self.models))

    def checkpoint(self, force: bool = False) -> dict | None:
        """Sign (record count, head hash, time); skipped when the head is already checkpointed, unless
        ``force``. The witness hook, when set, countersigns it (outside the lock)."""
        if self.signer is None:
            return None
        with self._lock:
            size, head = self._head()
            last = self._conn.execute("SELECT size, head FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
            if last is not None and tuple(last) == (size, head) and not force:
                return None
            claims = cp.claims(size, head)
            token = self.signer.sign(claims, cp.TYP)
        witness = None
        if self.witness is not None:
            try:
                witness = self.witness(token.encode())
            except Exception:  # noqa: BLE001 - the checkpoint stands without its witness; the log says why
                log.exception("the audit checkpoint witness failed; checkpoint %d stored without it", size)
        with self._lock:
            self._conn.execute("INSERT INTO checkpoints (size, head, time, kid, jws, witness) VALUES (?, ?, ?, ?, ?, ?)",
                               (size, head, claims["time"], self.signer.kid, token, witness))
        return {**claims, "jws": token, "kid": self.signer.kid}

    def purge(self, retention_s: float, now: datetime | None = None) -> dict | None:
        """Delete records older than ``retention_s`` (and their evidence and checkpoints), after
        appending a signed purge record that names the last purged record and its hash. None: nothing
        is old enough."""
        if self.signer is None:
            raise AuditError("purging needs the evidence signing key (the purge record is signed)")
        cutoff = ((now or datetime.now(timezone.utc)) - timedelta(seconds=retention_s)).isoformat(
            timespec="microseconds")
        with self._lock:
            row = self._conn.execute("SELECT seq, hash, (SELECT count(*) FROM audit WHERE time < ?) FROM audit "
                                     "WHERE time < ? ORDER BY seq DESC LIMIT 1", (cutoff, cutoff)).fetchone()
        if row is None:
            return None
        through, through_hash, count = row

        def make(record: dict, record_id: str, seq: int) -> tuple[dict, str]:
            return {"iss": "mobidem", "jti": record_id, "iat": int(datetime.fromisoformat(record["time"]).timestamp()),
                    "time": record["time"], "kind": "purge", "through_seq": through, "through_hash": through_hash,
                    "count": count, "older_than": cutoff, "retention_s": retention_s,
                    "audit": {"seq": seq, "prev_hash": record["prev_hash"]}}, PURGE_TYP

        record = self.append(make, kind="purge", caller="retention", peer="", request_id="",
                             identity_ids="[]", matched_id="", decision="purged", distance=None, threshold=0.0,
                             operating_point="", far_target=None, embedder="", models="[]")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for name in DELETE_TRIGGERS:
                    self._conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                self._conn.execute("DELETE FROM evidence WHERE seq <= ?", (through,))
                self._conn.execute("DELETE FROM audit WHERE seq <= ?", (through,))
                self._conn.execute("DELETE FROM checkpoints WHERE size < ?", (through,))
                for statement in TRIGGERS.split("END;")[:-1]:
                    self._conn.execute(statement + "END;")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"through_seq": through, "through_hash": through_hash, "count": count, "record": record}

    # ------------------------------------------------------------------ reading

    def records(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM audit ORDER BY seq")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def evidence(self, record_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT jws FROM evidence WHERE record_id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    def checkpoints(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute("SELECT id, size, head, time, kid, jws, witness FROM checkpoints ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def verify(self, keys: dict | None = None) -> int:
        """Check the chain (and, with ``keys``, every signature); returns the number of records,
        raises AuditError naming the first bad record or checkpoint."""
        report = check(self.path, keys)
        if report.problems:
            raise AuditError(report.problems[0])
        return report.records

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class Report:
    path: Path
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    checkpointed: int = 0      # the largest record count a checkpoint covers
    purged_through: int = 0
    signed_records: int = 0
    signatures_checked: bool = False
    witnessed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def uncovered(self) -> int:
        """Records after the last checkpoint: a cut there cannot be told from a shorter log."""
        return max(0, self.last_seq - self.checkpointed)


def _claims(token: str, keys: dict | None, typ: str) -> dict:
    if keys is None:
        header, claims, _, _ = jws.parse(token)
    else:
        header, claims = jws.verify(token, keys)
    if header.get("typ") != typ:
        raise jws.JwsError(f"typ {header.get('typ')!r} is not {typ!r}")
    return claims


def check(path: str | Path, keys: dict | None = None) -> Report:
    """Walk the chain, the evidence and the checkpoints of the audit log at ``path`` (read only);
    ``keys`` (kid -> Ed25519 public key): check every signature against them. The report's
    ``problems`` start with the first bad record or checkpoint; the walk stops at the first bad record."""
    path = Path(path)
    report = Report(path, signatures_checked=keys is not None)
    problems = report.problems
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError:  # a WAL log copied without its -shm cannot be opened read-only
            con.close()
            con = sqlite3.connect(str(path), timeout=30.0)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "audit" not in tables:
            problems.append(f"{path} holds no audit table: not a mobidem audit log")
            return report
        # checkpoints: signed, and never shrinking
        wanted: dict[int, list[tuple[int, str, str]]] = {}
        largest, largest_id = -1, 0
        rows = con.execute("SELECT id, size, head, time, jws, witness FROM checkpoints ORDER BY id").fetchall() \
            if "checkpoints" in tables else []
        for cid, size, head, time, token, witness in rows:
            try:
                claims = _claims(token, keys, cp.TYP)
            except jws.JwsError as exc:
                problems.append(f"checkpoint {cid} ({time}): {exc}")
                continue
            if claims.get("size") != size or claims.get("head") != head:
                problems.append(f"checkpoint {cid} ({time}) was edited: its columns differ from what it signed")
                continue
            if size < largest:
                problems.append(f"checkpoint {cid} ({time}) covers {size} records, fewer than checkpoint "
                                f"{largest_id} before it ({largest}): the log was cut and re-grown")
            if size > largest:
                largest, largest_id = size, cid
            report.checkpoints += 1
            report.witnessed += witness is not None
            wanted.setdefault(size, []).append((cid, head, time))
        report.checkpointed = max(largest, 0)
        # purge records: where a purged log's chain starts
        starts: dict[int, str] = {}
        if "evidence" in tables:
            for seq, token in con.execute("SELECT a.seq, e.jws FROM audit a JOIN evidence e ON e.seq = a.seq "
                                          "WHERE a.kind = 'purge'"):
                try:
                    claims = _claims(token, keys, PURGE_TYP)
                    starts[int(claims["through_seq"])] = str(claims["through_hash"])
                    report.purged_through = max(report.purged_through, int(claims["through_seq"]))
                except (jws.JwsError, KeyError, TypeError, ValueError) as exc:
                    problems.append(f"record {seq} (a purge): {exc}")
        join = "LEFT JOIN evidence e ON e.seq = a.seq" if "evidence" in tables else ""
        ev = "e.jws" if join else "NULL"
        cur = con.execute(f"SELECT a.seq, {', '.join('a.' + f for f in FIELDS)}, a.prev_hash, a.hash, {ev} "
                          f"FROM audit a {join} ORDER BY a.seq")
        prev, expected, signed = GENESIS, 1, False
        n = len(FIELDS)
        for row in cur:
            seq, record, prev_hash, stored, token = row[0], dict(zip(FIELDS, row[1:n + 1])), *row[n + 1:]
            if report.records == 0 and seq != 1:
                if seq - 1 in starts:
                    prev, expected = starts[seq - 1], seq
                else:
                    problems.append(f"records 1..{seq - 1} are missing: the log starts at record {seq} and no "
                                    f"signed purge record covers them")
                    break
            if seq != expected:
                problems.append(f"record {expected} is missing (deleted): the log goes from record {expected - 1} "
                                f"to record {seq}")
                break
            if prev_hash != prev:
                before = f"record {seq - 1}" if seq > 1 else "the start of the log"
                problems.append(f"record {seq} does not follow {before}: its prev_hash is not the hash before it "
                                f"(a record was inserted, deleted or reordered here)")
                break
            if _hash(prev, record, token) != stored:
                problems.append(f"record {seq} was edited: its hash does not match its contents")
                break
            if token is None:
                if signed or (keys is not None and wanted):
                    problems.append(f"record {seq} has no signed evidence (inserted without the signing key?)")
                    break
            else:
                signed = True
                report.signed_records += 1
                typ = PURGE_TYP if record["kind"] == "purge" else records.TYP
                try:
                    claims = _claims(token, keys, typ)
                except jws.JwsError as exc:
                    problems.append(f"record {seq}: its evidence {exc}")
                    break
                position = claims.get("audit") or {}
                bound = ("time", "kind") if typ == PURGE_TYP else records.BOUND
                differs = [c for c in bound if claims.get(c) != record[records.BOUND[c]]]
                if position.get("seq") != seq or position.get("prev_hash") != prev_hash or differs:
                    what = ", ".join(differs) or "its position in the chain"
                    problems.append(f"record {seq} differs from its signed evidence ({what}): edited and re-chained")
                    break
            for cid, head, time in wanted.get(seq, ()):
                if head != stored:
                    problems.append(f"record {seq} is not the record checkpoint {cid} ({time}) signed: the log "
                                    f"was rewritten up to there")
            if seq in starts and starts[seq] != stored:
                problems.append(f"record {seq} is not the record a purge record names")
            prev, expected = stored, seq + 1
            report.records += 1
            report.first_seq = report.first_seq or seq
            report.last_seq = seq
        if problems:
            return report
        for size, entries in sorted(wanted.items()):
            if size > report.last_seq:
                cid, _, time = entries[0]
                problems.append(f"the log ends at record {report.last_seq} but checkpoint {cid} ({time}) covers "
                                f"{size} records: records {report.last_seq + 1}..{size} were cut off")
                break
        if keys is not None and report.records and not report.checkpoints:
            problems.append("the log has no checkpoint signed by a trusted key: its tail cannot be checked")
        if keys is not None and report.records and not signed:
            problems.append("no record carries evidence signed by a trusted key")
    finally:
        con.close()
    return report
