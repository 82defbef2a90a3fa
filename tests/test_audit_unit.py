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


def _rechain(path, edits=None, *, left_join=False):
    """Rewrite the log as a forger with write access would: apply ``edits`` (row index -> new values), then
    recompute every ``prev_hash``/``hash`` so that the chain itself is consistent again."""
    edits = edits or {}
    con = _open_unprotected(path)
    con.row_factory = sqlite3.Row
    join = "LEFT JOIN" if left_join else "JOIN"
    rows = [dict(r) for r in con.execute(f"SELECT a.*, e.jws FROM audit a {join} evidence e USING (seq) ORDER BY seq")]
    for i, values in edits.items():
        rows[i].update(values)
    columns = [*sorted({c for values in edits.values() for c in values}), "prev_hash", "hash"]
    prev = "0" * 64
    for r in rows:
        r["prev_hash"], r["hash"] = prev, _chain_hash(prev, r, r["jws"])
        con.execute(f"UPDATE audit SET {', '.join(c + ' = ?' for c in columns)} WHERE seq = ?",
                    (*(r[c] for c in columns), r["seq"]))
        prev = r["hash"]
    con.commit()
    con.close()


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
    _rechain(tmp_path / "audit.db", {1: {"distance": 0.9}})  # a match made to look like a far one
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


# --------------------------------------------------------------------------- survivors of the deb9509 mutation run
# Each test states what docs/SECURITY.md and the module docstring promise; the messages are the ones an
# operator reads from `mobidem audit verify`.

import logging  # noqa: E402
import threading  # noqa: E402

from mobidem import logs  # noqa: E402
from mobidem.errors import Unavailable  # noqa: E402
from mobidem.evidence import checkpoints as evidence_checkpoints  # noqa: E402

TRIGGER_NAMES = sorted(f"{t}_no_{op}" for t in ("audit", "evidence", "checkpoints") for op in ("update", "delete"))


def _edit(path, *statements):
    con = _open_unprotected(path)
    for sql, *params in statements:
        con.execute(sql, *params)
    con.commit()
    con.close()


def test_a_record_says_who_when_and_what_in_utc(tmp_path):
    log = AuditLog(tmp_path / "deep" / "er" / "audit.db", ["face_multitask:1"])  # parent folders are made
    tokens = [logs.caller.set("partner-a"), logs.peer.set("ipv4:10.0.0.1:5")]
    try:
        a = log.verify_decision(_Decision(0), "alice")
        logs.caller.set("")
        b = log.verify_decision(_Decision(1), None)  # 1:1 on two photos, no identity
        logs.peer.set("")
        c = log.verify_decision(_Decision(1), "bob")
    finally:
        logs.peer.reset(tokens[1])
        logs.caller.reset(tokens[0])
    assert (a["caller"], a["peer"]) == ("partner-a", "ipv4:10.0.0.1:5")
    assert (b["caller"], b["peer"]) == ("ipv4:10.0.0.1:5", "ipv4:10.0.0.1:5")  # no key: the peer names the caller
    assert (c["caller"], c["peer"]) == ("unknown", "")
    assert (a["identity_ids"], a["matched_id"], a["decision"]) == ('["alice"]', "alice", "match")
    assert (b["identity_ids"], b["matched_id"], b["decision"]) == ("[]", "", "no_match")
    assert (c["identity_ids"], c["matched_id"], c["decision"]) == ('["bob"]', "", "no_match")
    stored = log.records()
    assert [r["models"] for r in stored] == ['["face_multitask:1"]'] * 3
    assert all(r["time"].endswith("+00:00") for r in stored)  # UTC ISO 8601, whatever the host's zone
    assert "evidence" not in a  # no signer: a chain without evidence
    assert log.verify() == 3
    log.close()


