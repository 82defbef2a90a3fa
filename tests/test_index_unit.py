"""Unit tests of the gallery's in-memory index (gallery/index.py), written for the survivors of the
mutation run at deb9509 (docs/TESTING.md). Expected values are worked by hand from the module's
docstring: Euclidean ||e - q||, cosine 1 - e.q / (|e| |q|), exact top-k distinct identities, one
segment per embedder version, float32 storage, batches of ``batch`` records per copy."""

from __future__ import annotations

import numpy as np
import pytest

from mobidem.gallery import GalleryIndex, InvalidArgument, TemplateRecord, distance

M, V = "dlib_resnet", "1"


def rec(tid, ident, e, model=M, version=V):
    return TemplateRecord(tid, ident, np.asarray(e, np.float32), model, version, None, 0.0)


def test_distance_by_hand_in_both_metrics():
    # 3-4-5 triangle; cosine of orthogonal vectors is 0, of opposite ones -1, independent of length
    assert distance([0, 0], [3, 4]) == 5.0
    assert distance([1, 0], [0, 7], "cosine") == pytest.approx(1.0)
    assert distance([1, 0], [5, 0], "cosine") == pytest.approx(0.0, abs=1e-12)
    assert distance([2, 0], [-3, 0], "cosine") == pytest.approx(2.0)
    assert distance([3, 4], [4, 3], "cosine") == pytest.approx(1 - 24 / 25)
    # any shape with the same number of values; float64 arithmetic (float32 would round 1e8 + 1)
    assert distance(np.array([[0.0, 0.0]]), np.array([[3.0], [4.0]])) == 5.0
    assert distance([1e8 + 1, 0], [1e8, 0]) == 1.0


def test_distance_errors_say_what_is_wrong():
    with pytest.raises(InvalidArgument, match=r"^embedding dimension mismatch: 2 vs 3$"):
        distance([1, 2], [1, 2, 3])
    with pytest.raises(InvalidArgument) as e:
        distance([1, 2], [1, 2], "manhattan")
    assert str(e.value) == "unknown embedding metric 'manhattan'; known: euclidean, cosine"


def test_cosine_search_ranks_and_reports_one_minus_cosine():
    idx = GalleryIndex(dim=2)
    # lengths differ on purpose: cosine ignores them, so the longest vector is not the nearest
    idx.add_records([rec("t-a", "a", [10, 0]), rec("t-b", "b", [3, 4]), rec("t-c", "c", [0, 0.5]),
                     rec("t-d", "d", [-1, 0])])
    res = idx.search([2, 0], k=4, model_name=M, model_version=V, metric="cosine")
    assert [m.identity_id for m in res.matches] == ["a", "b", "c", "d"]
    assert [m.distance for m in res.matches] == pytest.approx([0.0, 1 - 3 / 5, 1.0, 2.0], abs=1e-9)
    assert [m.template_id for m in res.matches] == ["t-a", "t-b", "t-c", "t-d"]
    # the same gallery in Euclidean order: c (|(2,-.5)| = 2.06), d (3), b (|(-1,-4)| = 4.12), a (8)
    res = idx.search([2, 0], k=4, model_name=M, model_version=V)
    assert [m.identity_id for m in res.matches] == ["c", "d", "b", "a"]
    assert [m.distance for m in res.matches] == pytest.approx([17 ** 0.5 / 2, 3.0, 17 ** 0.5, 8.0])
    assert idx.identity_distance([0, 1], "b", M, V, metric="cosine") == pytest.approx(1 - 4 / 5)
    with pytest.raises(InvalidArgument) as e:
        idx.search([0, 0], model_name=M, model_version=V, metric="cosine")
    assert str(e.value) == "a zero embedding has no direction to compare by cosine"


