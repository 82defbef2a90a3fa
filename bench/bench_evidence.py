"""Cost of the evidence and the tamper-evident audit log (issue 16): writes docs/EVIDENCE_BENCH.md.

1. Per decision, signing and chaining alone (claims, Ed25519 compact JWS, chain hash): target < 1 ms.
2. Per decision, the durable append as the server does it (the above plus one SQLite transaction with
   synchronous=FULL, i.e. an fsync, on this machine's disk).
3. `audit verify` (mobidem.audit.check) on a log of --records synthetic decisions made with the real
   chaining and signing code (mobidem.audit._hash, mobidem.evidence), with and without checking
   every signature.

    .venv/bin/python bench/bench_evidence.py [--records 1000000] [--out docs/EVIDENCE_BENCH.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from mobidem import audit  # noqa: E402
from mobidem.evidence import keys, records  # noqa: E402

MODELS = [{"name": "face_multitask", "version": "1", "onnx_sha256": "43" * 32},
          {"name": "blazeface_short", "version": "1", "onnx_sha256": "26" * 32}]
IMAGES = [{"role": "probe", "sha256": "a7" * 32}, {"role": "reference", "sha256": "b8" * 32}]


class Decision:  # what mobidem.identity.Decision carries
    match, distance, threshold, operating_point, far_target, embedder = True, 0.3846, 0.5840, "far_1e-3", 1e-3, \
        "face_multitask:1"

    def __init__(self):
        self.request_id = uuid.uuid4().hex


def fields(i: int) -> dict:
    return {"time": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "kind": "verify",
            "caller": "partner", "peer": "ipv4:127.0.0.1:5000", "request_id": uuid.uuid4().hex,
            "identity_ids": '["obama"]', "matched_id": "obama", "decision": "match", "distance": 0.3 + (i % 100) / 1000,
            "threshold": 0.584, "operating_point": "far_1e-3", "far_target": 0.001, "embedder": "face_multitask:1",
            "models": '["blazeface_short:1","face_multitask:1"]'}


def sign_and_chain(signer, prev: str, seq: int, record: dict) -> tuple[str, str, str]:
    """Exactly the steps of AuditLog.append between reading the head and the INSERT."""
    record = dict(record, prev_hash=prev)
    record_id = uuid.uuid4().hex
    claims = records.decision_claims(dict(record, identity_id="obama"), record_id, seq, MODELS, "partner", IMAGES,
                                     "7504217f4f52db720816370e5104af536fcc47ca35eaf56d131c43db64dafd4f")
    token = signer.sign(claims, records.TYP)
    return record_id, token, audit._hash(prev, record, token)


def per_decision(signer, n: int) -> list[float]:
    out, prev = [], audit.GENESIS
    for i in range(n):
        record = fields(i)
        t = time.perf_counter()
        _, _, prev = sign_and_chain(signer, prev, i + 1, record)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def durable(signer, tmp: Path, n: int) -> list[float]:
    log = audit.AuditLog(tmp / "durable.db", ["face_multitask:1"], signer=signer, model_info=MODELS)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        log.verify_decision(Decision(), "obama", IMAGES, "doc")
        out.append((time.perf_counter() - t) * 1e3)
    log.close()
    return out


def synthetic(signer, path: Path, n: int) -> float:
    """n records made with the real chaining and signing code, written in large transactions."""
    log = audit.AuditLog(path, signer=signer)
    log.checkpoint()
    log.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = OFF")  # generation only; the server's own appends are FULL
    cols = ("seq", *audit.FIELDS, "prev_hash", "hash")
    insert = f"INSERT INTO audit ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    prev, t0 = audit.GENESIS, time.perf_counter()
    batch_a, batch_e = [], []
    for seq in range(1, n + 1):
        record = fields(seq)
        record_id, token, digest = sign_and_chain(signer, prev, seq, record)
        batch_a.append((seq, *(record[f] for f in audit.FIELDS), prev, digest))
        batch_e.append((seq, record_id, token))
        prev = digest
        if len(batch_a) == 20000 or seq == n:
            con.execute("BEGIN")
            con.executemany(insert, batch_a)
            con.executemany("INSERT INTO evidence (seq, record_id, jws) VALUES (?, ?, ?)", batch_e)
            con.execute("COMMIT")
            batch_a, batch_e = [], []
    con.close()
    log = audit.AuditLog(path, signer=signer)
    log.checkpoint()
    log.close()
    return time.perf_counter() - t0


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs):.3f} ms, p99 {xs[int(len(xs) * 0.99) - 1]:.3f} ms, "
            f"mean {statistics.fmean(xs):.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--durable", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "docs" / "EVIDENCE_BENCH.md"))
    ap.add_argument("--workdir", help="where the synthetic log goes (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        keys.create(tmp / "k.json")
        signer = keys.Signer.load(tmp / "k.json")
        per_decision(signer, 200)  # warm-up
        alone = per_decision(signer, args.decisions)
        print("sign + chain:", stats(alone), flush=True)
        dur = durable(signer, tmp, args.durable)
        print("durable append:", stats(dur), flush=True)
        gen_s = synthetic(signer, tmp / "big.db", args.records)
        size_mb = (tmp / "big.db").stat().st_size / 1e6
        print(f"generated {args.records} records in {gen_s:.1f} s ({size_mb:.0f} MB)", flush=True)
        t = time.perf_counter()
        chain = audit.check(tmp / "big.db")
        chain_s = time.perf_counter() - t
        assert chain.ok and chain.records == args.records, chain.problems
        print(f"audit verify, chain only: {chain_s:.1f} s", flush=True)
        t = time.perf_counter()
        full = audit.check(tmp / "big.db", signer.trusted())
        full_s = time.perf_counter() - t
        assert full.ok and full.signed_records == args.records, full.problems
        print(f"audit verify, every signature: {full_s:.1f} s", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    from cryptography import __version__ as crypto_version

    text = f"""# Evidence and audit log benchmark

Written by `bench/bench_evidence.py` ({datetime.now(timezone.utc).strftime('%Y-%m-%d')}) on {os.cpu_count()} cores
of {cpu}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, cryptography {crypto_version}.
Issue 16's target: signing and chaining under 1 ms per decision on these cores.

| what | per decision |
|---|---|
| sign + chain (claims, Ed25519 compact JWS, chain hash), {args.decisions} decisions | {stats(alone)} |
| durable append as the server does it (the above + one SQLite transaction, `synchronous=FULL`: an fsync), {args.durable} decisions | {stats(dur)} |

The signing and chaining meet the target; the durable append's cost is the disk's fsync (the
decision is on disk before it is returned), which the audit log had before evidence existed.

`audit verify` (`mobidem audit verify`, i.e. `mobidem.audit.check`) on {args.records:,} synthetic decisions made
with the real chaining and signing code ({size_mb:.0f} MB database, generated in {gen_s:.0f} s), one process:

| check | time | per record |
|---|---|---|
| hash chain, evidence bound to its row, checkpoints (no signature checked) | {chain_s:.1f} s | {chain_s / args.records * 1e6:.1f} µs |
| the same and every Ed25519 signature (records and checkpoints) | {full_s:.1f} s | {full_s / args.records * 1e6:.1f} µs |
"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
