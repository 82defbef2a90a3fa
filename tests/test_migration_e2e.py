"""A migration between embedders on a real server: a gallery enrolled with dlib (face_multitask), the server
restarted with SFace as the primary embedder and dlib as the fallback (docs/PLUGINS.md, "Embedders").

What must hold (issue 19): identities without an SFace template are still verified and identified, by dlib,
and the response says so (``embedder``), at dlib's own calibrated threshold; new enrolments get templates of
both; re-embedding an identity (enrolling a photo again, or `mobidem gallery reembed` from the enrolment
photos the old server kept) moves it to SFace; nothing is ever compared across embedders (a server with SFace
alone refuses the dlib-only identities instead of comparing them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from conftest import REPO, RunningServer, person_photos, plugin_triton

DATA = REPO / "server" / "mobidem" / "data"
DLIB = json.loads((DATA / "calibration.json").read_text())
SFACE = json.loads((DATA / "calibration_sface.json").read_text())


@pytest.fixture(scope="module")
def sface_triton(model_repository, tmp_path_factory):
    """A managed Triton serving the main repository and the sface plugin's."""
    server = plugin_triton(model_repository, tmp_path_factory.mktemp("sface-triton"), "sface")
    yield server
    server.stop()


@pytest.fixture()
def start(sface_triton, tmp_path):
    """start(**settings): a gateway on the data directory shared by the test's servers."""
    from mobidem import config

    started = []

    def start(**overrides) -> RunningServer:
        env = {"MOBIDEM_DATA_DIR": str(tmp_path / "data"), "MOBIDEM_LISTEN": "127.0.0.1:0",
               "MOBIDEM_TRITON_URL": sface_triton.grpc_url, "MOBIDEM_METRICS_LISTEN": ""}
        env.update({f"MOBIDEM_{k.upper()}": str(v) for k, v in overrides.items()})
        started.append(RunningServer(config.load(None, environ=env)))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _threshold(cal: dict, point: str = "far_1e-3") -> float:
    return cal["operating_points"][point]["threshold"]


def test_dlib_gallery_served_by_sface_with_dlib_fallback(faces, start):
    obama, powell, bush = (person_photos(faces, p) for p in ("barack_obama", "colin_powell", "george_w_bush"))
    old = start(keep_enrolment_images="true")  # the default embedder, face_multitask (dlib); photos kept
    with old.client() as c:
        x = c.enroll("obama", obama[:2], face_index=0).identity.id
        y = c.enroll("powell", powell[:1], face_index=0).identity.id
        assert c.get_identity(x).template_count == 2
    old.stop()

    migrating = start(face_plugins="sface,fer_xception", fallback_embedder="face_multitask")
    with migrating.client() as c:
        assert c.get_identity(x).reenrolment_needed  # no SFace template yet
        # dlib-only identities: decided by the fallback, at dlib's threshold, and said so
        v = c.verify(obama[2], identity_id=x, probe_face_index=0)
        assert v.match and v.embedder == "face_multitask:1"
        assert v.threshold == pytest.approx(_threshold(DLIB)) and 0 < v.distance < v.threshold
        v = c.verify(powell[1], identity_id=x, probe_face_index=0)
        assert not v.match and v.embedder == "face_multitask:1" and v.distance > _threshold(DLIB)
        r = c.identify(powell[1], probe_face_index=0)
        assert r.match.known and r.match.identity_id == y and r.embedder == "face_multitask:1"
        assert r.match.threshold == pytest.approx(_threshold(DLIB))

        # a new enrolment gets templates of both embedders, and SFace decides for it
        z = c.enroll("bush", bush[:1], face_index=0)
        assert z.identity.template_count == 2 and not c.get_identity(z.identity.id).reenrolment_needed
        v = c.verify(bush[1], identity_id=z.identity.id, probe_face_index=0)
        assert v.match and v.embedder == "sface:1" and v.threshold == pytest.approx(_threshold(SFACE))
        assert 0 <= v.distance < v.threshold <= 2  # 1 - cosine
        r = c.identify(bush[2], probe_face_index=0)
        assert r.match.known and r.match.identity_id == z.identity.id and r.embedder == "sface:1"
        assert r.match.threshold == pytest.approx(_threshold(SFACE))
        # a photo against a photo: the primary embedder, in its metric
        v = c.verify(bush[1], reference=bush[2], probe_face_index=0, reference_face_index=0)
        assert v.match and v.embedder == "sface:1" and v.threshold == pytest.approx(_threshold(SFACE))

        # re-embedding (here: enrolling a photo again) gives the dlib identity an SFace template: SFace decides
        c.enroll("obama", obama[:1], identity_id=x, face_index=0)
        assert not c.get_identity(x).reenrolment_needed
        v = c.verify(obama[2], identity_id=x, probe_face_index=0)
        assert v.match and v.embedder == "sface:1" and v.threshold == pytest.approx(_threshold(SFACE))
    migrating.stop()

    # SFace alone: the dlib-only identity is never compared with SFace embeddings
    only = start(face_plugins="sface,fer_xception")
    with only.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.verify(powell[1], identity_id=y, probe_face_index=0)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "sface:1" in err.value.details()
        r = c.identify(powell[1], probe_face_index=0)
        assert not r.match.known and r.match.stale_identities == 1 and r.embedder == "sface:1"
        assert y not in [cand.identity_id for cand in r.match.candidates]
    only.stop()

    # `mobidem gallery reembed` makes the missing SFace template of powell from the photo the old server kept
    env = dict(os.environ, MOBIDEM_DATA_DIR=str(only.server.settings.data_dir),
               MOBIDEM_TRITON_URL=only.server.settings.triton_url, MOBIDEM_FACE_PLUGINS="sface,fer_xception",
               MOBIDEM_FALLBACK_EMBEDDER="face_multitask")
    done = subprocess.run([sys.executable, "-m", "mobidem.cli", "gallery", "reembed"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{y}: 1 template(s) added" in done.stdout and f"{x}: 0 template(s) added" in done.stdout
    assert "re-embedded 1 identities, 1 templates added" in done.stdout
    again = start(face_plugins="sface,fer_xception")
    with again.client() as c:
        v = c.verify(powell[1], identity_id=y, probe_face_index=0)
        assert v.match and v.embedder == "sface:1" and v.threshold == pytest.approx(_threshold(SFACE))
        assert c.get_identity(y).template_count == 2  # its dlib template and the new SFace one
        c.delete_identity(y)  # and its kept photo goes with it
    again.stop()
    import sqlite3

    with sqlite3.connect(str(only.server.settings.data_path / "gallery.db")) as db:
        assert db.execute("SELECT count(*) FROM enrolment_images WHERE identity_id = ?", (y,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM enrolment_images WHERE identity_id = ?", (x,)).fetchone()[0] == 2


def test_a_fallback_needs_its_own_calibration_and_metric(sface_triton, tmp_path):
    """The servers refuse a calibration computed for another embedder or another metric."""
    from conftest import start_failure

    class Url:  # start_failure wants the Triton's grpc_url
        grpc_url = sface_triton.grpc_url

    error = start_failure(Url, tmp_path, face_plugins="sface,fer_xception", fallback_embedder="face_multitask",
                          fallback_calibration=str(DATA / "calibration_sface.json"))
    assert error is not None and "cosine" in str(error) and "face_multitask" in str(error)
    error = start_failure(Url, tmp_path, face_plugins="sface,fer_xception", calibration=str(DATA / "calibration.json"))
    assert error is not None and "euclidean" in str(error)
    error = start_failure(Url, tmp_path, fallback_embedder="face_multitask")
    assert error is not None and "fallback" in str(error)
