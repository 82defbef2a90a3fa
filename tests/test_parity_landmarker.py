"""The face_landmarker plugin (plugins/landmarker): parity of its converted models, and what its outputs mean.

- Parity: each served ONNX model (built by ``mobidem models build`` from face_landmarker.task with
  mobidem.convert.tflite) against ai_edge_litert's interpreter on the same graph read out of the same pinned
  bundle, on real face crops of shared/data/faces made by the plugin's own crop code, at batch 1 and at the
  model's max_batch_size (read from its config.pbtxt). Tolerances below.
- A real server (a managed Triton with the main repository and the plugin's, the plugin loaded from its
  entry point with face_mesh beside it, no server change) on real, labelled data:
  eyeBlink is high on the closed-eye images of faces/blink and low on the open ones; jawOpen is higher on
  the expression set's surprise images than on its neutral ones, mouthSmile higher on happy than neutral;
  yaw and pitch have the signs of the head turns the liveness videos' timelines describe
  (faces/liveness/MANIFEST.tsv: nose to IMAGE-RIGHT -> yaw > 0, IMAGE-LEFT -> yaw < 0, head down -> pitch
  > 0, looking up -> pitch < 0). Every expected value comes from those labels.

The plugin package (distribution mobidem-landmarker) is installed by the Makefile; where it is missing
this module installs it into the running environment (editable, no dependencies).
"""

from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, need, person_photos
from plugin_support import LocalContext, installed_plugin, rgb

cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")

PLUGIN_DIR = REPO / "plugins" / "landmarker"
# Landmarks (crop pixels, |ref| up to ~260) and the presence logit: |diff| <= 1e-3 + 1e-4 * |ref|, as
# tests/test_parity_detector.py (float32 sums over ~100 layers; measured max 4e-4 px on these crops).
ATOL, RTOL = 1e-3, 1e-4
# Blendshape scores are sigmoid outputs in [0, 1]: 1e-4 absolute is 0.01 % of their range, far below any
# meaningful change of a score (measured max 4e-6).
BLENDSHAPE_ATOL = 1e-4

# Measured with the default detector (docs/PLUGINS.md, face_landmarker), asserted with margins:
# blink set: eyeBlink (mean of both eyes) ROC AUC 0.9995, closed mean 0.61, open mean 0.08.
MIN_BLINK_AUC = 0.97
MIN_BLINK_ACCURACY = 0.95
# expression set: jawOpen surprise 0.32 vs neutral 0.03 (AUC 0.99); mouthSmile happy 0.73 vs neutral 0.04 (0.99).
MIN_EXPRESSION_AUC = 0.9
MIN_EXPRESSION_GAP = 0.15

# Head turns in the real liveness videos, from faces/liveness/MANIFEST.tsv (0-based decode frame ranges,
# taken inside the manifest's segments): (video, frames, what the timeline says).
POSE_SEGMENTS = [
    ("v01_tvl_phone_turns_updown.mp4", (5, 55), "frontal"),
    ("v01_tvl_phone_turns_updown.mp4", (75, 160), "nose to image-right"),
    ("v01_tvl_phone_turns_updown.mp4", (235, 310), "nose to image-left"),
    ("v01_tvl_phone_turns_updown.mp4", (360, 410), "head down"),
    ("v01_tvl_phone_turns_updown.mp4", (440, 485), "looks up"),
    ("v03_krzysiek_webcam_turns_up.mp4", (0, 14), "frontal"),
    ("v03_krzysiek_webcam_turns_up.mp4", (37, 47), "nose to image-right"),
    ("v03_krzysiek_webcam_turns_up.mp4", (52, 62), "nose to image-left"),
    ("v03_krzysiek_webcam_turns_up.mp4", (68, 81), "looks up"),
]
POSE_STEP = 3  # every third frame of each segment
TURN_DEG = 10.0  # a labelled turn: |median angle| at least this, with the labelled sign
FRONTAL_DEG = 8.0  # a labelled frontal segment: |median yaw| at most this


@pytest.fixture(scope="module")
def landmarker():
    """The face_landmarker plugin, installed (by the Makefile, or here) and its models built."""
    return installed_plugin("face_landmarker", PLUGIN_DIR)


