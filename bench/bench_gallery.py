"""Gallery benchmark (not a test): 1:N identify latency and enrol throughput.

Usage:
    .venv/bin/python bench/bench_gallery.py [--sizes 1000,10000,100000] [--queries 200]
                                            [--enrolls 500] [--dir /tmp/somewhere] [--threads N]

Synthetic data: random normal 128-D embeddings scaled to norm ~1.4 (like dlib's), one
template per identity, all with the same embedder version. For each gallery size it
reports the median and p99 latency of ``Gallery.search(k=5)`` over ``--queries`` probes,
then the enrol throughput with one template per enrol (one transaction each, WAL +
synchronous=FULL, so it is bound by fsync of the disk under ``--dir``). Prints a
Markdown table. ``--threads`` caps BLAS/OpenMP threads (set before numpy is imported).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--enrolls", type=int, default=500, help="timed single-template enrolments per size")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the database files go (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[v] = str(args.threads)

    import numpy as np

    from mobidem.gallery import Gallery, SqliteGallery, TemplateIn

    model, version = "dlib_resnet", "1"
    rng = np.random.default_rng(0)

    def embeddings(n: int) -> np.ndarray:
        x = rng.normal(size=(n, 128)).astype(np.float32)
        x *= 1.4 / np.linalg.norm(x, axis=1, keepdims=True)
        return x

    workdir = args.dir or tempfile.mkdtemp(prefix="bench-gallery-")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        path = os.path.join(workdir, f"gallery-{n}.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        # Bulk-load the base gallery in one transaction (setup, not timed).
        store = SqliteGallery(path)
        embs = embeddings(n)
        t0 = time.perf_counter()
        with store._lock:
            c = store._conn
            c.execute("BEGIN IMMEDIATE")
            c.executemany(
                "INSERT INTO identities (id, display_name, metadata, created_at, updated_at) VALUES (?, ?, '{}', ?, ?)",
                ((f"id{i}", f"person {i}", float(i), float(i)) for i in range(n)),
            )
            c.executemany(
                "INSERT INTO templates (id, identity_id, embedding, dim, model_name, model_version, quality,"
                " created_at) VALUES (?, ?, ?, 128, ?, ?, NULL, ?)",
                ((f"t{i}", f"id{i}", embs[i].tobytes(), model, version, float(i)) for i in range(n)),
            )
            c.execute("COMMIT")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gallery = Gallery(store)  # index rebuilt from the store
        rebuild_s = time.perf_counter() - t0
        assert len(gallery.index) == n

        # Probes: half near an enrolled template, half random.
        probes = embeddings(args.queries)
        near = rng.integers(0, n, size=args.queries // 2)
        probes[: len(near)] = embs[near] + 0.05 * probes[: len(near)]
        for p in probes[:10]:  # warm-up
            gallery.search(p, args.k, model, version)
        lat = []
        for p in probes:
            t = time.perf_counter()
            gallery.search(p, args.k, model, version)
            lat.append(time.perf_counter() - t)
        lat_ms = np.array(lat) * 1e3

        new = embeddings(args.enrolls)
        t0 = time.perf_counter()
        for e in new:
            gallery.enroll(None, "new person", None, [TemplateIn(e, model, version, 0.9)])
        enrol_s = time.perf_counter() - t0
        rows.append(
            (n, np.median(lat_ms), np.percentile(lat_ms, 99), args.enrolls / enrol_s, rebuild_s, load_s)
        )
        gallery.close()

    print(f"\nidentify k={args.k}, {args.queries} queries; enrol = 1 template per transaction; "
          f"{os.cpu_count()} CPUs; numpy {np.__version__}; db in {workdir}\n")
    print("| templates | identify median (ms) | identify p99 (ms) | enrol (templates/s) | index rebuild (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n, med, p99, eps, rb, _ in rows:
        print(f"| {n:,} | {med:.2f} | {p99:.2f} | {eps:,.0f} | {rb:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
