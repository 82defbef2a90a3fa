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
- IVF (``--methods ...,ivf``): ``faiss.IndexIVFFlat`` (or ``--ivf-kind fp16``: ``IndexIVFScalarQuantizer``
  QT_fp16, half the memory), nlist = ``--nlist-factor`` x sqrt(N) lists (2 by default; FAISS suggests about
  4); its coarse quantizer is an HNSW graph over the centroids (FAISS's recipe for many lists: assigning
  10 M vectors to thousands of centroids by brute force is far slower on 2 shared cores); k-means trained on a sample of 20 points per list, 10 iterations;
  nprobe swept. Supports ``add_with_ids`` / ``remove_ids``, which a gateway following the change log needs.

At 10 M the templates alone are 5.1 GB of float32: the gallery is generated straight into the exact index
(its segment sized once, instead of the gateway's doubling, whose transient old+new copy would not fit
beside the other structures in this machine's memory), and the later indexes read that same matrix.

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


def distractors(real: np.ndarray, n: int, rng, chunk: int = 500_000):
    """``n`` synthetic templates in float32 chunks (a Gaussian fitted to the real ones), never all at once."""
    mean = real.mean(0)
    cov = np.cov(real, rowvar=False)
    cov = 0.7 * cov + 0.3 * np.diag(np.diag(cov))
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(cov))).T.astype(np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        yield mean.astype(np.float32) + rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ chol


def load_real(cache_path: str) -> tuple[np.ndarray, list[str]]:
    """The real embeddings and their people, from ``cache_path`` (an .npz) when it exists, else computed
    (real_embeddings) and, with a path, cached there."""
    cache = Path(cache_path) if cache_path else None
    if cache and cache.exists():
        z = np.load(cache)
        return z["real"], [str(p) for p in z["people"]]
    real, people = asyncio.run(real_embeddings())
    if cache:
        np.savez(cache, real=real, people=np.asarray(people))
    return real, people


def enrolled_and_probes(people: list[str]) -> tuple[list[int], list[int]]:
    """Rows of each person's first photo (enrolled) and of the other photos (real probes)."""
    first: dict[str, int] = {}
    for i, p in enumerate(people):
        first.setdefault(p, i)
    enrolled = sorted(first.values())
    taken = set(enrolled)
    return enrolled, [i for i in range(len(people)) if i not in taken]


def queries_for(gallery: np.ndarray, real: np.ndarray, probes_real: list[int], n_enrolled: int, n_queries: int,
                rng) -> np.ndarray:
    """The real probes, then ``n_queries`` distractors of the gallery with noise (0.3 of their spread)."""
    spread = float(np.std(gallery[n_enrolled:n_enrolled + 10000]))
    picks = rng.integers(n_enrolled, gallery.shape[0], n_queries)
    synth = gallery[picks] + rng.normal(0, spread * 0.3, (len(picks), gallery.shape[1])).astype(np.float32)
    return np.concatenate([real[probes_real], synth]).astype(np.float32)


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
        ef_construction: int = 40, ef_search=(64, 128), methods=frozenset({"exact32", "exact16", "hnsw"}),
        ivf_kind: str = "flat", nprobes=(8, 32, 128, 512), nlist_factor: float = 2.0) -> dict:
    import faiss

    from mobidem.gallery.index import GalleryIndex, _Segment

    enrolled, probes_real = enrolled_and_probes(people)
    ids = [f"p{i:09d}" for i in range(size)]
    dim = real.shape[1]
    result = {"size": size}

    gc.collect()
    before = rss_mb()
    if "exact32" in methods:
        # The gateway's exact index, filled chunk by chunk; its one segment sized once (see the docstring).
        index = GalleryIndex(dim=dim)
        seg = index._segments[(MODEL, VERSION)] = _Segment(dim, capacity=size)
        t = time.perf_counter()
        _bulk(index, real[enrolled], ids, 0)
        row = len(enrolled)
        for chunk in distractors(real, size - len(enrolled), rng):
            _bulk(index, chunk, ids, row)
            row += len(chunk)
        result["exact32_fill_s"] = round(time.perf_counter() - t, 1)
        result["exact32_rss_mb"] = round(rss_mb() - before)
        gallery = seg.emb[:size]  # the same matrix, read by the other indexes
    else:
        gallery = np.empty((size, dim), np.float32)
        gallery[:len(enrolled)] = real[enrolled]
        row = len(enrolled)
        for chunk in distractors(real, size - len(enrolled), rng):
            gallery[row:row + len(chunk)] = chunk
            row += len(chunk)
    queries = queries_for(gallery, real, probes_real, len(enrolled), n_queries, rng)
    result.update({"queries": len(queries), "real_probes": len(probes_real)})

    if "exact32" in methods:
        exact, times = timed(lambda q: index.search(q, k=1, model_name=MODEL, model_version=VERSION)
                             .matches[0].identity_id, queries)
        exact_rows = np.asarray([int(i[1:]) for i in exact])
        result["exact32_ms"] = (round(pct(times, 50), 1), round(pct(times, 99), 1))
        truth = [people[i] for i in probes_real]
        hits = sum(1 for j, p in zip(exact_rows, truth) if j < len(enrolled) and people[enrolled[j]] == p)
        result["rank1_real"] = f"{hits}/{len(truth)}"
        del index, seg, exact  # the matrix lives on in `gallery`
        gc.collect()
    if not with_pg:
        del ids

    if "exact16" in methods:
        before = rss_mb()
        flat16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        flat16.add(gallery)  # every template compared, each stored as float16
        result["exact16_rss_mb"] = round(rss_mb() - before)
        got, times = timed(lambda q: int(flat16.search(q[None], 1)[1][0, 0]), queries)
        result["exact16_ms"] = (round(pct(times, 50), 1), round(pct(times, 99), 1))
        result["exact16_recall1"] = round(float(np.mean(np.asarray(got) == exact_rows)), 4)
        del flat16
        gc.collect()
        print(json.dumps(result), flush=True)

    if "ivf" in methods:
        nlist = int(round(nlist_factor * np.sqrt(size)))
        before = rss_mb()
        quantizer = faiss.IndexHNSWFlat(dim, 32)  # assigns vectors to lists; exactness is not needed here
        quantizer.hnsw.efConstruction = 40
        if ivf_kind == "flat":
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        else:
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_L2)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 20
        sample = gallery[np.sort(rng.choice(size, min(size, 20 * nlist), replace=False))]
        t = time.perf_counter()
        ivf.train(sample)  # k-means (FAISS's Clustering), then the HNSW over the centroids
        result["ivf_train_s"] = round(time.perf_counter() - t, 1)
        del sample
        t = time.perf_counter()
        for i in range(0, size, 1_000_000):
            ivf.add(gallery[i:i + 1_000_000])  # ids = row numbers (add_with_ids / remove_ids for a change log)
        result["ivf_add_s"] = round(time.perf_counter() - t, 1)
        result["ivf_rss_mb"] = round(rss_mb() - before)
        code = dim * (4 if ivf_kind == "flat" else 2)
        result["ivf_bytes_mb"] = round((size * (code + 8) + nlist * dim * 4) / 2**20)  # lists + ids + centroids
        result["ivf"] = {"kind": ivf_kind, "nlist": nlist, "nprobe": list(nprobes), "quantizer": "HNSW32",
                         "kmeans_sample": min(size, 20 * nlist), "kmeans_iter": 10}
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            quantizer.hnsw.efSearch = max(64, 2 * nprobe)
            got, times = timed(lambda q: int(ivf.search(q[None], 1)[1][0, 0]), queries)
            result[f"ivf_np{nprobe}_ms"] = (round(pct(times, 50), 2), round(pct(times, 99), 2))
            result[f"ivf_np{nprobe}_recall1"] = round(float(np.mean(np.asarray(got) == exact_rows)), 4)
            print(nprobe, result[f"ivf_np{nprobe}_ms"], result[f"ivf_np{nprobe}_recall1"], flush=True)
        del ivf, quantizer
        gc.collect()

    if "hnsw" in methods:
        before = rss_mb()
        hnsw = faiss.IndexHNSWFlat(dim, m)
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
            result[f"hnsw_ef{ef}_recall1"] = round(float(np.mean(np.asarray(got) == exact_rows)), 4)
        del hnsw
        gc.collect()
    if with_pg:
        result["postgres"] = load_postgres(gallery, ids)
    return result


