"""A gateway's index load from PostgreSQL at scale (issue 18): every template read from the database against
an index snapshot file plus the changes after it (mobidem/gallery/snapshot.py). Writes
docs/SCALING_SNAPSHOT.json and prints the figures.

    nice .venv/bin/python bench/gallery_snapshot.py --size 10000000 [--later 100] [--ann ivf]

A throwaway PostgreSQL cluster (Debian's, as in the tests) gets ``--size`` identities of one template each,
sealed with a template key as a production gallery is (AES-256-GCM per row, gallery/crypto.py), bulk-loaded
with COPY (the embeddings are Gaussian: a load's time does not depend on their values), then one enrolment
through the store so that the change log has a change to end at. Then, each in a fresh process as a
gateway starts:

1. ``Gallery.from_url``: every template streamed from the database and opened (what a gateway did before;
   with ``--ann ivf`` the approximate index is trained too), then ``write_snapshot`` (what `mobidem gallery
   snapshot` or a gateway's timer does);
2. ``--later`` enrolments through the store (changes the snapshot does not hold);
3. ``Gallery.from_url(..., snapshot_path=...)``: the snapshot read, then the later changes from the log.

Each child reports its wall time, its peak resident memory and the index's size. The PostgreSQL cluster and
the snapshot live in a temporary directory on this machine's disk; the snapshot is read right after it was
written, so it mostly comes from the page cache (a gateway on a fresh node reads it from its disk or volume).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL, VERSION = "face_multitask", "1"


def child(mode: str, url: str, key_hex: str, path: str, ann: str = "", size: str = "0") -> None:
    """One gateway start, as its own process; prints a JSON line."""
    from mobidem.gallery import AnnConfig, Gallery

    key, size = bytes.fromhex(key_hex), int(size)
    t = time.perf_counter()
    g = Gallery.from_url(url, template_key=key, snapshot_path=path if mode == "snapshot" else "",
                         ann=AnnConfig(kind=ann, min_templates=min(200_000, max(1000, size))) if ann else None)
    out = {"mode": mode, "load_s": round(time.perf_counter() - t, 1), "loaded_from": g.loaded_from,
           "refused": g.snapshot_refused, "templates": len(g.index), "applied_seq": g.follower.applied_seq}
    if ann:
        accel = g.index._segments[(MODEL, VERSION)].accel
        out["ann"] = {"kind": ann, "nlist": int(accel.ivf.nlist), "in_index": int(accel.ivf.ntotal)}
    if mode == "full":
        t = time.perf_counter()
        seq, size = g.write_snapshot(path)
        out.update(write_s=round(time.perf_counter() - t, 1), snapshot_mb=round(size / 1e6), snapshot_seq=seq)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    g.close()
    print(json.dumps(out), flush=True)


def run_child(mode: str, url: str, key: bytes, path: Path, ann: str, size: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, url, key.hex(), str(path), ann, str(size)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "server")))
    if done.returncode:
        raise SystemExit(f"{mode} child failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--later", type=int, default=100, help="enrolments after the snapshot, read from the log")
    ap.add_argument("--out", default=str(REPO / "docs" / "SCALING_SNAPSHOT.json"))
    ap.add_argument("--ann", default="", help="gallery_ann for the gateways (ivf: the approximate index is trained "
                                               "by the first and travels in the snapshot)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # MODE URL KEY PATH [ANN [SIZE]]
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "server"))
    from conftest import PostgresCluster  # the tests' throwaway cluster (initdb + pg_ctl, loopback)

    import psycopg

    from mobidem.gallery import Gallery, TemplateIn
    from mobidem.gallery.backends import open_store
    from mobidem.gallery.crypto import TemplateCipher

    rng = np.random.default_rng(18)
    key = secrets.token_bytes(32)
    cipher = TemplateCipher(key)
    root = Path(tempfile.mkdtemp(prefix="mobidem-bench-snap-"))
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = PostgresCluster(root)
    snap = root / "index.snap"
    result: dict = {"size": args.size, "later": args.later, "sealed": True, "ann": args.ann}
    try:
        url = cluster.database()
        Gallery.from_url(url, template_key=key).close()  # the schema
        t = time.perf_counter()
        now = time.time()
        with psycopg.connect(url) as c:
            with c.cursor().copy("COPY identities (id, display_name, metadata, created_at, updated_at) FROM STDIN") as cp:
                for i in range(args.size):
                    cp.write_row((f"p{i:09d}", f"person {i}", "{}", now, now))
            with c.cursor().copy("COPY templates (id, identity_id, embedding, sealing, dim, model_name, model_version, "
                                 "created_at) FROM STDIN") as cp:
                for start in range(0, args.size, 100_000):
                    block = rng.standard_normal((min(100_000, args.size - start), 128), dtype=np.float32)
                    block *= np.float32(0.1)
                    for j, e in enumerate(block):
                        tid, iid = f"t{start + j:09d}", f"p{start + j:09d}"
                        cp.write_row((tid, iid, *cipher.seal(e.tobytes(), tid, iid), 128, MODEL, VERSION, now))
            c.commit()
        result["copy_s"] = round(time.perf_counter() - t, 1)
        print(f"COPY of {args.size:,} sealed templates: {result['copy_s']} s", flush=True)
        store = open_store(url, template_key=key)
        store.enroll("first", "First", None, [TemplateIn(rng.standard_normal(128).astype(np.float32) * 0.1,
                                                         MODEL, VERSION, 0.5)])
        result["full"] = run_child("full", url, key, snap, args.ann, args.size)
        for i in range(args.later):
            store.enroll(f"later{i}", f"Later {i}", None, [TemplateIn(
                rng.standard_normal(128).astype(np.float32) * 0.1, MODEL, VERSION, 0.5)])
        store.close()
        result["snapshot"] = run_child("snapshot", url, key, snap, args.ann, args.size)
        expected = args.size + 1 + args.later
        assert result["snapshot"]["loaded_from"] == "snapshot", result["snapshot"]
        assert result["snapshot"]["templates"] == expected and result["full"]["templates"] == args.size + 1
        result["speedup"] = round(result["full"]["load_s"] / max(result["snapshot"]["load_s"], 0.1), 1)
        result["machine"] = f"{os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f}"
        result["command"] = " ".join(["bench/gallery_snapshot.py", *sys.argv[1:]])
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"\n{args.size:,} templates: full load {result['full']['load_s']} s (peak RSS "
              f"{result['full']['peak_rss_mb']} MB); snapshot written in {result['full']['write_s']} s "
              f"({result['full']['snapshot_mb']} MB); start from the snapshot + {args.later} later changes "
              f"{result['snapshot']['load_s']} s (peak RSS {result['snapshot']['peak_rss_mb']} MB): "
              f"{result['speedup']}x faster")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
