"""Signed evidence and the tamper-evident audit log on a real server (real managed Triton, real photos).

Expected values come from the issue and docs/SECURITY.md, not from the code under test: the evidence
is checked with PyJWT (an independent JWS implementation) against the JWKS the server publishes,
and every tampering is made by hand in SQLite on a fresh copy of the database, then judged by
`mobidem audit verify` as a user runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import jwt  # PyJWT
import pytest

from conftest import REPO, person_photos, spawn_server
from mobidem import auth
from mobidem.client import MobidemClient, to_image
from mobidem.v1 import mobidem_pb2 as pb

MANIFEST = json.loads((REPO / "model_repository" / "MANIFEST.json").read_text())["models"]
CALIBRATION = json.loads((REPO / "server" / "mobidem" / "data" / "calibration.json").read_text())["operating_points"]
FIELDS = ("time", "kind", "caller", "peer", "request_id", "identity_ids", "matched_id", "decision", "distance",
          "threshold", "operating_point", "far_target", "embedder", "models")  # as docs/SECURITY.md lists them


def mobidem(*args, env=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MOBIDEM_")}
    return subprocess.run([sys.executable, "-m", "mobidem.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=dict(environ, **(env or {})))


def pyjwt_keys(jwks: dict) -> dict:
    return {k["kid"]: jwt.PyJWK(k).key for k in jwks["keys"]}


def pyjwt_claims(token: str, jwks: dict) -> dict:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["typ"] == "mobidem-evidence+jwt"
    return jwt.decode(token, pyjwt_keys(jwks)[header["kid"]], algorithms=["EdDSA"])


@pytest.fixture(scope="module")
def photos(faces):
    obama = person_photos(faces, "barack_obama")
    return {"a": obama[0], "b": obama[1], "other": person_photos(faces, "colin_powell")[0]}


@pytest.fixture(scope="module")
def decided(start_server, photos, tmp_path_factory):
    """A server with API keys; one enrolment, three Verify and one Identify decisions; then stopped
    (its shutdown checkpoint written). Returns what a partner saw and where the data is."""
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    admin = auth.add_key(keys, "admin", "admin")
    partner = auth.add_key(keys, "partner", "verify")
    server = start_server(api_keys_file=keys, audit_checkpoint_interval_s=3600)
    with server.client(api_key=admin) as c:
        identity = c.enroll("Barack Obama", [photos["a"]], identity_id="obama").identity.id
    doc = hashlib.sha256(b"the contract being signed").hexdigest()
    with server.client(api_key=partner) as c:
        verify = c.gallery.Verify(pb.VerifyRequest(probe=to_image(photos["b"]), identity_id=identity,
                                                   transaction_ref=doc))
        pair = c.gallery.Verify(pb.VerifyRequest(probe=to_image(photos["other"]), image=to_image(photos["a"]),
                                                 transaction_ref="tx-2"))
        again = c.gallery.Verify(pb.VerifyRequest(probe=to_image(photos["b"]), identity_id=identity))
        ident = c.gallery.Identify(pb.IdentifyRequest(probe=to_image(photos["b"]), top_k=3, transaction_ref=doc),
                                   )
        rpc_keys = c.gallery.GetEvidenceKeys(pb.GetEvidenceKeysRequest())
        with pytest.raises(grpc.RpcError) as err:
            c.gallery.Verify(pb.VerifyRequest(probe=to_image(photos["b"]), identity_id=identity,
                                              transaction_ref="x" * 257))
    http_jwks = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{server.server.metrics_port}/.well-known/jwks.json", timeout=10).read())
    data = server.server.settings.data_path
    server.stop()
    return {"data": data, "identity": identity, "doc": doc, "verify": verify, "pair": pair, "again": again,
            "identify": ident, "rpc_keys": rpc_keys, "http_jwks": http_jwks, "oversized": err.value}


# --------------------------------------------------------------------------- evidence


def test_evidence_is_returned_signed_and_verifies_with_an_independent_jws_library(decided, photos):
    jwks = decided["http_jwks"]
    assert json.loads(decided["rpc_keys"].jwks) == jwks  # the RPC and the HTTP port publish the same keys
    assert decided["rpc_keys"].active_kid in {k["kid"] for k in jwks["keys"]}
    assert all(set(k) >= {"kty", "crv", "x", "kid"} and "d" not in k for k in jwks["keys"])
    v = decided["verify"]
    claims = pyjwt_claims(v.evidence, jwks)
    assert claims["jti"] == v.evidence_record_id and len(v.evidence_record_id) >= 16
    assert claims["kind"] == "verify" and claims["decision"] == "match" and v.match
    assert claims["distance"] == pytest.approx(v.distance, rel=1e-6)
    assert claims["threshold"] == pytest.approx(CALIBRATION["far_1e-3"]["threshold"], rel=1e-6)
    assert claims["operating_point"] == "far_1e-3" and claims["far_target"] == pytest.approx(1e-3)
    assert claims["identity_id"] == decided["identity"] and claims["caller_key"] == "partner"
    assert claims["transaction_ref"] == decided["doc"]
    assert claims["images"] == [{"role": "probe", "sha256": hashlib.sha256(photos["b"].read_bytes()).hexdigest()}]
    models = {m["name"]: m for m in claims["models"]}
    embedder, version = v.embedder.split(":")
    assert models[embedder]["version"] == version
    assert models[embedder]["onnx_sha256"] == MANIFEST[embedder]["sha256"]
    assert abs(claims["iat"] - time.time()) < 600
    assert not ({"embedding", "display_name", "image"} & set(claims))  # no biometric data, no names

    pair = pyjwt_claims(decided["pair"].evidence, jwks)
    assert pair["decision"] == "no_match" and not decided["pair"].match and pair["transaction_ref"] == "tx-2"
    assert [i["role"] for i in pair["images"]] == ["probe", "reference"]
    assert pair["images"][1]["sha256"] == hashlib.sha256(photos["a"].read_bytes()).hexdigest()
    assert pyjwt_claims(decided["again"].evidence, jwks)["transaction_ref"] == ""

    i = decided["identify"]
    ic = pyjwt_claims(i.evidence, jwks)
    assert ic["kind"] == "identify" and ic["decision"] == "known" and ic["matched_id"] == decided["identity"]
    assert ic["jti"] == i.evidence_record_id and ic["transaction_ref"] == decided["doc"]
    assert ic["distance"] == pytest.approx(i.match.distance, rel=1e-6)


def test_an_oversized_transaction_ref_is_invalid_argument(decided):
    err = decided["oversized"]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "transaction_ref" in err.details() and "256" in err.details() and "x" * 257 not in err.details()


def test_one_changed_claim_fails_verification(decided, tmp_path):
    token = decided["verify"].evidence
    head, body, sig = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["decision"] = "no_match"
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), sig])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, pyjwt_keys(decided["http_jwks"])[jwt.get_unverified_header(token)["kid"]],
                   algorithms=["EdDSA"])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(decided["http_jwks"]))
    good = mobidem("evidence", "verify", token, "--jwks", jwks)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["jti"] == decided["verify"].evidence_record_id
    bad = mobidem("evidence", "verify", forged, "--jwks", jwks)
    assert bad.returncode == 1 and "signature does not verify" in bad.stderr
    pem = tmp_path / "key.pem"
    pem.write_text(mobidem("evidence", "jwks", decided["data"] / "evidence-keys.json", "--pem").stdout)
    record = tmp_path / "record.jws"
    record.write_text(decided["identify"].evidence)
    assert mobidem("evidence", "verify", record, "--public-key", pem).returncode == 0


def test_the_evidence_is_stored_with_its_audit_record(decided):
    db = sqlite3.connect(decided["data"] / "audit.db")
    stored = dict(db.execute("SELECT record_id, jws FROM evidence"))
    for name in ("verify", "pair", "again", "identify"):
        assert stored[decided[name].evidence_record_id] == decided[name].evidence
    assert (decided["data"] / "evidence-keys.json").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- the audit log, tampered


def test_audit_verify_passes_on_the_servers_log(decided, tmp_path):
    r = mobidem("audit", "verify", "--data-dir", decided["data"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "intact: 4 record(s)" in r.stdout and "0 record(s) after the last checkpoint" in r.stdout
    assert "signatures checked" in r.stdout


def _copy(decided, tmp_path) -> Path:
    copy = tmp_path / "data"
    copy.mkdir()
    for name in os.listdir(decided["data"]):
        if name.startswith(("audit.db", "evidence-keys")):
            shutil.copy(decided["data"] / name, copy / name)
    return copy


def _sql(db: Path, *statements, params=()):
    con = sqlite3.connect(db)
    for t in ("audit", "evidence", "checkpoints"):  # someone with write access to the file
        for op in ("update", "delete"):
            con.execute(f"DROP TRIGGER IF EXISTS {t}_no_{op}")
    for s in statements:
        con.execute(s, params)
    con.commit()
    con.close()


def _seq(db: Path, record_id: str) -> int:
    return sqlite3.connect(db).execute("SELECT seq FROM evidence WHERE record_id = ?", (record_id,)).fetchone()[0]


def _tampered_verdict(data: Path, *extra) -> subprocess.CompletedProcess:
    r = mobidem("audit", "verify", "--data-dir", data, *extra)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT intact" in r.stdout
    return r


def test_a_changed_distance_is_found(decided, tmp_path):
    data = _copy(decided, tmp_path)
    seq = _seq(data / "audit.db", decided["verify"].evidence_record_id)
    _sql(data / "audit.db", "UPDATE audit SET distance = distance + 0.5 WHERE seq = ?", params=(seq,))
    assert f"record {seq} was edited" in _tampered_verdict(data).stdout


def test_a_deleted_row_is_found(decided, tmp_path):
    data = _copy(decided, tmp_path)
    _sql(data / "audit.db", "DELETE FROM audit WHERE seq = 2", "DELETE FROM evidence WHERE seq = 2")
    assert "record 2 is missing" in _tampered_verdict(data).stdout


def test_two_swapped_rows_are_found(decided, tmp_path):
    data = _copy(decided, tmp_path)
    _sql(data / "audit.db", "UPDATE audit SET seq = 100 WHERE seq = 2", "UPDATE audit SET seq = 2 WHERE seq = 3",
         "UPDATE audit SET seq = 3 WHERE seq = 100", "UPDATE evidence SET seq = 100 WHERE seq = 2",
         "UPDATE evidence SET seq = 2 WHERE seq = 3", "UPDATE evidence SET seq = 3 WHERE seq = 100")
    assert "record 2 does not follow record 1" in _tampered_verdict(data).stdout


def test_a_forged_row_is_found(decided, tmp_path):
    """A forged decision appended with a correct chain hash (the formula is public): it has no
    evidence signed by the server's key."""
    data = _copy(decided, tmp_path)
    con = sqlite3.connect(data / "audit.db")
    con.row_factory = sqlite3.Row
    last = dict(con.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone())
    con.close()
    row = dict(last, seq=last["seq"] + 1, request_id="forged", decision="match", prev_hash=last["hash"])
    body = json.dumps({k: row[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    row["hash"] = hashlib.sha256((last["hash"] + body).encode()).hexdigest()
    _sql(data / "audit.db", f"INSERT INTO audit ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
         params=list(row.values()))
    assert f"record {row['seq']} has no signed evidence" in _tampered_verdict(data).stdout


def test_truncated_last_rows_are_found(decided, tmp_path):
    data = _copy(decided, tmp_path)
    _sql(data / "audit.db", "DELETE FROM audit WHERE seq > 2", "DELETE FROM evidence WHERE seq > 2")
    out = _tampered_verdict(data).stdout
    assert "checkpoint" in out and "records 3..4 were cut off" in out


def test_a_log_rechained_and_resigned_by_another_key_is_found(decided, tmp_path):
    """The whole file replaced by one its forger built with mobidem's own code and a key of its own."""
    from mobidem.audit import AuditLog
    from mobidem.evidence import keys
    from mobidem.evidence.records import TYP

    data = tmp_path / "forged"
    data.mkdir()
    keys.create(tmp_path / "forger.json")
    forged = AuditLog(data / "audit.db", signer=keys.Signer.load(tmp_path / "forger.json"))
    forged.checkpoint()
    original = sqlite3.connect(decided["data"] / "audit.db")
    original.row_factory = sqlite3.Row
    for row in original.execute("SELECT a.*, e.jws FROM audit a JOIN evidence e USING (seq) ORDER BY seq"):
        claims = json.loads(jwt.utils.base64url_decode(row["jws"].split(".")[1]))
        fields = {k: row[k] for k in FIELDS}
        fields["distance"] = fields["distance"] + 0.5 if fields["distance"] is not None else None  # the edit

        def evidence(record, record_id, seq, claims=claims, fields=fields):
            return dict(claims, jti=record_id, distance=fields["distance"],
                        audit={"seq": seq, "prev_hash": record["prev_hash"]}), TYP
        forged.append(evidence, **fields)
    forged.checkpoint()
    forged.close()
    assert mobidem("audit", "verify", "--audit-log", data / "audit.db",
                   "--jwks", tmp_path / "forger.json").returncode == 0  # consistent in itself
    pem = tmp_path / "ours.pem"
    pem.write_text(mobidem("evidence", "jwks", decided["data"] / "evidence-keys.json", "--pem").stdout)
    r = mobidem("audit", "verify", "--audit-log", data / "audit.db", "--public-key", pem)
    assert r.returncode == 1 and "not among the trusted keys" in r.stdout and "checkpoint 1" in r.stdout
    # the same file dropped into the server's data directory is judged by the key file there
    copy = _copy(decided, tmp_path)
    shutil.copy(data / "audit.db", copy / "audit.db")
    assert "not among the trusted keys" in _tampered_verdict(copy).stdout


# --------------------------------------------------------------------------- kill -9


def test_kill_9_during_a_burst_loses_no_acknowledged_decision(triton, tmp_path, photos):
    data = tmp_path / "data"
    proc, target = spawn_server(triton.grpc_url, data, tmp_path / "serve1.log", audit_checkpoint_interval_s=0.5)
    acked: list[str] = []
    stop = threading.Event()
    probe, reference = to_image(photos["b"]), to_image(photos["a"])

    def burst():
        with MobidemClient(target) as c:
            while not stop.is_set():
                try:
                    r = c.gallery.Verify(pb.VerifyRequest(probe=probe, image=reference), timeout=30)
                except grpc.RpcError:
                    return  # the server died under this call: not acknowledged
                acked.append(r.evidence_record_id)
    try:
        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        began = time.monotonic()
        deadline = began + 120
        while (len(acked) < 12 or time.monotonic() < began + 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: four calls in flight
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 12
    periodic = sqlite3.connect(data / "audit.db").execute("SELECT max(size) FROM checkpoints").fetchone()[0]
    assert periodic > 0  # a checkpoint every 0.5 s during the burst (the start one covered 0 records)
    proc, target = spawn_server(triton.grpc_url, data, tmp_path / "serve2.log")
    try:
        with MobidemClient(target) as c:
            after = c.gallery.Verify(pb.VerifyRequest(probe=probe, image=reference), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    r = mobidem("audit", "verify", "--data-dir", data)
    assert r.returncode == 0, r.stdout + r.stderr
    stored = {row[0] for row in sqlite3.connect(data / "audit.db").execute("SELECT record_id FROM evidence")}
    assert set(acked) <= stored and after.evidence_record_id in stored