def _bulk(index, embs: np.ndarray, ids: list[str], start: int) -> None:
    from mobidem.gallery.records import TemplateRecord

    for i in range(0, len(embs), 100_000):
        index.add_records([TemplateRecord(f"t{start + j:09d}", ids[start + j], embs[j], MODEL, VERSION, None, 0.0)
                           for j in range(i, min(i + 100_000, len(embs)))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000")
    ap.add_argument("--queries", type=int, default=300, help="synthetic probes (the real ones come on top)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", default="64,128", help="efSearch values to measure (comma-separated)")
    ap.add_argument("--methods", default="exact32,exact16,hnsw",
                    help="comma-separated: exact32 (the reference; needed by the others), exact16, hnsw, ivf; "
                         "'none' with PostgreSQL alone measures just the load")
    ap.add_argument("--ivf-kind", choices=("flat", "fp16"), default="flat")
    ap.add_argument("--nlist-factor", type=float, default=2.0, help="IVF lists = this x sqrt(N)")
    ap.add_argument("--nprobe", default="8,32,128,512", help="IVF nprobe values to measure (comma-separated)")
    ap.add_argument("--embeddings-cache", default="",
                    help="an .npz to reuse the real embeddings from (written when absent; saves a Triton start)")
    ap.add_argument("--out", default=str(REPO / "docs" / "SCALING_BENCH.json"))
    args = ap.parse_args()
    import os
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine: OpenMP threads must not spin
    import faiss

    rng = np.random.default_rng(18)
    t = time.perf_counter()
    real, people = load_real(args.embeddings_cache)
    print(f"{len(real)} real embeddings of {len(set(people))} people in {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    methods = {m for m in args.methods.split(",") if m and m != "none"}
    if methods - {"exact32"} and "exact32" not in methods:
        ap.error("recall is measured against exact32: include it")
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, real, people, args.queries, not args.no_postgres, rng, args.hnsw_m, args.ef_construction,
                [int(e) for e in args.ef_search.split(",")], methods=methods, ivf_kind=args.ivf_kind,
                nprobes=[int(e) for e in args.nprobe.split(",")], nlist_factor=args.nlist_factor)
        print(json.dumps(r), flush=True)
        results.append(r)
        out = {"machine": "2 cores, shared with other work; one probe at a time", "faiss": faiss.__version__,
               "numpy": np.__version__, "command": " ".join(["bench/gallery_scale.py", *sys.argv[1:]]),
               "results": results}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")  # after every size: a long run keeps its part
    for r in results:
        if "exact32_ms" not in r:
            pg = r.get("postgres", {})
            print(f"\n{r['size']:,} templates: PostgreSQL COPY {pg.get('copy_s')} s, Gallery.from_url load "
                  f"{pg.get('load_s')} s, index RSS {pg.get('index_rss_mb')} MB")
            continue
        pg = r.get("postgres", {})
        print(f"\n{r['size']:,} templates ({r['real_probes']} real probes + {r['queries'] - r['real_probes']} synthetic; "
              f"real rank-1 with exact search {r['rank1_real']})\n")
        print("| search | p50 ms | p99 ms | recall@1 vs exact f32 | memory MB |")
        print("|---|---|---|---|---|")
        print(f"| exact float32 (GalleryIndex) | {r['exact32_ms'][0]} | {r['exact32_ms'][1]} | 100 % (reference) | "
              f"{r['exact32_rss_mb']} (RSS) |")
        if "exact16_ms" in r:
            print(f"| exact float16 (FAISS SQfp16) | {r['exact16_ms'][0]} | {r['exact16_ms'][1]} | "
                  f"{r['exact16_recall1']:.2%} | {r['exact16_rss_mb']} (RSS) |")
        for nprobe in r.get("ivf", {}).get("nprobe", []):
            print(f"| IVF-{r['ivf']['kind']} nlist={r['ivf']['nlist']} nprobe={nprobe} | {r[f'ivf_np{nprobe}_ms'][0]} | "
                  f"{r[f'ivf_np{nprobe}_ms'][1]} | {r[f'ivf_np{nprobe}_recall1']:.2%} | {r['ivf_rss_mb']} (RSS) |")
        for key in sorted((k for k in r if k.startswith("hnsw_ef") and k.endswith("_ms")),
                          key=lambda k: int(k[len("hnsw_ef"):-len("_ms")])):
            ef = key[len("hnsw_ef"):-len("_ms")]
            print(f"| HNSW M={r['hnsw']['M']} efC={r['hnsw']['efConstruction']} efSearch={ef} | {r[key][0]} | "
                  f"{r[key][1]} | {r[f'hnsw_ef{ef}_recall1']:.2%} | {r['hnsw_bytes_mb']} (stored) |")
        if "ivf" in r:
            print(f"\nIVF build {r['ivf_train_s']} s k-means + {r['ivf_add_s']} s adding")
        if "hnsw_build_s" in r:
            print(f"\nHNSW build {r['hnsw_build_s']} s")
        print("" + (f"PostgreSQL: COPY {pg['copy_s']} s, Gallery.from_url load "
                                                    f"{pg['load_s']} s, index RSS {pg['index_rss_mb']} MB" if pg else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