def test_cosine_candidates_are_pruned_by_cosine_not_by_length():
    """More rows than the candidate window (32): the pre-ranking must use the metric too."""
    rng = np.random.default_rng(7)
    idx = GalleryIndex(dim=8)
    embs = rng.normal(size=(300, 8)) * rng.uniform(0.1, 50, size=(300, 1))
    idx.add_records([rec(f"t{i}", f"id{i}", e) for i, e in enumerate(embs)])
    for q in rng.normal(size=(5, 8)) * np.array([[0.01], [1], [3], [100], [1000]]):
        cos = 1 - embs @ q / (np.linalg.norm(embs, axis=1) * np.linalg.norm(q))
        res = idx.search(q, k=3, model_name=M, model_version=V, metric="cosine")
        assert [m.identity_id for m in res.matches] == [f"id{i}" for i in np.argsort(cos)[:3]]
        assert [m.distance for m in res.matches] == pytest.approx(np.sort(cos)[:3], abs=1e-6)


def test_euclidean_candidates_with_unequal_norms():
    """Rows of very different lengths: a pre-ranking that mis-weights |e|^2, e.q or |q|^2 picks the
    wrong candidates (unit-length galleries hide it)."""
    rng = np.random.default_rng(3)
    idx = GalleryIndex(dim=8)
    embs = rng.normal(size=(400, 8)) * rng.uniform(0.1, 20, size=(400, 1))
    idx.add_records([rec(f"t{i}", f"id{i}", e) for i, e in enumerate(embs)])
    for q in rng.normal(size=(6, 8)) * np.array([[0.1], [1], [2], [5], [10], [20]]):
        d = np.linalg.norm(embs - q, axis=1)
        res = idx.search(q, k=5, model_name=M, model_version=V)
        assert [m.identity_id for m in res.matches] == [f"id{i}" for i in np.argsort(d)[:5]]
        assert [m.distance for m in res.matches] == pytest.approx(np.sort(d)[:5], rel=1e-6)


def test_exactly_one_row_more_than_the_candidate_window():
    # 33 rows, k=1: the window is 32 rows, the nearest is row 0 (distance 0)
    idx = GalleryIndex(dim=2)
    idx.add_records([rec(f"t{i}", f"id{i}", [i, 0]) for i in range(33)])
    for target in (0, 16, 32):
        assert idx.search([target, 0], model_name=M, model_version=V).matches[0].identity_id == f"id{target}"


def test_kth_identity_just_outside_the_candidate_window():
    """The 31 nearest rows hold 7 identities; the 32nd nearest row is the 8th identity. Top-8 must
    hold it and not a farther one, whatever order the partition leaves the rest in."""
    rng = np.random.default_rng(11)
    for trial in range(40):  # the partition's leftover order varies; some orders drop the 32nd row
        recs = [rec(f"n{i}", f"near{i % 7}", [i * 0.01, 0]) for i in range(31)]
        recs.append(rec("x", "eighth", [1.0, 0]))
        recs += [rec(f"f{i}", f"far{i}", [2.0 + i * 0.01, 0]) for i in range(60)]
        order = rng.permutation(len(recs))
        idx = GalleryIndex(dim=2)
        idx.add_records([recs[i] for i in order])
        res = idx.search([0, 0], k=8, model_name=M, model_version=V)
        assert [m.identity_id for m in res.matches][-1] == "eighth"
        assert res.matches[-1].distance == pytest.approx(1.0)


def test_max_distance_keeps_a_match_exactly_at_it():
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-a", "a", [3, 4]), rec("t-b", "b", [6, 8])])
    res = idx.search([0, 0], k=2, model_name=M, model_version=V, max_distance=5.0)
    assert [(m.identity_id, m.distance) for m in res.matches] == [("a", 5.0)]


def test_search_defaults_k_one_and_the_empty_version():
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-a", "a", [0, 0], "", ""), rec("t-b", "b", [1, 0], "", "")])
    res = idx.search([0.1, 0])
    assert [m.identity_id for m in res.matches] == ["a"]
    # a probe of shape (1, dim) is one embedding
    assert idx.search(np.array([[0.9, 0]], np.float32)).matches[0].identity_id == "b"


