"""Verification threshold calibration from genuine / impostor distance arrays.

Convention throughout: inputs are *distances* (smaller = more alike) and a pair is
accepted when ``distance <= threshold``.

* FAR(t) = fraction of impostor distances <= t   (false accept rate)
* TAR(t) = fraction of genuine distances  <= t   (true accept rate = 1 - FRR)

dlib's published rule is "same person if distance < 0.6" (``DLIB_DEFAULT_THRESHOLD``);
calibrating on data from the deployment's own cameras gives operating points with a
known FAR instead. Pure numpy + json; no I/O besides ``load``/``save``.

Each embedder has its own file and its own metric (``embedder.metric``: ``euclidean`` for
dlib's ResNet, the default when a file does not say; ``cosine`` for SFace, where the
distance is 1 - cosine similarity: gallery/index.py). A file's thresholds hold only for
the embedder, version and ONNX file it names (``embedder_mismatch``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

DLIB_DEFAULT_THRESHOLD = 0.6
FORMAT_VERSION = 1
DEFAULT_FARS = (1e-2, 1e-3)
METRICS = ("euclidean", "cosine")  # as gallery/index.py computes them


def _arr(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return np.sort(a)


def _check_far(far: float) -> float:
    far = float(far)
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    return far


def far_at(impostor, threshold: float) -> float:
    imp = _arr("impostor", impostor)
    return float(np.searchsorted(imp, threshold, side="right") / imp.size)


def tar_at(genuine, threshold: float) -> float:
    gen = _arr("genuine", genuine)
    return float(np.searchsorted(gen, threshold, side="right") / gen.size)


def roc(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(thresholds, far, tar)``, thresholds ascending.

    The thresholds are -inf (accept nothing: FAR = TAR = 0) followed by every distinct
    observed distance; FAR/TAR are evaluated with ``distance <= threshold``.
    """
    gen, imp = _arr("genuine", genuine), _arr("impostor", impostor)
    thr = np.concatenate(([-np.inf], np.unique(np.concatenate((gen, imp)))))
    far = np.searchsorted(imp, thr, side="right") / imp.size
    tar = np.searchsorted(gen, thr, side="right") / gen.size
    return thr, far, tar


def threshold_at_far(genuine, impostor, far: float) -> float:
    """Largest threshold t with FAR(t) <= ``far``.

    With sorted impostors s_1 <= ... <= s_m and c = floor(far * m) allowed false accepts,
    FAR(t) <= far exactly when t < s_{c+1}, so the answer is the largest float64 below
    s_{c+1}. When far * m >= m every threshold qualifies and the largest observed
    distance is returned. ``genuine`` is validated but does not move the threshold.
    """
    _arr("genuine", genuine)
    imp = _arr("impostor", impostor)
    far = _check_far(far)
    m = imp.size
    c = int(math.floor(far * m * (1.0 + 1e-12)))  # tolerate 1e-3 * 1000 = 0.99999...
    if c >= m:
        return float(max(imp[-1], np.max(np.asarray(genuine, dtype=np.float64))))
    return float(np.nextafter(imp[c], -np.inf))


def tar_at_far(genuine, impostor, far: float) -> float:
    """TAR at the threshold chosen by ``threshold_at_far``."""
    return tar_at(genuine, threshold_at_far(genuine, impostor, far))


def auc(genuine, impostor) -> float:
    """Area under the ROC curve = P(genuine distance < impostor distance) + ½ P(tie)."""
    gen, imp = _arr("genuine", genuine), _arr("impostor", impostor)
    below = np.searchsorted(gen, imp, side="left")
    tied = np.searchsorted(gen, imp, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (gen.size * imp.size))


