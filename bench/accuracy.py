"""Accuracy report: our Triton pipeline versus the face_recognition library on the shared face data.

    .venv/bin/python bench/accuracy.py [--data /work/shared/data/faces] [--no-write]

Starts the managed Triton itself (workdir under /tmp) and measures, on the same images:

  ours       BlazeFace (auto: short range with a margin + full range, whole image and, for large
             images, tiles, merged by weighted NMS) -> align.py chip -> face_multitask (embedding +
             expression), all inference through Triton.
  reference  what face_recognition does: dlib HOG detector (upsample 1) -> 5-point shape predictor
             -> dlib ResNet compute_face_descriptor (num_jitters=1), reproduced with dlib directly
             (face_recognition itself cannot be imported here: face_recognition_models needs
             pkg_resources). Images are loaded as face_recognition.load_image_file does (PIL, RGB).

It also compares detector configurations (``DETECTION_CONFIGS``, built from the pipeline's own
``run_pass`` / ``Pass`` of the blazeface plugin and ``blazeface.weighted_nms``) on the Hamilton clip
against the face_recognition library's boxes (tests/reference/hamilton_facerec.json), on noface/,
multiface/, expressions/ and on every 8th frame of the 1080p video against dlib HOG.

Embedders side by side (issue 19): with the ``sface`` plugin installed, the largest face of every identity
photo is also embedded by SFace (its own 112x112 alignment from the same detection, through Triton) and
verification/identification are computed for each embedder in its own metric (dlib: Euclidean; SFace:
1 - cosine). Each embedder gets its own calibration file.

Writes docs/ACCURACY.md, docs/accuracy.json, server/mobidem/data/calibration.json (face_multitask) and
server/mobidem/data/calibration_sface.json (sface, when installed).
The measuring functions (``evaluate_pairs``, ``rank1``, ``expression_accuracy``, ...) are importable
so tests can recompute numbers or assert against the committed JSON (``sys.path.insert(0, "bench");
import accuracy``; docs/accuracy.json["summary"] holds the headline numbers).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata as md
import importlib.util
import itertools
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mobidem is installed (make setup); never put server/ on sys.path: a stale egg-info there hides the plugins

from mobidem import calibration  # noqa: E402
from mobidem_builtin_plugins.blazeface import BlazeFace, applies, drop_covered_by_tiles, run_pass, shrink_factor  # noqa: E402
from mobidem_builtin_plugins.blazeface import Pass as DetectorPass  # noqa: E402
from mobidem_builtin_plugins.faces import EXPRESSION_BOX, EXPRESSION_LABELS  # noqa: E402
from mobidem.vision import blazeface  # noqa: E402

DEFAULT_DATA = "/work/shared/data/faces"
DLIB_THRESHOLD = calibration.DLIB_DEFAULT_THRESHOLD  # 0.6
# OpenCV zoo's rule for SFace: same person when cosine similarity >= 0.363 (models/face_recognition_sface/
# sface.py, _threshold_cosine), i.e. cosine distance <= 0.637
SFACE_THRESHOLD = 1 - 0.363
# the embedders compared: model -> (plugin, metric, the publisher's fixed threshold, its name)
EMBEDDERS = {"face_multitask": ("face_multitask", "euclidean", DLIB_THRESHOLD, "dlib's rule: distance < 0.6"),
             "sface": ("sface", "cosine", SFACE_THRESHOLD, "OpenCV zoo's rule: cosine >= 0.363")}
FARS = (1e-2, 1e-3)
# Candidate expression crops (x0, y0, x1, y1) of the 150x150 chip, studied outside Triton.
BOX_CANDIDATES = (
    (25, 25, 125, 125),
    (20, 20, 130, 130),
    (30, 35, 120, 125),
    (15, 15, 135, 135),
    (10, 10, 140, 140),
    (20, 25, 130, 135),
    (0, 0, 150, 150),
)
GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # as graph.multitask


# ------------------------------------------------------------------------------------------ data
def natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


@dataclass
class Dataset:
    root: str
    identities: dict[str, list[str]] = field(default_factory=dict)  # person -> paths, natural order
    expressions: list[tuple[str, str]] = field(default_factory=list)  # (path, label)
    multiface: list[tuple[str, int, str]] = field(default_factory=list)  # (path, expected, label)
    noface: list[tuple[str, str]] = field(default_factory=list)

    @property
    def all_paths(self) -> list[str]:
        ids = [p for ps in self.identities.values() for p in ps]
        return ids + [p for p, _ in self.expressions] + [p for p, *_ in self.multiface] + [p for p, _ in self.noface]


def load_dataset(root: str) -> Dataset:
    ds = Dataset(root)
    with open(os.path.join(root, "MANIFEST.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]
    for r in sorted(rows, key=lambda r: natural_key(r["path"])):
        kind, label, path = r["kind"], r["label"], r["path"]
        if kind == "identity":
            ds.identities.setdefault(label, []).append(path)
        elif kind == "expression":
            ds.expressions.append((path, label))
        elif kind == "multiface":
            m = re.search(r"n[=~](\d+)", label)
            ds.multiface.append((path, int(m.group(1)) if m else -1, label))
        elif kind == "noface":
            ds.noface.append((path, label))
    ds.identities = dict(sorted(ds.identities.items()))
    return ds


# ------------------------------------------------------------------------------------------ metrics
def distance_matrix(x: np.ndarray, y: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Distances between the rows of x and of y: Euclidean, or 1 - cosine similarity (gallery/index.py)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        y = y / np.linalg.norm(y, axis=-1, keepdims=True)
        return 1.0 - x @ y.T
    return np.sqrt(np.maximum(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1), 0.0))


def pair_distances(embeddings_by_person: dict[str, list[np.ndarray]],
                   metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Distances (``metric``) of all same-person (genuine) and different-person (impostor) pairs."""
    names, embs = [], []
    for person, es in embeddings_by_person.items():
        for e in es:
            names.append(person)
            embs.append(np.asarray(e, np.float64))
    x = np.stack(embs)
    d = distance_matrix(x, x, metric)
    iu, ju = np.triu_indices(len(names), k=1)
    same = np.array([names[i] == names[j] for i, j in zip(iu, ju)])
    dist = d[iu, ju]
    return dist[same], dist[~same]


def rank1(embeddings_by_person: dict[str, list[np.ndarray]], metric: str = "euclidean") -> dict:
    """First embedding of each person = gallery; every other one a probe; nearest gallery entry wins."""
    people = list(embeddings_by_person)
    gallery = np.stack([np.asarray(embeddings_by_person[p][0], np.float64) for p in people])
    correct = total = 0
    misses = []
    for p in people:
        for k, e in enumerate(embeddings_by_person[p][1:], start=1):
            d = distance_matrix(np.asarray(e, np.float64)[None], gallery, metric)[0]
            best = people[int(np.argmin(d))]
            total += 1
            if best == p:
                correct += 1
            else:
                misses.append({"person": p, "probe_index": k, "predicted": best})
    return {"accuracy": correct / total if total else float("nan"), "correct": correct, "probes": total,
            "gallery": len(people), "misses": misses}


def verification(genuine: np.ndarray, impostor: np.ndarray, fixed_threshold: float = DLIB_THRESHOLD) -> dict:
    gen, imp = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    tar_f, far_f = float((gen < fixed_threshold).mean()), float((imp < fixed_threshold).mean())
    acc_f = float(((gen < fixed_threshold).sum() + (imp >= fixed_threshold).sum()) / (gen.size + imp.size))
    t_best, acc_best = calibration.best_accuracy_threshold(gen, imp)
    ops = {}
    for far in FARS:
        op = calibration.operating_point(gen, imp, far)
        ops[op.name] = {"far_target": far, "threshold": op.threshold, "tar": op.measured_tar,
                        "far": op.measured_far, "false_accepts_allowed": int(np.floor(far * imp.size * (1 + 1e-12)))}
    return {
        "n_genuine": int(gen.size), "n_impostor": int(imp.size),
        "fixed_threshold": fixed_threshold, "accuracy_at_fixed": acc_f, "tar_at_fixed": tar_f, "far_at_fixed": far_f,
        "best_accuracy": acc_best, "best_threshold": t_best,
        "operating_points": ops, "auc": calibration.auc(gen, imp),
        "genuine_mean": float(gen.mean()), "impostor_mean": float(imp.mean()),
    }


