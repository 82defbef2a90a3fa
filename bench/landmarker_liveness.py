"""What the face_landmarker plugin would bring to liveness, measured against face_mesh's signals (issue 15).

    .venv/bin/python bench/landmarker_liveness.py

Runs the detector, the face_mesh plugin and the face_landmarker plugin with their own code on the built ONNX
models (ONNX Runtime in this process: the same model.onnx files Triton serves; accuracy, not speed) and
prints three measurements:

1. blink: ROC AUC of eyeBlink (mean of both eyes) and of face_mesh's eye_openness on shared/data/faces/blink;
2. labelled head turns of shared/data/faces/liveness (v01, v03; segments from its MANIFEST.tsv): median
   landmarker yaw / pitch and face_mesh's affine nose coordinates (u, v) (mobidem.liveness.headpose);
3. a flat photo turned in front of the camera: the first two photos of 15 identities, each warped by the
   homography of its plane rotated about its vertical centre line by -50, -30, +30, +50 degrees (a pinhole
   camera with focal length 1.2 x the photo's longer side, the photo at that distance): the change of
   yaw and of u against the unturned photo. A real head that turns moves both; a flat photo should not.
"""

from __future__ import annotations

import asyncio
import sys
import csv
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from plugin_support import LocalContext, rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces"
TURNS = [  # (video, frames, label), 0-based decode frames inside the MANIFEST.tsv segments
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
PHOTO_TURNS = (-50, -30, 30, 50)




def roc_auc(scores, positive) -> float:
    s, y = np.asarray(scores, np.float64), np.asarray(positive, bool)
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def turned_photo(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    f = 1.2 * max(h, w)
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    a = np.deg2rad(degrees)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    centre = np.array([0, 0, f])
    t = centre - r @ centre  # rotate the plane z = f about its own centre
    homography = k @ (r + np.outer(t, [0, 0, 1]) / f) @ np.linalg.inv(k)
    return cv2.warpPerspective(image, homography, (w, h), borderMode=cv2.BORDER_REPLICATE)


def main() -> None:
    from mobidem import plugins
    from mobidem.liveness.headpose import affine_pose

    detector, mesh, landmarker = (plugins.load(n) for n in ("blazeface", "face_mesh", "face_landmarker"))
    ctx = LocalContext(ROOT / "model_repository", mesh.repository, landmarker.repository, threads=1)

    def analyse(image):
        async def go():
            found = await detector.detect(image, ctx)
            if not found:
                return None
            face = [max(found, key=lambda d: d.area)]
            return (await landmarker.process(image, face, None, ctx))[0], (await mesh.process(image, face, None, ctx))[0]
        return asyncio.run(go())

    # 1. blink
    with open(FACES / "blink" / "MANIFEST.tsv") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["label"] in ("open", "closed") and r["path"].endswith(".jpg")]
    blink, openness, closed = [], [], []
    for row in rows:
        out = analyse(rgb(FACES / "blink" / row["path"]))
        if out is not None:
            blink.append((out[0]["eyeBlinkLeft"] + out[0]["eyeBlinkRight"]) / 2)
            openness.append(out[1]["eye_openness"])
            closed.append(row["label"] == "closed")
    b, y = np.array(blink), np.array(closed)
    print(f"1. blink, {len(b)} of {len(rows)} images with a face ({y.sum()} closed): eyeBlink ROC AUC "
          f"{roc_auc(b, y):.4f} (closed mean {b[y].mean():.2f}, open {b[~y].mean():.2f}); face_mesh eye_openness "
          f"ROC AUC {roc_auc(-np.array(openness), y):.4f}")

    # 2. labelled turns
    print("2. labelled head turns (medians): | video | frames | label | yaw | pitch | u | v |")
    for name in dict.fromkeys(v for v, _, _ in TURNS):
        segments = [(s, label) for v, s, label in TURNS if v == name]
        wanted = {k for (a, e), _ in segments for k in range(a, e, 3)}
        cap, frames, k = cv2.VideoCapture(str(FACES / "liveness" / "videos" / name)), {}, 0
        while len(frames) < len(wanted):
            ok, bgr = cap.read()
            if not ok:
                break
            if k in wanted:
                frames[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            k += 1
        cap.release()
        for (a, e), label in segments:
            vals = []
            for i in range(a, e, 3):
                out = analyse(frames[i]) if i in frames else None
                if out is not None:
                    p = affine_pose(out[1]["mesh"])
                    vals.append((out[0]["yaw"], out[0]["pitch"], p.u, p.v))
            yaw, pitch, u, v = np.median(vals, axis=0)
            print(f"| {name[:3]} | {a}-{e} | {label} | {yaw:+.1f} | {pitch:+.1f} | {u:+.3f} | {v:+.3f} |")

    # 3. a flat photo turned
    changes = []
    for person in sorted((FACES / "identities").iterdir())[:15]:
        for path in sorted(person.glob("*.jpg"), key=lambda p: (len(p.name), p.name))[:2]:
            image = rgb(path)
            outs = {d: analyse(turned_photo(image, d) if d else image) for d in (0, *PHOTO_TURNS)}
            if any(o is None for o in outs.values()):
                continue
            base_yaw, base_u = outs[0][0]["yaw"], affine_pose(outs[0][1]["mesh"]).u
            changes.append([outs[d][0]["yaw"] - base_yaw for d in PHOTO_TURNS]
                           + [affine_pose(outs[d][1]["mesh"]).u - base_u for d in PHOTO_TURNS])
    c = np.array(changes)
    n = len(PHOTO_TURNS)
    print(f"3. a flat photo turned by {PHOTO_TURNS} degrees ({len(c)} photos, change against the unturned photo):")
    print("   yaw: median " + ", ".join(f"{v:+.1f}" for v in np.median(c[:, :n], 0))
          + "; largest |change| " + ", ".join(f"{v:.1f}" for v in np.abs(c[:, :n]).max(0)))
    print("   u:   median " + ", ".join(f"{v:+.3f}" for v in np.median(c[:, n:], 0))
          + "; largest |change| " + ", ".join(f"{v:.3f}" for v in np.abs(c[:, n:]).max(0)))


if __name__ == "__main__":
    main()