def test_search_argument_errors_say_what_to_fix():
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-a", "a", [0, 0])])
    cases = [
        ({"embedding": [0, 0, 0]}, "embedding dimension mismatch: got 3, index has 2"),
        ({"embedding": [np.nan, 0]}, "embedding contains NaN or infinity"),
        ({"embedding": [0, 0], "k": 0}, "k must be a positive integer"),
        ({"embedding": [0, 0], "k": -3}, "k must be a positive integer"),
        ({"embedding": [0, 0], "k": True}, "k must be a positive integer"),
        ({"embedding": [0, 0], "k": 1.0}, "k must be a positive integer"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(InvalidArgument) as e:
            idx.search(model_name=M, model_version=V, **kwargs)
        assert str(e.value) == msg, kwargs


def test_only_restricts_the_search_to_named_identities():
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-a", "a", [0, 0]), rec("t-b", "b", [1, 0]), rec("t-b2", "b", [5, 0]),
                     rec("t-c", "c", [2, 0])])
    res = idx.search([0, 0], k=3, model_name=M, model_version=V, only=["c", "b", "nobody"])
    assert [(m.identity_id, m.distance, m.template_id) for m in res.matches] == [("b", 1.0, "t-b"), ("c", 2.0, "t-c")]
    assert res.searched_templates == 3 and res.skipped_templates == 0
    res = idx.search([0, 0], k=3, model_name=M, model_version=V, only=["nobody"])
    assert res.matches == [] and res.searched_templates == 0 and res.skipped_templates == 0
    assert [m.identity_id for m in idx.search([0, 0], k=3, model_name=M, model_version=V, only=None).matches] == \
        ["a", "b", "c"]


def test_a_probe_of_a_version_with_no_templates_counts_what_it_skipped():
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-a", "a", [0, 0], M, "1"), rec("t-b", "b", [1, 0], M, "1"), rec("t-c", "c", [1, 0], M, "2")])
    res = idx.search([0, 0], model_name=M, model_version="3")
    assert res.matches == [] and res.skipped_templates == 3 and res.searched_templates == 0
    assert res.stale_identities == {"a", "b", "c"}
    res = idx.search([0, 0], model_name=M, model_version="2")
    assert res.skipped_templates == 2 and res.searched_templates == 1 and res.stale_identities == {"a", "b"}


def test_add_records_counts_and_copies_once_per_batch():
    idx = GalleryIndex(dim=2)
    seen = []

    def records(n):
        for i in range(n):
            seen.append(len(idx))  # what a concurrent search sees before record i is handed over
            yield rec(f"t{i}", f"id{i}", [i, 0])

    assert idx.add_records(records(7), batch=3) == 7
    assert seen == [0, 0, 0, 3, 3, 3, 6]
    assert len(idx) == 7
    # the default batch is 8192 records
    seen.clear()
    idx = GalleryIndex(dim=2)
    assert idx.add_records(records(8194)) == 8194
    assert seen[8191] == 0 and seen[8192] == 8192 and len(idx) == 8194


def test_add_accepts_any_shape_and_reports_the_dimension():
    idx = GalleryIndex(dim=3)
    idx.add("a", "t-a", np.array([[1.0, 2.0, 3.0]]), M, V)
    assert idx.identity_distance([1, 2, 3], "a", M, V) == 0.0
    with pytest.raises(InvalidArgument) as e:
        idx.add("b", "t-b", np.zeros(4), M, V)
    assert str(e.value) == "embedding dimension mismatch: got 4, index has 3"


def test_growth_past_the_initial_capacity_keeps_every_row():
    """1024 rows per segment at first; appends past it (a few, then many) move the old rows."""
    embs = np.random.default_rng(5).normal(size=(4100, 8)).astype(np.float32)
    idx = GalleryIndex(dim=8)
    idx.add_records([rec(f"t{i}", f"id{i}", embs[i]) for i in range(1000)])
    idx.add_records([rec(f"t{i}", f"id{i}", embs[i]) for i in range(1000, 1100)])
    idx.add_records([rec(f"t{i}", f"id{i}", embs[i]) for i in range(1100, 4100)])
    assert len(idx) == 4100
    for i in (0, 999, 1000, 1099, 1100, 4099):
        m = idx.search(embs[i], model_name=M, model_version=V).matches[0]
        assert (m.identity_id, m.distance) == (f"id{i}", 0.0)