def evaluate_pairs(embeddings_by_person: dict[str, list[np.ndarray]], metric: str = "euclidean",
                   fixed_threshold: float = DLIB_THRESHOLD) -> dict:
    """Verification over all pairs plus rank-1 identification, from {person: [embedding, ...]} (ordered)."""
    gen, imp = pair_distances(embeddings_by_person, metric)
    out = verification(gen, imp, fixed_threshold)
    out["rank1"] = rank1(embeddings_by_person, metric)
    out["metric"] = metric
    return out


def expression_accuracy(predictions: list[int | None], labels: list[str]) -> dict:
    """Per-class and overall accuracy; ``None`` (no face found) counts as wrong."""
    per = {}
    for lab in EXPRESSION_LABELS:
        idx = [i for i, l in enumerate(labels) if l == lab]
        if idx:
            ok = sum(1 for i in idx if predictions[i] is not None and EXPRESSION_LABELS[predictions[i]] == lab)
            per[lab] = {"correct": ok, "n": len(idx), "accuracy": ok / len(idx)}
    ok = sum(v["correct"] for v in per.values())
    n = len(labels)
    return {"accuracy": ok / n, "correct": ok, "n": n, "per_class": per,
            "no_face": sum(p is None for p in predictions)}


def majority_baseline(labels: list[str]) -> dict:
    counts = {l: labels.count(l) for l in sorted(set(labels))}
    lab = max(counts, key=counts.get)
    return {"label": lab, "accuracy": counts[lab] / len(labels), "counts": counts}


def expression_inputs(chips: np.ndarray, box: tuple[int, int, int, int], size: int = 64) -> np.ndarray:
    """What face_multitask's expression branch feeds mini-Xception (gray -> crop -> bilinear resize),
    rounded to uint8 for the standalone fer_xception model: [N, 64, 64, 1]."""
    x0, y0, x1, y1 = box
    out = np.empty((len(chips), size, size, 1), np.uint8)
    for i, c in enumerate(chips):
        g = (c.astype(np.float32) @ GRAY)[y0:y1, x0:x1]
        r = cv2.resize(g, (size, size), interpolation=cv2.INTER_LINEAR)
        out[i, :, :, 0] = np.clip(np.rint(r), 0, 255).astype(np.uint8)
    return out


def plain_crop_input(image_rgb: np.ndarray, size: int = 64) -> np.ndarray:
    g = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)[:, :, None]


def true_class_nll(probs: np.ndarray, labels: list[str]) -> float:
    idx = [EXPRESSION_LABELS.index(l) for l in labels]
    p = np.clip(probs[np.arange(len(idx)), idx], 1e-9, 1.0)
    return float(-np.log(p).mean())


# ------------------------------------------------------------------------------------------ pipelines
@dataclass
class Found:
    faces: int
    boxes: list  # largest first
    embedding: np.ndarray | None = None  # largest face
    embeddings: dict = field(default_factory=dict)  # largest face, by embedder model (ours)
    expression: np.ndarray | None = None  # largest face (ours)
    chip: np.ndarray | None = None  # largest face (ours)
    detector: str = ""


async def run_ours(paths: list[str], root: str, repository: str, workdir: str, concurrency: int = 4,
                   study_inputs: dict[str, list] | None = None, embed_paths: set[str] = frozenset(),
                   extra_embedders: list[str] = ()):
    from mobidem.imaging import decode_encoded
    from mobidem.managed_triton import ManagedTriton
    from mobidem.pipeline import ALL_TASKS, Pipeline, PipelineConfig
    from mobidem import plugins as plugin_registry
    from mobidem.plugins import Detection, PluginSet
    from mobidem.triton_client import TritonClient
    from mobidem.vision.align import align_chip

    from mobidem.config import Settings

    # the gateway's default detection: blazeface, and the faces it is unsure of confirmed (detector_confirm)
    s = Settings()
    plugins = PluginSet.from_config("blazeface", ["face_multitask"], confirm_detector=s.detector_confirm)
    confirm = PipelineConfig(confirm_below=s.detector_confirm_below if plugins.confirmer is not None else 0.0,
                             confirm_min_score=s.detector_confirm_min_score)
    extra = [plugin_registry.load(name) for name in extra_embedders]  # e.g. sface, on the same detections
    triton = ManagedTriton([repository, *dict.fromkeys(p.repository for p in (*plugins.plugins, *extra) if p.repository)],
                           workdir)
    t0 = time.perf_counter()
    triton.start()
    started = time.perf_counter() - t0
    client = TritonClient(triton.grpc_url)
    pipe = Pipeline(client, plugins, confirm)
    results: dict[str, Found] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(path: str):
        async with sem:
            with open(os.path.join(root, path), "rb") as f:
                data = f.read()
            image = decode_encoded(data)
            a = await pipe.analyze(lambda: image, ALL_TASKS)
            faces = sorted(a.faces, key=lambda fr: float((fr.box[2] - fr.box[0]) * (fr.box[3] - fr.box[1])),
                           reverse=True)
            found = Found(len(faces), [fr.box.tolist() for fr in faces], detector=a.models[0][1])
            if faces:
                found.embedding = faces[0].embedding
                found.embeddings["face_multitask"] = faces[0].embedding
                found.expression = faces[0].expression
                found.chip = align_chip(image, faces[0].landmarks)[0]
                if path in embed_paths:
                    largest = Detection(faces[0].box, faces[0].score, faces[0].landmarks)
                    for plugin in extra:
                        (fields,) = await plugin.process(image, [largest], found.chip[None], pipe)
                        found.embeddings[plugin.models[0].name] = np.asarray(fields["embedding"], np.float32)
            results[path] = found

    try:
        meta = await client.client.get_server_metadata()
        version = meta.version
        model_version = await client.model_version("face_multitask")
        extra_versions = {p.models[0].name: await client.model_version(p.models[0].name) for p in extra}
        t1 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in paths))
        elapsed = time.perf_counter() - t1
        study = study_s = None
        if study_inputs is not None:
            assert tuple(pipe.plugins.detector.passes) == tuple(_AUTO), "e_auto no longer matches the blazeface plugin"
            t2 = time.perf_counter()
            study = await detection_study(pipe, study_inputs, concurrency)
            study_s = time.perf_counter() - t2
    finally:
        pipe.close()
        await client.close()
        triton.stop()
    return results, {"triton_version": version, "face_multitask_version": model_version,
                     "embedder_versions": {"face_multitask": model_version, **extra_versions},
                     "triton_start_s": started, "images_s": elapsed, "detection_study": study,
                     "detection_study_s": study_s}


class Reference:
    """face_recognition's pipeline with dlib directly (HOG upsample 1, 5-point, ResNet, 1 jitter)."""

    def __init__(self):
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("face_recognition_models (test-only reference) is not installed")
        models = os.path.join(list(spec.submodule_search_locations)[0], "models")
        self.dlib = dlib
        self.hog = dlib.get_frontal_face_detector()
        self.sp5 = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))

    @staticmethod
    def load(path: str) -> np.ndarray:  # face_recognition.load_image_file
        from PIL import Image

        with Image.open(path) as im:
            return np.array(im.convert("RGB"))

    def run(self, path: str, embed: bool) -> Found:
        img = self.load(path)
        h, w = img.shape[:2]
        boxes = []
        for r in self.hog(img, 1):  # face_locations: css trimmed to the image
            top, right, bottom, left = max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0)
            boxes.append((left, top, right, bottom))
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        found = Found(len(boxes), [list(b) for b in boxes], detector="dlib_hog")
        if embed and boxes:
            shape = self.sp5(img, self.dlib.rectangle(*boxes[0]))
            found.embedding = np.array(self.net.compute_face_descriptor(img, shape, 1))
        return found


