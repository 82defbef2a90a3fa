"""Gallery search at scale (issue 18): exact float32 / float16 against an HNSW index (FAISS), and the load
time of a gateway's index from PostgreSQL. Writes docs/SCALING_BENCH.json and prints a Markdown table.

    nice .venv/bin/python bench/gallery_scale.py [--sizes 1000000] [--queries 300] [--no-postgres]

Templates: the real embeddings of the shared photos (one per photo, the largest face, through the managed
Triton and the gateway's own pipeline) plus synthetic distractors drawn from a Gaussian fitted to those real
embeddings (their mean and covariance, shrunk towards its diagonal: 180 photos do not fix 128x128 entries).
The first photo of each person is enrolled; probes are the other photos of the enrolled people (real) and
distractors with noise added (synthetic, so that recall is measured where the gallery is dense too).

- exact float32: the gateway's ``GalleryIndex`` (one matrix-vector product + argpartition, mobidem/gallery/index.py);
- exact float16: every template compared, stored as float16 (half the memory): FAISS's flat scalar quantizer
  (``IndexScalarQuantizer``, QT_fp16; numpy converting float16 per query measured far slower);
- HNSW: ``faiss.IndexHNSWFlat`` (M=16, efConstruction=40 by default: its build is the slow part on 2 shared
  cores), efSearch 64 and 128; recall@1 is the share of probes
  whose nearest template is the exact search's nearest.

Latency is one probe at a time on this machine (2 cores, shared), p50/p99 over ``--queries`` probes.
Memory: the process's resident size grown by each structure. Load time: ``Gallery.from_url`` on a PostgreSQL
cluster (Debian's, a throwaway one as in the tests) holding the templates (bulk-loaded with COPY; the
gateway's start streams them with a server-side cursor into the index).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"
MODEL, VERSION = "face_multitask", "1"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


async def real_embeddings() -> tuple[np.ndarray, list[str]]:
    """The embedding of the largest face of every identity photo (people's folders in natural order)."""
    import cv2

    from mobidem.managed_triton import ManagedTriton
    from mobidem.pipeline import Pipeline
    from mobidem.plugins import PluginSet
    from mobidem.triton_client import TritonClient

    plugins = PluginSet.from_config("blazeface", ["face_multitask"])
    work = Path(tempfile.mkdtemp(prefix="mobidem-bench-triton-"))
    triton = ManagedTriton(REPO / "model_repository", work, models=plugins.model_names)
    await asyncio.to_thread(triton.start, 300)
    client = TritonClient(triton.grpc_url)
    pipeline = Pipeline(client, plugins)
    try:
        await client.plan(plugins.model_names)
        embs, people = [], []
        for folder in sorted((FACES / "identities").iterdir()):
            for photo in sorted(folder.glob("*.jpg"), key=lambda p: (len(p.name), p.name)):
                rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
                faces, _ = await pipeline.embed_faces(rgb)
                if faces:
                    embs.append(faces[0].embedding)
                    people.append(folder.name)
        return np.asarray(embs, np.float32), people
    finally:
        pipeline.close()
        await client.close()
        await asyncio.to_thread(triton.stop)
        shutil.rmtree(work, ignore_errors=True)


def distractors(real: np.ndarray, n: int, rng) -> np.ndarray:
    mean = real.mean(0)
    cov = np.cov(real, rowvar=False)
    cov = 0.7 * cov + 0.3 * np.diag(np.diag(cov))
    out = np.empty((n, real.shape[1]), np.float32)
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(cov)))
    for i in range(0, n, 1_000_000):
        m = min(1_000_000, n - i)
        out[i:i + m] = mean + rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ chol.T.astype(np.float32)
    return out


def timed(fn, queries) -> tuple[list, list[float]]:
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t)
    return out, times


