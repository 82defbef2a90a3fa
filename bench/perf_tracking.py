"""Tracking on against off, side by side in one run (issue 14); writes docs/PERFORMANCE_TRACKING.md.

    .venv/bin/python bench/perf_tracking.py [--reps 3] [--quick]

One managed Triton, one `mobidem serve` gateway process. For each video (the 640x360 Hamilton clip,
the 1080p crowd video), interleaved repetitions of 8 concurrent streams with tracking off, with
tracking on, and detection alone (TASK_DETECT, tracking off: the ceiling the detector sets); the
embedder's inferences per frame from Triton's statistics; a py-spy profile of the gateway during a
tracking-on run; and one stream through the `mobidem stream` command as a user runs it against
the face_recognition pipeline (bench/perf_reference.py), both as whole processes, startup included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import perf_gateway as gw  # noqa: E402
from perf_common import HAMILTON, HD, ROOT, NoiseMeter, encode_jpeg, load_frames, log, machine  # noqa: E402

EMBEDDER = "face_multitask"
OUT = ROOT / "docs" / "PERFORMANCE_TRACKING.md"


def user_stream(target: str, video: Path, tracking: bool) -> dict:
    """`mobidem stream VIDEO` as a user types it: the whole process, startup included."""
    exe = Path(sys.executable).with_name("mobidem")
    cmd = [str(exe), "stream", "--target", target, "--no-progress", str(video)]
    if not tracking:
        cmd.append("--no-tracking")
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(f"mobidem stream failed: {done.stderr[-500:]}")
    frames = sum(1 for line in done.stdout.splitlines() if line.startswith("frame "))
    return {"frames": frames, "wall_s": wall, "fps": frames / wall}


REFERENCE_SCRIPT = """
import sys, time
sys.path.insert(0, {bench!r})
t = time.perf_counter()
from perf_common import load_frames
from perf_reference import FaceRecognitionPipeline
pipe = FaceRecognitionPipeline()
frames = load_frames(__import__("pathlib").Path({video!r}))
faces = sum(len(pipe(f)) for f in frames)
print(len(frames), faces)
"""


def reference_process(video: Path) -> dict:
    """The face_recognition pipeline (HOG + dlib ResNet) over the video, as one whole process."""
    code = REFERENCE_SCRIPT.format(bench=str(Path(__file__).resolve().parent), video=str(video))
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(f"reference failed: {done.stderr[-500:]}")
    frames, faces = (int(x) for x in done.stdout.split())
    return {"frames": frames, "faces": faces, "wall_s": wall, "fps": frames / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer frames (a smoke run; numbers not for the doc)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton
    from mobidem.v1 import mobidem_pb2 as pb

    t_start = time.perf_counter()
    noise = NoiseMeter()
    res: dict = {"machine": machine(), "reps": args.reps, "streams": 8}
    modes = {"off": (pb.TRACKING_OFF, ()), "on": (pb.TRACKING_ON, ()), "detect only": (pb.TRACKING_OFF, (pb.TASK_DETECT,))}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-tracking-") as tmp:
        tmp = Path(tmp)
        log("starting Triton")
        triton = ManagedTriton(served_by_triton()[0], tmp / "triton").start(180)  # + the default plugins' models
        gateway = gw.Gateway(triton.grpc_url, tmp)
        try:
            from mobidem.client import MobidemClient
            # the two people of the Hamilton clip, enrolled as the tests and the face_recognition example do
            reference = json.loads((ROOT / "tests" / "reference" / "hamilton_facerec.json").read_text())
            with MobidemClient(gateway.target) as c:
                for name, rel in reference["known"].items():
                    c.enroll(name, [HAMILTON.parents[1] / rel], face_index=0)
            videos = {"hamilton 640x360": (HAMILTON, 60 if args.quick else None, 0),
                      "1080p": (HD, 24 if args.quick else None, 40)}
            res["videos"] = {}
            for vname, (path, limit, per_stream) in videos.items():
                jpegs = encode_jpeg(load_frames(path, limit))
                gw.streams(gateway.target, jpegs[:8], 2, pb.DROP_POLICY_NONE)  # warm up
                runs: dict = {m: [] for m in modes}
                for rep in range(args.reps):
                    for mode, (tracking, tasks) in modes.items():
                        log(f"{vname}: rep {rep + 1}, tracking {mode}")
                        before = gw.triton_counts(triton.grpc_url)
                        with noise.section(f"{vname} {mode} rep {rep + 1}"):
                            r = gw.streams(gateway.target, jpegs, 8, pb.DROP_POLICY_NONE, per_stream=per_stream,
                                           tracking=tracking, tasks=tasks)
                        r["counts"] = gw.counts_delta(before, gw.triton_counts(triton.grpc_url))
                        runs[mode].append(r)
                log(f"{vname}: profile of the gateway, tracking on")
                handle = gw.profile(gateway.process.pid, 8, tmp / "profile.txt")
                gw.streams(gateway.target, jpegs, 8, pb.DROP_POLICY_NONE, per_stream=per_stream, tracking=pb.TRACKING_ON)
                profile = gw.profile_result(handle)
                res["videos"][vname] = {"frames_per_stream": per_stream or len(jpegs),
                                        "runs": {m: [{k: v for k, v in r.items() if k != "errors"} for r in rs]
                                                 for m, rs in runs.items()},
                                        "profile": profile}
            log("one stream through `mobidem stream`, tracking on and off, and the face_recognition pipeline")
            video = HAMILTON
            res["user"] = {"on": [], "off": [], "reference": []}
            for rep in range(max(1, args.reps - 1)):
                res["user"]["on"].append(user_stream(gateway.target, video, True))
                res["user"]["off"].append(user_stream(gateway.target, video, False))
                if not args.quick or rep == 0:
                    res["user"]["reference"].append(reference_process(video))
        finally:
            gateway.stop()
            triton.stop()
    res["noise"] = {name: f"{foreign:.2f} over {wall:.0f} s" for name, wall, foreign, _ in noise.log}
    res["minutes"] = (time.perf_counter() - t_start) / 60
    Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    Path(args.out).write_text(render(res))
    log(f"wrote {args.out}")


def _med(xs):
    return float(np.median(xs)) if xs else float("nan")


def render(res: dict) -> str:
    lines = ["# Performance with tracking (issue 14)", "",
             f"Generated by `.venv/bin/python bench/perf_tracking.py --reps {res['reps']}` in "
             f"{res['minutes']:.1f} minutes on {res['machine'].get('cpu', 'this machine')}. Do not edit by hand; "
             "rerun the command. Every ratio compares runs interleaved in this one run (tracking off, on, "
             "detection alone, repeated), medians of the repetitions.", "",
             "## 8 concurrent streams", "",
             "| video | tracking off frames/s | tracking on frames/s | on / off | detection alone frames/s | "
             "on / detection alone | embedder inferences per frame off → on (Triton) | fewer |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for vname, v in res["videos"].items():
        fps = {m: _med([r["fps"] for r in rs]) for m, rs in v["runs"].items()}
        per_frame = {}
        for m in ("off", "on"):
            calls = sum(r["counts"].get(EMBEDDER, (0, 0))[0] for r in v["runs"][m])
            frames = sum(r["ok"] for r in v["runs"][m])
            per_frame[m] = calls / max(frames, 1)
        lines.append(f"| {vname} | {fps['off']:.1f} | {fps['on']:.1f} | {fps['on'] / fps['off']:.2f}x | "
                     f"{fps['detect only']:.1f} | {fps['on'] / fps['detect only']:.0%} | "
                     f"{per_frame['off']:.2f} → {per_frame['on']:.2f} | {per_frame['off'] / max(per_frame['on'], 1e-9):.1f}x |")
    lines += ["", "Spread (all repetitions, frames/s):", ""]
    for vname, v in res["videos"].items():
        parts = [f"{m}: " + ", ".join(f"{r['fps']:.1f}" for r in rs) for m, rs in v["runs"].items()]
        lines.append(f"- {vname} ({v['frames_per_stream']} frames per stream): " + "; ".join(parts))
    lines += ["", "Triton inferences per model and frame (all repetitions together):", "",
              "| video | mode | " + " | ".join(["blazeface_short", "blazeface_full", EMBEDDER, "fer_xception"]) + " |",
              "|---|---|---:|---:|---:|---:|"]
    for vname, v in res["videos"].items():
        for m, rs in v["runs"].items():
            frames = max(sum(r["ok"] for r in rs), 1)
            cells = [f"{sum(r['counts'].get(k, (0, 0))[0] for r in rs) / frames:.2f}"
                     for k in ("blazeface_short", "blazeface_full", EMBEDDER, "fer_xception")]
            lines.append(f"| {vname} | {m} | " + " | ".join(cells) + " |")
    u = res["user"]
    runs = {k: ", ".join(f"{r['fps']:.1f}" for r in u[k]) for k in ("on", "off", "reference")}
    on, off, ref = _med([r["fps"] for r in u["on"]]), _med([r["fps"] for r in u["off"]]), \
        _med([r["fps"] for r in u["reference"]])
    lines += ["", "## One stream as a user runs it", "",
              "`mobidem stream short_hamilton_clip.mp4` (a new client process per run: Python start, JPEG "
              "encoding, the stream) against the face_recognition pipeline over the same clip in its own "
              "process (model loading included), both whole processes timed from start to exit.", "",
              "| | frames/s | runs | vs face_recognition |", "|---|---:|---|---:|",
              f"| mobidem stream, tracking on | {on:.1f} | {runs['on']} | {on / ref:.1f}x |",
              f"| mobidem stream --no-tracking | {off:.1f} | {runs['off']} | {off / ref:.1f}x |",
              f"| face_recognition pipeline | {ref:.2f} | {runs['reference']} | 1x |",
              "", "## Where the time goes with tracking on (py-spy on the gateway, 8 streams)", ""]
    for vname, v in res["videos"].items():
        p = v["profile"]
        if "error" in p:
            lines.append(f"- {vname}: {p['error']}")
            continue
        lines += [f"### {vname}", "", "| function (own samples) | % |", "|---|---:|"]
        lines += [f"| `{k}` | {pct:.1f} |" for k, pct in p["own"][:10]]
        lines += ["", "| thread | % of samples |", "|---|---:|"]
        lines += [f"| {k} | {pct:.1f} |" for k, pct in p["threads"]]
        lines.append("")
    lines += ["## Noise", "", "Foreign load per section (cores of 2):", ""]
    lines += [f"- {name}: {load}" for name, load in res["noise"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