def test_evidence_names_the_callers_key_and_an_empty_reference_by_default(tmp_path):
    key_file = tmp_path / "k.json"
    evidence_keys.create(key_file)
    log = AuditLog(tmp_path / "audit.db", ["m:1"], signer=Signer.load(key_file))
    token = logs.caller.set("partner-a")
    try:
        keyed = log.verify_decision(_Decision(0), None)
    finally:
        logs.caller.reset(token)
    anonymous = log.verify_decision(_Decision(0), None)
    keys = _pyjwt_keys(key_file)
    claims = _pyjwt_decode(keyed["evidence"], keys)
    assert claims["caller_key"] == "partner-a" and claims["transaction_ref"] == "" and claims["identity_id"] == ""
    assert _pyjwt_decode(anonymous["evidence"], keys)["caller_key"] == ""
    log.close()


def test_the_log_is_written_from_worker_threads(tmp_path):
    log = AuditLog(tmp_path / "audit.db")  # opened on one thread, written on the gateway's worker threads
    errors = []

    def work(i):
        try:
            log.append(kind="verify", caller="c", peer="p", request_id=f"r{i}", identity_ids="[]", matched_id="",
                       decision="no_match", distance=0.9, threshold=0.5, operating_point="x", far_target=0.001,
                       embedder="e", models="[]")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and log.verify() == 4
    log.close()


def test_a_failed_evidence_leaves_no_record_and_a_failed_write_is_unavailable(tmp_path):
    log, signer, _ = _signed(tmp_path, 2)

    def broken(record, record_id, seq):
        raise RuntimeError("evidence failed")
    with pytest.raises(RuntimeError, match="evidence failed"):
        log.append(broken, kind="verify")
    assert len(log.records()) == 2  # rolled back, and the log still takes records
    log.verify_decision(_Decision(3), "alice")
    assert check(tmp_path / "audit.db", signer.trusted()).records == 3
    log._conn.execute("PRAGMA query_only = ON")  # the disk refuses writes
    with pytest.raises(Unavailable, match=r"the audit log cannot record this decision \(.*readonly.*\); it was not "
                                          r"returned"):
        log.verify_decision(_Decision(4), "alice")
    log.close()


def test_checkpoints_are_skipped_when_the_head_is_already_signed_and_witnessed_when_asked(tmp_path, caplog):
    seen = []
    log, signer, _ = _signed(tmp_path, 2)
    assert log.checkpoint() is not None  # the head moved since the first
    assert log.checkpoint() is None  # already checkpointed
    forced = log.checkpoint(force=True)
    assert forced["size"] == 2 and forced["head"] == log.records()[-1]["hash"] and forced["kid"] == signer.kid
    assert _pyjwt_decode(forced["jws"], _pyjwt_keys(tmp_path / "k.json"))["size"] == 2
    log.witness = lambda token: seen.append(token) or b"countersigned"
    log.verify_decision(_Decision(2), "alice")
    made = log.checkpoint()
    assert seen == [made["jws"].encode()]

    def failing(token):
        raise OSError("witness unreachable")
    log.witness = failing
    log.verify_decision(_Decision(3), "alice")
    with caplog.at_level(logging.ERROR, logger="mobidem.audit"):
        assert log.checkpoint() is not None  # stands without its witness
    assert [r.getMessage() for r in caplog.records if r.name == "mobidem.audit"] == [
        "the audit checkpoint witness failed; checkpoint 4 stored without it"]
    assert [c["witness"] for c in log.checkpoints()] == [None, None, None, b"countersigned", None]
    report = check(tmp_path / "audit.db", signer.trusted())
    assert report.ok and report.checkpoints == 5 and report.witnessed == 1 and report.signed_records == 4
    assert report.path == tmp_path / "audit.db" and report.signatures_checked
    assert not check(tmp_path / "audit.db").signatures_checked
    log.close()


def test_a_witness_given_at_construction_is_used(tmp_path):
    key_file = tmp_path / "k.json"
    evidence_keys.create(key_file)
    seen = []
    log = AuditLog(tmp_path / "audit.db", signer=Signer.load(key_file), witness=lambda t: seen.append(t) or b"w")
    log.checkpoint()
    assert len(seen) == 1 and log.checkpoints()[0]["witness"] == b"w"
    log.close()


