"""Identity decisions as pure logic: IdentityService.match, match_face (a migration's fallback embedder
too) and point over a real SQLite gallery with embeddings placed at known distances, against
calibrations with two operating points. The decisions
through Triton and real photos are in test_gallery_e2e.py; these run in milliseconds, so the mutation
run (`make mutants`, docs/TESTING.md) can use them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mobidem.calibration import Calibration, OperatingPoint
from mobidem.errors import FailedPrecondition, InvalidArgument
from mobidem.gallery import Gallery, TemplateIn
from mobidem.identity import Evidence, IdentityService
from mobidem.metrics import Metrics

MODEL, VERSION = "dlib_resnet", "1"
STRICT, LOOSE = 0.50, 0.60  # far_1e-3 and far_1e-2 thresholds of this test's calibration


def point(name, far, threshold):
    return OperatingPoint(name, far, threshold, far, 0.9, 100, 1000)


CAL = Calibration(MODEL, VERSION, "test pairs", {"far_1e-3": point("far_1e-3", 1e-3, STRICT),
                                                  "far_1e-2": point("far_1e-2", 1e-2, LOOSE)})


def at(base, distance, axis):
    """``base`` moved ``distance`` along a unit axis orthogonal to it (euclidean distance = ``distance``)."""
    v = base.copy()
    v[axis] += distance
    return v


@pytest.fixture()
def world(tmp_path):
    base = np.zeros(128, np.float32)
    base[0] = 1.0
    gallery = Gallery.open(str(tmp_path / "gallery.db"))
    ada = gallery.enroll(None, "Ada", {}, [TemplateIn(base, MODEL, VERSION)]).identity.id
    bob = gallery.enroll(None, "Bob", {}, [TemplateIn(at(base, 0.58, 2), MODEL, VERSION)]).identity.id
    # Cy's only template comes from another model version: never compared, reported as stale
    gallery.enroll(None, "Cy", {}, [TemplateIn(at(base, 0.01, 3), MODEL, "0")])
    # match() never runs the pipeline: only its embedder's name is read (no fallback embedder configured)
    pipeline = SimpleNamespace(embedder=object(), embedder_model=MODEL, plugins=SimpleNamespace())
    metrics = Metrics()
    service = IdentityService(gallery, pipeline, CAL, metrics=metrics)
    service.model_version = VERSION
    yield SimpleNamespace(service=service, base=base, ada=ada, bob=bob, metrics=metrics)
    gallery.close()


def test_the_default_point_decides_at_its_calibrated_threshold(world):
    probe = at(world.base, 0.55, 1)  # 0.55 from Ada: between the two thresholds
    m = world.service.match(probe, top_k=1)
    assert (m.known, m.identity_id, m.display_name) == (False, "", "")
    assert m.threshold == STRICT and m.operating_point == "far_1e-3"
    assert m.distance == pytest.approx(0.55, abs=1e-5)
    assert [c[:2] for c in m.candidates] == [(world.ada, "Ada")]
    assert m.stale_identities == 1


def test_the_requested_point_decides_at_its_own_threshold(world):
    probe = at(world.base, 0.55, 1)
    m = world.service.match(probe, top_k=1, operating_point="far_1e-2")
    assert (m.known, m.identity_id, m.display_name) == (True, world.ada, "Ada")
    assert m.threshold == LOOSE and m.operating_point == "far_1e-2"


def test_a_distance_equal_to_the_threshold_is_a_match(world):
    probe = at(world.base, STRICT, 1)
    assert world.service.match(probe, top_k=1).known
    assert not world.service.match(at(world.base, STRICT + 1e-3, 1), top_k=1).known


def test_candidates_are_the_top_k_nearest_in_order(world):
    probe = at(world.base, 0.1, 1)
    m = world.service.match(probe, top_k=5)
    assert [c[0] for c in m.candidates] == [world.ada, world.bob]  # Cy's template is not comparable
    assert [c[1] for c in m.candidates] == ["Ada", "Bob"]
    assert m.candidates[1][2] == pytest.approx(float(np.hypot(0.1, 0.58)), abs=1e-5)
    assert m.known and m.identity_id == world.ada and m.distance == pytest.approx(0.1, abs=1e-5)
    assert len(world.service.match(probe, top_k=1).candidates) == 1


def test_an_empty_answer_is_unknown_at_infinite_distance(world):
    world.service.model_version = "7"  # no template of this version
    m = world.service.match(world.base, top_k=3)
    assert not m.known and m.distance == float("inf") and m.candidates == [] and m.stale_identities == 3
    assert m.threshold == STRICT and m.operating_point == "far_1e-3"


def test_points_by_name_and_a_clear_refusal_of_unknown_ones(world):
    s = world.service
    assert s.point("").name == "far_1e-3" and s.point("far_1e-2").threshold == LOOSE
    with pytest.raises(InvalidArgument) as info:
        s.point("far_1e-4")
    assert "far_1e-4" in str(info.value) and "['far_1e-2', 'far_1e-3']" in str(info.value)
    with pytest.raises(InvalidArgument, match="unknown operating point 'nope'"):
        IdentityService(s.gallery, s.pipeline, CAL, default_operating_point="nope")
    loose = IdentityService(s.gallery, s.pipeline, CAL, default_operating_point="far_1e-2")
    loose.model_version = VERSION
    assert loose.match(at(world.base, 0.55, 1), top_k=1).known


def test_the_embedder_names_model_and_version_and_decisions_are_counted(world):
    s = world.service
    assert s.embedder == f"{MODEL}:{VERSION}" and s.model_name == MODEL and s.audit is None
    assert IdentityService(s.gallery, SimpleNamespace(embedder=None, embedder_model=MODEL, plugins=SimpleNamespace()), CAL).model_name == ""
    s._decided("verify", "match")
    s._decided("verify", "match")
    assert world.metrics.decisions.labels("verify", "match")._value.get() == 2
    assert world.metrics.decisions.labels("identify", "known")._value.get() == 0


def test_evidence_of_a_record():
    assert Evidence.of(None) == Evidence("", "")
    assert Evidence.of({}) == Evidence("", "")
    assert Evidence.of({"record_id": "r1", "evidence": "a.b.c", "other": 1}) == Evidence("r1", "a.b.c")
    assert Evidence.of({"other": 1}) == Evidence("", "")  # a record without evidence (no signing key)


def test_a_new_service_has_no_version_yet_and_keeps_its_audit_log(world):
    s = world.service
    audit = object()
    fresh = IdentityService(s.gallery, s.pipeline, CAL, audit=audit)
    assert fresh.model_version == "" and fresh.audit is audit


def test_a_decision_names_its_embedder_and_enrolment_photos_are_not_kept_by_default(world):
    """Found by the mutation run: every decision names the embedder that took it (module docstring), and
    keep_enrolment_images is off by default (docs/SECURITY.md, "Kept enrolment photos")."""
    m = world.service.match(at(world.base, 0.1, 1), top_k=1)
    assert m.known and m.embedder == f"{MODEL}:{VERSION}"
    assert world.service.keep_enrolment_images is False


def test_without_a_fallback_match_face_is_the_primary_match(world):
    """Found by the mutation run: with no fallback embedder, a face's 1:N is the primary embedder's alone,
    stale identities (Cy's other version) reported, not searched with an embedder that is not there."""
    probe = at(world.base, 0.1, 1)
    m = world.service.match_face(SimpleNamespace(embeddings={MODEL: probe}), top_k=1)
    assert (m.known, m.identity_id, m.embedder, m.stale_identities) == (True, world.ada, f"{MODEL}:{VERSION}", 1)


# -- a migration (fallback_embedder): written from the module docstring, over a real gallery

SFACE = "sface"
S_STRICT, S_LOOSE = 0.30, 0.40  # the fallback's own thresholds, in its own metric (1 - cosine)
CAL_SFACE = Calibration(SFACE, "1", "test pairs", {"far_1e-3": point("far_1e-3", 1e-3, S_STRICT),
                                                    "far_1e-2": point("far_1e-2", 1e-2, S_LOOSE)}, metric="cosine")


def unit_at_cosine(distance, axis=1):
    """A unit vector whose cosine distance (1 - cosine similarity) from e0 is ``distance``."""
    v = np.zeros(128, np.float32)
    v[0], v[axis] = 1.0 - distance, np.sqrt(1.0 - (1.0 - distance) ** 2)
    return v


@pytest.fixture()
def migration(tmp_path):
    """dlib (primary, Euclidean) and SFace (fallback, cosine). Ada has templates of both; Dan, enrolled
    before the migration, SFace only; Cy a template of an old dlib version only (neither can compare him)."""
    base = np.zeros(128, np.float32)
    base[0] = 1.0
    gallery = Gallery.open(str(tmp_path / "gallery.db"))
    ada = gallery.enroll(None, "Ada", {}, [TemplateIn(base, MODEL, VERSION),
                                           TemplateIn(unit_at_cosine(0.05, 2), SFACE, "1")]).identity.id
    dan = gallery.enroll(None, "Dan", {}, [TemplateIn(unit_at_cosine(0.1, 3), SFACE, "1")]).identity.id
    gallery.enroll(None, "Cy", {}, [TemplateIn(base, MODEL, "0")])
    fallback = SimpleNamespace(models=[SimpleNamespace(name=SFACE)])
    pipeline = SimpleNamespace(embedder=object(), embedder_model=MODEL,
                               plugins=SimpleNamespace(fallback_embedder=fallback))
    service = IdentityService(gallery, pipeline, CAL, fallback_points=CAL_SFACE)
    service.model_version = VERSION
    service.fallback.version = "1"  # learnt from Triton at start (app.py)
    yield SimpleNamespace(service=service, gallery=gallery, base=base, ada=ada, dan=dan, pipeline=pipeline)
    gallery.close()


def face(dlib, sface):
    return SimpleNamespace(embeddings={MODEL: dlib, SFACE: sface})


def test_the_fallback_decides_only_for_identities_without_a_primary_template(migration):
    """Dan has no dlib template: the SFace templates decide, among the identities without a primary template
    only (Ada's SFace template is nearer the probe, but Ada is decided by dlib), at SFace's own threshold in
    cosine distance, and the decision names SFace. Cy could be compared by neither: one stale identity."""
    s = migration.service
    assert [e.model_name for e in s.embedders] == [MODEL, SFACE]
    m = s.match_face(face(at(migration.base, 0.9, 1), unit_at_cosine(0.0)), top_k=3)
    assert (m.known, m.identity_id, m.display_name) == (True, migration.dan, "Dan")
    assert m.embedder == f"{SFACE}:1" and m.threshold == S_STRICT and m.operating_point == "far_1e-3"
    assert m.distance == pytest.approx(0.1, abs=1e-5)  # cosine; the Euclidean distance would be 0.447
    assert [c[0] for c in m.candidates] == [migration.dan] and m.stale_identities == 1
    loose = s.match_face(face(at(migration.base, 0.9, 1), unit_at_cosine(0.0)), top_k=3, operating_point="far_1e-2")
    assert loose.threshold == S_LOOSE and loose.operating_point == "far_1e-2"
    # the gallery is told SFace's metric, for callers that do not pass one (the liveness ceremony's 1:1)
    assert migration.gallery.distance_to_identity(unit_at_cosine(0.0), migration.dan, SFACE, "1") == \
        pytest.approx(0.1, abs=1e-5)


def test_when_both_embedders_match_the_one_further_inside_its_threshold_wins(migration):
    s = migration.service
    # dlib: Ada at 0.45 of 0.50 (0.9 of the way); SFace: Dan at 0.1 of 0.30 (a third): Dan
    m = s.match_face(face(at(migration.base, 0.45, 1), unit_at_cosine(0.0)), top_k=1)
    assert (m.identity_id, m.embedder) == (migration.dan, f"{SFACE}:1")
    # dlib: Ada at 0.20 of 0.50 (0.4); SFace: Dan at 0.15 of 0.30 (0.5): Ada, decided by dlib, although
    # Dan's distance is the smaller number (the two metrics' distances are never compared)
    probe_s = unit_at_cosine(1 - 0.85 / 0.9, 4)  # cosine 0.85 with Dan's template (0.9 with e0)
    m = s.match_face(face(at(migration.base, 0.20, 1), probe_s), top_k=1)
    assert (m.identity_id, m.embedder) == (migration.ada, f"{MODEL}:{VERSION}")
    assert s.match_face(face(at(migration.base, 0.9, 1), probe_s), top_k=1).distance == pytest.approx(0.15, abs=1e-5)


def test_a_fallback_embedder_and_its_calibration_come_together(migration):
    s = migration.service
    with pytest.raises(FailedPrecondition, match="fallback embedder needs its own calibration"):
        IdentityService(s.gallery, migration.pipeline, CAL)
    plain = SimpleNamespace(embedder=object(), embedder_model=MODEL, plugins=SimpleNamespace())
    with pytest.raises(FailedPrecondition, match="calibration a fallback"):
        IdentityService(s.gallery, plain, CAL, fallback_points=CAL_SFACE)
