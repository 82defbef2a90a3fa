"""The client CLI and the gallery's less common paths, against the real server."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from conftest import person_photos
from mobidem.gallery import TemplateIn
from mobidem.v1 import mobidem_pb2 as pb


def mobidem(server, *args, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "mobidem.cli", *args, "--target", server.target],
                         capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_cli_enroll_identify_verify_analyze(start_server, faces):
    server = start_server()
    obama = person_photos(faces, "barack_obama")
    out = mobidem(server, "enroll", "Barack Obama", str(obama[0]), str(obama[1]))
    assert "enrolled 'Barack Obama'" in out.stdout and "2 template(s) added" in out.stdout
    out = mobidem(server, "identify", str(obama[2]))
    assert out.stdout.startswith("identified as Barack Obama")
    same = mobidem(server, "verify", str(obama[2]), str(obama[3]))
    assert same.stdout.startswith("SAME person") and "far_1e-3" in same.stdout
    blair = str(person_photos(faces, "tony_blair")[0])  # a second, cut-off face at its edge
    two = mobidem(server, "verify", str(obama[2]), blair, check=False)
    assert two.returncode == 1 and "INVALID_ARGUMENT" in two.stderr and "reference_face_index" in two.stderr
    other = mobidem(server, "verify", str(obama[2]), blair, "--reference-face-index", "0", check=False)
    assert other.returncode == 1 and other.stdout.startswith("DIFFERENT people")
    out = mobidem(server, "analyze", str(faces / "multiface" / "facerecognition_1.jpg"))
    assert "2 face(s)" in out.stdout and "Barack Obama" in out.stdout
    bad = mobidem(server, "analyze", str(faces / "SOURCES.md"), check=False)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "format not accepted" in bad.stderr


def test_cli_stream_prints_every_frame_and_writes_an_annotated_video(server, faces, tmp_path):
    video = faces / "videos" / "short_hamilton_clip.mp4"
    annotated = tmp_path / "annotated.mp4"
    out = mobidem(server, "stream", str(video), "--max-frames", "30", "--output", str(annotated), "--resume")
    lines = [line for line in out.stdout.splitlines() if line.startswith("frame ")]
    assert [int(line.split()[1].rstrip(":")) for line in lines] == list(range(1, 31))
    assert "30/30" in out.stderr  # the progress bar's last state
    cap = cv2.VideoCapture(str(annotated))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    ok, frame = cap.read()
    original = cv2.VideoCapture(str(video)).read()[1]
    assert ok and frame.shape == original.shape
    assert np.abs(frame.astype(int) - original.astype(int)).max() > 100, "nothing was drawn"


def test_enroll_stream_of_frames(server, faces):
    photos = person_photos(faces, "colin_powell")[:3]

    def requests():
        yield pb.EnrollRequest(display_name="Colin Powell", images=[pb.Image(encoded=photos[0].read_bytes())],
                               face_index=0)
        for p in photos[1:]:
            yield pb.EnrollRequest(images=[pb.Image(encoded=p.read_bytes())])

    with server.client() as client:
        r = client.gallery.EnrollStream(requests(), timeout=60)
        assert r.templates_added == 3 and r.identity.template_count == 3


def test_templates_of_another_embedder_version_are_flagged_not_compared(start_server, faces):
    server = start_server()
    gallery = server.server.gallery
    with server.client() as client:
        current = client.enroll("Tony Blair", [person_photos(faces, "tony_blair")[0]], face_index=0)
        probe = person_photos(faces, "colin_powell")[1]
        embedding = server.call(_embed(server, probe))
        old = gallery.enroll(None, "Colin Powell (old model)", {}, [TemplateIn(embedding, "face_multitask", "0")])
        r = client.identify(probe, top_k=5)
        assert r.match.stale_identities == 1
        assert old.identity.id not in [c.identity_id for c in r.match.candidates], "an old template was compared"
        assert client.get_identity(old.identity.id).reenrolment_needed
        assert not client.get_identity(current.identity.id).reenrolment_needed


async def _embed(server, path):
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    faces, _ = await server.server.pipeline.embed_faces(image)
    return faces[0].embedding
