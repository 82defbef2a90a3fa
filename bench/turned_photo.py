"""A flat photo turned like a card versus a real head turning: the parallax cue (issue 15, docs/LIVENESS.md
"Turned photos").

    .venv/bin/python bench/turned_photo.py [--json docs/turned_photo.json]

Runs the face detector (blazeface) and the face_mesh plugin with their own code on the built ONNX models
(ONNX Runtime in this process: the model.onnx files Triton serves) and measures, against a frontal reference
frame of the same face:

- ``du`` / ``dv``: the change of the nose's affine coordinates (mobidem.liveness.headpose.affine_pose), the
  ceremony's turn and look-up signals;
- ``residual``: mobidem.liveness.headpose.planar_residual, what is left after the best homography maps the
  face's 468 landmarks onto the reference's (outer-eye-corner distances): ~0 for any view of a flat picture,
  large for a head (parallax).

Real heads: every frame of the labelled turn and look-up segments of v01, v02, v03 (tests/liveness_data.py,
from liveness/MANIFEST.tsv, at the ceremony tests' ~15 frames/s), against each video's first neutral frame.
Turned photos: the first identity photo of each person of shared/data/faces/identities and the real attack
photos of liveness/attacks (images, crops, nuaa_print), cut to the face and held with the face ~200 px tall in
a 640x480 frame (tests/liveness_data.face_card, card_frame), turned about the vertical axis by +-30/40/50 degrees and about the
horizontal axis by +-30/40/50 degrees, against the same card held frontal. The frames that matter are those
the ceremony would count as the action (|du| >= turn_du, or -dv >= up_dv): their residuals are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces"
sys.path.insert(0, str(ROOT / "tests"))
ANGLES = (-50, -40, -30, 30, 40, 50)


class LocalContext:
    """The plugin Context on ONNX Runtime sessions of the built models (as bench/landmarker_liveness.py)."""

    def __init__(self, *repositories: Path):
        self.repositories, self.sessions = repositories, {}

    async def infer(self, model, inputs, outputs):
        if model not in self.sessions:
            path = next(r / model / "1" / "model.onnx" for r in self.repositories if (r / model).is_dir())
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.sessions[model] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, self.sessions[model].run(list(outputs), inputs)))

    async def run(self, fn, *args):
        return fn(*args)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def summary(values) -> dict:
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def line(name: str, s: dict) -> str:
    if not s["n"]:
        return f"| {name} | 0 | | | | | |"
    return (f"| {name} | {s['n']} | {s['min']:.3f} | {s['p5']:.3f} | {s['median']:.3f} | {s['p95']:.3f} "
            f"| {s['max']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()

    from liveness_data import VIDEOS, STEP, camera, card_frame, decoded, face_card
    from mobidem import plugins
    from mobidem.liveness.challenges import Challenge as C
    from mobidem.liveness.decision import Rules
    from mobidem.liveness import parallax
    from mobidem.liveness.headpose import affine_pose, planar_residual

    rules = Rules()
    detector, mesh = plugins.load("blazeface"), plugins.load("face_mesh")
    ctx = LocalContext(ROOT / "model_repository", mesh.repository)

    def landmarks(image):
        async def go():
            found = await detector.detect(image, ctx)
            if not found:
                return None
            return (await mesh.process(image, [max(found, key=lambda d: d.area)], None, ctx))[0]["mesh"]
        return asyncio.run(go())

    def signals(ref, cur):  # (image, mesh) each
        p0, p = affine_pose(ref[1]), affine_pose(cur[1])
        return (p.u - p0.u, p.v - p0.v, planar_residual(ref[1], cur[1]),
                parallax.flatness(parallax.reference(*ref), *cur))

    def seen(image):
        m = landmarks(image)
        return None if m is None else (image, m)

    def counted(c, du, dv):  # the ceremony would count this frame as the asked pose action
        return {C.TURN_LEFT: du >= rules.turn_du, C.TURN_RIGHT: -du >= rules.turn_du,
                C.LOOK_UP: -dv >= rules.up_dv}[c]

    out = {"real": {}, "photo": {}, "real_neutral": []}
    # real heads
    for video in ("v01", "v02", "v03"):
        name, actions, neutrals = VIDEOS[video]
        frames, fps = decoded(str(FACES / "liveness" / "videos" / name))
        step = STEP.get(video, max(1, round(fps / 15)))
        ref = None
        for k in range(*neutrals[0]):
            ref = seen(frames[k])
            if ref is not None:
                break
        for a, b in neutrals[1:]:  # neutral frames later in the video: parallax of a head not turning
            for k in range(a, min(b, len(frames)), step):
                cur = seen(frames[k])
                if cur is not None:
                    out["real_neutral"].append([video, k, *signals(ref, cur)])
        for c, (a, b) in actions.items():
            if c not in (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP):
                continue
            for k in range(a, min(b, len(frames)), step):
                cur = seen(frames[k])
                if cur is not None:
                    out["real"].setdefault(c.name, []).append([video, k, *signals(ref, cur)])
        print(f"{video}: done", file=sys.stderr, flush=True)
    # turned photos
    people = sorted(p for p in (FACES / "identities").iterdir() if p.is_dir())
    photos = [sorted(p.glob("*.jpg"), key=lambda q: (len(q.name), q.name))[0] for p in people]
    attacks = FACES / "liveness" / "attacks"
    photos += sorted((attacks / "images").glob("*")) + sorted((attacks / "crops").glob("*")) \
        + sorted((attacks / "nuaa_print").glob("*"))
    rng = np.random.default_rng(0)
    for path in photos:
        image, height = face_card(rgb(path))
        ref = seen(camera(card_frame(image, height=height), rng))
        if ref is None:
            continue
        for axis in ("yaw", "pitch"):
            for i, angle in enumerate(ANGLES):
                cur = seen(camera(card_frame(image, height=height, **{axis: angle}), rng, 3 * i + 1))
                if cur is not None:
                    out["photo"].setdefault(f"{axis} {angle:+d}", []).append(
                        [str(path.relative_to(FACES)), *signals(ref, cur)])
    print("photos: done", file=sys.stderr, flush=True)

    # the report
    for cue, col, what in (("planar_residual", 0, "landmark residual after the best homography, eye-corner distances"),
                           ("flatness", 1, "ECC correlation after the best homography (1: flat)")):
        print(f"\n## {cue}: {what}\n")
        print("| frames | n | min | p5 | median | p95 | max |\n|---|---:|---:|---:|---:|---:|---:|")
        real_counted = []
        for c in (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP):
            rows = out["real"].get(c.name, [])
            counted_rows = [r for r in rows if counted(c, r[2], r[3])]
            real_counted += [r[4 + col] for r in counted_rows]
            print(line(f"real {c.name}, counted as the action", summary([r[4 + col] for r in counted_rows])))
            print(line(f"real {c.name}, all of the segment", summary([r[4 + col] for r in rows])))
        print(line("real neutral (later frames)", summary([r[4 + col] for r in out["real_neutral"]])))
        photo_counted, photo_all = [], []
        for key, rows in out["photo"].items():
            photo_all += [r[3 + col] for r in rows]
            for c in (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP):
                photo_counted += [r[3 + col] for r in rows if counted(c, r[1], r[2])]
            print(line(f"photo {key}", summary([r[3 + col] for r in rows])))
        print(line("**real heads, counted frames**", summary(real_counted)))
        print(line("**turned photos, counted frames**", summary(photo_counted)))
        print(line("**turned photos, all frames**", summary(photo_all)))
    print("\n## turned photos: the change of the ceremony's signals\n")
    print("| turn | photos | du median | du max | du min | dv median | dv min | frames counted as an action |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, rows in out["photo"].items():
        r = np.array([row[1:3] for row in rows], np.float64)
        n = sum(any(counted(c, du, dv) for c in (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)) for du, dv in r)
        print(f"| {key} | {len(r)} | {np.median(r[:, 0]):+.3f} | {r[:, 0].max():+.3f} | {r[:, 0].min():+.3f} | "
              f"{np.median(r[:, 1]):+.3f} | {r[:, 1].min():+.3f} | {n} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