def load_postgres(gallery: np.ndarray, ids: list[str]) -> dict:
    """COPY the templates into a throwaway PostgreSQL, then time a gateway's index load (Gallery.from_url)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import PostgresCluster  # the tests' throwaway cluster (initdb + pg_ctl, loopback)

    import psycopg

    from mobidem.gallery import Gallery

    root = Path(tempfile.mkdtemp(prefix="mobidem-bench-pg-"))
    import os
    import pwd
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = PostgresCluster(root)
    try:
        url = cluster.database()
        Gallery.from_url(url).close()  # the schema
        t = time.perf_counter()
        now = time.time()
        with psycopg.connect(url) as c:
            with c.cursor().copy("COPY identities (id, display_name, metadata, created_at, updated_at) FROM STDIN") as cp:
                for i, ident in enumerate(ids):
                    cp.write_row((ident, f"person {i}", "{}", now, now))
            with c.cursor().copy("COPY templates (id, identity_id, embedding, dim, model_name, model_version, "
                                 "created_at) FROM STDIN") as cp:
                for i, ident in enumerate(ids):
                    cp.write_row((f"t{i:09d}", ident, gallery[i].tobytes(), gallery.shape[1], MODEL, VERSION, now))
            c.commit()
        copy_s = time.perf_counter() - t
        gc.collect()
        before = rss_mb()
        t = time.perf_counter()
        g = Gallery.from_url(url)
        load_s = time.perf_counter() - t
        grown = rss_mb() - before
        n = len(g.index)
        g.close()
        return {"copy_s": round(copy_s, 1), "load_s": round(load_s, 1), "templates": n, "index_rss_mb": round(grown)}
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def run(size: int, real: np.ndarray, people: list[str], n_queries: int, with_pg: bool, rng, m: int = 16,
        ef_construction: int = 40, ef_search=(64, 128)) -> dict:
    import faiss

    from mobidem.gallery.index import GalleryIndex

    first = {}
    for i, p in enumerate(people):
        first.setdefault(p, i)
    enrolled = sorted(first.values())
    probes_real = [i for i in range(len(people)) if i not in set(enrolled)]
    gallery = np.concatenate([real[enrolled], distractors(real, size - len(enrolled), rng)])
    ids = [f"p{i:09d}" for i in range(size)]
    # probes: the real photos not enrolled, then distractors with noise (a tenth of their spread)
    spread = float(np.std(gallery[len(enrolled):len(enrolled) + 10000]))
    picks = rng.integers(len(enrolled), size, n_queries)  # synthetic probes, beside the real ones
    synth = gallery[picks] + rng.normal(0, spread * 0.3, (len(picks), gallery.shape[1])).astype(np.float32)
    queries = np.concatenate([real[probes_real], synth]).astype(np.float32)
    result = {"size": size, "queries": len(queries), "real_probes": len(probes_real)}

    gc.collect()
    before = rss_mb()
    index = GalleryIndex(dim=gallery.shape[1])
    _bulk(index, gallery, ids)
    result["exact32_rss_mb"] = round(rss_mb() - before)
    exact, times = timed(lambda q: index.search(q, k=1, model_name=MODEL, model_version=VERSION).matches[0].identity_id,
                         queries)
    exact_rows = [int(i[1:]) for i in exact]
    result["exact32_ms"] = (round(pct(times, 50), 1), round(pct(times, 99), 1))
    truth = [people[i] for i in probes_real]
    hits = sum(1 for j, p in zip(exact_rows, truth) if j < len(enrolled) and people[enrolled[j]] == p)
    result["rank1_real"] = f"{hits}/{len(truth)}"
    del index
    gc.collect()

    before = rss_mb()
    flat16 = faiss.IndexScalarQuantizer(gallery.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    flat16.add(gallery)  # every template compared, each stored as float16
    result["exact16_rss_mb"] = round(rss_mb() - before)
    got, times = timed(lambda q: int(flat16.search(q[None], 1)[1][0, 0]), queries)
    result["exact16_ms"] = (round(pct(times, 50), 1), round(pct(times, 99), 1))
    result["exact16_recall1"] = round(float(np.mean(np.asarray(got) == np.asarray(exact_rows))), 4)
    del flat16
    gc.collect()

    before = rss_mb()
    hnsw = faiss.IndexHNSWFlat(gallery.shape[1], m)
    hnsw.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    hnsw.add(gallery)
    result["hnsw_build_s"] = round(time.perf_counter() - t, 1)
    result["hnsw_rss_mb"] = round(rss_mb() - before)
    result["hnsw_bytes_mb"] = round(len(faiss.serialize_index(hnsw)) / 2**20)  # vectors + links, as stored
    result["hnsw"] = {"M": m, "efConstruction": ef_construction}
    for ef in ef_search:
        hnsw.hnsw.efSearch = ef
        got, times = timed(lambda q: int(hnsw.search(q[None], 1)[1][0, 0]), queries)
        result[f"hnsw_ef{ef}_ms"] = (round(pct(times, 50), 2), round(pct(times, 99), 2))
        result[f"hnsw_ef{ef}_recall1"] = round(float(np.mean(np.asarray(got) == np.asarray(exact_rows))), 4)
    del hnsw
    gc.collect()
    if with_pg:
        result["postgres"] = load_postgres(gallery, ids)
    return result


def _bulk(index, gallery: np.ndarray, ids: list[str]) -> None:
    from mobidem.gallery.records import TemplateRecord

    for i in range(0, len(ids), 100_000):
        index.add_records([TemplateRecord(f"t{j:09d}", ids[j], gallery[j], MODEL, VERSION, None, 0.0)
                           for j in range(i, min(i + 100_000, len(ids)))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--queries", type=int, default=300, help="synthetic probes (the real ones come on top)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", default="64,128", help="efSearch values to measure (comma-separated)")
    ap.add_argument("--out", default=str(REPO / "docs" / "SCALING_BENCH.json"))
    args = ap.parse_args()
    import os
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine: OpenMP threads must not spin
    import faiss

    rng = np.random.default_rng(18)
    t = time.perf_counter()
    real, people = asyncio.run(real_embeddings())
    print(f"{len(real)} real embeddings of {len(set(people))} people in {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, real, people, args.queries, not args.no_postgres, rng, args.hnsw_m, args.ef_construction,
                [int(e) for e in args.ef_search.split(",")])
        print(json.dumps(r), flush=True)
        results.append(r)
    out = {"machine": "2 cores, shared with other work; one probe at a time", "faiss": faiss.__version__,
           "numpy": np.__version__, "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in results:
        pg = r.get("postgres", {})
        print(f"\n{r['size']:,} templates ({r['real_probes']} real probes + {r['queries'] - r['real_probes']} synthetic; "
              f"real rank-1 with exact search {r['rank1_real']})\n")
        print("| search | p50 ms | p99 ms | recall@1 vs exact f32 | memory MB |")
        print("|---|---|---|---|---|")
        print(f"| exact float32 (GalleryIndex) | {r['exact32_ms'][0]} | {r['exact32_ms'][1]} | 100 % (reference) | "
              f"{r['exact32_rss_mb']} (RSS) |")
        print(f"| exact float16 (FAISS SQfp16) | {r['exact16_ms'][0]} | {r['exact16_ms'][1]} | "
              f"{r['exact16_recall1']:.2%} | {r['exact16_rss_mb']} (RSS) |")
        for key in sorted((k for k in r if k.startswith("hnsw_ef") and k.endswith("_ms")),
                          key=lambda k: int(k[len("hnsw_ef"):-len("_ms")])):
            ef = key[len("hnsw_ef"):-len("_ms")]
            print(f"| HNSW M={r['hnsw']['M']} efC={r['hnsw']['efConstruction']} efSearch={ef} | {r[key][0]} | "
                  f"{r[key][1]} | {r[f'hnsw_ef{ef}_recall1']:.2%} | {r['hnsw_bytes_mb']} (stored) |")
        print(f"\nHNSW build {r['hnsw_build_s']} s" + (f"; PostgreSQL: COPY {pg['copy_s']} s, Gallery.from_url load "
                                                    f"{pg['load_s']} s, index RSS {pg['index_rss_mb']} MB" if pg else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
