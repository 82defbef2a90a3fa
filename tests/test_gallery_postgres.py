"""The gallery's store contract on both backends (SQLite, PostgreSQL), and gateways sharing one PostgreSQL.

The PostgreSQL cluster is real (Debian's postgresql, started by the ``postgres`` fixture in a temporary
directory); so are Triton and the photos in the gateway tests. Expected values come from the spec
(store.py's docstrings and docs/SCALING.md): a write is durable once acknowledged, a key replays its first
answer, paging is by (created_at, id), templates are sealed at rest, every gateway sees a change within
PROPAGATION_BOUND_S.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest

from conftest import need, person_photos, start_failure
from mobidem.gallery import Gallery, GalleryError, IdempotencyConflict, InvalidArgument, NotFound, TemplateIn
from mobidem.gallery.backends import open_store
from mobidem.gallery.crypto import TemplateKeyError
from mobidem.gallery.postgres import GalleryUnavailable

M, V = "dlib_resnet", "1"
PROPAGATION_BOUND_S = 1.0
KEY = bytes(range(32))


def emb(rng):
    x = rng.normal(size=128).astype(np.float32)
    return x * np.float32(1.4 / np.linalg.norm(x))


def tpl(rng, version=V):
    return TemplateIn(emb(rng), M, version, 0.5)


class Clock:
    def __init__(self, step=1.0):
        self.t, self.step = 1_700_000_000.0, step

    def __call__(self):
        self.t += self.step
        return self.t


@pytest.fixture
def rng():
    return np.random.default_rng(18)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """-> open(**kw): a store of this backend on one database (reopening opens the same one), raw(): the rows'
    stored embedding bytes."""
    if request.param == "sqlite":
        url = str(tmp_path / "gallery.db")

        def raw():
            with sqlite3.connect(url) as c:
                return [bytes(r[0]) for r in c.execute("SELECT embedding FROM templates")]
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.database()
        name = url.rsplit("/", 1)[1]

        def raw():
            return [bytes(r[0]) for r in pg.execute("SELECT embedding FROM templates", name)]
    opened = []

    def open_(**kw):
        s = open_store(url, **kw)
        opened.append(s)
        return s

    open_.raw, open_.url, open_.kind = raw, url, request.param
    yield open_
    for s in opened:
        s.close()


# --------------------------------------------------------------------------- the store contract, both backends


def test_enroll_get_append_merge(backend, rng):
    s = backend(clock=Clock())
    r = s.enroll("ada", "Ada", {"team": "x"}, [tpl(rng)])
    assert r.created and not r.replayed and len(r.template_ids) == 1
    assert (r.identity.id, r.identity.display_name, r.identity.metadata) == ("ada", "Ada", {"team": "x"})
    r2 = s.enroll("ada", None, {"room": "7"}, [tpl(rng), tpl(rng, "2")], merge_metadata=True)
    assert not r2.created and len(r2.template_ids) == 2
    got = s.get("ada")
    assert got.display_name == "Ada" and got.metadata == {"team": "x", "room": "7"}
    assert got.template_count == 3
    assert [(m.model_name, m.model_version, m.template_count) for m in got.model_versions] == [(M, "1", 2), (M, "2", 1)]
    assert got.updated_at > got.created_at
    assert s.get("nobody") is None
    assert s.count() == 1 and s.template_count() == 3


def test_invalid_enrolment_changes_nothing(backend, rng):
    s = backend()
    with pytest.raises(InvalidArgument, match="display_name is required"):
        s.enroll("ghost", None, None, [tpl(rng)])
    with pytest.raises(InvalidArgument, match="dimension|128"):
        s.enroll("x", "X", None, [TemplateIn(np.zeros(64, np.float32), M, V)])
    assert s.count() == 0 and s.template_count() == 0


def test_embeddings_round_trip_exactly(backend, rng):
    s = backend()
    t = tpl(rng)
    r = s.enroll(None, "A", None, [t])
    [rec] = list(s.iter_templates())
    assert rec.id == r.template_ids[0] and rec.identity_id == r.identity.id
    assert rec.embedding.dtype == np.float32 and rec.embedding.tobytes() == t.embedding.tobytes()
    assert (rec.model_name, rec.model_version, rec.quality) == (M, V, 0.5)


def test_paging_by_created_at_then_id(backend, rng):
    s = backend(clock=lambda: 42.0)  # all at the same instant: the order is the ids' byte order
    for i in ["b", "a", "C", "c", "e"]:
        s.enroll(i, i.upper(), None, [tpl(rng)])
    pages, token = [], None
    while True:
        page, token = s.list(2, token)
        pages.append([i.id for i in page])
        if not token:
            break
    assert pages == [["C", "a"], ["b", "c"], ["e"]]
    with pytest.raises(InvalidArgument, match="page_token"):
        s.list(2, "not-a-token")


def test_idempotency_replay_conflict_and_deleted(backend, rng):
    s = backend(clock=Clock())
    t = [tpl(rng)]
    first = s.enroll(None, "Ada", None, t, idempotency_key="k1")
    again = s.enroll(None, "Ada", None, t, idempotency_key="k1")
    assert again.replayed and again.identity.id == first.identity.id and again.template_ids == first.template_ids
    assert s.count() == 1 and s.template_count() == 1
    with pytest.raises(IdempotencyConflict, match="k1"):
        s.enroll(None, "Bob", None, [tpl(rng)], idempotency_key="k1")
    assert s.delete(first.identity.id) == 1
    with pytest.raises(NotFound, match="since been deleted"):
        s.enroll(None, "Ada", None, t, idempotency_key="k1")
    assert s.count() == 0


def test_delete(backend, rng):
    s = backend()
    s.enroll("ada", "Ada", None, [tpl(rng), tpl(rng)])
    s.enroll("bob", "Bob", None, [tpl(rng)])
    assert s.delete("ada") == 2
    assert s.get("ada") is None and s.count() == 1 and s.template_count() == 1
    with pytest.raises(NotFound):
        s.delete("ada")


def test_durable_across_reopen(backend, rng):
    s = backend()
    t = tpl(rng)
    s.enroll("ada", "Ada", {"k": "v"}, [t])
    s.close()
    s2 = backend()
    assert s2.get("ada").metadata == {"k": "v"}
    assert [r.embedding.tobytes() for r in s2.iter_templates()] == [t.embedding.tobytes()]


def test_templates_sealed_at_rest(backend, rng):
    s = backend(template_key=KEY)
    t = tpl(rng)
    s.enroll("ada", "Ada", None, [t])
    [stored] = backend.raw()
    assert len(stored) == 4 * 128 and stored != t.embedding.tobytes()
    assert next(s.iter_templates()).embedding.tobytes() == t.embedding.tobytes()
    s.close()
    with pytest.raises(TemplateKeyError, match="no template key"):
        backend()
    with pytest.raises(TemplateKeyError, match="wrong key"):
        backend(template_key=bytes(32))


def test_plaintext_rows_are_sealed_when_a_key_is_set(backend, rng):
    s = backend()
    t = tpl(rng)
    s.enroll("ada", "Ada", None, [t])
    assert backend.raw() == [t.embedding.tobytes()]
    s.close()
    s2 = backend(template_key=KEY)
    assert backend.raw() != [t.embedding.tobytes()]
    assert next(s2.iter_templates()).embedding.tobytes() == t.embedding.tobytes()


def test_gallery_search_and_versions(backend, rng):
    g = Gallery(backend())
    a, b = tpl(rng), tpl(rng, "2")
    g.enroll("ada", "Ada", None, [a])
    g.enroll("bob", "Bob", None, [b])
    res = g.search(a.embedding, 2, M, V)
    assert [m.identity_id for m in res.matches] == ["ada"] and res.matches[0].distance == 0.0
    assert res.stale_identities == {"bob"} and res.skipped_templates == 1
    assert g.display_name("ada") == "Ada"
    g.delete("ada")
    assert g.search(a.embedding, 1, M, V).matches == []
    g.close()


# --------------------------------------------------------------------------- PostgreSQL: the change log


def wait_for(predicate, bound: float) -> float:
    """Seconds until predicate() held, polling every ms; fails after ``bound``."""
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > bound:
            raise AssertionError(f"not within {bound} s")
        time.sleep(0.001)
    return time.perf_counter() - t0


def test_two_gallery_processes_follow_each_other(postgres, rng):
    url = postgres.database()
    a, b = Gallery.from_url(url), Gallery.from_url(url)
    try:
        delays = []
        for i in range(40):
            t = tpl(rng)
            r = a.enroll(None, f"P{i}", None, [t])
            delays.append(wait_for(lambda: any(m.identity_id == r.identity.id for m in b.search(t.embedding, 1, M, V)),
                                   PROPAGATION_BOUND_S))
            assert b.display_name(r.identity.id) == f"P{i}"
        deleted = []
        for r in list(a.store.list(5)[0]):
            a.delete(r.id)
            deleted.append(r.id)
        assert wait_for(lambda: b.index.identity_count() == 35, PROPAGATION_BOUND_S) <= PROPAGATION_BOUND_S
        delays.sort()
        p50, p99 = statistics.median(delays), delays[int(0.99 * (len(delays) - 1))]
        print(f"store-level propagation over {len(delays)} enrolments: p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")
        assert len(b.index) == len(a.index) == 35
    finally:
        a.close()
        b.close()


def test_restarted_follower_catches_up(postgres, rng):
    url = postgres.database()
    a = Gallery.from_url(url)
    b = Gallery.from_url(url)
    kept = tpl(rng)
    a.enroll("old", "Old", None, [tpl(rng)])
    wait_for(lambda: b.index.identity_count() == 1, PROPAGATION_BOUND_S)
    b.close()  # b misses everything below
    a.enroll("new", "New", None, [kept])
    a.delete("old")
    b = Gallery.from_url(url)
    try:
        assert [m.identity_id for m in b.search(kept.embedding, 5, M, V).matches] == ["new"]
        assert b.follower.applied_seq == a.follower.applied_seq == a.store.last_seq() == 3
    finally:
        a.close()
        b.close()


def test_a_follower_behind_a_trimmed_change_log_reloads_a_snapshot(postgres, rng):
    """Change-log retention (``trim_changes``): the log drops what is older than the retention but keeps its
    newest change; a gateway whose follower had not applied the dropped changes (it was offline) reloads its
    index from a snapshot and then holds exactly the store's identities; one that had applied them reads on
    from the log without a reload."""
    url = postgres.database()
    clock = Clock()
    a, b = Gallery.from_url(url, clock=clock), Gallery.from_url(url, clock=clock)
    try:
        gone, new = tpl(rng), tpl(rng)
        a.enroll("old", "Old", None, [tpl(rng)])
        a.enroll("gone", "Gone", None, [gone])
        wait_for(lambda: b.index.identity_count() == 2, PROPAGATION_BOUND_S)
        b.follower.stop()  # b is offline from here on; it has applied seq 2
        assert b.follower.applied_seq == 2
        a.enroll("new", "New", None, [new])  # seq 3
        a.delete("gone")  # 4
        a.enroll("last", "Last", None, [tpl(rng)])  # 5
        assert a.store.trim_changes(3600.0) == 0  # nothing is an hour old
        assert a.store.trim_changes(0.0) == 4  # every change but the newest
        assert a.store.trim_changes(0.0) == 0 and a.store.last_seq() == 5
        b.follower.catch_up()
        assert [m.identity_id for m in b.search(new.embedding, 1, M, V).matches] == ["new"]
        assert "gone" not in [m.identity_id for m in b.search(gone.embedding, 5, M, V).matches]
        assert b.index.identity_count() == 3
        assert b.follower.reloads == 1 and b.follower.applied_seq == 5
        assert b.display_name("new") == "New" and b.display_name("gone") == ""
        a.enroll("later", "Later", None, [tpl(rng)])  # 6: a had applied everything and reads on from the log
        assert a.follower.reloads == 0 and a.index.identity_count() == 4
        b.follower.catch_up()
        assert b.follower.reloads == 1 and b.index.identity_count() == 4
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- index snapshot files (gallery/snapshot.py)


def same_answers(x: Gallery, y: Gallery, probes) -> None:
    """Both galleries hold the same identities and answer every probe identically (ids, distances, templates)."""
    assert (len(x.index), x.index.identity_count()) == (len(y.index), y.index.identity_count())
    for version, e in probes:
        rx, ry = x.search(e, 3, M, version), y.search(e, 3, M, version)
        assert rx.matches == ry.matches and rx.stale_identities == ry.stale_identities
        for m in rx.matches:
            assert x.display_name(m.identity_id) == y.display_name(m.identity_id)


def test_a_gateway_starts_from_an_index_snapshot_and_the_changes_after_it(postgres, rng, tmp_path):
    """docs/SCALING.md: a gateway with ``snapshot_path`` reads its index from the file and then, before it
    serves, every change committed after the snapshot's; it answers exactly as a gateway that read every
    template from the database. With a template key the file holds no embedding in the clear."""
    url, path = postgres.database(), tmp_path / "index.snap"
    a = Gallery.from_url(url, template_key=KEY)
    b = full = None
    try:
        kept = {}
        for i in range(30):
            ts = [tpl(rng, "2" if i % 7 == 0 else V) for _ in range(1 + i % 3)]
            kept[f"p{i}"] = ts
            a.enroll(f"p{i}", f"Person {i}", None, ts)
        a.delete("p3")
        seq, size = a.write_snapshot(str(path))
        assert seq == a.store.last_seq() == 31 and size == path.stat().st_size
        assert path.stat().st_mode & 0o777 == 0o600
        data = path.read_bytes()
        assert not any(t.embedding.tobytes()[:64] in data for ts in kept.values() for t in ts)
        late, extra = tpl(rng), tpl(rng)
        a.enroll("late", "Late", None, [late])  # after the snapshot: a new identity,
        a.enroll("p5", None, None, [extra])  # a template added to one in it,
        a.delete("p8")  # a deletion of one in it,
        a.enroll("p9", "Renamed", None, [tpl(rng)])  # a new display name
        b = Gallery.from_url(url, template_key=KEY, snapshot_path=str(path))
        assert (b.loaded_from, b.snapshot_refused) == ("snapshot", "")
        # no waiting: everything after the snapshot is applied before the constructor returns
        assert b.follower.applied_seq == a.store.last_seq() == 35
        assert [m.identity_id for m in b.search(late.embedding, 1, M, V).matches] == ["late"]
        assert b.search(extra.embedding, 1, M, V).matches[0].identity_id == "p5"
        assert "p8" not in [m.identity_id for t in kept["p8"] for m in b.search(t.embedding, 5, M, t.model_version).matches]
        assert b.display_name("p9") == "Renamed" and b.display_name("p8") == ""
        full = Gallery.from_url(url, template_key=KEY)
        assert full.loaded_from == "database"
        probes = [(t.model_version, t.embedding) for ts in kept.values() for t in ts] + [(V, late.embedding)]
        probes += [(V, emb(rng)) for _ in range(20)]
        same_answers(b, full, probes)
        c = tpl(rng)  # and it follows the log from there on, as any gateway
        a.enroll("after", "After", None, [c])
        wait_for(lambda: b.search(c.embedding, 1, M, V).matches[:1] != [] and
                 b.search(c.embedding, 1, M, V).matches[0].identity_id == "after", PROPAGATION_BOUND_S)
    finally:
        for g in (a, b, full):
            if g is not None:
                g.close()


def test_an_index_snapshot_that_does_not_fit_the_database_is_refused(postgres, rng, tmp_path):
    """A snapshot of another database, one whose last change left the log, an altered, truncated or
    unsealed one: the gateway says why, reads every template from the database instead, and answers as a
    gateway without a snapshot."""
    url, other = postgres.database(), postgres.database()
    a = Gallery.from_url(url, template_key=KEY)
    o = Gallery.from_url(other, template_key=KEY)
    opened = [a, o]
    try:
        for i in range(6):
            a.enroll(f"a{i}", f"A{i}", None, [tpl(rng)])
            o.enroll(f"a{i}", f"O{i}", None, [tpl(rng)])  # same ids, same seqs, other changes
        snap = tmp_path / "a.snap"
        assert a.write_snapshot(str(snap))[0] == 6
        good = snap.read_bytes()
        head_end = good.index(b"}") + 1

        def start(db, key=KEY, **kw):
            g = Gallery.from_url(db, template_key=key, snapshot_path=str(snap), **kw)
            opened.append(g)
            return g

        def refused(db, why, source, key=KEY):
            g = start(db, key)
            assert g.loaded_from == "database" and why in g.snapshot_refused, g.snapshot_refused
            same_answers(g, source, [(V, emb(rng)) for _ in range(5)])
            return g

        assert start(url).loaded_from == "snapshot"  # the file as written fits
        refused(other, "holds '6 upsert a5", o)  # another database whose change 6 differs
        for where, what in ((head_end + 100, "does not open with the template key"),  # a piece of the arrays
                            (good.index(b'"created_at": ') + 15, "does not open with the template key"),  # header
                            (good.index(b'"seq": 6') + 7, "no longer holds that change")):  # seq 6 -> 7
            snap.write_bytes(good[:where] + bytes([good[where] ^ 1]) + good[where + 1:])
            refused(url, what, a)
        snap.write_bytes(good[:-100])
        refused(url, "truncated", a)
        snap.write_bytes(good)
        a.enroll("a6", "A6", None, [tpl(rng)])
        a.store.trim_changes(0.0)  # change 6 leaves the log
        refused(url, "no longer holds that change", a)
        plain = Gallery.from_url(postgres.database())  # no key: a plaintext snapshot, with checksums
        opened.append(plain)
        plain.enroll("x", "X", None, [tpl(rng)])
        plain.write_snapshot(str(snap))
        refused(url, "not sealed", a)
        snap.unlink()
        g = refused(url, "no snapshot file", a)
        sqlite = open_store(str(tmp_path / "g.db"))
        with pytest.raises(GalleryError, match="needs a gallery shared through a change log"):
            Gallery(sqlite, snapshot_path=str(snap))
        sqlite.close()
        assert g.loaded_from == "database"
    finally:
        for g in opened:
            g.close()


def test_a_gateway_writes_its_index_snapshot_when_it_changed(postgres, rng, tmp_path):
    url, path = postgres.database(), tmp_path / "index.snap"
    a = Gallery.from_url(url, snapshot_path=str(path), snapshot_interval_s=0.05)
    b = None
    try:
        a.enroll("x", "X", None, [tpl(rng)])
        wait_for(lambda: path.exists(), 5)
        a.enroll("y", "Y", None, [tpl(rng)])
        from mobidem.gallery import snapshot

        wait_for(lambda: snapshot.describe(path)["seq"] == 2, 5)
        b = Gallery.from_url(url, snapshot_path=str(path))
        assert b.loaded_from == "snapshot" and b.index.identity_count() == 2
    finally:
        a.close()
        if b is not None:
            b.close()


def test_the_approximate_index_travels_in_the_snapshot(postgres, rng, tmp_path, caplog):
    """gallery_ann: a gateway that read every template trains the IVF index (gallery/ann.py); the snapshot it
    writes carries it, so the next gateway starts without training and answers as the first; a gateway
    without gallery_ann reads the same file and searches exactly."""
    need(importlib.util.find_spec("faiss") is not None, "FAISS is not installed (make test installs it: mobidem[ann])")
    from mobidem.gallery import AnnConfig

    url, path = postgres.database(), tmp_path / "index.snap"
    ann = AnnConfig(min_templates=1000, nprobe=8)
    seed = Gallery.from_url(url)
    people = {f"p{i}": [tpl(rng) for _ in range(40)] for i in range(30)}  # 1,200 templates
    for pid, ts in people.items():
        seed.enroll(pid, pid.upper(), None, ts)
    seed.close()
    opened = []
    try:
        with caplog.at_level("INFO", logger="mobidem.gallery"):
            a = Gallery.from_url(url, ann=ann)
            opened.append(a)
            assert "approximate search trained for dlib_resnet:1" in caplog.text
            assert a.index._segments[(M, V)].accel is not None
            a.write_snapshot(str(path))
            late = tpl(rng)
            a.enroll("late", "Late", None, [late])
            a.delete("p7")
            caplog.clear()
            b = Gallery.from_url(url, ann=ann, snapshot_path=str(path))
            opened.append(b)
            assert b.loaded_from == "snapshot" and "approximate search trained" not in caplog.text
        exact = Gallery.from_url(url, snapshot_path=str(path))
        opened.append(exact)
        assert exact.loaded_from == "snapshot" and exact.index._segments[(M, V)].accel is None
        assert b.index._segments[(M, V)].accel.ivf.ntotal == len(b.index) == 1200 - 40 + 1
        probes = [t.embedding + rng.normal(0, 0.02, 128).astype(np.float32) for ts in people.values() for t in ts[:3]]
        for q in probes + [late.embedding]:  # the same accelerator: the same answers
            assert b.search(q, 3, M, V).matches == a.search(q, 3, M, V).matches
        for g in (a, b, exact):
            assert g.search(late.embedding, 1, M, V).matches[0].identity_id == "late"
            assert "p7" not in {m.identity_id for t in people["p7"] for m in g.search(t.embedding, 3, M, V).matches}
    finally:
        for g in opened:
            g.close()


def terminate_backends(postgres, url) -> int:
    name = url.rsplit("/", 1)[1]
    rows = postgres.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_backend_pid()", params=(name,))
    return len(rows)


def test_killed_connections_recover_and_nothing_is_missed(postgres, rng):
    url = postgres.database()
    a, b = Gallery.from_url(url), Gallery.from_url(url)
    try:
        wait_for(lambda: b.follower.connected and a.follower.connected, 5)
        assert terminate_backends(postgres, url) >= 4  # both pools and both LISTEN connections
        t = tpl(rng)
        r = a.enroll(None, "After", None, [t])  # the pool replaces its dead connection; nothing to retry
        delay = wait_for(lambda: b.search(t.embedding, 1, M, V).matches != [], 5)
        print(f"visible on the other gallery {delay * 1000:.0f} ms after its LISTEN connection was killed")
        assert b.follower.reconnects >= 1
        assert b.search(t.embedding, 1, M, V).matches[0].identity_id == r.identity.id
    finally:
        a.close()
        b.close()


def test_lost_database_fails_writes_unavailable_and_keeps_acknowledged_ones(postgres, rng):
    url = postgres.database()
    name = url.rsplit("/", 1)[1]
    g = Gallery.from_url(url, timeout_s=1.0)
    try:
        t = tpl(rng)
        g.enroll("ada", "Ada", None, [t], idempotency_key="k")
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        terminate_backends(postgres, url)
        with pytest.raises(GalleryUnavailable, match="unavailable.*retry it"):
            g.enroll("bob", "Bob", None, [tpl(rng)])
        assert g.search(t.embedding, 1, M, V).matches[0].identity_id == "ada"  # search needs no database
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        t0 = time.perf_counter()
        while True:  # the pool reconnects with back-off
            try:
                replay = g.enroll("ada", "Ada", None, [t], idempotency_key="k")
                break
            except GalleryUnavailable:
                assert time.perf_counter() - t0 < 15
                time.sleep(0.2)
        assert replay.replayed
        assert g.enroll("bob", "Bob", None, [tpl(rng)]).created
        assert g.count() == 2
    finally:
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        g.close()


def test_unreachable_url_says_what_to_fix():
    with pytest.raises(GalleryUnavailable, match=r"cannot connect to the gallery database .*check gallery_url"):
        Gallery.from_url("postgresql://postgres:secret@127.0.0.1:1/nowhere", timeout_s=1.0)
    try:
        Gallery.from_url("postgresql://postgres:secret@127.0.0.1:1/nowhere", timeout_s=1.0)
    except GalleryUnavailable as exc:
        assert "secret" not in str(exc)
    with pytest.raises(InvalidArgument, match="scheme 'mysql'"):
        open_store("mysql://x/y")


# --------------------------------------------------------------------------- gateways on one PostgreSQL


def identified(client, photo, identity_id) -> bool:
    """Whether Identify of ``photo`` names ``identity_id`` as known. The tests probe with the enrolled photo
    itself: what they measure is propagation, not recognition (docs/accuracy.json has that)."""
    m = client.identify(photo, top_k=1, probe_face_index=0).match
    return m.known and m.identity_id == identity_id


def test_two_gateways_share_one_gallery(faces, postgres, start_server):
    url = postgres.database()
    ga, gb = start_server(gallery_url=url), start_server(gallery_url=url)
    people = sorted(p.name for p in (faces / "identities").iterdir())[:6]
    delays = []
    with ga.client() as ca, gb.client() as cb:
        for person in people:
            photos = person_photos(faces, person)
            r = ca.enroll(person, [photos[0]], face_index=0)
            t0 = time.perf_counter()
            while not identified(cb, photos[0], r.identity.id):  # each try is a full Identify through Triton
                assert time.perf_counter() - t0 < PROPAGATION_BOUND_S, f"{person} not identifiable on B"
            delays.append(time.perf_counter() - t0)
        print("gateway A enrol -> gateway B Identify: " + ", ".join(f"{d * 1000:.0f}" for d in delays) + " ms")
        assert cb.get_identity(r.identity.id).display_name == people[-1]

        # a deletion acknowledged on B: A no longer matches it within the bound
        photos = person_photos(faces, people[0])
        first = next(i for i in ca.list_identities() if i.display_name == people[0])
        cb.delete_identity(first.id)
        t0 = time.perf_counter()
        while identified(ca, photos[0], first.id):
            assert time.perf_counter() - t0 < PROPAGATION_BOUND_S
        assert not identified(cb, photos[0], first.id)


def test_restarted_gateway_catches_up_and_survives_killed_connections(faces, postgres, start_server, tmp_path):
    url = postgres.database()
    ga, gb = start_server(gallery_url=url), start_server(gallery_url=url)
    p1, p2 = sorted(p.name for p in (faces / "identities").iterdir())[6:8]
    ph1, ph2 = person_photos(faces, p1), person_photos(faces, p2)
    with ga.client() as ca:
        r1 = ca.enroll(p1, [ph1[0]], face_index=0)
    gb.stop()  # B misses what follows
    snap = tmp_path / "index.snap"  # an index snapshot written by the command a cron job runs, before the rest
    done = subprocess.run([sys.executable, "-m", "mobidem.cli", "gallery", "snapshot", "--out", str(snap)],
                          env=dict(os.environ, MOBIDEM_GALLERY_URL=url, MOBIDEM_DATA_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 templates of 1 identities up to change 1" in done.stdout, done.stderr
    with ga.client() as ca:
        r2 = ca.enroll(p2, [ph2[0]], face_index=0)
        ca.delete_identity(r1.identity.id)
    gb2 = start_server(gallery_url=url, gallery_snapshot_path=snap)  # starts from it, then reads the log
    assert gb2.server.gallery.loaded_from == "snapshot"
    with gb2.client() as cb:
        assert identified(cb, ph2[0], r2.identity.id)
        assert not identified(cb, ph1[0], r1.identity.id)
        n = terminate_backends(postgres, url)
        assert n >= 4
        with ga.client() as ca:
            r3 = ca.enroll(p1, [ph1[0]], face_index=0)  # A's pool replaces the dead connections
        t0 = time.perf_counter()
        while not identified(cb, ph1[0], r3.identity.id):
            assert time.perf_counter() - t0 < 5.0, "B did not recover its LISTEN connection"
        print(f"after pg_terminate_backend of {n} connections: visible on B in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")


def test_gateway_with_a_lost_database_answers_unavailable(faces, postgres, start_server):
    url = postgres.database()
    name = url.rsplit("/", 1)[1]
    g = start_server(gallery_url=url, gallery_timeout_s=1)
    p = sorted(x.name for x in (faces / "identities").iterdir())[8]
    photos = person_photos(faces, p)
    with g.client() as c:
        r = c.enroll(p, [photos[0]], face_index=0)
        try:
            postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            terminate_backends(postgres, url)
            with pytest.raises(grpc.RpcError) as err:
                c.enroll(p, [photos[0]], face_index=0)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "gallery database" in err.value.details() and "retry" in err.value.details()
            assert identified(c, photos[0], r.identity.id)  # identification goes on from memory
            with urllib.request.urlopen(f"http://127.0.0.1:{g.server.metrics_port}/metrics", timeout=10) as resp:
                text = resp.read().decode()  # the scrape does not need the database either
            assert any(line.startswith("mobidem_gallery_identities") and line.endswith(" 1.0")
                       for line in text.splitlines()), [ln for ln in text.splitlines() if "gallery" in ln]
        finally:
            postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        t0 = time.perf_counter()
        while True:  # UNAVAILABLE means retry: the pool reconnects with back-off once the database is back
            try:
                again = c.enroll(p, [photos[0]], face_index=0, identity_id=r.identity.id)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.perf_counter() - t0 < 15, exc
                time.sleep(0.2)
        print(f"writes accepted again {(time.perf_counter() - t0) * 1000:.0f} ms after the database came back")
        assert again.identity.template_count == 2


def test_server_refuses_to_start_on_an_unreachable_gallery(triton, tmp_path):
    exc = start_failure(triton, tmp_path, gallery_url="postgresql://postgres@127.0.0.1:1/mobidem",
                        gallery_timeout_s=1)
    assert exc is not None and "cannot connect to the gallery database" in str(exc)
    assert "check gallery_url" in str(exc)


def test_concurrent_writers_on_two_gateways_leave_every_index_complete(postgres):
    """Sequence order must be commit order: a follower that skipped a change committed late (a lower seq
    seen after a higher one) would miss its templates for good."""
    import threading

    url = postgres.database()
    a, b = Gallery.from_url(url, pool_size=4), Gallery.from_url(url, pool_size=4)
    errors = []

    def writer(g, n, seed):
        r = np.random.default_rng(seed)
        try:
            for i in range(n):
                g.enroll(None, f"W{seed}-{i}", None, [tpl(r), tpl(r)])
                if i % 5 == 4:
                    g.delete(g.enroll(None, "tmp", None, [tpl(r)]).identity.id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(g, 20, s)) for s, g in enumerate([a, b, a, b, a, b])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        expected = a.store.template_count()
        assert expected == 6 * 20 * 2 and a.store.count() == 120
        for g in (a, b):
            wait_for(lambda: len(g.index) == expected, PROPAGATION_BOUND_S + 1)
            assert g.index.identity_count() == 120
        time.sleep(1.5)  # a later catch-up must not add anything twice
        assert len(a.index) == len(b.index) == expected
    finally:
        a.close()
        b.close()