# ------------------------------------------------------------------------------------------ detector configurations
@dataclass(frozen=True)
class DetectionConfig:
    key: str
    passes: tuple[DetectorPass, ...]
    rule: str = "merge"  # "merge": all passes, weighted NMS (as Pipeline.detect); "fallback": next pass only if none found

    @property
    def title(self) -> str:
        def one(p: DetectorPass) -> str:
            s = f"{'short' if p.spec is blazeface.SHORT_RANGE else 'full'} {p.score_threshold:g}"
            if p.margin:
                s += f" +{100 * p.margin:g} % margin"
            if p.tile:
                s += f" on {p.tile} px tiles"
            return s
        joiner = ", then if none: " if self.rule == "fallback" else " + "
        return joiner.join(one(p) for p in self.passes)


_AUTO = BlazeFace.passes  # what the default detector plugin, "blazeface", runs
DETECTION_CONFIGS = (
    DetectionConfig("a_short", (DetectorPass(blazeface.SHORT_RANGE, 0.5),)),
    DetectionConfig("b_short_then_full", (DetectorPass(blazeface.SHORT_RANGE, 0.5), DetectorPass(blazeface.FULL_RANGE, 0.5)),
                    "fallback"),
    DetectionConfig("c_short_full_merged", (DetectorPass(blazeface.SHORT_RANGE, 0.5), DetectorPass(blazeface.FULL_RANGE, 0.5))),
    DetectionConfig("d_chosen_no_tiles", tuple(p for p in _AUTO if not p.tile)),
    DetectionConfig("e_auto", _AUTO),
)
VIDEO_1080P = "videos/facenet_pytorch_video.mp4"
VIDEO_1080P_STEP = 8
HAMILTON_REFERENCE = os.path.join(ROOT, "tests", "reference", "hamilton_facerec.json")
HIT_IOU = 0.3


def box_iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def combine(cfg: DetectionConfig, per_pass: dict[DetectorPass, list], min_face_px: int, shape) -> list:
    """One configuration's faces from its passes' detections, by the blazeface plugin's rule (or the old
    fallback)."""
    if cfg.rule == "fallback":
        found = next((per_pass[p] for p in cfg.passes if per_pass[p]), [])
    else:
        ran = [p for p in cfg.passes if applies(p, *shape[:2])]
        found = [d for p in cfg.passes for d in drop_covered_by_tiles(per_pass[p], p, ran)]
        if len(cfg.passes) > 1 and found:
            merged = blazeface.weighted_nms(np.array([d.box for d in found]), np.array([d.score for d in found]),
                                            np.array([d.keypoints for d in found]), blazeface.SHORT_RANGE.iou_threshold)
            found = [blazeface.Detection(box, score, kps) for box, score, kps in merged]
    return [d for d in found if min(d.width, d.height) >= min_face_px]


