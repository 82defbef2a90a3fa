"""Unit tests of several embedders in one gallery: each compared in its own metric, never across embedders.

Expected distances are worked out by hand from the definitions (Euclidean; cosine distance = 1 - cosine
similarity). The end-to-end migration on a real server is in tests/test_migration_e2e.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobidem import calibration
from mobidem.gallery import Gallery, TemplateIn
from mobidem.gallery.errors import InvalidArgument
from mobidem.gallery.index import GalleryIndex, distance


def _vec(*head: float, dim: int = 128) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[: len(head)] = head
    return v


def test_cosine_and_euclidean_distances_by_hand():
    a, b = _vec(3, 4), _vec(4, 3)
    assert distance(a, b) == pytest.approx(np.sqrt(2))
    assert distance(a, b, "cosine") == pytest.approx(1 - 24 / 25)  # cos = (12 + 12) / (5 * 5)
    assert distance(a, -a, "cosine") == pytest.approx(2.0)
    assert distance(a, 10 * a, "cosine") == pytest.approx(0.0, abs=1e-12)  # the length does not matter
    with pytest.raises(InvalidArgument, match="metric"):
        distance(a, b, "manhattan")


def test_index_ranks_by_the_metric_it_is_asked_for():
    """Near in angle but long, against short but at 45 degrees: the two metrics disagree on the winner."""
    idx = GalleryIndex()
    idx.add("long", "t1", _vec(10, 1), "sface", "1")  # angle ~5.7 deg from the probe, far in length
    idx.add("short", "t2", _vec(1, 1), "sface", "1")  # 45 deg, close in length
    probe = _vec(1, 0)
    by_euclid = idx.search(probe, k=2, model_name="sface", model_version="1")
    by_cosine = idx.search(probe, k=2, model_name="sface", model_version="1", metric="cosine")
    assert [m.identity_id for m in by_euclid] == ["short", "long"]
    assert [m.identity_id for m in by_cosine] == ["long", "short"]
    assert by_cosine[0].distance == pytest.approx(1 - 10 / np.sqrt(101))
    assert by_cosine[1].distance == pytest.approx(1 - 1 / np.sqrt(2))
    assert idx.identity_distance(probe, "short", "sface", "1", "cosine") == pytest.approx(1 - 1 / np.sqrt(2))
    assert idx.identity_distance(probe, "short", "sface", "1") == pytest.approx(1.0)


def test_search_only_some_identities_and_never_across_embedders():
    idx = GalleryIndex()
    idx.add("old_only", "t1", _vec(1, 0), "face_multitask", "1")
    idx.add("both", "t2", _vec(0, 1), "face_multitask", "1")
    idx.add("both", "t3", _vec(5, 5), "sface", "1")
    new = idx.search(_vec(1, 0), k=5, model_name="sface", model_version="1", metric="cosine")
    assert [m.identity_id for m in new] == ["both"] and new.stale_identities == {"old_only"}
    old = idx.search(_vec(0, 1), k=5, model_name="face_multitask", model_version="1", only=new.stale_identities)
    assert [m.identity_id for m in old] == ["old_only"]  # "both" is nearer but not asked for
    assert old[0].distance == pytest.approx(np.sqrt(2))
    assert idx.search(_vec(0, 1), k=5, model_name="face_multitask", model_version="1", only=[]).matches == []


def test_gallery_uses_each_embedders_registered_metric(tmp_path):
    with Gallery.open(str(tmp_path / "g.db")) as g:
        g.metrics["sface"] = "cosine"
        g.enroll("ada", "Ada", {}, [TemplateIn(_vec(2, 0), "sface", "1"), TemplateIn(_vec(2, 0), "dlib", "1")])
        probe = _vec(1, 1)
        assert g.search(probe, model_name="sface", model_version="1")[0].distance == pytest.approx(1 - 1 / np.sqrt(2))
        assert g.search(probe, model_name="dlib", model_version="1")[0].distance == pytest.approx(np.sqrt(2))
        assert g.distance_to_identity(probe, "ada", "sface", "1") == pytest.approx(1 - 1 / np.sqrt(2))


def test_calibration_records_its_metric_and_old_files_read_as_euclidean(tmp_path):
    from mobidem.app import DEFAULT_CALIBRATION, shipped_calibration

    shipped = calibration.load(DEFAULT_CALIBRATION)
    assert shipped.metric == "euclidean"  # written before metrics existed: no "metric" key
    assert "metric" not in json.loads(DEFAULT_CALIBRATION.read_text())["embedder"]
    # re-saving it gives the same bytes (the shipped file stays valid as it is)
    calibration.save(tmp_path / "same.json", shipped)
    assert (tmp_path / "same.json").read_bytes() == DEFAULT_CALIBRATION.read_bytes()
    cos = calibration.calibrate([0.2, 0.3, 0.35], [0.7, 0.8, 0.9, 0.95], "sface", "1", "pairs", metric="cosine")
    calibration.save(tmp_path / "sface.json", cos)
    assert json.loads((tmp_path / "sface.json").read_text())["embedder"]["metric"] == "cosine"
    assert calibration.load(tmp_path / "sface.json").metric == "cosine"
    bad = json.loads((tmp_path / "sface.json").read_text())
    bad["embedder"]["metric"] = "hamming"
    with pytest.raises(ValueError, match="metric"):
        calibration.from_json(bad)
    assert shipped_calibration("face_multitask") == DEFAULT_CALIBRATION
    assert shipped_calibration("no_such_model") == DEFAULT_CALIBRATION  # then refused at start, by name


def test_cosine_search_picks_each_identitys_best_template_by_cosine():
    """An identity's best template by cosine is not its nearest by Euclidean distance; with more identities
    than k, the candidates must be chosen by cosine too, not only re-ranked by it."""
    idx = GalleryIndex()
    idx.add("a", "a1", _vec(1, 1), "sface", "1")  # Euclidean-near, 45 deg
    idx.add("a", "a2", _vec(20, 1), "sface", "1")  # Euclidean-far, ~2.9 deg
    for i, v in enumerate([(1, 2), (1, 3), (0.5, 1)]):
        idx.add(f"other{i}", f"o{i}", _vec(*v), "sface", "1")
    hit = idx.search(_vec(1, 0), k=1, model_name="sface", model_version="1", metric="cosine")
    assert [(m.identity_id, m.template_id) for m in hit] == [("a", "a2")]
    assert hit[0].distance == pytest.approx(1 - 20 / np.sqrt(401))


# --------------------------------------------------------------------------- kept enrolment photos, both stores

@pytest.fixture(params=["sqlite", "postgres"])
def store_and_rows(request, tmp_path):
    """-> (open(**kw) of one database, rows(): the enrolment_images rows (identity_id, data, sealing) as stored)."""
    import sqlite3

    from mobidem.gallery.backends import open_store

    if request.param == "sqlite":
        url = str(tmp_path / "gallery.db")

        def rows():
            with sqlite3.connect(url) as c:
                return [(r[0], bytes(r[1]), r[2]) for r in c.execute("SELECT identity_id, data, sealing FROM enrolment_images")]
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.database()
        name = url.rsplit("/", 1)[1]

        def rows():
            return [(r[0], bytes(r[1]), r[2]) for r in pg.execute("SELECT identity_id, data, sealing FROM enrolment_images", name)]
    opened = []

    def open_(**kw):
        opened.append(open_store(url, **kw))
        return opened[-1]

    yield open_, rows
    for s in opened:
        s.close()


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # stands for a photo: only its bytes matter to the store


def test_kept_photos_are_sealed_returned_and_deleted_with_their_identity(store_and_rows):
    from mobidem.gallery.crypto import TemplateKeyError

    open_, rows = store_and_rows
    key = bytes(range(32))
    s = open_(template_key=key)
    s.enroll("ada", "Ada", {}, [TemplateIn(_vec(1), "sface", "1")])
    s.enroll("bob", "Bob", {}, [TemplateIn(_vec(2), "sface", "1")])
    assert s.add_enrolment_images("ada", [(PNG, None), (PNG[::-1], 2)]) == 2
    s.add_enrolment_images("bob", [(PNG, 0)])
    assert s.enrolment_images("ada") == [(PNG, None), (PNG[::-1], 2)]
    assert s.identities_with_enrolment_images() == ["ada", "bob"]
    stored = rows()
    assert len(stored) == 3 and all(sealing is not None for _, _, sealing in stored)
    assert not any(PNG[:64] in data or PNG[::-1][:64] in data for _, data, _ in stored)  # ciphertext at rest
    with pytest.raises(Exception) as err:  # a photo for an identity that does not exist
        s.add_enrolment_images("nobody", [(PNG, None)])
    assert "nobody" in str(err.value)
    s.delete("ada")
    assert [r[0] for r in rows()] == ["bob"] and s.enrolment_images("ada") == []
    s.close()
    with pytest.raises(TemplateKeyError):  # without the key, sealed rows are refused (templates are checked first)
        open_()



def test_a_tracks_split_uses_the_embedders_metric():
    """A tracked face is split from its track when a fresh embedding is farther than the threshold from the
    track's mean, in the embedder's metric (the matcher's ``distance``): for a cosine embedder, a longer vector
    in the same direction is the same person although it is far in Euclidean distance."""
    from mobidem.tracking import StreamTracks, TrackingConfig

    class CosineMatcher:
        threshold = 0.3

        def match(self, embedding, top_k):
            return type("M", (), {"threshold": self.threshold, "known": False})()

        def distance(self, a, b):
            return distance(a, b, "cosine")

    tracks = StreamTracks(TrackingConfig(embed_every_frames=1), CosineMatcher())

    def frame(t, e):
        plans = tracks.assign(np.array([[100, 100, 200, 200]], np.float32), [0.5], t)
        face = type("F", (), {"embedding": np.asarray(e, np.float32), "expression": None, "match": None,
                              "track_id": 0, "fresh_embedding": False, "quality": None, "track_embeddings": 0,
                              "smoothed_expression": None})()
        tracks.conclude(plans, [face])
        return face.track_id

    first = frame(0.0, _vec(1, 0))
    assert frame(0.1, _vec(5, 0.5)) == first  # Euclidean 4.0 away, cosine distance 0.005: the same person
    assert frame(0.2, _vec(0, 1)) != first  # cosine distance ~0.9: another person