def test_the_purge_record_and_its_evidence_say_what_the_spec_lists(tmp_path):
    log, signer, made = _signed(tmp_path, 3)
    later = datetime.now(timezone.utc) + timedelta(days=10)
    purged = log.purge(5 * 86400, now=later)
    record = purged["record"]
    assert purged["through_hash"] == made[-1]["hash"] and purged["through_seq"] == 3 and purged["count"] == 3
    assert {k: record[k] for k in FIELDS if k != "time"} == {
        "kind": "purge", "caller": "retention", "peer": "", "request_id": "", "identity_ids": "[]", "matched_id": "",
        "decision": "purged", "distance": None, "threshold": 0.0, "operating_point": "", "far_target": None,
        "embedder": "", "models": "[]"}
    claims = _pyjwt_decode(record["evidence"], _pyjwt_keys(tmp_path / "k.json"))
    assert jwt.get_unverified_header(record["evidence"])["typ"] == "mobidem-purge+jwt"
    assert claims == {"iss": "mobidem", "jti": record["record_id"],
                      "iat": int(datetime.fromisoformat(record["time"]).timestamp()), "time": record["time"],
                      "kind": "purge", "through_seq": 3, "through_hash": made[-1]["hash"], "count": 3,
                      "older_than": (later - timedelta(days=5)).isoformat(timespec="microseconds"),
                      "retention_s": 5 * 86400, "audit": {"seq": 4, "prev_hash": made[-1]["hash"]}}
    # every append-only trigger is back after the purge
    log.checkpoint()
    con = sqlite3.connect(tmp_path / "audit.db")
    assert sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")) == TRIGGER_NAMES
    for table in ("audit", "evidence", "checkpoints"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(f"DELETE FROM {table}")
    con.close()
    with pytest.raises(AuditError, match=r"^purging needs the evidence signing key \(the purge record is signed\)$"):
        AuditLog(tmp_path / "audit.db").purge(0)
    log.close()


def test_purge_cuts_off_in_utc_whatever_the_hosts_zone(tmp_path, monkeypatch):
    import time as _time
    log, _, _ = _signed(tmp_path, 2)
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9: a local-time cutoff would be 9 hours late
    _time.tzset()
    try:
        assert log.purge(3600) is None  # records a moment old are not an hour old
    finally:
        monkeypatch.undo()
        _time.tzset()
    log.close()


def test_a_purge_that_fails_half_way_leaves_every_record_and_a_log_that_verifies(tmp_path):
    log, signer, made = _signed(tmp_path, 3)
    con = sqlite3.connect(tmp_path / "audit.db")  # a fault while deleting (here: a trigger purge does not lift)
    con.execute("CREATE TRIGGER fault BEFORE DELETE ON evidence BEGIN SELECT RAISE(ABORT, 'disk fault'); END")
    con.commit()
    con.close()
    with pytest.raises(sqlite3.DatabaseError, match="disk fault"):
        log.purge(0, now=datetime.now(timezone.utc) + timedelta(days=1))
    assert [r["kind"] for r in log.records()] == ["verify"] * 3 + ["purge"]  # nothing deleted
    report = check(tmp_path / "audit.db", signer.trusted())
    assert report.ok, report.problems  # the purge names record 3, which is still there and unchanged
    assert report.purged_through == 3
    con = sqlite3.connect(tmp_path / "audit.db")
    assert sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                            " AND name != 'fault'")) == TRIGGER_NAMES
    con.close()
    log.close()


def test_verify_checks_signatures_against_the_keys_given(tmp_path):
    log, signer, _ = _signed(tmp_path, 2)
    other = tmp_path / "other.json"
    evidence_keys.create(other)
    assert log.verify(signer.trusted()) == 2
    with pytest.raises(AuditError, match="not among the trusted keys"):
        log.verify(Signer.load(other).trusted())
    log.close()


def _no_checkpoint_log(tmp_path, name, n=3, purge=False):
    key_file = tmp_path / f"{name}.json"
    evidence_keys.create(key_file)
    log = AuditLog(tmp_path / f"{name}.db", ["m:1"], signer=Signer.load(key_file))
    for i in range(n):
        log.verify_decision(_Decision(i), "alice")
    if purge:
        log.purge(0, now=datetime.now(timezone.utc) + timedelta(days=1))
    log.close()
    return tmp_path / f"{name}.db"