def video_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The wanted frames (0-based decode order) of a video, RGB; decoded sequentially (some containers'
    frame counts are wrong, so no seeking)."""
    need(path.is_file(), f"{path} is missing")
    cap = cv2.VideoCapture(str(path))
    out, k = {}, 0
    try:
        while len(out) < len(wanted):
            ok, bgr = cap.read()
            if not ok:
                break
            if k in wanted:
                out[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            k += 1
    finally:
        cap.release()
    return out


def blink_rows(faces: Path) -> list[dict]:
    with open(faces / "blink" / "MANIFEST.tsv") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t")
                if r["label"] in ("open", "closed") and r["path"].endswith(".jpg")]
    need(bool(rows), f"no labelled images in {faces / 'blink'}")
    return rows


def max_batch(repository: Path, model: str) -> int:
    text = (repository / model / "config.pbtxt").read_text()
    return int(re.search(r"^max_batch_size:\s*(\d+)", text, re.M).group(1))


def roc_auc(scores, positive) -> float:
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


# ------------------------------------------------------------------ parity
@pytest.fixture(scope="module")
def reference():
    """ai_edge_litert interpreters on the two graphs, read out of the same pinned bundle."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        need(False, "ai_edge_litert (the TFLite reference interpreter) is not installed")
    from mobidem_landmarker import task

    bundle = task.installed()
    out = {}
    for name in (task.LANDMARKS_MEMBER, task.BLENDSHAPES_MEMBER):
        interp = Interpreter(model_content=task.member(bundle, name))
        interp.allocate_tensors()
        out[name] = interp
    return out


def _invoke(interp, x: np.ndarray) -> dict[str, np.ndarray]:
    (inp,) = interp.get_input_details()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return {o["name"]: interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()}


@pytest.fixture(scope="module")
def crops(landmarker, faces, model_repository):
    """256-px face crops made by the plugin's crop code from real photos and video frames, with their
    crop->image maps."""
    import mobidem_landmarker as ml
    from mobidem import plugins

    ctx = LocalContext(model_repository)
    detector = plugins.load("blazeface")
    images = [rgb(p) for person in sorted((faces / "identities").iterdir())[:10]
              for p in person_photos(faces, person.name)[:2]]
    images += [rgb(faces / "blink" / r["path"]) for r in blink_rows(faces)[::8]]
    images += [rgb(p) for p in sorted((faces / "expressions").glob("*/*.jpg"))[::6]]
    images += list(video_frames(faces / "liveness" / "videos" / POSE_SEGMENTS[0][0], {30, 120, 270, 385, 460}).values())
    found, rois = [], []
    for image in images:
        detected = asyncio.run(detector.detect(image, ctx))
        if detected:
            roi = ml.face_roi(max(detected, key=lambda d: d.area))
            found.append(ml.face_crops(image, [roi])[0])
            rois.append(roi)
    assert len(found) >= 30, f"faces in only {len(found)} of {len(images)} images"
    return np.stack(found), rois


