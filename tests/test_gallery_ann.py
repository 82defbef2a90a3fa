"""The approximate search for large galleries (gallery/ann.py, ``gallery_ann: ivf``), against the exact index.

Pure logic on synthetic embeddings (directions uniform on a sphere, the hard case for an IVF index: no
clusters); what it must hold comes from docs/SCALING.md: the accelerator only proposes candidates, so with
every list probed it answers exactly as exact search, reported distances are always exact, appends and
deletions keep it in step, ``only`` and cosine searches are exact, and a snapshot file carries it.
"""

from __future__ import annotations

import threading

import importlib.util

import numpy as np
import pytest

from conftest import need
from mobidem.gallery import AnnConfig, GalleryError
from mobidem.gallery import snapshot as snapshots
from mobidem.gallery.ann import IvfAccelerator
from mobidem.gallery.index import GalleryIndex
from mobidem.gallery.records import TemplateRecord

HAVE_FAISS = importlib.util.find_spec("faiss") is not None


@pytest.fixture(autouse=True)
def faiss_installed():
    need(HAVE_FAISS, "FAISS is not installed (make test installs it: mobidem[ann])")

M, V, DIM = "face_multitask", "1", 128


def sphere(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x * (np.float32(1.4) / np.linalg.norm(x, axis=1, keepdims=True))


def records(embs, start=0, per_identity=1, version=V):
    return [TemplateRecord(f"t{start + i}", f"p{(start + i) // per_identity}", e, M, version, None, 0.0)
            for i, e in enumerate(embs)]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(14)
    gallery = sphere(rng, 12_000)
    picks = rng.integers(0, len(gallery), 300)
    probes = gallery[picks] + rng.normal(0, 0.03, (len(picks), DIM)).astype(np.float32)
    return gallery, probes


def pair(gallery, nprobe, per_identity=2):
    """(exact index, index with an accelerator) over the same templates."""
    exact = GalleryIndex(DIM)
    exact.add_records(records(gallery, per_identity=per_identity))
    ann = GalleryIndex(DIM, ann=AnnConfig(min_templates=1000, nprobe=nprobe))
    ann.add_records(records(gallery, per_identity=per_identity))
    assert ann.build_ann() == [(M, V)]
    return exact, ann


def accel(index):
    return index._segments[(M, V)].accel


def nlist(index):
    return accel(index).ivf.nlist


def same(exact, ann, probes, k=1, **kw):
    for q in probes:
        a, b = exact.search(q, k, M, V, **kw), ann.search(q, k, M, V, **kw)
        assert a.matches[:1] == b.matches[:1], (a.matches, b.matches)
        assert (a.searched_templates, a.skipped_templates) == (b.searched_templates, b.skipped_templates)


def test_with_every_list_probed_it_answers_as_exact_search(data):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=1)
    accel(ann).set_nprobe(nlist(ann))  # every list: only the float16 candidates' order can differ
    same(exact, ann, probes)
    same(exact, ann, probes, k=5)
    for q in probes[:50]:  # reported distances are the exact ones, for every match
        b = ann.search(q, 5, M, V)
        for m in b.matches:
            assert m.distance == exact.identity_distance(q, m.identity_id, M, V)


def test_recall_at_1_with_a_fraction_of_the_lists(data):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=32)
    assert nlist(ann) > 32 * 8  # a fraction of the lists, not all
    hits = sum(exact.search(q, 1, M, V).matches == ann.search(q, 1, M, V).matches for q in probes)
    assert hits >= 0.98 * len(probes), hits


def test_appends_and_deletions_keep_it_in_step(data):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=1, per_identity=1)
    accel(ann).set_nprobe(nlist(ann))
    rng = np.random.default_rng(5)
    new = sphere(rng, 700)
    for idx in (exact, ann):
        idx.add_records(records(new, start=len(gallery)))  # p12000.. appended after the training
    doomed = {f"p{i}" for i in rng.choice(len(gallery) + len(new), 400, replace=False)}
    doomed |= {exact.search(q, 1, M, V).matches[0].identity_id for q in probes[:40]}  # some probes' own
    for d in sorted(doomed):
        assert exact.remove_identity(d) == ann.remove_identity(d) == 1
    assert accel(ann).ivf.ntotal == len(ann) == len(exact) == len(gallery) + len(new) - len(doomed)
    new_probes = new[:100] + rng.normal(0, 0.03, (100, DIM)).astype(np.float32)
    same(exact, ann, np.concatenate([probes, new_probes]))
    for q in probes[:40]:
        assert ann.search(q, 1, M, V).matches[0].identity_id not in doomed
    # and after more appends, once the rows were compacted
    more = sphere(rng, 50)
    for idx in (exact, ann):
        idx.add_records(records(more, start=20_000))
    same(exact, ann, more)


def test_only_and_cosine_searches_are_exact(data):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=1)  # one list: the accelerator alone would miss most
    only = [f"p{i}" for i in range(0, 6000, 7)]
    for q in probes[:60]:
        for kw in ({"only": only}, {"metric": "cosine"}):
            assert exact.search(q, 3, M, V, **kw).matches == ann.search(q, 3, M, V, **kw).matches


def test_small_segments_and_other_versions_stay_exact(data):
    gallery, _ = data
    idx = GalleryIndex(DIM, ann=AnnConfig(min_templates=1000))
    idx.add_records(records(gallery[:999]))
    idx.add_records(records(gallery[999:3000], start=999, version="2"))
    assert idx.build_ann() == [(M, "2")]
    assert idx._segments[(M, V)].accel is None


def test_a_snapshot_file_carries_the_accelerator(data, tmp_path):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=64)
    path = tmp_path / "index.snap"
    snapshots.write(path, snapshots.Snapshot(0, ann.export(), {}, 0.0), "0")
    read = snapshots.read(path, dim=DIM, fingerprint_of=lambda seq: "0", load_ann=IvfAccelerator.load_index)
    again = GalleryIndex.from_arrays(read.arrays, ann=AnnConfig(min_templates=1000, nprobe=64))
    assert again.build_ann() == []  # nothing to train: the accelerator came with the file
    assert accel(again).ivf.ntotal == len(gallery)
    for q in probes:
        assert again.search(q, 3, M, V).matches == ann.search(q, 3, M, V).matches
    plain = snapshots.read(path, dim=DIM, fingerprint_of=lambda seq: "0")  # a gateway without gallery_ann
    exact_again = GalleryIndex.from_arrays(plain.arrays)
    assert accel(exact_again) is None
    same(exact, exact_again, probes, k=3)


def test_searches_go_on_while_templates_come_and_go(data):
    gallery, probes = data
    exact, ann = pair(gallery, nprobe=16, per_identity=1)
    errors, stop = [], threading.Event()

    def search():
        while not stop.is_set():
            try:
                for q in probes[:20]:
                    for m in ann.search(q, 3, M, V).matches:
                        assert m.template_id == f"t{m.identity_id[1:]}"  # a row's template and identity agree
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(9)
    for i in range(30):
        ann.add_records(records(sphere(rng, 20), start=30_000 + 20 * i))
        ann.remove_identity(f"p{i * 37}")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert accel(ann).ivf.ntotal == len(ann) == len(gallery) + 600 - 30


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(GalleryError, match="unknown approximate index 'hnsw'"):
        AnnConfig(kind="hnsw")
    with pytest.raises(GalleryError, match="min_templates must be at least 1000"):
        AnnConfig(min_templates=10)