def test_storage_is_float32_with_int64_codes_as_documented():
    """The docstring's memory layout: a float32 matrix and float32 squared norms per segment (half
    the memory of float64), identity codes int64 — also after growth and after a delete."""
    idx = GalleryIndex(dim=2)

    def check():
        seg = idx._segments[(M, V)]
        assert (seg.emb.dtype, seg.sq.dtype, seg.codes.dtype) == (np.float32, np.float32, np.int64)

    idx.add_records([rec("t0", "a", [3, 4])])
    check()
    assert idx._segments[(M, V)].sq[0] == 25.0
    idx.add_records([rec(f"t{i}", f"id{i}", [i, 0]) for i in range(1, 2000)])
    check()
    idx.remove_identity("a")
    check()


def test_remove_identity_of_a_large_segment_and_counts():
    """A delete compacts the rows kept (here more than 2048 of them) into new arrays."""
    embs = np.random.default_rng(9).normal(size=(5000, 8)).astype(np.float32)
    idx = GalleryIndex(dim=8)
    idx.add_records([rec(f"t{i}", f"id{i % 2500}", embs[i]) for i in range(5000)])
    assert idx.identity_count() == 2500
    assert idx.remove_identity("id7") == 2
    assert idx.remove_identity("id7") == 0
    assert idx.remove_identity("nobody") == 0
    assert len(idx) == 4998 and idx.identity_count() == 2499
    assert idx.search(embs[7], model_name=M, model_version=V).matches[0].identity_id != "id7"
    assert idx.identity_distance(embs[7], "id7", M, V) is None
    for i in (0, 6, 8, 2508, 4999):
        m = idx.search(embs[i], model_name=M, model_version=V).matches[0]
        assert (m.identity_id, m.template_id, m.distance) == (f"id{i % 2500}", f"t{i}", 0.0)


def test_add_keeps_the_template_id_and_identity_distance_per_version():
    idx = GalleryIndex(dim=3)
    idx.add("a", "t-a", np.array([0.0, 3.0, 4.0]), M, V)
    assert idx.search([0, 0, 0], model_name=M, model_version=V).matches[0].template_id == "t-a"
    assert idx.identity_distance(np.array([[0.0, 0.0, 0.0]]), "a", M, V) == 5.0
    assert idx.identity_distance([0, 0, 0], "a", M, "2") is None  # a version it has no template of
    assert idx.identity_distance([0, 0, 0], "nobody", M, V) is None


def test_a_zero_template_is_at_cosine_distance_one():
    """A stored zero vector has no direction: 1 - 0 = 1, nearer than the opposite directions (about 2)."""
    idx = GalleryIndex(dim=2)
    idx.add_records([rec("t-o1", "o1", [-1, 0]), rec("t-z", "z", [0, 0]), rec("t-o2", "o2", [-1, 0.1])])
    res = idx.search([1, 0], k=1, model_name=M, model_version=V, metric="cosine")
    assert [(m.identity_id, m.distance) for m in res.matches] == [("z", 1.0)]


def test_equal_distances_keep_enrolment_order():
    # 200 identities at distances 0, 1 or 2 (exact in float32): within a distance, the order enrolled
    ring = [[0, 0], [1, 0], [0, 2]]
    pick = np.random.default_rng(0).integers(0, 3, 200)
    idx = GalleryIndex(dim=2)
    idx.add_records([rec(f"t{i}", f"id{i}", ring[p]) for i, p in enumerate(pick)])
    res = idx.search([0, 0], k=200, model_name=M, model_version=V)
    want = [f"id{i}" for d in (0, 1, 2) for i in range(200) if pick[i] == d]
    assert [m.identity_id for m in res.matches] == want