def _served(landmarker, model: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(landmarker.repository / model / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def _batched(session, name: str, x: np.ndarray, batch: int, outputs: list[str]) -> dict[str, np.ndarray]:
    parts = [session.run(outputs, {name: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return {o: np.concatenate([p[k] for p in parts]) for k, o in enumerate(outputs)}


def test_landmark_model_matches_tflite(landmarker, reference, crops):
    from mobidem_landmarker import task

    x, _ = crops
    interp = reference[task.LANDMARKS_MEMBER]
    refs = [_invoke(interp, (x[j:j + 1].astype(np.float32) / 255.0).astype(np.float32)) for j in range(len(x))]
    want = {"landmarks": np.stack([r["Identity"].reshape(task.POINTS, 3) for r in refs]),
            "presence_logit": np.stack([r["Identity_1"].reshape(1) for r in refs])}
    assert (1 / (1 + np.exp(-want["presence_logit"])) > 0.5).mean() > 0.9  # real faces, well cropped
    session = _served(landmarker, "face_landmarker")
    largest = max_batch(landmarker.repository, "face_landmarker")
    assert largest > 1
    for batch in (1, largest):
        got = _batched(session, "image", x, batch, list(want))
        for name, ref in want.items():
            assert got[name].shape == ref.shape
            d = np.abs(got[name].astype(np.float64) - ref)
            print(f"\nface_landmarker {name} at batch {batch}: {len(x)} real crops, max|diff| {d.max():.2e}")
            assert (d - RTOL * np.abs(ref)).max() <= ATOL, f"{name} at batch {batch}: max |diff| {d.max():.3e}"


def test_blendshape_model_matches_tflite(landmarker, reference, crops):
    import mobidem_landmarker as ml
    from mobidem_landmarker import task

    x, rois = crops
    # the blendshape model's input as the plugin makes it, from the reference landmarks of the real crops
    lm = [_invoke(reference[task.LANDMARKS_MEMBER], (x[j:j + 1].astype(np.float32) / 255.0).astype(np.float32))
          ["Identity"].reshape(task.POINTS, 3) for j in range(len(x))]
    points = ml.blendshape_input(np.stack([ml.to_image(p, m) for p, m in zip(lm, rois)]))
    assert points.shape == (len(x), task.SUBSET, 2)
    interp = reference[task.BLENDSHAPES_MEMBER]
    want = np.stack([next(iter(_invoke(interp, points[j:j + 1]).values())).reshape(task.BLENDSHAPES)
                     for j in range(len(points))])
    assert want.max() > 0.5 and want.min() >= 0.0  # some blendshape is clearly active somewhere
    session = _served(landmarker, "face_landmarker_blendshapes")
    largest = max_batch(landmarker.repository, "face_landmarker_blendshapes")
    assert largest > 1
    for batch in (1, largest):
        got = _batched(session, "points", points, batch, ["blendshapes"])["blendshapes"]
        assert got.shape == want.shape
        d = np.abs(got.astype(np.float64) - want)
        print(f"\nface_landmarker_blendshapes at batch {batch}: {len(points)} real faces, max|diff| {d.max():.2e}")
        assert d.max() <= BLENDSHAPE_ATOL


def test_the_bundle_is_pinned(tmp_path):
    """A bundle with other bytes is refused by the build step."""
    pytest.importorskip("mobidem_landmarker")
    from mobidem.modelbuild import BuildError
    from mobidem_landmarker import task

    other = tmp_path / "face_landmarker.task"
    data = bytearray(task.installed().read_bytes())
    data[100] ^= 1  # one bit inside the first member
    other.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="not the pinned"):
        task.build_blendshapes(other)


def test_head_pose_recovers_a_known_rotation_of_the_canonical_face(landmarker):
    """The canonical face turned by known angles and drawn in image coordinates (x right, y down, depth
    smaller when nearer): the signs the plugin documents, and the angles back within 0.5 degree."""
    from scipy.spatial.transform import Rotation

    from mobidem_landmarker import pose

    face = landmarker.canonical
    nose, right_eye_outer, left_eye_outer = 1, 33, 263  # canonical ids; 33 is on the image's left
    for yaw, pitch, roll in [(30, 0, 0), (-25, 0, 0), (0, 20, 0), (0, -20, 0), (0, 0, 15), (20, -10, 8)]:
        turned = Rotation.from_euler("YXZ", [yaw, pitch, roll], degrees=True).apply(face.vertices)
        image = turned * np.array([1.0, -1.0, -1.0]) * 12.0 + np.array([320.0, 240.0, 0.0])  # 12 px per cm
        got = pose.head_pose(face, image)
        assert np.allclose(got, (yaw, pitch, roll), atol=0.5), (got, (yaw, pitch, roll))
        mid = image[[right_eye_outer, left_eye_outer]].mean(0)
        if (pitch, roll) == (0, 0):  # nose to the image's right exactly when yaw > 0
            assert (image[nose, 0] > mid[0]) == (yaw > 0)
        if (yaw, roll) == (0, 0):  # nose lower in the image (larger y) relative to the eyes when pitch > 0
            rest = face.vertices * np.array([1.0, -1.0, -1.0])
            assert (image[nose, 1] - mid[1] > 12 * (rest[nose, 1] - rest[[33, 263], 1].mean())) == (pitch > 0)
        if (yaw, pitch) == (0, 0):  # the eye on the image's right rises (smaller y) when roll > 0
            assert (image[left_eye_outer, 1] < image[right_eye_outer, 1]) == (roll > 0)


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def landmarker_triton(landmarker, model_repository, tmp_path_factory):
    """A managed Triton with the main repository and the plugin's, loading only what the server below uses."""
    from mobidem import plugins
    from mobidem.managed_triton import ManagedTriton

    mesh, confirm = plugins.load("face_mesh"), plugins.load("yunet")  # yunet: the default detector_confirm
    models = ["blazeface_short", "blazeface_full", *(m.name for m in (*mesh.models, *landmarker.models, *confirm.models))]
    server = ManagedTriton([model_repository, mesh.repository, landmarker.repository, confirm.repository],
                           tmp_path_factory.mktemp("landmarker-triton"), models=models)
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def with_landmarker(start_server, landmarker_triton):
    server = start_server(triton_url=landmarker_triton.grpc_url, face_plugins="face_mesh,face_landmarker")
    yield server
    server.stop()  # before its module's Triton goes: it would otherwise probe a dead Triton all session


def _largest_faces(server, frames) -> list:
    from mobidem.v1 import mobidem_pb2 as pb

    with server.client() as client:
        results = list(client.stream(frames, tasks=[pb.TASK_PLUGINS], tracking=pb.TRACKING_OFF))
    assert all(r.status == pb.FrameResult.STATUS_OK for r in results), [r.error_message for r in results]
    return [max(r.faces, key=lambda f: (f.box.x1 - f.box.x0) * (f.box.y1 - f.box.y0)) if r.faces else None
            for r in results]


def _number(face, field: str) -> float:
    return face.extensions[f"face_landmarker.{field}"].number


def test_fields_from_the_entry_point(faces, with_landmarker, landmarker):
    from mobidem_landmarker import BLENDSHAPE_NAMES

    photos = [p for person in sorted((faces / "identities").iterdir())[:4] for p in person_photos(faces, person.name)[:1]]
    for face in _largest_faces(with_landmarker, photos):
        assert face is not None
        expected = {f"face_landmarker.{f}" for f in ("landmarks", "presence", "yaw", "pitch", "roll", *BLENDSHAPE_NAMES)}
        mine = {k for k in face.extensions if k.startswith("face_landmarker.")}
        assert mine == expected
        assert {k for k in face.extensions if not k.startswith("face_landmarker.")} == {
            "face_mesh.mesh", "face_mesh.eye_openness", "face_mesh.face_presence"}
        points = np.array([(p.x, p.y) for p in face.extensions["face_landmarker.landmarks"].points.points])
        assert points.shape == (478, 2)
        cx, cy = points[:468].mean(0)  # the landmarks lie on the face the detector found
        assert face.box.x0 <= cx <= face.box.x1 and face.box.y0 <= cy <= face.box.y1
        mesh = np.array([(p.x, p.y) for p in face.extensions["face_mesh.mesh"].points.points])
        eye_span = np.linalg.norm(mesh[33] - mesh[263])
        # the two MediaPipe models agree on where the 468 shared points are (within a tenth of the eye span)
        assert np.median(np.linalg.norm(points[:468] - mesh, axis=1)) < 0.1 * eye_span
        assert _number(face, "presence") > 0.5
        assert all(0.0 <= _number(face, n) <= 1.0 for n in BLENDSHAPE_NAMES)
        assert all(-180.0 <= _number(face, a) <= 180.0 for a in ("yaw", "pitch", "roll"))


def test_eye_blink_separates_closed_from_open_eyes(faces, with_landmarker):
    rows = blink_rows(faces)
    found = _largest_faces(with_landmarker, [faces / "blink" / r["path"] for r in rows])
    blink, openness, closed = [], [], []
    for row, face in zip(rows, found):
        if face is None:
            continue
        blink.append((_number(face, "eyeBlinkLeft") + _number(face, "eyeBlinkRight")) / 2)
        openness.append(face.extensions["face_mesh.eye_openness"].number)
        closed.append(row["label"] == "closed")
    b, y = np.array(blink), np.array(closed)
    auc = roc_auc(b, y)
    accuracy = max(float(((b >= t) == y).mean()) for t in b)
    print(f"\neyeBlink (mean of both eyes) on {len(b)} of {len(rows)} blink images: ROC AUC {auc:.4f}, best-threshold "
          f"accuracy {accuracy:.3f}; closed {b[y].mean():.3f} (min {b[y].min():.3f}), open {b[~y].mean():.3f} "
          f"(max {b[~y].max():.3f}); face_mesh eye_openness on the same faces: ROC AUC "
          f"{roc_auc(-np.array(openness), y):.4f}")
    assert len(b) >= 0.95 * len(rows)
    assert y.any() and (~y).any()
    assert auc >= MIN_BLINK_AUC
    assert accuracy >= MIN_BLINK_ACCURACY
    assert b[y].mean() >= 0.45 and b[~y].mean() <= 0.2  # high on closed eyes, low on open ones


def test_jaw_open_and_smile_follow_the_labelled_expressions(faces, with_landmarker):
    labels = ("neutral", "happy", "surprise")
    paths = {lab: sorted((faces / "expressions" / lab).glob("*.jpg")) for lab in labels}
    need(all(paths.values()), "the expression set lacks neutral, happy or surprise images")
    scores = {}
    for lab in labels:
        found = [f for f in _largest_faces(with_landmarker, paths[lab]) if f is not None]
        assert len(found) >= 0.9 * len(paths[lab])
        scores[lab] = {"jawOpen": np.array([_number(f, "jawOpen") for f in found]),
                       "mouthSmile": np.array([(_number(f, "mouthSmileLeft") + _number(f, "mouthSmileRight")) / 2
                                               for f in found])}
    for blendshape, expression in (("jawOpen", "surprise"), ("mouthSmile", "happy")):
        pos, neg = scores[expression][blendshape], scores["neutral"][blendshape]
        auc = roc_auc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
        print(f"\n{blendshape}: {expression} {pos.mean():.3f} (n={len(pos)}) vs neutral {neg.mean():.3f} "
              f"(n={len(neg)}), ROC AUC {auc:.3f}")
        assert auc >= MIN_EXPRESSION_AUC
        assert pos.mean() - neg.mean() >= MIN_EXPRESSION_GAP


def test_head_pose_signs_follow_the_labelled_turns(faces, with_landmarker):
    root = faces / "liveness" / "videos"
    by_video: dict[str, list] = {}
    for video, (a, b), label in POSE_SEGMENTS:
        by_video.setdefault(video, []).append(((a, b), label))
    lines, failures = [], []
    for video, segments in by_video.items():
        wanted = {k for (a, b), _ in segments for k in range(a, b, POSE_STEP)}
        frames = video_frames(root / video, wanted)
        order = sorted(frames)
        found = dict(zip(order, _largest_faces(with_landmarker, [frames[k] for k in order])))
        for (a, b), label in segments:
            poses = np.array([(_number(f, "yaw"), _number(f, "pitch")) for k, f in found.items()
                              if a <= k < b and f is not None])
            assert len(poses) >= 0.8 * len(range(a, b, POSE_STEP)), f"{video} {label}: few faces"
            yaw, pitch = np.median(poses, axis=0)
            lines.append(f"{video[:3]} frames {a}-{b} {label}: median yaw {yaw:+.1f}, pitch {pitch:+.1f}")
            ok = {"frontal": abs(yaw) <= FRONTAL_DEG,
                  "nose to image-right": yaw >= TURN_DEG,
                  "nose to image-left": yaw <= -TURN_DEG,
                  "head down": pitch >= TURN_DEG,
                  "looks up": pitch <= -TURN_DEG}[label]
            if not ok:
                failures.append(lines[-1])
    print("\n" + "\n".join(lines))
    assert not failures, failures
