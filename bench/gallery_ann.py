"""The gateway's own gallery search at scale (issue 18): ``GalleryIndex.search`` exact, and with the
approximate index it uses under ``gallery_ann: ivf`` (mobidem/gallery/ann.py), at one size. Writes
docs/SCALING_ANN.json and prints a Markdown table.

    nice .venv/bin/python bench/gallery_ann.py --size 10000000 --nprobe 64,128,256 [--queries 900]

Templates and probes as in bench/gallery_scale.py: the real embeddings of the shared photos (first photo of each
person enrolled) plus synthetic distractors from a Gaussian fitted to them; probes are the other real photos
and distractors with noise added. The truth for recall@1 is exact float32 nearest-template search, computed for
all probes at once (a matrix product in blocks; also checked against ``GalleryIndex``'s exact search on the
probes whose latency is timed). Latency: one probe at a time through ``GalleryIndex.search(k=1)``, the call
Identify makes, p50/p99 over all probes. recall@1: the share of probes whose best identity is exact search's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from gallery_scale import (  # noqa: E402
    MODEL, VERSION, _bulk, distractors, enrolled_and_probes, load_real, pct, queries_for, rss_mb, timed)


def exact_nearest(gallery: np.ndarray, queries: np.ndarray, block: int = 50_000) -> np.ndarray:
    """Row of each query's nearest template (float32 squared L2), by blocks of the gallery."""
    best = np.full(len(queries), np.inf, np.float32)
    rows = np.zeros(len(queries), np.int64)
    qq = np.einsum("ij,ij->i", queries, queries)
    for i in range(0, len(gallery), block):
        g = gallery[i:i + block]
        d = np.einsum("ij,ij->i", g, g)[:, None] - 2 * (g @ queries.T) + qq[None]
        j = d.argmin(0)
        v = d[j, np.arange(len(queries))]
        better = v < best
        best[better], rows[better] = v[better], i + j[better]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=900, help="synthetic probes (the real ones come on top)")
    ap.add_argument("--nprobe", default="64,128,256")
    ap.add_argument("--exact-timed", type=int, default=100, help="probes timed through exact search (slow at 10 M)")
    ap.add_argument("--embeddings-cache", default="")
    ap.add_argument("--out", default=str(REPO / "docs" / "SCALING_ANN.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(REPO / "server"))
    import faiss

    from mobidem.gallery import AnnConfig
    from mobidem.gallery.index import GalleryIndex, _Segment

    rng = np.random.default_rng(18)
    real, people = load_real(args.embeddings_cache)
    size, dim = args.size, real.shape[1]
    enrolled, probes_real = enrolled_and_probes(people)
    ids = [f"p{i:09d}" for i in range(size)]

    nprobes = [int(x) for x in args.nprobe.split(",")]
    index = GalleryIndex(dim=dim, ann=AnnConfig(min_templates=min(size, 200_000), nprobe=nprobes[0]))
    seg = index._segments[(MODEL, VERSION)] = _Segment(dim, capacity=size)  # sized once (gallery_scale.py)
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    _bulk(index, real[enrolled], ids, 0)
    row = len(enrolled)
    for chunk in distractors(real, size - len(enrolled), rng):
        _bulk(index, chunk, ids, row)
        row += len(chunk)
    result = {"size": size, "fill_s": round(time.perf_counter() - t, 1), "exact_rss_mb": round(rss_mb() - before)}
    gallery = seg.emb[:size]
    queries = queries_for(gallery, real, probes_real, len(enrolled), args.queries, rng)
    result.update(queries=len(queries), real_probes=len(probes_real))

    t = time.perf_counter()
    truth = exact_nearest(gallery, queries)
    result["truth_s"] = round(time.perf_counter() - t, 1)
    truth_ids = [ids[r] for r in truth]
    timed_q = queries[:: max(1, len(queries) // args.exact_timed)][: args.exact_timed]
    got, times = timed(lambda q: index.search(q, 1, MODEL, VERSION).matches[0].identity_id, timed_q)
    result["exact_ms"] = (round(pct(times, 50), 1), round(pct(times, 99), 1))
    step = max(1, len(queries) // args.exact_timed)
    assert got == truth_ids[::step][: args.exact_timed], "GalleryIndex exact search disagrees with the batched truth"
    print(json.dumps(result), flush=True)

    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    assert index.build_ann() == [(MODEL, VERSION)]
    accel = seg.accel
    result["ann_build_s"] = round(time.perf_counter() - t, 1)
    result["ann_rss_mb"] = round(rss_mb() - before)
    result["ann"] = {"kind": "ivf fp16", "nlist": int(accel.ivf.nlist), "quantizer": "HNSW32",
                     "kmeans_sample": int(min(size, 20 * accel.ivf.nlist)), "kmeans_iter": 10}
    print(json.dumps(result), flush=True)
    for nprobe in nprobes:
        accel.set_nprobe(nprobe)
        index.search(queries[0], 1, MODEL, VERSION)  # warm
        got, times = timed(lambda q: index.search(q, 1, MODEL, VERSION).matches[0].identity_id, queries)
        misses = sum(g != w for g, w in zip(got, truth_ids))
        result[f"np{nprobe}"] = {"ms": (round(pct(times, 50), 2), round(pct(times, 99), 2)),
                                 "max_ms": round(max(times) * 1000, 1), "misses": misses,
                                 "recall1": round(1 - misses / len(queries), 5)}
        print(nprobe, json.dumps(result[f"np{nprobe}"]), flush=True)
    result.update(machine=f"{os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f}",
                  faiss=faiss.__version__, command=" ".join(["bench/gallery_ann.py", *sys.argv[1:]]))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{size:,} templates, {len(queries)} probes ({len(probes_real)} real)\n")
    print("| search (GalleryIndex.search, k=1) | p50 ms | p99 ms | recall@1 vs exact | memory MB |")
    print("|---|---|---|---|---|")
    print(f"| exact float32 ({args.exact_timed} probes timed) | {result['exact_ms'][0]} | {result['exact_ms'][1]} | "
          f"reference | {result['exact_rss_mb']} |")
    for nprobe in nprobes:
        r = result[f"np{nprobe}"]
        print(f"| gallery_ann ivf, nlist {result['ann']['nlist']}, nprobe {nprobe} | {r['ms'][0]} | {r['ms'][1]} | "
              f"{r['recall1']:.2%} ({r['misses']} missed) | +{result['ann_rss_mb']} |")
    print(f"\naccelerator trained and filled in {result['ann_build_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
