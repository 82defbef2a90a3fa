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