def best_accuracy_threshold(genuine, impostor) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising (#genuine <= t + #impostor > t) / (n_g + n_i).

    Candidates are the observed distances plus "accept nothing" (the largest float below
    the minimum); ties go to the smallest threshold (the lower-FAR one).
    """
    gen, imp = _arr("genuine", genuine), _arr("impostor", impostor)
    lo = np.nextafter(min(gen[0], imp[0]), -np.inf)
    thr = np.concatenate(([lo], np.unique(np.concatenate((gen, imp)))))
    correct = np.searchsorted(gen, thr, side="right") + (imp.size - np.searchsorted(imp, thr, side="right"))
    i = int(np.argmax(correct))  # first maximum = smallest threshold
    return float(thr[i]), float(correct[i] / (gen.size + imp.size))


def far_name(far: float) -> str:
    """Key of an operating point: 1e-2 -> "far_1e-2", 1e-3 -> "far_1e-3", 0.05 -> "far_0.05"."""
    far = _check_far(far)
    if far > 0:
        e = math.log10(far)
        if abs(e - round(e)) < 1e-9:
            return f"far_1e{int(round(e))}"
    return f"far_{far:g}"


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    far_target: float
    threshold: float
    measured_far: float
    measured_tar: float
    n_genuine: int
    n_impostor: int


def operating_point(genuine, impostor, far: float, name: str | None = None) -> OperatingPoint:
    gen, imp = _arr("genuine", genuine), _arr("impostor", impostor)
    t = threshold_at_far(gen, imp, far)
    return OperatingPoint(
        name=name or far_name(far),
        far_target=float(far),
        threshold=t,
        measured_far=far_at(imp, t),
        measured_tar=tar_at(gen, t),
        n_genuine=int(gen.size),
        n_impostor=int(imp.size),
    )


@dataclass(frozen=True)
class Calibration:
    """Contents of a calibration JSON file."""

    model_name: str
    model_version: str
    dataset: str  # free-text description of the pairs used
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    auc: float | None = None
    best_accuracy_threshold: float | None = None
    best_accuracy: float | None = None
    onnx_sha256: str = ""  # the embedder's model.onnx (repository MANIFEST.json) the pairs were embedded with
    metric: str = "euclidean"  # how the distances were computed: euclidean | cosine (1 - cosine similarity)

    def threshold(self, name: str = "far_1e-3") -> float:
        return self.operating_points[name].threshold

    def describe(self) -> str:
        sha = self.onnx_sha256[:12] or "unrecorded"
        return f"{self.model_name} version {self.model_version} (ONNX sha256 {sha}, {self.metric} distance)"


def embedder_mismatch(cal: Calibration, model_name: str, model_version: str, onnx_sha256: str) -> str | None:
    """Why thresholds computed for ``cal``'s embedder do not hold for the served one (None: they do).
    Distances of another embedder (or another build of it) are on another scale."""
    served = f"{model_name} version {model_version} (ONNX sha256 {onnx_sha256[:12] or 'unknown'})"
    if (cal.model_name, cal.model_version) != (model_name, model_version):
        return f"the calibration is for {cal.describe()} but Triton serves {served}"
    if cal.onnx_sha256 and cal.onnx_sha256 != onnx_sha256:
        return f"the calibration is for {cal.describe()} but the served model file is {served}"
    return None


def calibrate(
    genuine, impostor, model_name: str, model_version: str, dataset: str, fars=DEFAULT_FARS, onnx_sha256: str = "",
    metric: str = "euclidean",
) -> Calibration:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    t, acc = best_accuracy_threshold(genuine, impostor)
    ops = {}
    for far in fars:
        op = operating_point(genuine, impostor, far)
        ops[op.name] = op
    return Calibration(model_name, model_version, dataset, ops, auc(genuine, impostor), t, acc, onnx_sha256, metric)


def to_json(cal: Calibration) -> dict:
    embedder = {"model_name": cal.model_name, "model_version": cal.model_version, "onnx_sha256": cal.onnx_sha256}
    if cal.metric != "euclidean":  # the files written before metrics existed stay as they were
        embedder["metric"] = cal.metric
    return {
        "format_version": FORMAT_VERSION,
        "embedder": embedder,
        "dataset": cal.dataset,
        "auc": cal.auc,
        "best_accuracy_threshold": cal.best_accuracy_threshold,
        "best_accuracy": cal.best_accuracy,
        "operating_points": {k: asdict(v) for k, v in cal.operating_points.items()},
    }


def from_json(d: dict) -> Calibration:
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported calibration format_version {d.get('format_version')!r}")
    try:
        cal = Calibration(
            model_name=d["embedder"]["model_name"],
            model_version=d["embedder"]["model_version"],
            dataset=d.get("dataset", ""),
            operating_points={k: OperatingPoint(**v) for k, v in d["operating_points"].items()},
            auc=d.get("auc"),
            best_accuracy_threshold=d.get("best_accuracy_threshold"),
            best_accuracy=d.get("best_accuracy"),
            onnx_sha256=d["embedder"].get("onnx_sha256", ""),
            metric=d["embedder"].get("metric", "euclidean"),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed calibration file: {e}") from e
    if cal.metric not in METRICS:
        raise ValueError(f"calibration file: unknown metric {cal.metric!r}; known: {', '.join(METRICS)}")
    return cal


def save(path: str | os.PathLike, cal: Calibration) -> None:
    """Write atomically (temp file + fsync + rename)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_json(cal), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike) -> Calibration:
    with open(path) as f:
        return from_json(json.load(f))
