"""BlazeFace alone against BlazeFace with a second detector's confirmation (``detector_confirm``), side by side.

    .venv/bin/python bench/confirm_study.py [--confirm yunet] [--below 0.7] [--min-score 0.3]

The data and the scoring are bench/detector_study.py's (identity photos, noface/, multiface/, the Hamilton clip
against the face_recognition library's boxes, dlib HOG faces of the 1080p video, the demo's two cartoon clips),
through ``Pipeline.detect`` as the server runs it, with the confirmation's cost per frame. Writes
docs/confirm_study.json and prints a Markdown table (docs/ACCURACY.md quotes it).
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
import accuracy  # noqa: E402
import detector_study as study  # noqa: E402

ROOT = accuracy.ROOT


async def measure(inputs: dict, workdir: str, confirm: str, below: float, min_score: float) -> tuple[dict, dict]:
    from mobidem import plugins
    from mobidem.managed_triton import ManagedTriton
    from mobidem.pipeline import Pipeline, PipelineConfig
    from mobidem.plugins import PluginSet
    from mobidem.triton_client import TritonClient

    blaze, second = plugins.load("blazeface"), plugins.load(confirm)
    configs = {"blazeface": (PluginSet(blaze, ()), PipelineConfig()),
               f"blazeface + {confirm}": (PluginSet(blaze, (), confirmer=second),
                                          PipelineConfig(confirm_below=below, confirm_min_score=min_score))}
    triton = ManagedTriton([os.path.join(ROOT, "model_repository"), str(second.repository)], workdir)
    triton.start(timeout=300)
    client = TritonClient(triton.grpc_url)
    found, cost = {}, {}
    try:
        await client.plan(sorted({m.name for p in (blaze, second) for m in p.models}))
        for name, (plugin_set, config) in configs.items():
            pipe = Pipeline(client, plugin_set, config)
            found[name] = {s: {} for s in inputs}
            for s, items in inputs.items():
                for key, load in items:
                    found[name][s][key] = [[*map(float, d.box), float(d.score)] for d in await pipe.detect(load())]
            frames = {"640x360": inputs["hamilton"][0][1](), "1920x1080": inputs["video_1080p"][0][1]()}
            cost[name] = {}
            for label, frame in frames.items():
                times = []
                for i in range(18):
                    t = time.perf_counter()
                    await pipe.detect(frame)
                    if i >= 3:
                        times.append(time.perf_counter() - t)
                cost[name][label] = 1000 * float(np.median(times))
            pipe.close()
            print(f"{name}: done", file=sys.stderr)
    finally:
        await client.close()
        triton.stop()
    return found, cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--confirm", default="yunet")
    ap.add_argument("--below", type=float, default=0.7)
    ap.add_argument("--min-score", type=float, default=0.3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "confirm_study.json"))
    args = ap.parse_args()
    from mobidem.imaging import decode_encoded

    ds = accuracy.load_dataset(accuracy.DEFAULT_DATA)
    inputs = accuracy.detection_inputs(ds)
    identities = [p for ps in ds.identities.values() for p in ps]
    inputs["identities"] = [(p, (lambda p=p: decode_encoded(open(os.path.join(accuracy.DEFAULT_DATA, p), "rb").read())))
                            for p in identities]
    clips = study.cartoon_clips()
    cuts = {name: study.scene_cut(frames) for name, frames in clips.items()}
    for name, frames in clips.items():
        inputs[name] = [(i, (lambda f=f: accuracy.jpeg_round_trip(f))) for i, f in enumerate(frames)]
    ham_ref = json.load(open(accuracy.HAMILTON_REFERENCE))
    video_hog = json.load(open(os.path.join(ROOT, "docs", "accuracy.json")))["detection_configs_video_hog"]
    with tempfile.TemporaryDirectory(prefix="mobidem-confirm-") as work:
        found, cost = asyncio.run(measure(inputs, work, args.confirm, args.below, args.min_score))
    rows = {name: study.score(f, ds, ham_ref, video_hog, cuts, identities, threshold=0.0) for name, f in found.items()}
    result = {"date": dt.date.today().isoformat(), "confirm": args.confirm, "below": args.below,
              "min_score": args.min_score, "rows": rows, "cost_ms": cost,
              "command": f".venv/bin/python bench/confirm_study.py --confirm {args.confirm} --below {args.below:g} "
                         f"--min-score {args.min_score:g}"}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    lines = ["| detector | identities | noface | multiface | Hamilton frames hit | Hamilton faces | 1080p HOG < 64 px | "
             "1080p HOG >= 64 px | 1080p faces | man frames with a face | cartoon frames with a face | "
             "detect 640x360 ms | detect 1920x1080 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        c = r["clips"]
        lines.append(
            f"| {name} | {r['identities_with_face']} | {r['noface_false_faces']} | "
            f"{'/'.join(str(v) for v in r['multiface'].values())} | {r['hamilton_frames_hit']}/{r['hamilton_frames']} | "
            f"{r['hamilton_faces']} | {r['video_hog_small_hit']}/{r['video_hog_small']} | "
            f"{r['video_hog_large_hit']}/{r['video_hog_large']} | {r['video_faces']} | "
            + " + ".join(f"{v['man_with_face']}/{v['man_frames']}" for v in c.values()) + " | "
            + " + ".join(f"{v['cartoon_with_face']}/{v['cartoon_frames']}" for v in c.values())
            + f" | {cost[name]['640x360']:.1f} | {cost[name]['1920x1080']:.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
