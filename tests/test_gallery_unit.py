"""Unit tests of the identity gallery (store + index + facade) and threshold calibration."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading

import numpy as np
import pytest

from mobidem import calibration as cal
from mobidem.gallery import (
    Gallery,
    GalleryCorrupt,
    GalleryIndex,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    SqliteGallery,
    TemplateIn,
    TemplateRecord,
    distance,
)
from mobidem.gallery import store as store_mod

M, V = "dlib_resnet", "1"


def emb(rng, n=None):
    x = rng.normal(size=(n or 1, 128)).astype(np.float32)
    x *= 1.4 / np.linalg.norm(x, axis=1, keepdims=True)
    return x if n else x[0]


def tpl(rng, model=M, version=V, quality=0.9):
    return TemplateIn(emb(rng), model, version, quality)


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        self.t += 1.0
        return self.t


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "gallery.db")


@pytest.fixture
def store(db):
    s = SqliteGallery(db, clock=Clock())
    yield s
    s.close()


# ----------------------------------------------------------------- store


def test_enroll_get_append(store, rng):
    r = store.enroll(None, "Ada", {"team": "x"}, [tpl(rng), tpl(rng)])
    assert r.created and not r.replayed and r.templates_added == 2
    iid = r.identity.id
    assert len(iid) == 32 and int(iid, 16) >= 0  # uuid4 hex
    got = store.get(iid)
    assert got.display_name == "Ada" and got.metadata == {"team": "x"}
    assert got.template_count == 2 and [(m.model_name, m.model_version, m.template_count) for m in got.model_versions] == [(M, V, 2)]

    r2 = store.enroll(iid, None, None, [tpl(rng, version="2")])
    assert not r2.created and r2.templates_added == 1
    got2 = store.get(iid)
    assert got2.display_name == "Ada" and got2.metadata == {"team": "x"}  # unchanged when not given
    assert got2.template_count == 3 and got2.updated_at > got.updated_at and got2.created_at == got.created_at
    assert {(m.model_version, m.template_count) for m in got2.model_versions} == {("1", 2), ("2", 1)}

    store.enroll(iid, "Ada L.", {"k": "v"}, [tpl(rng)])
    assert store.get(iid).display_name == "Ada L." and store.get(iid).metadata == {"k": "v"}
    assert store.get("nobody") is None
    assert store.count() == 1 and store.template_count() == 4

    r3 = store.enroll("alice-01", "Alice", None, [tpl(rng)])
    assert r3.identity.id == "alice-01" and r3.created


def test_embedding_bytes_roundtrip(store, rng):
    e = emb(rng)
    r = store.enroll(None, "A", None, [TemplateIn(e.astype(np.float64), M, V, None)])
    (rec,) = list(store.iter_templates())
    assert rec.id == r.template_ids[0] and rec.identity_id == r.identity.id
    assert rec.embedding.dtype == np.dtype("<f4") and np.array_equal(rec.embedding, e)
    assert rec.quality is None and (rec.model_name, rec.model_version) == (M, V)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(display_name=""), "empty"),
        (dict(display_name="   "), "empty"),
        (dict(display_name="x" * 257), "longer than 256"),
        (dict(display_name=None), "required"),
        (dict(metadata={"a": 1}), "str to str"),
        (dict(metadata=["a"]), "mapping"),
        (dict(templates=[]), "at least one"),
        (dict(templates=[TemplateIn(np.zeros(127, np.float32), M, V)]), "dimension mismatch"),
        (dict(templates=[TemplateIn(np.full(128, np.nan, np.float32), M, V)]), "NaN"),
        (dict(templates=[TemplateIn(np.zeros((2, 128), np.float32), M, V)]), "vector"),
        (dict(templates=[TemplateIn(np.zeros(128, np.float32), "", V)]), "model_name"),
        (dict(identity_id="bad id with spaces"), "identity_id"),
    ],
)
def test_invalid_arguments(store, rng, kwargs, msg):
    args = dict(identity_id=None, display_name="Bob", metadata=None, templates=[tpl(rng)])
    args.update(kwargs)
    with pytest.raises(InvalidArgument, match=msg):
        store.enroll(**args)
    assert store.count() == 0 and store.template_count() == 0


def test_failed_enroll_changes_nothing(store, rng):
    iid = store.enroll(None, "A", None, [tpl(rng)]).identity.id
    with pytest.raises(InvalidArgument):
        store.enroll(iid, "B", None, [tpl(rng), TemplateIn(np.zeros(3), M, V)])
    assert store.get(iid).display_name == "A" and store.template_count() == 1


def test_list_paging(store, rng):
    ids = [store.enroll(None, f"p{i}", None, [tpl(rng)]).identity.id for i in range(25)]
    seen, token, pages = [], None, 0
    while True:
        page, token = store.list(page_size=7, page_token=token)
        seen += [i.id for i in page]
        pages += 1
        assert all(i.template_count == 1 for i in page)
        if not token:
            break
    assert seen == ids and pages == 4  # created_at order (clock ticks), no dups, no gaps
    assert len(store.list(page_size=10_000)[0]) == 25  # clamped to 1000
    assert len(store.list(page_size=-5)[0]) == 1  # clamped to 1
    with pytest.raises(InvalidArgument):
        store.list(page_token="!!not-a-token!!")


def test_list_ties_on_created_at_ordered_by_id(db, rng):
    s = SqliteGallery(db, clock=lambda: 42.0)
    for name in ["c", "a", "b", "e", "d"]:
        s.enroll(name, name.upper(), None, [tpl(rng)])
    out, token = [], None
    while True:
        page, token = s.list(2, token)
        out += [i.id for i in page]
        if not token:
            break
    assert out == ["a", "b", "c", "d", "e"]
    s.close()


def test_delete(store, rng, db):
    a = store.enroll(None, "A", None, [tpl(rng), tpl(rng)]).identity.id
    b = store.enroll(None, "B", None, [tpl(rng)]).identity.id
    assert store.delete(a) == 2
    assert store.get(a) is None and store.count() == 1 and store.template_count() == 1
    assert [r.identity_id for r in store.iter_templates()] == [b]
    with pytest.raises(NotFound):
        store.delete(a)


def test_delete_leaves_no_embedding_bytes(db, rng):
    s = SqliteGallery(db)
    e = emb(rng)
    iid = s.enroll(None, "Secret", None, [TemplateIn(e, M, V)]).identity.id
    s.enroll(None, "Other", None, [tpl(rng)])
    s.delete(iid)
    s.close()
    raw = b"".join(open(p, "rb").read() for p in (db, db + "-wal") if os.path.exists(p))
    assert e.tobytes() not in raw and b"Secret" not in raw


def test_reopen_keeps_everything_and_migrations_run_once(db, rng):
    s = SqliteGallery(db)
    r = s.enroll(None, "A", {"x": "y"}, [tpl(rng), tpl(rng)], idempotency_key="k1")
    before = [(t.id, t.embedding.tobytes()) for t in s.iter_templates()]
    s.close()
    s2 = SqliteGallery(db)
    assert s2.get(r.identity.id) == r.identity
    assert [(t.id, t.embedding.tobytes()) for t in s2.iter_templates()] == before
    with pytest.raises(IdempotencyConflict):  # idempotency records survive the reopen
        s2.enroll(None, "A", {"x": "y"}, [tpl(rng)], idempotency_key="k1")
    s2.close()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT version FROM schema_migrations").fetchall()
    assert rows == [(v,) for v in range(1, len(store_mod.MIGRATIONS) + 1)]  # once each, despite two opens
    assert con.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT name FROM sqlite_master WHERE name='images'").fetchone() is None
    con.close()


def test_new_migration_applied_on_reopen(db, monkeypatch):
    SqliteGallery(db).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ("CREATE TABLE extra (x INTEGER);",))
    s = SqliteGallery(db)
    assert s.schema_version() == len(store_mod.MIGRATIONS)
    s.close()
    SqliteGallery(db).close()  # would fail ("table extra already exists") if re-applied


def test_failed_migration_rolls_back(db, monkeypatch):
    SqliteGallery(db).close()
    monkeypatch.setattr(
        store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ("CREATE TABLE extra (x INTEGER); SELECT * FROM nope;",)
    )
    with pytest.raises(Exception):
        SqliteGallery(db)
    con = sqlite3.connect(db)
    assert con.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchone() is None
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == len(store_mod.MIGRATIONS) - 1
    con.close()


def test_store_images(db, rng):
    s = SqliteGallery(db, store_images=True)
    r = s.enroll(None, "A", None, [tpl(rng)])
    s.add_image(r.template_ids[0], b"\xff\xd8jpeg")
    with pytest.raises(NotFound):
        s.add_image("nope", b"x")
    s.delete(r.identity.id)
    assert s._conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0  # cascaded
    s.close()


# ----------------------------------------------------------------- idempotency


def test_idempotent_replay(store, rng):
    ts = [tpl(rng)]
    r1 = store.enroll(None, "A", {"m": "1"}, ts, idempotency_key="req-1", request_hash="h1")
    r2 = store.enroll(None, "A", {"m": "1"}, ts, idempotency_key="req-1", request_hash="h1")
    assert r2.replayed and not r1.replayed
    assert r2.identity == r1.identity and r2.template_ids == r1.template_ids and r2.created
    assert store.count() == 1 and store.template_count() == 1
    # Computed hash when the caller gives none: same content -> replay, other content -> conflict.
    r3 = store.enroll(None, "B", None, ts, idempotency_key="req-2")
    assert store.enroll(None, "B", None, ts, idempotency_key="req-2").replayed
    with pytest.raises(IdempotencyConflict):
        store.enroll(None, "B", None, [tpl(rng)], idempotency_key="req-2")
    assert store.count() == 2 and store.get(r3.identity.id).template_count == 1


def test_idempotency_conflict(store, rng):
    store.enroll(None, "A", None, [tpl(rng)], idempotency_key="k", request_hash="h1")
    with pytest.raises(IdempotencyConflict):
        store.enroll(None, "A", None, [tpl(rng)], idempotency_key="k", request_hash="h2")
    assert store.count() == 1 and store.template_count() == 1


def test_replay_returns_first_answer_after_later_changes(store, rng):
    r1 = store.enroll(None, "A", None, [tpl(rng)], idempotency_key="k", request_hash="h")
    store.enroll(r1.identity.id, "Renamed", None, [tpl(rng)])
    r2 = store.enroll(None, "A", None, [tpl(rng)], idempotency_key="k", request_hash="h")
    assert r2.replayed and r2.identity.display_name == "A" and r2.identity.template_count == 1


# ----------------------------------------------------------------- integrity


def _populated(db, rng, n=200):
    s = SqliteGallery(db)
    for i in range(n):
        s.enroll(None, f"person {i}", {"i": str(i)}, [tpl(rng)])
    s.close()  # checkpoints: everything is in the main file


def test_integrity_check_detects_corrupted_pages(tmp_path, db, rng):
    _populated(db, rng)
    bad = str(tmp_path / "bad.db")
    shutil.copy(db, bad)
    size = os.path.getsize(bad)
    page = 4096
    assert size > 10 * page
    with open(bad, "r+b") as f:  # garbage over a few pages in the middle, header intact
        g = np.random.default_rng(7).integers(0, 256, size=3 * page, dtype=np.uint8).tobytes()
        f.seek((size // page // 2) * page)
        f.write(g)
    with pytest.raises(GalleryCorrupt, match="corrupt|integrity"):
        SqliteGallery(bad)
    SqliteGallery(db).close()  # the original is fine


def test_integrity_check_detects_non_database(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(os.urandom(8192))
    with pytest.raises(GalleryCorrupt):
        SqliteGallery(str(p))


# ----------------------------------------------------------------- index


def brute_force(recs, q, k):
    best = {}
    for r in recs:
        d = distance(r.embedding, q)
        if r.identity_id not in best or d < best[r.identity_id][0]:
            best[r.identity_id] = (d, r.id)
    return sorted(((d, iid, tid) for iid, (d, tid) in best.items()))[:k]


def _records(rng, n_ident, per, model=M, version=V):
    recs = []
    for i in range(n_ident):
        for j in range(per):
            recs.append(TemplateRecord(f"t{i}-{j}-{version}", f"id{i}", emb(rng), model, version, None, 0.0))
    return recs


def test_index_equals_brute_force(rng):
    recs = _records(rng, 300, 3)
    idx = GalleryIndex()
    idx.add_records(recs, batch=100)  # several flushes
    assert len(idx) == 900 and idx.identity_count() == 300
    for _ in range(20):
        q = emb(rng)
        for k in (1, 5, 50):
            got = idx.search(q, k, M, V)
            want = brute_force(recs, q, k)
            assert [(m.identity_id, m.template_id) for m in got] == [(w[1], w[2]) for w in want]
            np.testing.assert_allclose([m.distance for m in got], [w[0] for w in want], rtol=1e-9)
    # a probe equal to a stored template is found at distance ~0
    hit = idx.search(recs[10].embedding, 1, M, V)[0]
    assert hit.template_id == recs[10].id and hit.distance < 1e-6


def test_index_many_templates_one_identity(rng):
    # the nearest rows all belong to one identity: the search must widen to find k identities
    centre = emb(rng)
    recs = [TemplateRecord(f"a{j}", "A", centre + 0.001 * emb(rng), M, V, None, 0) for j in range(500)]
    recs += _records(rng, 20, 1)
    idx = GalleryIndex()
    idx.add_records(recs)
    got = idx.search(centre, 5, M, V)
    assert [m.identity_id for m in got] == [w[1] for w in brute_force(recs, centre, 5)]
    assert len(idx.search(centre, 100, M, V)) == 21


def test_index_remove_and_max_distance(rng):
    recs = _records(rng, 50, 2)
    idx = GalleryIndex()
    idx.add_records(recs)
    assert idx.remove_identity("id7") == 2 and idx.remove_identity("id7") == 0
    q = recs[14].embedding  # id7's template
    got = idx.search(q, 50, M, V)
    assert "id7" not in [m.identity_id for m in got] and len(got) == 49
    rest = [r for r in recs if r.identity_id != "id7"]
    assert [m.identity_id for m in got] == [w[1] for w in brute_force(rest, q, 50)]
    assert idx.search(q, 50, M, V, max_distance=0.0).matches == []
    assert len(idx.search(recs[0].embedding, 5, M, V, max_distance=1e-3)) == 1


def test_stale_versions_skipped_and_reported(rng):
    old = _records(rng, 10, 1, version="1")  # id0..id9 enrolled with model v1
    new = _records(rng, 4, 2, version="2")  # id0..id3 re-enrolled with v2
    idx = GalleryIndex()
    idx.add_records(old + new)
    q = old[7].embedding  # identical to id7's v1 template
    res = idx.search(q, 10, M, "2")
    assert {m.identity_id for m in res} == {"id0", "id1", "id2", "id3"}  # v1 templates never compared
    assert all(m.template_id.endswith("-2") for m in res)
    assert res.stale_identities == {f"id{i}" for i in range(4, 10)}
    assert res.skipped_templates == 10 and res.searched_templates == 8
    res1 = idx.search(q, 1, M, "1")
    assert res1[0].identity_id == "id7" and res1.stale_identities == frozenset() and res1.skipped_templates == 8
    # unknown version: nothing compared, every identity is stale
    res3 = idx.search(q, 3, M, "3")
    assert res3.matches == [] and len(res3.stale_identities) == 10
    with pytest.raises(InvalidArgument):
        idx.search(np.zeros(64), 1, M, V)


def test_distance_helper():
    assert distance([0, 0], [3, 4]) == 5.0
    with pytest.raises(InvalidArgument):
        distance([0, 0], [0, 0, 0])


# ----------------------------------------------------------------- facade


def test_gallery_facade_keeps_index_in_step(db, rng):
    g = Gallery.open(db)
    a_emb = emb(rng)
    a = g.enroll(None, "A", None, [TemplateIn(a_emb, M, V)]).identity.id
    b = g.enroll(None, "B", None, [tpl(rng), tpl(rng)], idempotency_key="kb").identity.id
    assert len(g.index) == 3
    assert g.search(a_emb, 1, M, V)[0].identity_id == a
    with pytest.raises(InvalidArgument):
        g.enroll(a, "A", None, [TemplateIn(np.zeros(5), M, V)])
    assert len(g.index) == 3  # failed write: index untouched
    assert g.delete(a) == 1 and len(g.index) == 2
    assert g.search(a_emb, 5, M, V)[0].identity_id == b
    g.close()
    g2 = Gallery.open(db)  # index rebuilt from the store
    assert len(g2.index) == 2 and g2.count() == 1
    assert {m.identity_id for m in g2.search(a_emb, 5, M, V)} == {b}
    g2.close()


def test_gallery_replay_does_not_duplicate_index_rows(db, rng):
    g = Gallery.open(db)
    ts = [tpl(rng)]
    g.enroll(None, "A", None, ts, idempotency_key="k")
    assert g.enroll(None, "A", None, ts, idempotency_key="k").replayed
    assert len(g.index) == 1
    g.close()


def test_concurrent_enroll_and_search(db, rng):
    g = Gallery.open(db)
    embs = emb(rng, 200)
    errors = []

    def writer(part):
        try:
            for e in embs[part::4]:
                g.enroll(None, "x", None, [TemplateIn(e, M, V)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def reader():
        try:
            for e in embs[:50]:
                g.search(e, 3, M, V)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(i,)) for i in range(4)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert g.count() == 200 and len(g.index) == 200
    for e in embs[::20]:
        assert g.search(e, 1, M, V)[0].distance < 1e-6
    g.close()


# ----------------------------------------------------------------- calibration

GEN = [0.1, 0.2, 0.3, 0.4, 0.7]
IMP = [0.35, 0.5, 0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]


def test_roc():
    thr, far, tar = cal.roc(GEN, IMP)
    assert thr[0] == -np.inf and far[0] == 0 and tar[0] == 0
    i = list(thr).index(0.4)
    assert far[i] == 0.1 and tar[i] == 0.8  # 0.35 accepted; 0.1..0.4 accepted
    assert far[-1] == 1.0 and tar[-1] == 1.0
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)


def test_threshold_at_far():
    # FAR 0: strictly below the smallest impostor distance
    t0 = cal.threshold_at_far(GEN, IMP, 0.0)
    assert t0 < 0.35 and t0 == np.nextafter(0.35, 0) and cal.far_at(IMP, t0) == 0.0
    # FAR 0.1 = 1 of 10 impostors: largest threshold is just below the 2nd impostor (0.5)
    t1 = cal.threshold_at_far(GEN, IMP, 0.1)
    assert t1 == np.nextafter(0.5, 0) and cal.far_at(IMP, t1) == 0.1 and cal.far_at(IMP, 0.5) == 0.2
    assert cal.tar_at_far(GEN, IMP, 0.1) == 0.8
    assert cal.tar_at_far(GEN, IMP, 0.3) == 1.0  # t just below 0.8 accepts 0.7
    assert cal.threshold_at_far(GEN, IMP, 0.15) == t1  # floor(1.5) = 1 false accept allowed
    assert cal.threshold_at_far(GEN, IMP, 1.0) == 1.4
    # 1e-3 * 1000 must allow exactly one false accept despite float rounding
    imp = np.arange(1000) / 1000 + 1.0
    assert cal.far_at(imp, cal.threshold_at_far([0.5], imp, 1e-3)) == 1e-3
    with pytest.raises(ValueError):
        cal.threshold_at_far(GEN, IMP, 1.5)
    with pytest.raises(ValueError):
        cal.threshold_at_far([], IMP, 0.1)


def test_auc():
    # pairs (g, i) with g < i: 0.1,0.2,0.3 beat all 10; 0.4 beats 9; 0.7 beats 7 -> 46/50
    assert cal.auc(GEN, IMP) == pytest.approx(46 / 50)
    assert cal.auc([0.5], [0.5]) == 0.5  # tie counts half
    assert cal.auc([0.1, 0.2], [0.3]) == 1.0 and cal.auc([0.3], [0.1, 0.2]) == 0.0


def test_best_accuracy_threshold():
    t, acc = cal.best_accuracy_threshold(GEN, IMP)
    # t=0.3: 3 + 10 = 13/15 and t=0.4: 4 + 9 = 13/15 tie (the smaller wins); t=0.7: 5 + 7 = 12/15
    assert t == 0.3 and acc == pytest.approx(13 / 15)
    t2, acc2 = cal.best_accuracy_threshold([0.9], [0.1])
    assert t2 < 0.1 and acc2 == 0.5  # ties -> smallest threshold (accept nothing)


def test_operating_point_and_json_roundtrip(tmp_path):
    op = cal.operating_point(GEN, IMP, 0.1)
    assert op == cal.OperatingPoint("far_1e-1", 0.1, np.nextafter(0.5, 0), 0.1, 0.8, 5, 10)
    assert cal.far_name(1e-2) == "far_1e-2" and cal.far_name(1e-3) == "far_1e-3" and cal.far_name(0.05) == "far_0.05"
    c = cal.calibrate(GEN, IMP, "dlib_resnet", "1", "hand-made test pairs", onnx_sha256="ab" * 32)
    assert set(c.operating_points) == {"far_1e-2", "far_1e-3"}
    p = tmp_path / "calibration.json"
    cal.save(p, c)
    c2 = cal.load(p)
    assert c2 == c and c2.threshold("far_1e-2") == c.operating_points["far_1e-2"].threshold
    import json

    d = json.loads(p.read_text())
    assert d["embedder"] == {"model_name": "dlib_resnet", "model_version": "1", "onnx_sha256": "ab" * 32}
    assert d["dataset"] == "hand-made test pairs"


def test_a_calibration_holds_only_for_its_embedder():
    c = cal.calibrate(GEN, IMP, "face_multitask", "1", "pairs", onnx_sha256="ab" * 32)
    assert cal.embedder_mismatch(c, "face_multitask", "1", "ab" * 32) is None
    for served in (("dlib_resnet", "1", "ab" * 32), ("face_multitask", "2", "ab" * 32), ("face_multitask", "1", "cd" * 32)):
        problem = cal.embedder_mismatch(c, *served)
        assert problem and "face_multitask version 1" in problem and f"{served[0]} version {served[1]}" in problem
    old = cal.calibrate(GEN, IMP, "face_multitask", "1", "pairs")  # a file from before sha256 was recorded
    assert cal.embedder_mismatch(old, "face_multitask", "1", "cd" * 32) is None