def jpeg_round_trip(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """What the gateway decodes when mobidem.client streams a video frame (JPEG, quality 90)."""
    from mobidem.imaging import decode_encoded

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return decode_encoded(buf.tobytes())


def video_rgb_frames(path: str, step: int = 1) -> list[np.ndarray]:
    from mobidem.client import video_frames

    return [f for i, f in enumerate(video_frames(path)) if i % step == 0]


def detection_inputs(ds: Dataset) -> dict[str, list]:
    """(name, loader) per image of each detection set: loaders return the RGB image our gateway would see."""
    from mobidem.imaging import decode_encoded

    def file(path):
        return lambda: decode_encoded(open(os.path.join(ds.root, path), "rb").read())

    ham = video_rgb_frames(os.path.join(ds.root, json.load(open(HAMILTON_REFERENCE))["video"]))
    big = video_rgb_frames(os.path.join(ds.root, VIDEO_1080P), VIDEO_1080P_STEP)
    return {
        "hamilton": [(i, (lambda f=f: jpeg_round_trip(f))) for i, f in enumerate(ham)],
        "noface": [(p, file(p)) for p, _ in ds.noface],
        "multiface": [(p, file(p)) for p, *_ in ds.multiface],
        "expressions": [(p, file(p)) for p, _ in ds.expressions],
        "video_1080p": [(i * VIDEO_1080P_STEP, (lambda f=f: jpeg_round_trip(f))) for i, f in enumerate(big)],
    }


async def detection_study(pipe, inputs: dict[str, list], concurrency: int = 4) -> dict:
    """{set: {item: {config key: [box, ...]}}}: every distinct pass runs once per image through Triton."""
    passes = list(dict.fromkeys(p for c in DETECTION_CONFIGS for p in c.passes))
    sem = asyncio.Semaphore(concurrency)
    out = {name: {} for name in inputs}

    async def one(name, key, load):
        async with sem:
            image = await pipe.run(load)
            factor = shrink_factor(image.shape, BlazeFace.passes)  # as the served detector shrinks it
            found = await asyncio.gather(*(run_pass(image, p, pipe, factor) for p in passes))
            per_pass = dict(zip(passes, found))
            out[name][key] = {c.key: [d.box.tolist() for d in combine(c, per_pass, pipe.config.min_face_px, image.shape)]
                              for c in DETECTION_CONFIGS}

    await asyncio.gather(*(one(name, k, load) for name, items in inputs.items() for k, load in items))
    return out


def hog_boxes(hog, rgb: np.ndarray) -> list[list[int]]:
    """face_recognition.face_locations (HOG, upsample 1) as x0, y0, x1, y1 trimmed to the image."""
    h, w = rgb.shape[:2]
    return [[max(r.left(), 0), max(r.top(), 0), min(r.right(), w), min(r.bottom(), h)] for r in hog(rgb, 1)]


def score_detection(boxes: dict, ds: Dataset, hamilton_ref: dict, video_hog: dict[int, list]) -> list[dict]:
    """The table's numbers per configuration (see render's Detection section)."""
    ref_frames = hamilton_ref["frames"]
    lib_counts = hamilton_ref["images_faces_found"]
    rows = []
    for c in DETECTION_CONFIGS:
        ham_frames = [i for i, f in enumerate(ref_frames) if f["faces"]]
        ham_hit = sum(any(box_iou(b, r["box"]) > HIT_IOU for b in boxes["hamilton"][i][c.key] for r in ref_frames[i]["faces"])
                      for i in ham_frames)
        multi = {p: len(boxes["multiface"][p][c.key]) for p, *_ in ds.multiface}
        vid = boxes["video_1080p"]
        hog_total = sum(len(v) for v in video_hog.values())
        hog_hit = sum(any(box_iou(b, r) > HIT_IOU for b in vid[k][c.key]) for k, refs in video_hog.items() for r in refs)
        rows.append({
            "key": c.key, "title": c.title, "rule": c.rule,
            "passes": [{"model": p.spec.name, "score_threshold": p.score_threshold, "margin": p.margin, "tile": p.tile}
                       for p in c.passes],
            "hamilton_frames_hit": ham_hit, "hamilton_frames": len(ham_frames),
            "hamilton_faces": sum(len(v[c.key]) for v in boxes["hamilton"].values()),
            "noface_false_faces": sum(len(boxes["noface"][p][c.key]) for p, _ in ds.noface),
            "noface_images": len(ds.noface),
            "multiface_per_image": multi,
            "multiface_library": {p: lib_counts.get(p) for p in multi},
            "multiface_total": sum(multi.values()),
            "expressions_with_face": sum(bool(boxes["expressions"][p][c.key]) for p, _ in ds.expressions),
            "expressions": len(ds.expressions),
            "video_hog_hit": hog_hit, "video_hog_faces": hog_total,
            "video_faces": sum(len(v[c.key]) for v in vid.values()), "video_frames": len(vid),
        })
    return rows


# ------------------------------------------------------------------------------------------ report
def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def versions() -> dict:
    out = {}
    for dist in ("onnxruntime", "dlib-bin", "face-recognition", "face_recognition_models", "nvidia-pytriton",
                 "tritonclient", "numpy", "opencv-python-headless", "opencv-python", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    import dlib

    out["dlib"] = dlib.__version__
    out["python"] = sys.version.split()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--repository", default=os.path.join(ROOT, "model_repository"))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--calibration", default=os.path.join(ROOT, "server", "mobidem", "data", "calibration.json"))
    ap.add_argument("--calibration-sface", default=os.path.join(ROOT, "server", "mobidem", "data",
                                                                "calibration_sface.json"))
    ap.add_argument("--keep-calibration", action="store_true",
                    help="leave --calibration (face_multitask) as it is; the report shows this run's numbers beside it")
    ap.add_argument("--no-write", action="store_true", help="print the JSON, write nothing")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    ds = load_dataset(args.data)
    paths = ds.all_paths
    expr_paths = [p for p, _ in ds.expressions]
    expr_labels = [l for _, l in ds.expressions]

    # ---- ours, through Triton
    study_inputs = detection_inputs(ds)
    from mobidem import plugins as plugin_registry

    extra = [m for m in EMBEDDERS if m != "face_multitask" and EMBEDDERS[m][0] in plugin_registry.available()]
    id_set = {p for ps in ds.identities.values() for p in ps}
    with tempfile.TemporaryDirectory(prefix="mobidem-accuracy-") as wd:
        ours, run_info = asyncio.run(run_ours(paths, args.data, args.repository, wd, study_inputs=study_inputs,
                                              embed_paths=id_set, extra_embedders=[EMBEDDERS[m][0] for m in extra]))
    t_ours = time.perf_counter() - t_start

    # ---- reference
    t1 = time.perf_counter()
    ref_impl = Reference()
    id_paths = {p for ps in ds.identities.values() for p in ps}
    ref = {p: ref_impl.run(os.path.join(args.data, p), embed=p in id_paths) for p in paths}
    t_ref = time.perf_counter() - t1

    # ---- detector configurations: dlib HOG on the 1080p frames (as the library sees them), then score
    t2 = time.perf_counter()
    video_hog = {k * VIDEO_1080P_STEP: hog_boxes(ref_impl.hog, f) for k, f in
                 enumerate(video_rgb_frames(os.path.join(args.data, VIDEO_1080P), VIDEO_1080P_STEP))}
    t_hog = time.perf_counter() - t2
    with open(HAMILTON_REFERENCE) as f:
        hamilton_ref = json.load(f)
    boxes = run_info["detection_study"]
    det_configs = score_detection(boxes, ds, hamilton_ref, video_hog)
    # the pipeline runs row (e), then the second opinion (detector_confirm) may drop faces scored under 0.7:
    # it finds what row (e) finds, or fewer
    auto_agrees = all(len(boxes[s][p]["e_auto"]) >= min(ours[p].faces, 32)
                      for s in ("noface", "multiface", "expressions") for p in boxes[s])
    auto_dropped = sum(len(boxes[s][p]["e_auto"]) - min(ours[p].faces, 32)
                       for s in ("noface", "multiface", "expressions") for p in boxes[s])

    # ---- detection counts
    def counts(results: dict[str, Found]) -> dict:
        out = {}
        for name, ps in (("identities", sorted(id_paths, key=natural_key)), ("expressions", expr_paths),
                         ("multiface", [p for p, *_ in ds.multiface]), ("noface", [p for p, _ in ds.noface])):
            out[name] = {"images": len(ps), "with_face": sum(results[p].faces > 0 for p in ps),
                         "faces": sum(results[p].faces for p in ps)}
        out["multiface_per_image"] = {p: results[p].faces for p, *_ in ds.multiface}
        out["noface_per_image"] = {p: results[p].faces for p, _ in ds.noface}
        return out

    det = {"ours": counts(ours), "reference": counts(ref),
           "multiface_expected": {p: n for p, n, _ in ds.multiface},
           "multiface_label": {p: lab for p, _, lab in ds.multiface}}
    missed = [p for p in paths if ref[p].faces > 0 and ours[p].faces == 0]
    fewer = [p for p in paths if 0 < ours[p].faces < ref[p].faces]
    only_ours = [p for p in paths if ours[p].faces > 0 and ref[p].faces == 0]

    # ---- verification / identification (largest face per photo; photos without a face are left out)
    def by_person(results: dict[str, Found]) -> tuple[dict, list]:
        out, skipped = {}, []
        for person, ps in ds.identities.items():
            es = [results[p].embedding for p in ps if results[p].embedding is not None]
            skipped += [p for p in ps if results[p].embedding is None]
            if es:
                out[person] = es
        return out, skipped

    ours_emb, ours_skipped = by_person(ours)
    ref_emb, ref_skipped = by_person(ref)
    ver = {"ours": evaluate_pairs(ours_emb), "reference": evaluate_pairs(ref_emb)}
    ver["ours"]["photos_without_face"] = ours_skipped
    ver["reference"]["photos_without_face"] = ref_skipped
    # every embedder on the same photos (the largest face of each, found by the same detector)
    embedders = {}
    for model in ["face_multitask", *extra]:
        _, metric, fixed, rule = EMBEDDERS[model]
        embs = {person: [ours[p].embeddings[model] for p in ps if model in ours[p].embeddings]
                for person, ps in ds.identities.items()}
        embs = {k: v for k, v in embs.items() if v}
        embedders[model] = {**evaluate_pairs(embs, metric, fixed), "fixed_rule": rule,
                            "version": str(run_info["embedder_versions"][model]), "embeddings": embs}
    common = [p for ps in ds.identities.values() for p in ps if ours[p].embedding is not None and ref[p].embedding is not None]
    emb_gap = [float(np.linalg.norm(ours[p].embedding - ref[p].embedding)) for p in common]

    # ---- expressions
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(args.repository, "fer_xception", "1", "model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name
    fer = lambda x: sess.run([out_name], {in_name: x})[0]  # noqa: E731

    mt_pred = [int(np.argmax(ours[p].expression)) if ours[p].expression is not None else None for p in expr_paths]
    plain_probs = fer(np.stack([plain_crop_input(Reference.load(os.path.join(args.data, p))) for p in expr_paths]))
    plain_pred = [int(i) for i in plain_probs.argmax(1)]
    expr = {
        "face_multitask": expression_accuracy(mt_pred, expr_labels),
        "plain_crop_mini_xception": expression_accuracy(plain_pred, expr_labels),
        "majority_baseline": majority_baseline(expr_labels),
    }
    expr["plain_crop_mini_xception"]["nll"] = true_class_nll(plain_probs, expr_labels)
    found_idx = [i for i, p in enumerate(expr_paths) if ours[p].chip is not None]
    if found_idx:
        mt_probs = np.stack([ours[expr_paths[i]].expression for i in found_idx])
        expr["face_multitask"]["nll_found"] = true_class_nll(mt_probs, [expr_labels[i] for i in found_idx])

    # ---- EXPRESSION_BOX study on our chips (outside Triton, fer_xception ONNX in onnxruntime)

    chips = np.stack([ours[expr_paths[i]].chip for i in found_idx]) if found_idx else np.zeros((0, 150, 150, 3), np.uint8)
    study = []
    for box in dict.fromkeys(BOX_CANDIDATES + (tuple(EXPRESSION_BOX),)):
        probs = fer(expression_inputs(chips, box))
        pred = [None] * len(expr_paths)
        for k, i in enumerate(found_idx):
            pred[i] = int(probs[k].argmax())
        r = expression_accuracy(pred, expr_labels)
        r["box"] = list(box)
        r["nll_found"] = true_class_nll(probs, [expr_labels[i] for i in found_idx])
        if tuple(box) == tuple(EXPRESSION_BOX):
            r["agreement_with_triton"] = float(np.mean([pred[i] == mt_pred[i] for i in found_idx]))
        study.append(r)

    # ---- calibration from our pipeline
    gen, imp = pair_distances(ours_emb)
    n_photos = sum(len(v) for v in ours_emb.values())
    dataset_desc = (
        f"shared faces identities/: {n_photos} photos of {len(ours_emb)} people (LFW subset of 10 people x 10 "
        f"photos plus single photos from face_recognition, facenet-pytorch, openface, mtcnn examples); largest "
        f"face per photo via BlazeFace auto + align.py + face_multitask through Triton; all pairs: "
        f"{gen.size} genuine, {imp.size} impostor (FAR 1e-3 = {int(np.floor(1e-3 * imp.size * (1 + 1e-12)))} "
        f"false accepts; small sample, not a deployment calibration)"
    )
    from mobidem import modelbuild

    sha = modelbuild.load_manifest(modelbuild.default_repository())["models"].get("face_multitask", {}).get("sha256", "")
    cal = calibration.calibrate(gen, imp, "face_multitask", str(run_info["face_multitask_version"]), dataset_desc, FARS,
                                onnx_sha256=sha)
    cals = {"face_multitask": cal}
    for model in extra:  # each other embedder: its own file, its own metric
        plugin = plugin_registry.load(EMBEDDERS[model][0])
        g2, i2 = pair_distances(embedders[model]["embeddings"], EMBEDDERS[model][1])
        sha2 = modelbuild.load_manifest(plugin.repository or modelbuild.default_repository())["models"].get(
            model, {}).get("sha256", "")
        desc = (dataset_desc.replace("align.py + face_multitask", f"{model}'s own alignment + {model}")
                .replace(f"{gen.size} genuine, {imp.size} impostor", f"{g2.size} genuine, {i2.size} impostor"))
        cals[model] = calibration.calibrate(g2, i2, model, embedders[model]["version"], desc, FARS, onnx_sha256=sha2,
                                            metric=EMBEDDERS[model][1])
    for e in embedders.values():
        del e["embeddings"]

    total = time.perf_counter() - t_start
    report = {
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "command": ".venv/bin/python bench/accuracy.py --data " + args.data
                   + (" --keep-calibration" if args.keep_calibration else ""),
        "data": {"root": args.data, "identity_photos": len(id_paths), "identities": len(ds.identities),
                 "expression_images": len(expr_paths), "multiface_images": len(ds.multiface),
                 "noface_images": len(ds.noface)},
        "versions": {"triton": run_info["triton_version"], **versions()},
        "expression_box": list(EXPRESSION_BOX),
        "detection": det,
        "detection_configs": det_configs,
        "detection_configs_auto_matches_pipeline": auto_agrees,
        "detection_configs_auto_dropped_by_confirm": auto_dropped,
        "detection_configs_video_hog": {str(k): v for k, v in video_hog.items()},
        "missed_by_ours_found_by_reference": missed,
        "found_by_ours_not_by_reference": only_ours,
        "fewer_faces_than_reference": {p: [ours[p].faces, ref[p].faces] for p in fewer},
        "verification": ver,
        "embedding_gap_ours_vs_reference": {"photos": len(common), "mean": float(np.mean(emb_gap)) if emb_gap else None,
                                            "max": float(np.max(emb_gap)) if emb_gap else None},
        "expression": expr,
        "expression_box_study": study,
        "timing_s": {"triton_start": run_info["triton_start_s"], "ours_images": run_info["images_s"],
                     "ours_total": t_ours, "reference": t_ref, "detection_study": run_info["detection_study_s"],
                     "video_hog": t_hog, "total": total, "cpus": os.cpu_count()},
        "calibration": calibration.to_json(cal),
        "embedders": embedders,
        "calibrations": {m: calibration.to_json(c) for m, c in cals.items()},
        "calibration_kept": (calibration.to_json(calibration.load(args.calibration))
                             if args.keep_calibration else None),
    }
    report = {"summary": summarize(report), **report}
    if args.no_write:
        print(json.dumps(report, indent=2, default=float))
        return 0
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, "accuracy.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=False, default=float)
        f.write("\n")
    md_path = os.path.join(args.docs, "ACCURACY.md")
    kept = kept_sections(md_path)
    with open(md_path, "w") as f:
        f.write(render(report) + ("\n" + kept if kept else ""))
    if not args.keep_calibration:
        calibration.save(args.calibration, cal)
    if "sface" in cals:
        calibration.save(args.calibration_sface, cals["sface"])
    written = ([] if args.keep_calibration else [args.calibration]) + ([args.calibration_sface] if "sface" in cals else [])
    print(f"wrote {args.docs}/ACCURACY.md, accuracy.json" + "".join(f", {w}" for w in written) + f" in {total:.0f} s")
    return 0


def kept_sections(path: str) -> str:
    """The ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` blocks of an existing ACCURACY.md: sections other
    scripts write (bench/detector_study.py), kept as they are when this report is regenerated."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    blocks = re.findall(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->\n?", text, flags=re.S)
    found = [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->\n?", text, flags=re.S)]
    return "".join(b if b.endswith("\n") else b + "\n" for b in found) if blocks else ""


def summarize(r: dict) -> dict:
    """The headline numbers, flat, for tests to assert against."""
    out = {}
    for who in ("ours", "reference"):
        v = r["verification"][who]
        out[who] = {
            "accuracy_at_0.6": v["accuracy_at_fixed"], "tar_at_0.6": v["tar_at_fixed"], "far_at_0.6": v["far_at_fixed"],
            "best_accuracy": v["best_accuracy"], "best_threshold": v["best_threshold"], "auc": v["auc"],
            "rank1": v["rank1"]["accuracy"],
            **{k: {"threshold": op["threshold"], "tar": op["tar"], "far": op["far"]} for k, op in v["operating_points"].items()},
            "faces_found": {k: r["detection"][who][k]["faces"] for k in ("identities", "expressions", "multiface", "noface")},
            "images_with_face": {k: r["detection"][who][k]["with_face"] for k in ("identities", "expressions", "multiface", "noface")},
        }
    e = r["expression"]
    out["ours"]["expression_accuracy"] = e["face_multitask"]["accuracy"]
    out["ours"]["expression_per_class"] = {k: c["accuracy"] for k, c in e["face_multitask"]["per_class"].items()}
    out["plain_crop_expression_accuracy"] = e["plain_crop_mini_xception"]["accuracy"]
    out["plain_crop_expression_per_class"] = {k: c["accuracy"] for k, c in e["plain_crop_mini_xception"]["per_class"].items()}
    out["expression_majority_baseline"] = e["majority_baseline"]["accuracy"]
    out["expression_box"] = r["expression_box"]
    out["embedders"] = {m: {"auc": e["auc"], "rank1": e["rank1"]["accuracy"], "metric": e["metric"],
                            **{k: {"threshold": op["threshold"], "tar": op["tar"], "far": op["far"]}
                               for k, op in e["operating_points"].items()}}
                        for m, e in r.get("embedders", {}).items()}
    out["missed_by_ours_found_by_reference"] = r["missed_by_ours_found_by_reference"]
    out["detection_configs"] = {c["key"]: {k: c[k] for k in (
        "hamilton_frames_hit", "noface_false_faces", "multiface_total", "expressions_with_face", "video_hog_hit",
        "video_faces")} for c in r["detection_configs"]}
    # flat aliases (summary["ours_rank1"], summary["ours_threshold_far_1e-3"], ...) for tests
    for k, v in out["ours"].items():
        if isinstance(v, dict) and {"threshold", "tar", "far"} <= set(v):
            for m in ("threshold", "tar", "far"):
                out[f"ours_{m}_{k}"] = v[m]
        elif not isinstance(v, dict):
            out[f"ours_{k}"] = v
    return out


def _cell(x) -> str:
    return str(x).replace("|", "\\|")


def render_detection(r: dict, w) -> None:
    rows = r["detection_configs"]
    lib = list(rows[0]["multiface_library"].values())
    first = rows[0]
    w("## Detection: which detector configuration\n")
    w("Each row is one configuration of our detector, built from the pipeline's own passes "
      "(the blazeface plugin's `run_pass` with `Pass` objects, merged by `blazeface.weighted_nms` at IoU 0.3 as "
      "`Pipeline.detect` does; the fallback row is the old rule), all through Triton, faces under 16 px dropped. "
      "Scores are BlazeFace probabilities; a margin shrinks the letterboxed image so that that fraction of its longer "
      "side stays empty on each side; tiles are 640 px squares overlapping by 128 px, run only on images whose "
      "longer side is over 1280 px. Video frames are sent as the client streams them (JPEG quality 90).\n")
    w(f"- **Hamilton**: `videos/short_hamilton_clip.mp4` (640x360, 275 frames): frames where the face_recognition "
      f"library finds a face (`tests/reference/hamilton_facerec.json`, {first['hamilton_frames']} frames) and one of "
      f"ours overlaps one of its boxes with IoU > {HIT_IOU}.")
    w(f"- **noface**: faces found on the {first['noface_images']} images of noface/ (all false).")
    w(f"- **multiface**: faces per multiface/ image, in the order "
      + ", ".join(f"`{os.path.basename(p)}`" for p in first["multiface_per_image"])
      + f"; the library finds {', '.join(map(str, lib))} (total {sum(lib)}).")
    w(f"- **expressions**: expression crops (of {first['expressions']}) where we find a face.")
    w(f"- **1080p video**: `{VIDEO_1080P}` (1920x1080), every {VIDEO_1080P_STEP}th frame ({first['video_frames']} "
      f"frames): dlib HOG faces (upsample 1, as face_recognition) that one of ours overlaps with IoU > {HIT_IOU}, "
      "of all HOG faces; and all faces we find there (HOG misses small and turned faces, so more is not wrong).\n")
    w(f"| configuration | Hamilton frames hit / {first['hamilton_frames']} | noface false faces | multiface faces "
      f"per image (library {'/'.join(map(str, lib))}) | expressions with a face / {first['expressions']} | "
      "1080p: HOG faces hit / HOG faces | 1080p: faces found |")
    w("|---|---|---|---|---|---|---|")
    names = {"a_short": "(a)", "b_short_then_full": "(b) old auto", "c_short_full_merged": "(c)",
             "d_chosen_no_tiles": "(d) chosen, no tiles", "e_auto": "(e) shipped auto"}
    for c in rows:
        multi = "/".join(str(n) for n in c["multiface_per_image"].values())
        w(f"| {names.get(c['key'], c['key'])}: {c['title']} | {c['hamilton_frames_hit']} | {c['noface_false_faces']} | "
          f"{multi} (total {c['multiface_total']}) | {c['expressions_with_face']} | "
          f"{c['video_hog_hit']}/{c['video_hog_faces']} | {c['video_faces']} |")
    w("")
    if not r.get("detection_configs_auto_matches_pipeline", True):
        w("**Warning:** the pipeline finds a face row (e) does not find on the images above.\n")
    by = {c["key"]: c for c in rows}
    a, b, c_, d, e = (by[k] for k in ("a_short", "b_short_then_full", "c_short_full_merged", "d_chosen_no_tiles", "e_auto"))
    hog = e["video_hog_faces"]
    n_false = c_["noface_false_faces"]
    false_note = f" with {n_false} false face{'s' if n_false != 1 else ''} on noface/" if n_false else ""
    w(f"Reading: short range alone (a) finds {a['hamilton_frames_hit']}/{a['hamilton_frames']} Hamilton frames and "
      f"{a['video_hog_hit']}/{hog} HOG faces at 1080p (letterboxed to 128 px, those faces are a few pixels wide). The old "
      f"fallback (b) helps only images where short range finds nothing ({b['hamilton_frames_hit']} frames, "
      f"{b['video_hog_hit']}/{hog}). Merging both passes at 0.5 (c) reaches {c_['hamilton_frames_hit']} frames{false_note}. "
      f"The chosen passes (d) (short range 0.6 with a {100 * _AUTO[0].margin:g} % margin, full range 0.3) reach "
      f"{d['hamilton_frames_hit']}/"
      f"{d['hamilton_frames']} frames, {d['multiface_total']} multiface faces (library {sum(lib)}) and "
      f"{d['noface_false_faces']} false faces; 640 px tiles (e) add the faces that letterboxing a 1080p frame to 192 px "
      f"shrinks away ({d['video_hog_hit']} -> {e['video_hog_hit']} of {hog} HOG faces, {d['video_faces']} -> "
      f"{e['video_faces']} faces found) and change nothing on images of 1280 px or less. The rows find a face in "
      f"{' / '.join(str(x['expressions_with_face']) for x in rows)} of the {e['expressions']} expression crops: the "
      f"margin lets short range see faces that fill the whole crop. Row (e) is what "
      "the default detector plugin `blazeface` runs"
      + (" (checked: on noface/, multiface/ and expressions/ the pipeline finds what it finds, less "
         f"{r.get('detection_configs_auto_dropped_by_confirm', 0)} face(s) scored under 0.7 that YuNet's second "
         "opinion, `detector_confirm`, did not confirm)."
         if r.get("detection_configs_auto_matches_pipeline") else ".") + "\n")


def render_embedders(r: dict, w) -> None:
    """Every embedder on the same faces, each in its own metric, with its own calibration file."""
    emb = r.get("embedders", {})
    if len(emb) < 2:
        return
    w("## Embedders side by side\n")
    w("The same photos and the same detections (BlazeFace auto, largest face per identity photo), each embedder "
      "with its own alignment and through Triton: `face_multitask` (dlib's ResNet, 150x150 chip from `align.py`, "
      "Euclidean distance) and `sface` (SFace from the OpenCV zoo, 112x112 chip on OpenCV's template from the "
      "detector's four keypoints, distance = 1 - cosine similarity). Distances of the two are on different "
      "scales and are never compared with each other; each has its own thresholds and calibration file.\n")
    names = list(emb)
    w("| metric | " + " | ".join(f"`{m}` ({emb[m]['metric']})" for m in names) + " |")
    w("|---|" + "---|" * len(names))
    first = emb[names[0]]
    for op in first["operating_points"]:
        w(f"| TAR at FAR={first['operating_points'][op]['far_target']:g} (threshold) | " + " | ".join(
            f"{pct(emb[m]['operating_points'][op]['tar'])} ({emb[m]['operating_points'][op]['threshold']:.3f})"
            for m in names) + " |")
    w("| ROC AUC | " + " | ".join(f"{emb[m]['auc']:.4f}" for m in names) + " |")
    w("| rank-1 identification | " + " | ".join(
        f"{pct(emb[m]['rank1']['accuracy'])} ({emb[m]['rank1']['correct']}/{emb[m]['rank1']['probes']})" for m in names) + " |")
    w("| best-threshold accuracy (threshold) | " + " | ".join(
        f"{pct(emb[m]['best_accuracy'], 2)} ({emb[m]['best_threshold']:.3f})" for m in names) + " |")
    w("| the publisher's fixed rule: accuracy (TAR / FAR) | " + " | ".join(
        f"{pct(emb[m]['accuracy_at_fixed'], 2)} ({pct(emb[m]['tar_at_fixed'])} / {pct(emb[m]['far_at_fixed'], 2)}; "
        f"{emb[m]['fixed_rule']})" for m in names) + " |")
    w("| mean genuine / impostor distance | " + " | ".join(
        f"{emb[m]['genuine_mean']:.3f} / {emb[m]['impostor_mean']:.3f}" for m in names) + " |")
    w("| pairs (genuine / impostor) | " + " | ".join(f"{emb[m]['n_genuine']} / {emb[m]['n_impostor']}" for m in names) + " |")
    w("")
    for m in names:
        misses = emb[m]["rank1"]["misses"]
        if misses:
            w(f"Rank-1 misses of `{m}`: " + "; ".join(f"{x['person']} photo #{x['probe_index'] + 1} -> {x['predicted']}"
                                                   for x in misses) + ".")
    cals = r.get("calibrations", {})
    if r.get("calibration_kept"):
        cals = {**cals, "face_multitask": r["calibration_kept"]}
    w("\nCalibration files (one per embedder): " + ", ".join(
        f"`{m}` -> `server/mobidem/data/{'calibration.json' if m == 'face_multitask' else f'calibration_{m}.json'}` "
        f"({c['embedder'].get('metric', 'euclidean')}, far_1e-3 threshold {c['operating_points']['far_1e-3']['threshold']:.4f})"
        for m, c in cals.items()) + ".")
    if "sface" in emb:
        a, b = emb["face_multitask"], emb["sface"]
        gained = {op: round((b["operating_points"][op]["tar"] - a["operating_points"][op]["tar"]) * a["n_genuine"])
                  for op in a["operating_points"]}
        cost = ""
        perf = os.path.join(ROOT, "docs", "PERFORMANCE_EMBEDDERS.json")
        if os.path.exists(perf):
            with open(perf) as f:
                ms = json.load(f)["ms_per_call"]
            cost = (f" Through Triton SFace costs {ms['sface@1']['median'] / ms['dlib_resnet@1']['median']:.1f}x dlib's "
                    f"ResNet per call at batch 1 and {ms['sface@8']['median'] / ms['dlib_resnet@8']['median']:.1f}x at "
                    "batch 8 (docs/PERFORMANCE_EMBEDDERS.md, `bench/perf_embedders.py`, measured on a loaded machine).")
        w(f"\nReading: SFace accepts {gained.get('far_1e-2', 0):+d} / {gained.get('far_1e-3', 0):+d} genuine pairs "
          f"(of {a['n_genuine']}) more than dlib at FAR 1e-2 / 1e-3, with an AUC of {b['auc']:.5f} against "
          f"{a['auc']:.5f}; both identify every probe at rank 1. With 26 people and {a['n_impostor']} impostor pairs "
          "(FAR 1e-3 = 7 false accepts), a handful of pairs decide these differences." + cost + " The default "
          "embedder is not changed by this report; the choice is the lead's.\n")


def render(r: dict) -> str:
    d, det, ver, ex = r["data"], r["detection"], r["verification"], r["expression"]
    L = []
    w = L.append
    w("# Accuracy: our Triton pipeline versus the face_recognition library\n")
    w(f"Measured {r['date']} with `{r['command']}` (regenerates this file, `docs/accuracy.json` and the "
      "calibration files in `server/mobidem/data/`, one per embedder; `--keep-calibration` leaves `calibration.json` "
      f"as it is; about {r['timing_s']['total']:.0f} s on {r['timing_s']['cpus']} cores).\n")
    v = r["versions"]
    w(f"Versions: Triton {v['triton']} (the nvidia-pytriton {v.get('nvidia-pytriton', '?')} wheel's tritonserver, "
      f"Python backend), onnxruntime {v.get('onnxruntime')}, dlib {v['dlib']} (dlib-bin), face_recognition_models "
      f"{v.get('face_recognition_models')}, numpy {v.get('numpy')}, Python {v['python']}.\n")
    w("## What is compared\n")
    auto = next(c for c in r["detection_configs"] if c["key"] == "e_auto")
    w("- **ours**: image decoded as the server does (OpenCV) -> BlazeFace through Triton (`auto`: "
      f"{auto['title']}, merged by weighted NMS, faces under 16 px dropped; see Detection below; as the gateway by "
      "default, a face scored under 0.7 counts only if YuNet also finds it: `detector_confirm`) -> `align.py` chip "
      "from BlazeFace keypoints -> `face_multitask` through Triton (dlib ResNet embedding + mini-Xception expression "
      "from one 150x150 chip).")
    w("- **reference**: the face_recognition library's pipeline: PIL load, dlib HOG detector (upsample 1), 5-point "
      "shape predictor, dlib ResNet `compute_face_descriptor` (1 jitter). `import face_recognition` fails here "
      "(face_recognition_models needs pkg_resources), so the same dlib calls are made directly.")
    w(f"- **Data** (`{d['root']}`, small and public, so every number below has wide error bars): "
      f"{d['identity_photos']} identity photos of {d['identities']} people, {d['expression_images']} expression "
      f"crops, {d['multiface_images']} multi-face photos, {d['noface_images']} photos without a face. "
      "Largest face per identity photo.\n")

    w("## Faces found\n")
    w("| set | images | ours: images with a face | ours: faces | reference: images with a face | reference: faces |")
    w("|---|---|---|---|---|---|")
    for s in ("identities", "expressions", "multiface", "noface"):
        o, f_ = det["ours"][s], det["reference"][s]
        w(f"| {s} | {o['images']} | {o['with_face']} | {o['faces']} | {f_['with_face']} | {f_['faces']} |")
    w("")
    miss = r["missed_by_ours_found_by_reference"]
    w("Images where the reference finds a face and we find none: " + (", ".join(f"`{m}`" for m in miss) if miss else "**none**") + ".")
    only = r["found_by_ours_not_by_reference"]
    w("Images where we find a face and the reference none: " + (", ".join(f"`{m}`" for m in only) if only else "none") + ".")
    few = r["fewer_faces_than_reference"]
    if few:
        w("Images where we find fewer faces than the reference: " + ", ".join(f"`{p}` ({a} vs {b})" for p, (a, b) in few.items()) + ".")
    w("")
    w("multiface/ (expected = MANIFEST label's count):\n")
    w("| image | expected | ours | reference |")
    w("|---|---|---|---|")
    for p in det["ours"]["multiface_per_image"]:
        w(f"| `{p}` | {_cell(det['multiface_label'][p])} | {det['ours']['multiface_per_image'][p]} | "
          f"{det['reference']['multiface_per_image'][p]} |")
    w("")
    w("noface/ (false faces per image):\n")
    w("| image | ours | reference |")
    w("|---|---|---|")
    for p in det["ours"]["noface_per_image"]:
        w(f"| `{p}` | {det['ours']['noface_per_image'][p]} | {det['reference']['noface_per_image'][p]} |")
    w("")

    render_detection(r, w)

    w("## Verification and identification (identities/)\n")
    o, f_ = ver["ours"], ver["reference"]
    w(f"All pairs of the photos with a face: ours {o['n_genuine']} same-person / {o['n_impostor']} different-person "
      f"pairs, reference {f_['n_genuine']} / {f_['n_impostor']}. Distance = Euclidean between embeddings; accept when "
      "distance < threshold (FAR/TAR operating points: distance <= threshold).\n")
    w("| metric | ours | reference |")
    w("|---|---|---|")
    w(f"| accuracy at 0.6 (dlib's rule) | {pct(o['accuracy_at_fixed'], 2)} | {pct(f_['accuracy_at_fixed'], 2)} |")
    w(f"| TAR / FAR at 0.6 | {pct(o['tar_at_fixed'])} / {pct(o['far_at_fixed'], 2)} | {pct(f_['tar_at_fixed'])} / {pct(f_['far_at_fixed'], 2)} |")
    w(f"| best-threshold accuracy (threshold) | {pct(o['best_accuracy'], 2)} ({o['best_threshold']:.3f}) | "
      f"{pct(f_['best_accuracy'], 2)} ({f_['best_threshold']:.3f}) |")
    for name in o["operating_points"]:
        a, b = o["operating_points"][name], f_["operating_points"][name]
        w(f"| TAR at FAR={a['far_target']:g} (threshold; measured FAR) | {pct(a['tar'])} ({a['threshold']:.3f}; "
          f"{pct(a['far'], 2)}) | {pct(b['tar'])} ({b['threshold']:.3f}; {pct(b['far'], 2)}) |")
    w(f"| ROC AUC | {o['auc']:.4f} | {f_['auc']:.4f} |")
    ro, rf = o["rank1"], f_["rank1"]
    w(f"| rank-1 identification (gallery = first photo of each of {ro['gallery']} people) | {pct(ro['accuracy'])} "
      f"({ro['correct']}/{ro['probes']}) | {pct(rf['accuracy'])} ({rf['correct']}/{rf['probes']}) |")
    w(f"| mean genuine / impostor distance | {o['genuine_mean']:.3f} / {o['impostor_mean']:.3f} | "
      f"{f_['genuine_mean']:.3f} / {f_['impostor_mean']:.3f} |")
    w("")
    g = r["embedding_gap_ours_vs_reference"]
    if g["photos"]:
        w(f"Distance between our embedding and the reference's for the same photo: mean {g['mean']:.3f}, max "
          f"{g['max']:.3f} over {g['photos']} photos (alignment differs; the embedder is the same network).\n")
    n_imp = o["n_impostor"]
    w(f"**Sample size caveat:** with {n_imp} impostor pairs, FAR=1e-2 allows {o['operating_points']['far_1e-2']['false_accepts_allowed']} "
      f"false accepts and FAR=1e-3 only {o['operating_points']['far_1e-3']['false_accepts_allowed']}: the FAR=1e-3 "
      "threshold sits just below the 8th-closest impostor pair (~8 pairs of 26 people decide it) and will move with other data. Calibrate on the "
      "deployment's own cameras before relying on it.\n")
    if ro["misses"] or rf["misses"]:
        fmt = lambda ms: "; ".join(f"{m['person']} photo #{m['probe_index'] + 1} -> {m['predicted']}" for m in ms) or "none"  # noqa: E731
        w(f"Rank-1 misses: ours: {fmt(ro['misses'])}; reference: {fmt(rf['misses'])}.\n")

    c = r["calibration"]
    kept = r.get("calibration_kept")
    if kept:
        w("## Calibration (kept)\n")
        w(f"`server/mobidem/data/calibration.json` (model {kept['embedder']['model_name']} version "
          f"{kept['embedder']['model_version']}) was left as it is (`--keep-calibration`): servers running today's "
          "default keep their thresholds. This run's distances would give:\n")
        w("| operating point | shipped threshold | this run's threshold | this run's FAR / TAR at it |")
        w("|---|---|---|---|")
        for k, op in c["operating_points"].items():
            w(f"| {k} | {kept['operating_points'][k]['threshold']:.4f} | {op['threshold']:.4f} | "
              f"{pct(op['measured_far'], 2)} / {pct(op['measured_tar'])} |")
        w("")
    else:
        w("## Calibration written\n")
        w(f"`server/mobidem/data/calibration.json` (model {c['embedder']['model_name']} version {c['embedder']['model_version']}), "
          "from our pipeline's distances above:\n")
        w("| operating point | threshold | measured FAR | measured TAR |")
        w("|---|---|---|---|")
        for k, op in c["operating_points"].items():
            w(f"| {k} | {op['threshold']:.4f} | {pct(op['measured_far'], 2)} | {pct(op['measured_tar'])} |")
        w("")

    render_embedders(r, w)

    w("## Expression (expressions/)\n")
    maj = ex["majority_baseline"]
    counts = ", ".join(f"{k} {n}" for k, n in maj["counts"].items())
    w(f"{sum(maj['counts'].values())} grayscale in-the-wild crops ({counts}); no disgust images. Images with no face "
      "count as wrong.\n")
    labs = [l for l in EXPRESSION_LABELS if l in maj["counts"]]
    w("| method | overall | " + " | ".join(labs) + " |")
    w("|---|---|" + "---|" * len(labs))
    for key, title in (("face_multitask", f"ours: detect + align + face_multitask (box {tuple(r['expression_box'])}), Triton"),
                       ("plain_crop_mini_xception", "mini-Xception on the whole crop, gray, 64x64 INTER_AREA")):
        e = ex[key]
        cells = [f"{e['per_class'][l]['correct']}/{e['per_class'][l]['n']}" for l in labs]
        w(f"| {title} | {pct(e['accuracy'])} ({e['correct']}/{e['n']}) | " + " | ".join(cells) + " |")
    w(f"| majority class ({maj['label']}) | {pct(maj['accuracy'])} | " +
      " | ".join(f"{maj['counts'][l] if l == maj['label'] else 0}/{maj['counts'][l]}" for l in labs) + " |")
    w("")
    w(f"Our path found no face in {ex['face_multitask']['no_face']} expression image(s).\n")

    w("### EXPRESSION_BOX study\n")
    w("Crop (x0, y0, x1, y1) of our 150x150 aligned chip -> gray (0.299/0.587/0.114) -> bilinear 64x64 -> mini-Xception "
      "(`model_repository/fer_xception/1/model.onnx` in onnxruntime, outside Triton; uint8-rounded input, so within "
      "rounding of what face_multitask computes). NLL = mean negative log-probability of the true class (lower is "
      "better; less noisy than accuracy on 56 images).\n")
    w("| box | overall | NLL | " + " | ".join(labs) + " |")
    w("|---|---|---|" + "---|" * len(labs))
    for s in r["expression_box_study"]:
        mark = " (current)" if s["box"] == r["expression_box"] else ""
        cells = [f"{s['per_class'][l]['correct']}/{s['per_class'][l]['n']}" for l in labs]
        w(f"| {tuple(s['box'])}{mark} | {pct(s['accuracy'])} ({s['correct']}/{s['n']}) | {s['nll_found']:.3f} | "
          + " | ".join(cells) + " |")
    cur = [s for s in r["expression_box_study"] if s["box"] == r["expression_box"]][0]
    if "agreement_with_triton" in cur:
        w(f"\nThe study's current-box predictions agree with face_multitask through Triton on "
          f"{pct(cur['agreement_with_triton'])} of the faces.")
    best = min(r["expression_box_study"], key=lambda s: (-s["correct"], s["nll_found"]))
    old = next(s for s in r["expression_box_study"] if tuple(s["box"]) == (25, 25, 125, 125))
    w(f"\nBest box here (most correct, then lowest NLL): {tuple(best['box'])}. `EXPRESSION_BOX` in "
      f"`plugins/builtin/mobidem_builtin_plugins/faces.py` is {tuple(r['expression_box'])}. It was (25, 25, 125, 125) before this study; "
      "that crop cuts off the brow, chin and face outline that FER2013-style face crops include, and scored at the "
      "majority-class baseline. The whole chip (dlib padding 0.25) is the closest to fer's own crop (face box + margin) "
      "that the 150x150 chip allows; the plain-crop row above, which sees even more context, is better still. With "
      f"56 images, differences of 2-3 images between boxes are noise; the move from the old box is "
      f"{cur['correct'] - old['correct']:+d} images and NLL {old['nll_found']:.3f} -> {cur['nll_found']:.3f}.")
    w("\n## Timing\n")
    t = r["timing_s"]
    n_img = sum(d[k] for k in ("identity_photos", "expression_images", "multiface_images", "noface_images"))
    w(f"Triton start {t['triton_start']:.1f} s; our pipeline over all {n_img} images {t['ours_images']:.1f} s "
      f"(4 images in flight); detector configurations {t['detection_study']:.1f} s (every distinct pass once per "
      f"image); dlib HOG on the 1080p frames {t['video_hog']:.1f} s; reference {t['reference']:.1f} s; whole command "
      f"{t['total']:.1f} s.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