def test_records_and_purges_signed_by_an_untrusted_key_are_named(tmp_path):
    evidence_keys.create(tmp_path / "ours.json")
    ours = Signer.load(tmp_path / "ours.json").trusted()
    problems = check(_no_checkpoint_log(tmp_path, "a"), ours).problems
    assert problems[0].startswith("record 1: its evidence ") and "not among the trusted keys" in problems[0]
    problems = check(_no_checkpoint_log(tmp_path, "b", purge=True), ours).problems
    assert problems[0].startswith("record 4 (a purge): ") and "not among the trusted keys" in problems[0]


def test_a_checkpoint_is_checked_for_its_key_its_type_and_its_columns(tmp_path):
    log, signer, made = _signed(tmp_path, 3)
    log.checkpoint()
    log.checkpoint(force=True)
    log.close()
    other = tmp_path / "other.json"
    evidence_keys.create(other)
    problems = check(tmp_path / "audit.db", Signer.load(other).trusted()).problems
    assert problems[0].startswith("checkpoint 1 (") and "not among the trusted keys" in problems[0]
    # an evidence token put where a checkpoint belongs: the right key, the wrong type
    _edit(tmp_path / "audit.db", ("UPDATE checkpoints SET jws = ? WHERE id = 1", (made[0]["evidence"],)))
    report = check(tmp_path / "audit.db", signer.trusted())
    assert report.problems[0].startswith("checkpoint 1 (") and report.problems[0].endswith(
        "typ 'mobidem-evidence+jwt' is not 'mobidem-checkpoint+jwt'")
    assert report.checkpoints == 2  # the others are still counted
    _edit(tmp_path / "audit.db", ("UPDATE checkpoints SET size = size - 1 WHERE id = 2",))  # size alone edited
    report = check(tmp_path / "audit.db", signer.trusted())
    assert any(p.startswith("checkpoint 2 (") and p.endswith("was edited: its columns differ from what it signed")
               for p in report.problems)
    assert report.checkpoints == 1


def test_a_log_cut_and_re_grown_is_found_and_equal_checkpoints_are_fine(tmp_path):
    log, signer, made = _signed(tmp_path, 3)
    log.checkpoint()
    log.checkpoint(force=True)  # two checkpoints of the same head: fine
    assert check(tmp_path / "audit.db", signer.trusted()).ok
    token = signer.sign(evidence_checkpoints.claims(2, made[1]["hash"]), evidence_checkpoints.TYP)
    _edit(tmp_path / "audit.db", ("INSERT INTO checkpoints (size, head, time, kid, jws) VALUES (2, ?, 't', ?, ?)",
                                  (made[1]["hash"], signer.kid, token)))
    problems = check(tmp_path / "audit.db", signer.trusted()).problems
    assert problems == ["checkpoint 4 (t) covers 2 records, fewer than checkpoint 2 before it (3): the log was cut "
                        "and re-grown"]
    log.close()


def test_a_log_from_before_evidence_still_verifies(tmp_path):
    path = tmp_path / "audit.db"
    _log(path, 3).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE evidence")
    con.execute("DROP TABLE checkpoints")
    con.commit()
    con.close()
    report = check(path)
    assert report.ok and report.records == 3 and report.checkpoints == 0 and report.uncovered == 3


def test_not_an_audit_log(tmp_path):
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    assert check(tmp_path / "other.db").problems == [f"{tmp_path / 'other.db'} holds no audit table: not a mobidem "
                                                     "audit log"]


def test_an_unsigned_log_checked_with_keys_says_what_is_missing(tmp_path):
    _log(tmp_path / "audit.db", 2).close()
    assert check(tmp_path / "audit.db").ok
    assert check(tmp_path / "audit.db", {}).problems == [
        "the log has no checkpoint signed by a trusted key: its tail cannot be checked",
        "no record carries evidence signed by a trusted key"]


