"""The audit log's hash chain finds every kind of tampering docs/SECURITY.md promises (pure logic, SQLite)."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from mobidem.audit import FIELDS, AuditError, AuditLog


def _log(path, n=4) -> AuditLog:
    log = AuditLog(path, ["face_multitask:1"])
    for i in range(n):
        log.append(kind="verify", caller=f"partner-{i}", peer="ipv4:127.0.0.1:1", request_id=f"r{i}",
                   identity_ids='["a"]', matched_id="a", decision="match", distance=0.4 + i / 100, threshold=0.58,
                   operating_point="far_1e-3", far_target=0.001, embedder="face_multitask:1", models="[]")
    return log


def _tampered(tmp_path, sql: str, params=()):
    path = tmp_path / "audit.db"
    _log(path).close()
    copy = tmp_path / "tampered.db"
    shutil.copy(path, copy)
    con = sqlite3.connect(copy)
    con.execute("DROP TRIGGER audit_no_update")  # someone with write access to the file
    con.execute("DROP TRIGGER audit_no_delete")
    for statement in sql.split(";"):
        con.execute(statement, params)
    con.commit()
    con.close()
    return AuditLog(copy)


HASHED = [f for f in FIELDS if f not in ("seq",)]


@pytest.mark.parametrize("field", HASHED)
def test_a_change_to_any_field_is_found(tmp_path, field):
    log = _tampered(tmp_path, f"UPDATE audit SET {field} = ? WHERE seq = 2", ("tampered",))
    with pytest.raises(AuditError, match="record 2"):
        log.verify()


@pytest.mark.parametrize("sql", [
    "DELETE FROM audit WHERE seq = 2",                                              # a record removed
    "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;"
    "UPDATE audit SET seq = 3 WHERE seq = 100",                                     # two swapped
    "UPDATE audit SET hash = CASE substr(hash, 1, 1) WHEN '0' THEN '1' ELSE '0' END || substr(hash, 2)"
    " WHERE seq = 1",                                                                # a hash rewritten
])
def test_removed_reordered_or_rehashed_records_are_found(tmp_path, sql):
    with pytest.raises(AuditError):
        _tampered(tmp_path, sql).verify()


def test_the_chain_goes_on_across_a_restart(tmp_path):
    path = tmp_path / "audit.db"
    _log(path, 2).close()
    again = _log(path, 2)  # a restarted server appends to the same chain
    assert again.verify() == 4
    records = again.records()
    assert records[2]["prev_hash"] == records[1]["hash"]


def test_records_cut_off_the_end_only_shorten_the_chain(tmp_path):
    """The documented limit (docs/SECURITY.md): ship the last hash elsewhere to catch this."""
    log = _tampered(tmp_path, "DELETE FROM audit WHERE seq = 4")
    assert log.verify() == 3


def test_the_log_refuses_updates_and_deletes(tmp_path):
    path = tmp_path / "audit.db"
    _log(path).close()
    con = sqlite3.connect(path)
    for sql in ("UPDATE audit SET decision = 'no_match'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)


# --------------------------------------------------------------------------- signed evidence and checkpoints
# Expected values come from docs/SECURITY.md ("Evidence"), and the JWS checks from PyJWT, an
# implementation independent of mobidem.evidence.

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

import jwt  # noqa: E402  (PyJWT)

from mobidem.audit import check  # noqa: E402
from mobidem.evidence import keys as evidence_keys  # noqa: E402
from mobidem.evidence.keys import Signer  # noqa: E402


class _Decision:  # the fields mobidem.identity.Decision carries
    def __init__(self, i):
        self.match, self.distance, self.threshold = i % 2 == 0, 0.4 + i / 100, 0.58
        self.operating_point, self.far_target, self.embedder, self.request_id = "far_1e-3", 0.001, "m:1", f"r{i}"


def _signed(tmp_path, n=5, name="k.json", path=None):
    key_file = tmp_path / name
    if not key_file.exists():
        evidence_keys.create(key_file)
    signer = Signer.load(key_file)
    log = AuditLog(path or tmp_path / "audit.db", ["m:1"], signer=signer,
                   model_info=[{"name": "m", "version": "1", "onnx_sha256": "ab" * 32}])
    log.checkpoint()
    made = [log.verify_decision(_Decision(i), "alice", [{"role": "probe", "sha256": "cd" * 32}], f"doc-{i}")
            for i in range(n)]
    return log, signer, made


def _pyjwt_keys(key_file):
    return {k["kid"]: jwt.PyJWK(k).key for k in json.loads(json.dumps(evidence_keys.public_jwks(key_file)))["keys"]}


def _pyjwt_decode(token, keys):
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, keys[kid], algorithms=["EdDSA"], options={"verify_iat": False})


def test_the_key_file_is_private_and_rotation_keeps_old_public_keys(tmp_path):
    path = tmp_path / "k.json"
    first = evidence_keys.create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(evidence_keys.KeyFileError, match="exists"):
        evidence_keys.create(path)
    second = evidence_keys.rotate(path)
    entries = json.loads(path.read_text())["keys"]
    assert [e["kid"] for e in entries] == [first, second]
    assert "d" not in entries[0] and "d" in entries[1]  # the old key can verify, never sign again
    assert Signer.load(path).kid == second
    assert [k["kid"] for k in evidence_keys.public_jwks(path)["keys"]] == [first, second]
    assert all("d" not in k for k in evidence_keys.public_jwks(path)["keys"])


def test_evidence_verifies_with_pyjwt_and_says_what_the_spec_lists(tmp_path):
    log, signer, made = _signed(tmp_path, 2)
    keys = _pyjwt_keys(tmp_path / "k.json")
    claims = _pyjwt_decode(made[0]["evidence"], keys)
    header = jwt.get_unverified_header(made[0]["evidence"])
    assert header["alg"] == "EdDSA" and header["kid"] == signer.kid and header["typ"] == "mobidem-evidence+jwt"
    assert claims["jti"] == made[0]["record_id"] and claims["kind"] == "verify" and claims["decision"] == "match"
    assert claims["distance"] == 0.4 and claims["threshold"] == 0.58
    assert claims["operating_point"] == "far_1e-3" and claims["far_target"] == 0.001
    assert claims["models"] == [{"name": "m", "version": "1", "onnx_sha256": "ab" * 32}]
    assert claims["images"] == [{"role": "probe", "sha256": "cd" * 32}] and claims["transaction_ref"] == "doc-0"
    assert claims["identity_id"] == "alice" and claims["audit"] == {"seq": 1, "prev_hash": "0" * 64}
    assert log.evidence(made[1]["record_id"]) == made[1]["evidence"]
    # one changed claim: the signature no longer verifies
    head, body, sig = made[0]["evidence"].split(".")
    payload = json.loads(jwt.utils.base64url_decode(body))
    payload["distance"] = 0.1
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(payload).encode()).decode(), sig])
    with pytest.raises(jwt.InvalidSignatureError):
        _pyjwt_decode(forged, keys)
    log.close()


def _chain_hash(prev, row, evidence):
    """The chain as docs/SECURITY.md states it, written out here."""
    body = {k: row[k] for k in ("time", "kind", "caller", "peer", "request_id", "identity_ids", "matched_id",
                                "decision", "distance", "threshold", "operating_point", "far_target", "embedder",
                                "models")}
    if evidence is not None:
        body["evidence_sha256"] = hashlib.sha256(evidence.encode()).hexdigest()
    return hashlib.sha256((prev + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def _open_unprotected(path):
    con = sqlite3.connect(path)
    for t in ("audit", "evidence", "checkpoints"):
        for op in ("update", "delete"):
            con.execute(f"DROP TRIGGER IF EXISTS {t}_no_{op}")
    return con


def test_a_signed_log_verifies_and_its_truncated_tail_is_found(tmp_path):
    log, signer, _ = _signed(tmp_path, 5)
    log.checkpoint()
    log.close()
    trusted = signer.trusted()
    report = check(tmp_path / "audit.db", trusted)
    assert report.ok and report.records == 5 and report.checkpoints == 2 and report.uncovered == 0
    con = _open_unprotected(tmp_path / "audit.db")
    con.execute("DELETE FROM audit WHERE seq > 3")
    con.execute("DELETE FROM evidence WHERE seq > 3")
    con.commit()
    con.close()
    problems = check(tmp_path / "audit.db", trusted).problems
    assert problems and "checkpoint 2" in problems[0] and "records 4..5 were cut off" in problems[0]


def test_a_forged_row_with_a_correct_hash_is_found(tmp_path):
    log, signer, _ = _signed(tmp_path, 3)
    log.close()
    con = _open_unprotected(tmp_path / "audit.db")
    con.row_factory = sqlite3.Row
    last = dict(con.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone())
    row = dict(last, seq=4, request_id="forged", decision="match", prev_hash=last["hash"])
    row["hash"] = _chain_hash(last["hash"], row, None)
    con.execute(f"INSERT INTO audit ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.commit()
    con.close()
    problems = check(tmp_path / "audit.db", signer.trusted()).problems
    assert problems and problems[0].startswith("record 4 has no signed evidence")


def test_an_edit_re_chained_by_someone_without_the_key_is_found(tmp_path):
    log, signer, _ = _signed(tmp_path, 4)
    log.close()
    con = _open_unprotected(tmp_path / "audit.db")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT a.*, e.jws FROM audit a JOIN evidence e USING (seq) ORDER BY seq")]
    rows[1]["distance"] = 0.9  # a match made to look like a far one, every later hash recomputed
    prev = "0" * 64
    for r in rows:
        r["prev_hash"], r["hash"] = prev, _chain_hash(prev, r, r["jws"])
        con.execute("UPDATE audit SET distance = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (r["distance"], r["prev_hash"], r["hash"], r["seq"]))
        prev = r["hash"]
    con.commit()
    con.close()
    problems = check(tmp_path / "audit.db", signer.trusted()).problems
    assert problems and problems[0].startswith("record 2 differs from its signed evidence (distance)")


def test_a_log_re_signed_by_another_key_is_refused(tmp_path):
    (tmp_path / "ours").mkdir()
    _, ours, _ = _signed(tmp_path / "ours", 3)
    other_log, _, _ = _signed(tmp_path, 3, name="other.json")
    other_log.checkpoint()
    other_log.close()
    assert check(tmp_path / "audit.db").ok  # the chain alone is fine...
    problems = check(tmp_path / "audit.db", ours.trusted()).problems
    assert problems and "not among the trusted keys" in problems[0]  # ...but not signed by us


def test_purge_leaves_a_signed_record_and_the_log_still_verifies(tmp_path):
    log, signer, made = _signed(tmp_path, 4)
    log.checkpoint()
    later = datetime.now(timezone.utc) + timedelta(days=10)
    purged = log.purge(5 * 86400, now=later)  # everything is "older than 5 days" 10 days from now
    assert purged["through_seq"] == 4 and purged["count"] == 4
    assert [r["kind"] for r in log.records()] == ["purge"]
    assert log.evidence(made[0]["record_id"]) is None
    claims = _pyjwt_decode(purged["record"]["evidence"], _pyjwt_keys(tmp_path / "k.json"))
    assert claims["kind"] == "purge" and claims["through_seq"] == 4 and claims["through_hash"] == made[-1]["hash"]
    log.verify_decision(_Decision(9), "bob")
    log.checkpoint()
    report = check(tmp_path / "audit.db", signer.trusted())
    assert report.ok, report.problems
    assert report.records == 2 and report.first_seq == 5 and report.purged_through == 4
    assert log.purge(5 * 86400) is None  # nothing old enough now
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sqlite3.connect(tmp_path / "audit.db").execute("DELETE FROM audit")
    log.close()


def test_a_second_writer_on_the_same_file_does_not_fork_the_chain(tmp_path):
    log, signer, _ = _signed(tmp_path, 2)
    other = AuditLog(tmp_path / "audit.db", signer=signer)  # `mobidem audit purge` beside a running server
    other.verify_decision(_Decision(5), "carol")
    log.verify_decision(_Decision(6), "dave")
    assert check(tmp_path / "audit.db", signer.trusted()).ok
    other.close()
    log.close()
    assert os.stat(tmp_path / "audit.db").st_mode & 0o077 == 0