def test_a_log_signed_from_part_way_on(tmp_path):
    """Records made before a signing key was configured carry no evidence; from the first signed one on,
    every record must. A checkpoint still pins the unsigned part."""
    path = tmp_path / "audit.db"
    _log(path, 2).close()
    evidence_keys.create(tmp_path / "k.json")
    signer = Signer.load(tmp_path / "k.json")
    log = AuditLog(path, ["m:1"], signer=signer)
    log.checkpoint()
    log.verify_decision(_Decision(0), "alice")
    log.close()
    report = check(path)
    assert report.ok and report.signed_records == 1 and report.checkpointed == 2
    assert check(path, signer.trusted()).problems[0] == \
        "record 1 has no signed evidence (inserted without the signing key?)"
    # record 1 edited and everything after re-chained by someone without the key: the checkpoint catches it
    _rechain(path, {0: {"decision": "no_match"}}, left_join=True)
    problems = check(path).problems
    assert problems[0].startswith("record 2 is not the record checkpoint 1 (") and problems[0].endswith(
        "signed: the log was rewritten up to there")


def test_a_forged_unsigned_row_after_signed_ones_is_found_without_keys(tmp_path):
    log, signer, _ = _signed(tmp_path, 2)
    log.close()
    con = _open_unprotected(tmp_path / "audit.db")
    con.row_factory = sqlite3.Row
    last = dict(con.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone())
    row = dict(last, seq=3, request_id="forged", prev_hash=last["hash"])
    row["hash"] = _chain_hash(last["hash"], row, None)
    con.execute(f"INSERT INTO audit ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    con.commit()
    con.close()
    assert check(tmp_path / "audit.db").problems[0] == "record 3 has no signed evidence (inserted without the " \
                                                       "signing key?)"


@pytest.mark.parametrize("sql, message", [
    ("DELETE FROM audit WHERE seq = 2",
     "record 2 is missing (deleted): the log goes from record 1 to record 3"),
    ("DELETE FROM audit WHERE seq <= 2",
     "records 1..2 are missing: the log starts at record 3 and no signed purge record covers them"),
    ("UPDATE audit SET prev_hash = hash WHERE seq = 1",
     "record 1 does not follow the start of the log: its prev_hash is not the hash before it (a record was "
     "inserted, deleted or reordered here)"),
    ("UPDATE audit SET prev_hash = hash WHERE seq = 2",
     "record 2 does not follow record 1: its prev_hash is not the hash before it (a record was inserted, deleted "
     "or reordered here)"),
])
def test_each_kind_of_break_is_named(tmp_path, sql, message):
    problems = check(_tampered(tmp_path, sql).path).problems
    assert problems == [message]


def test_a_record_removed_and_the_rest_renumbered_and_re_chained_is_found(tmp_path):
    """Someone without the key deletes record 2, renumbers 3 and 4 and recomputes every hash: each
    evidence still names the position it was signed at."""
    log, signer, _ = _signed(tmp_path, 4)
    log.close()
    con = _open_unprotected(tmp_path / "audit.db")
    con.row_factory = sqlite3.Row
    con.execute("DELETE FROM audit WHERE seq = 2")
    con.execute("DELETE FROM evidence WHERE seq = 2")
    for seq in (3, 4):
        con.execute("UPDATE audit SET seq = ? WHERE seq = ?", (seq - 1, seq))
        con.execute("UPDATE evidence SET seq = ? WHERE seq = ?", (seq - 1, seq))
    con.commit()
    con.close()
    _rechain(tmp_path / "audit.db")
    problems = check(tmp_path / "audit.db").problems
    assert problems == ["record 2 differs from its signed evidence (its position in the chain): edited and re-chained"]


def test_an_edit_of_two_signed_fields_names_both(tmp_path):
    log, signer, _ = _signed(tmp_path, 2)
    log.close()
    _rechain(tmp_path / "audit.db", {0: {"decision": "no_match", "distance": 0.99}})
    problems = check(tmp_path / "audit.db").problems
    assert problems == ["record 1 differs from its signed evidence (decision, distance): edited and re-chained"]
