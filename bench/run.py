"""Regenerate docs/PERFORMANCE.md: the machine, each model alone (ONNX Runtime vs Triton, gRPC vs
shared memory), the gateway end to end for 1/4/8/16 streams of both shared videos (backpressure and
camera-paced latest-frame-wins), the same frames straight to Triton and through a single-process
ONNX Runtime pipeline, the face_recognition-style dlib reference, Triton configuration sweeps, a
profile of the gateway, and the gallery; all in one run, side by side.

Usage (from the repository root):
    make bench                               # installs what it needs, then the full run (about 18 minutes)
    .venv/bin/python bench/run.py            # the full run alone, once `make bench` has set things up
    .venv/bin/python bench/run.py --quick    # fewer frames, repetitions and configurations, about 6 minutes
    options: --json FILE (keep the raw numbers), --render FILE (re-render a report from them, no measuring)

It starts its own Triton (mobidem.managed_triton, the model_repository/ of this checkout, explicit
model control so configurations can be swapped by reloading) and two `mobidem serve --triton-url ...`
gateway processes on that Triton: one with the default settings, one with the other
`triton_shared_memory` setting, so every number of one run comes from the same Triton.
Frames are JPEG-encoded once before any timing (quality 90, as mobidem.client.to_image does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import perf_direct  # noqa: E402
import perf_gateway as gw  # noqa: E402
import perf_models  # noqa: E402
import perf_reference  # noqa: E402
import perf_sweep  # noqa: E402
from perf_common import (HAMILTON, HD, ROOT, NoiseMeter, cpu_by_process, encode_jpeg, load_frames, log,  # noqa: E402
                         machine, matmul_peak, median, spread)

GFLOP_PER_FACE = 0.51  # the embedder (dlib ResNet) per 150x150 chip, from issue 8
VIDEOS = ("hamilton 640x360", "1080p")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer frames, repetitions and configurations")
    ap.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only re-render the report from a --json file of an earlier run (no measuring)")
    args = ap.parse_args()
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["models"]["ms"] = {_key(k): v for k, v in res["models"]["ms"].items()}
        res["models"]["calls"] = {_key(k): v for k, v in res["models"]["calls"].items()}
        Path(args.out).write_text(render(res))
        return
    q = args.quick
    cfg = {
        "model_rounds": 2 if q else 5,
        "model_target_s": 0.08 if q else 0.15,
        "ham_frames": 90 if q else None,
        "hd_frames": 30 if q else None,
        "streams": (1, 4, 8, 16),
        "max_frames_per_run": {"hamilton 640x360": 400 if q else 1100, "1080p": 120 if q else 420},
        "gateway_reps": 1 if q else 3,
        "paced_reps": 1 if q else 2,
        "paced_seconds": 3 if q else 6,
        "shm_reps": 1 if q else 2,
        "sweep_reps": 1 if q else 2,
        "sweep_configs": list(perf_sweep.QUICK if q else perf_sweep.CONFIGS),
        "sweep_frames": {"hamilton 640x360": (60, 40) if q else (100, 60), "1080p": (20, 12) if q else (30, 25)},
        "overhead_reps": 1 if q else 3,
        "ref_ham": 20 if q else 275,
        "ref_hd": 2 if q else 15,
        "gallery": ["--sizes", "1000,10000" if q else "1000,10000,100000", "--queries", "200", "--enrolls",
                    "100" if q else "500"],
    }
    t_start = time.perf_counter()
    info = machine()
    noise = NoiseMeter()
    from mobidem.config import Settings
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton
    from mobidem.v1 import mobidem_pb2 as pb

    res: dict = {"config": cfg, "machine": info}
    log("matmul peak")
    with noise.section("matmul peak"):
        res["peak"] = matmul_peak(2.0 if q else 4.0)
    default_shm = Settings().triton_shared_memory
    res["default_shm"] = default_shm
    res["in_flight"] = {"none": Settings().default_in_flight, "latest": Settings().default_in_flight_latest}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-") as tmp:
        tmp = Path(tmp)
        log("starting Triton")
        repositories, gateway_models = served_by_triton()  # the default gateway's plugins too (yunet)
        triton = ManagedTriton(repositories, tmp / "triton",
                               models=list(dict.fromkeys([*perf_models.MODELS, *gateway_models]))).start(180)
        import tritonclient.grpc as grpcclient
        with grpcclient.InferenceServerClient(triton.grpc_url) as c:
            info["triton"] = c.get_server_metadata().version
        base = perf_sweep.base_configs(triton.grpc_url)
        res["base_config"] = perf_sweep.describe(base)
        gws: dict = {}
        try:
            with noise.section("models alone"):
                log("models alone: ORT vs Triton (gRPC, shared memory)")
                res["models"] = perf_models.run(triton.grpc_url, cfg["model_rounds"], cfg["model_target_s"])

            log("loading frames")
            ham = load_frames(HAMILTON, cfg["ham_frames"])
            hd = load_frames(HD, cfg["hd_frames"])
            videos = {"hamilton 640x360": (ham, encode_jpeg(ham), 29.97), "1080p": (hd, encode_jpeg(hd), 25.0)}
            res["videos"] = {k: len(v[0]) for k, v in videos.items()}

            log("starting the gateways")
            other = "off" if default_shm in ("auto", "on") else "on"
            gws["default"] = gw.Gateway(triton.grpc_url, tmp)
            gws["other"] = gw.Gateway(triton.grpc_url, tmp, "--triton-shared-memory", other)
            res["other_shm"] = other
            main_gw = gws["default"]
            for g in gws.values():
                for _, jpegs, _ in videos.values():  # warm-up: first frames through every model
                    gw.streams(g.target, jpegs[:8], 2, pb.DROP_POLICY_NONE)

            def per_stream(vname, n):
                total = len(videos[vname][1])
                return min(total, max(1, cfg["max_frames_per_run"][vname] // n))

            # throughput, backpressure (no drops), N streams; repetitions interleaved
            runs: dict = {}
            for rep in range(cfg["gateway_reps"]):
                for vname, (_, jpegs, _) in videos.items():
                    for n in cfg["streams"]:
                        k = per_stream(vname, n)
                        log(f"gateway rep {rep + 1}: {vname}, {n} stream(s) x {k} frames")
                        before = gw.triton_counts(triton.grpc_url)
                        cpu0 = cpu_by_process(os.getpid())
                        with noise.section(f"gateway {vname} x{n}"):
                            r = gw.streams(main_gw.target, jpegs, n, pb.DROP_POLICY_NONE, per_stream=k)
                        cpu1 = cpu_by_process(os.getpid())
                        r["cpu"] = {role: (cpu1[role] - cpu0.get(role, 0.0)) / r["wall_s"] for role in cpu1}
                        r["counts"] = gw.counts_delta(before, gw.triton_counts(triton.grpc_url))
                        runs.setdefault((vname, n), []).append(r)
                        log(f"  {r['fps']:.1f} frames/s, {r['faces_per_s']:.1f} faces/s")
            res["gateway"] = [gw.combine(v, key[0]) for key, v in runs.items()]
            for g, (key, v) in zip(res["gateway"], runs.items()):
                roles = sorted({role for r in v for role in r["cpu"]})
                g["cpu"] = {role: median([r["cpu"].get(role, 0.0) for r in v]) for role in roles}

            # camera-paced: each stream at the video's frame rate, latest frame wins
            paced: dict = {}
            for rep in range(cfg["paced_reps"]):
                for vname, (_, jpegs, fps) in videos.items():
                    for n in cfg["streams"]:
                        k = min(len(jpegs), int(cfg["paced_seconds"] * fps))
                        log(f"paced rep {rep + 1} at {fps} fps, latest-frame-wins: {vname}, {n} stream(s) x {k}")
                        with noise.section(f"paced {vname} x{n}"):
                            r = gw.streams(main_gw.target, jpegs, n, pb.DROP_POLICY_LATEST_FRAME_WINS, fps=fps,
                                           per_stream=k)
                        r.update(video=vname, source_fps=fps)
                        paced.setdefault((vname, n), []).append(r)
            res["paced"] = []
            for (vname, n), v in paced.items():
                c = {k: median([r[k] for r in v]) for k in ("fps", "faces_per_s", "p50", "p99", "srv_p50", "srv_p99")}
                c.update(video=vname, streams=n, source_fps=v[0]["source_fps"], frames=v[0]["frames"],
                         dropped=median([r["dropped"] for r in v]), failed=sum(r["failed"] for r in v),
                         ratio_all=[r["p99"] / r["p50"] for r in v], errors=sorted({e for r in v for e in r["errors"]}))
                res["paced"].append(c)

            # profile: one stream, backpressure, py-spy on the gateway
            log("profiling the gateway (py-spy), one stream")
            vname = "hamilton 640x360"
            jpegs = videos[vname][1]
            handle = gw.profile(main_gw.process.pid, 6 if q else 10, tmp / "profile.txt")
            time.sleep(0.5)
            t_end = time.perf_counter() + (6.5 if q else 10.5)
            with noise.section("profile x1"):
                while time.perf_counter() < t_end:
                    gw.streams(main_gw.target, jpegs, 1, pb.DROP_POLICY_NONE)
            res["profile"] = gw.profile_result(handle)
            handle = gw.profile(main_gw.process.pid, 6 if q else 10, tmp / "profile8.txt")
            time.sleep(0.5)
            t_end = time.perf_counter() + (6.5 if q else 10.5)
            with noise.section("profile x8"):
                while time.perf_counter() < t_end:
                    gw.streams(main_gw.target, jpegs, 8, pb.DROP_POLICY_NONE, per_stream=per_stream(vname, 8))
            res["profile8"] = gw.profile_result(handle)

            # shared memory vs gRPC: the two gateways, interleaved
            shm: dict = {}
            for rep in range(cfg["shm_reps"]):
                for vname, (_, jpegs, _) in videos.items():
                    for n in (1, 8):
                        for which in ("default", "other"):
                            log(f"shm ablation rep {rep + 1}: {vname} x{n}, gateway {which}")
                            with noise.section(f"shm {which} {vname} x{n}"):
                                r = gw.streams(gws[which].target, jpegs, n, pb.DROP_POLICY_NONE,
                                               per_stream=per_stream(vname, n))
                            shm.setdefault(f"{vname}|{n}|{which}", []).append(r)
            res["shm"] = {k: {"fps": median([r["fps"] for r in v]), "fps_all": [r["fps"] for r in v],
                              "srv_p50": median([r["srv_p50"] for r in v]), "srv_p99": median([r["srv_p99"] for r in v])}
                          for k, v in shm.items()}

            # Triton configuration sweep (reload with overrides), interleaved over configurations
            sweep: dict = {}
            try:
                for rep in range(cfg["sweep_reps"]):
                    for name in cfg["sweep_configs"]:
                        log(f"sweep rep {rep + 1}: {name}")
                        perf_sweep.apply(triton.grpc_url, perf_sweep.CONFIGS[name], base)
                        for vname, (_, jpegs, _) in videos.items():
                            k1, k8 = cfg["sweep_frames"][vname]
                            gw.streams(main_gw.target, jpegs[:4], 1, pb.DROP_POLICY_NONE)  # warm the new instances
                            for n, k in ((1, k1), (8, k8)):
                                with noise.section(f"sweep {name} {vname} x{n}"):
                                    r = gw.streams(main_gw.target, jpegs, n, pb.DROP_POLICY_NONE, per_stream=k)
                                sweep.setdefault(f"{name}|{vname}|{n}", []).append(r)
            finally:
                perf_sweep.apply(triton.grpc_url, {}, base)
            res["sweep"] = {k: {"fps": median([r["fps"] for r in v]), "fps_all": [r["fps"] for r in v],
                                "srv_p50": median([r["srv_p50"] for r in v]), "srv_p99": median([r["srv_p99"] for r in v])}
                            for k, v in sweep.items()}

            # sequential: straight to Triton (the plugins, tritonclient), single-process ORT, gateway in-flight 1
            res["overhead"] = {}
            for vname, (frames, jpegs, _) in videos.items():
                reps = {"direct": [], "ort": [], "gw1": [], "gw4": []}
                for i in range(cfg["overhead_reps"]):
                    log(f"sequential paths {vname} rep {i + 1}")
                    with noise.section(f"sequential {vname}"):
                        reps["direct"].append(perf_direct.run(frames, "triton", triton.grpc_url))
                        reps["ort"].append(perf_direct.run(frames, "ort", keep_boxes=(i == 0)))
                        reps["gw1"].append(gw.streams(main_gw.target, jpegs, 1, pb.DROP_POLICY_NONE, max_in_flight=1))
                        reps["gw4"].append(gw.streams(main_gw.target, jpegs, 1, pb.DROP_POLICY_NONE))
                res["overhead"][vname] = {"reps": reps, "decode_ms": gw.decode_ms(jpegs)}
        finally:
            for g in gws.values():
                g.stop()
            triton.stop()

    # reference: the face_recognition pipeline (dlib), same frames; nothing else of ours running
    res["reference"] = {}
    for vname, n in (("hamilton 640x360", cfg["ref_ham"]), ("1080p", cfg["ref_hd"])):
        frames = videos[vname][0]
        idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
        log(f"reference dlib pipeline: {vname}, {len(idx)} frames")
        with noise.section(f"reference {vname}"):
            r = perf_reference.run([frames[i] for i in idx])
        r["indices"] = idx.tolist()
        ours = res["overhead"][vname]["reps"]["ort"][0]["boxes"]
        r["compare"] = perf_direct.compare_faces([ours[i] for i in idx], r["boxes"])
        r["ours_faces"] = sum(len(ours[i]) for i in idx)
        res["reference"][vname] = r
        log(f"  {r['fps']:.2f} frames/s")

    log("gallery benchmark")
    with noise.section("gallery"):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gallery.py"), *cfg["gallery"]],
                             capture_output=True, text=True, cwd=ROOT)
    res["gallery"] = [line for line in out.stdout.splitlines() if line.startswith("|") or line.startswith("identify")] \
        or [f"bench_gallery.py failed: {out.stderr[-500:]}"]

    for o in res["overhead"].values():
        for r in o["reps"]["ort"]:
            r.pop("boxes", None)
    for r in res["reference"].values():
        r.pop("boxes", None)
    res["noise"] = noise.log
    res["elapsed_s"] = time.perf_counter() - t_start
    raw = dict(res, models={k: {"/".join(map(str, kk)): vv for kk, vv in v.items()} if k in ("ms", "calls") else v
                            for k, v in res["models"].items()})
    Path(args.json or Path(tempfile.gettempdir()) / "mobidem-perf-last.json").write_text(
        json.dumps(raw, default=str, indent=1))  # first, so a report bug never loses a run (--render it)
    Path(args.out).write_text(render(res))
    log(f"wrote {args.out} in {res['elapsed_s']:.0f} s")


# ------------------------------------------------------------------------------------------ report
def _key(k: str):
    model, path, batch = k.split("/")
    return model, path, int(batch)


def _g(res, video, n):
    return next(g for g in res["gateway"] if g["video"] == video and g["streams"] == n)


def _ov(res, video, path, key="fps"):
    return median([x[key] for x in res["overhead"][video]["reps"][path]])


def acceptance(res: dict) -> list[str]:
    ms = res["models"]["ms"]
    L = ["## Acceptance (issue 8), this run", "",
         "| criterion | measured | target | met? |", "|---|---|---|---|"]
    for m in ("dlib_resnet", "face_multitask"):
        o1, o2 = median(ms[(m, "ort1", 16)]), median(ms[(m, "ort2", 16)])
        best = min(o1, o2)
        for path, label in (("triton", "gRPC"), ("triton_shm", "shared memory")):
            tr = median(ms[(m, path, 16)])
            L.append(f"| {m} through Triton ({label}) at batch 16 vs ONNX Runtime alone (best of 1/2 threads) | "
                     f"{16000 / tr:.0f} vs {16000 / best:.0f} items/s = {100 * best / tr:.0f} % (vs ORT 1 thread "
                     f"{100 * o1 / tr:.0f} %, vs 2 threads {100 * o2 / tr:.0f} %) | >= 80 % | "
                     f"{'yes' if best / tr >= 0.8 else 'no'} |")
    peak = res["peak"]["best"]
    limit = peak / GFLOP_PER_FACE
    g8 = _g(res, "hamilton 640x360", 8)
    L.append(f"| gateway at 8 streams, hamilton 640x360 (mostly one face per frame: {g8['faces'] / max(1, g8['ok']):.2f} "
             f"faces/frame), faces/s vs the embedder's arithmetic limit | {g8['faces_per_s']:.0f} faces/s vs "
             f"{limit:.0f} faces/s ({GFLOP_PER_FACE} GFLOP/face at a measured {peak:.0f} GFLOP/s) = "
             f"{100 * g8['faces_per_s'] / limit:.0f} % | >= 60 % or explained by a profile | "
             + ("yes" if g8["faces_per_s"] >= 0.6 * limit else "no: explained in 'Where the time goes' and 4c") + " |")
    for vname, target in (("hamilton 640x360", 10), ("1080p", 15)):
        r = res["reference"][vname]
        best = max(g["fps"] for g in res["gateway"] if g["video"] == vname)
        c = r["compare"]
        L.append(f"| {vname}: gateway best frames/s vs the face_recognition pipeline | {best:.1f} vs {r['fps']:.2f} = "
                 f"{best / r['fps']:.1f}x; faces: reference {r['faces']}, ours {r['ours_faces']}, found by both "
                 f"{c['both']} ({100 * c['both'] / max(1, r['faces']):.0f} % of the reference's) | >= {target}x, same faces | "
                 f"{'yes' if best / r['fps'] >= target else 'no'} |")
    r = res["reference"]["hamilton 640x360"]
    one = _g(res, "hamilton 640x360", 1)["fps"]
    L.append(f"| hamilton 640x360: one stream (issue 4) vs the face_recognition pipeline | {one:.1f} vs {r['fps']:.2f} = "
             f"{one / r['fps']:.1f}x | >= 10x | {'yes' if one / r['fps'] >= 10 else 'no'} |")
    ort = _ov(res, "hamilton 640x360", "ort")
    for n in (4, 8, 16):
        g = _g(res, "hamilton 640x360", n)
        L.append(f"| hamilton 640x360, {n} streams: gateway aggregate frames/s vs a single-process ONNX Runtime pipeline "
                 f"(1 thread, same plugins) | {g['fps']:.1f} vs {ort:.1f} = {g['fps'] / ort:.2f}x | >= 1x | "
                 f"{'yes' if g['fps'] >= ort else 'no'} |")
    ort_hd = _ov(res, "1080p", "ort")
    g = _g(res, "1080p", 8)
    L.append(f"| 1080p, 8 streams: the same | {g['fps']:.1f} vs {ort_hd:.1f} = {g['fps'] / ort_hd:.2f}x | >= 1x | "
             f"{'yes' if g['fps'] >= ort_hd else 'no'} |")
    for p in res["paced"]:
        if p["streams"] == 8:
            L.append(f"| {p['video']}, 8 camera-paced streams, latest-frame-wins: client p99 / p50 | {p['p99']:.0f} / "
                     f"{p['p50']:.0f} ms = {p['p99'] / p['p50']:.2f} | <= 3 | {'yes' if p['p99'] <= 3 * p['p50'] else 'no'} |")
    return L + [""] + acceptance_models(res)


# issue 2: "ONNX Runtime on 2 cores: embedder 6.8 ms per chip at batch 1 and 4.3 ms per chip at batch 16;
# detector 1.5 ms; expression 0.37 ms. The Triton path should stay within 20 % of these."
ISSUE2_REFERENCE = (("embedder", "dlib_resnet", 1, 6.8), ("embedder", "dlib_resnet", 16, 4.3),
                    ("detector", "blazeface_short", 1, 1.5), ("expression", "fer_xception", 1, 0.37))


def acceptance_models(res: dict) -> list[str]:
    mr = res["models"]
    L = ["## Acceptance (issue 2), this run: each model through Triton vs the issue's reference figures", "",
         "Reference = the issue's ONNX Runtime figures (2 cores, measured before this project); target: the Triton "
         "path within 20 % of them (ms per item). Triton path = Triton's perf_analyzer (C++ client, section 2); the "
         "gateway's Python client on the same model is shown beside it (its extra per-call cost is part of the "
         "gateway overhead measured end to end in section 3).", "",
         "| model | batch | reference ms/item | target ms/item | Triton (perf_analyzer) ms/item | gateway client (shm) ms/item "
         "| ORT here, 1 / 2 threads, ms/item | met? |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for role, model, b, ref in ISSUE2_REFERENCE:
        pa = perf_models.pa_ms(mr, model, b)
        shm = median(mr["ms"][(model, "triton_shm", b)]) / b
        o1, o2 = (median(mr["ms"][(model, p, b)]) / b for p in ("ort1", "ort2"))
        met = "not measured (perf_analyzer did not run)" if pa is None else ("yes" if pa / b <= 1.2 * ref else "no")
        pa_txt = "-" if pa is None else f"{pa / b:.3f}"
        L.append(f"| {role} ({model}) | {b} | {ref} | {1.2 * ref:.3f} | {pa_txt} | {shm:.3f} | {o1:.3f} / {o2:.3f} | {met} |")
    return L


def _profile_table(p: dict, title: str) -> list[str]:
    if "error" in p:
        return [f"{title}: {p['error']}", ""]
    L = [f"{title} ({p['samples']} samples at 250 Hz, idle samples included):", "",
         "| thread | share of samples |", "|---|---:|"]
    L += [f"| {t} | {v:.0f} % |" for t, v in p["threads"][:6]]
    L += ["", "| top functions by own samples | % | top functions by inclusive samples | % |", "|---|---:|---|---:|"]
    for (a, x), (b, y) in zip(p["own"][:12], p["inclusive"][:12]):
        L.append(f"| `{a[:90]}` | {x:.1f} | `{b[:90]}` | {y:.1f} |")
    return L + [""]


def render(res: dict) -> str:
    m, cfg = res["machine"], res["config"]
    L = ["# Performance", "",
         f"Generated by `{m['command']}` on {m['date']} in {res['elapsed_s'] / 60:.1f} minutes"
         f"{' (--quick: fewer frames, repetitions and configurations)' if '--quick' in m['command'] else ''}. "
         "Do not edit by hand; rerun the command. Every number below comes from this one run on this machine.", "",
         "## 1. Machine and versions", "",
         "| | |", "|---|---|",
         f"| CPU | {m['cpu']}, {m['cores']} cores (shared: other processes ran during the benchmark, see Noise) |",
         f"| float32 matmul peak (numpy BLAS, {res['peak']['n']}x{res['peak']['n']}, all cores) | "
         f"{res['peak']['best']:.0f} GFLOP/s best, {res['peak']['median']:.0f} median of {res['peak']['runs']} |",
         f"| OS | {m['os']} |",
         f"| Python | {m['python']} |",
         f"| Triton | {m['triton']} (the tritonserver that nvidia-pytriton {m['nvidia-pytriton']} ships), Python backend + ONNX Runtime, KIND_CPU |",
         f"| Triton model configuration (committed) | {res['base_config']} |",
         f"| gateway default `triton_shared_memory` | {res['default_shm']} (the comparison gateway: {res['other_shm']}) |",
         f"| ONNX Runtime | {m['onnxruntime']} |",
         f"| tritonclient / grpcio | {m['tritonclient']} / {m['grpcio']} |",
         f"| OpenCV / numpy / dlib | {m['opencv']} / {m['numpy']} / {m['dlib']} |", ""]
    L += acceptance(res)

    foreign = [f for _, _, f, _ in res["noise"]]
    L += ["", "### Noise", "",
          "Foreign load = CPU cores' worth of time used by processes that are not this benchmark (not Triton, "
          "not the gateways, not this process) during each section, from /proc/stat minus our process tree. "
          f"Over the run: median {median(foreign):.2f} cores of 2, max {max(foreign):.2f}; sections with more than "
          f"0.5 cores of foreign load: {sum(f > 0.5 for f in foreign)} of {len(foreign)}. Every table quotes medians of "
          "interleaved repetitions and the spread (max-min)/median where it matters; differences smaller than "
          "the spread are noise.", "",
          "<details><summary>per section</summary>", "",
          "| section | wall s | foreign load (cores of 2) | load avg 1 min at end |", "|---|---:|---:|---:|"]
    for name, wall, f, load1 in res["noise"]:
        L.append(f"| {name} | {wall:.1f} | {f:.2f} | {load1:.2f} |")
    L += ["", "</details>"]

    mr = res["models"]
    L += ["", "## 2. Each model alone: ONNX Runtime vs Triton", "",
          "Random uint8 inputs. ORT: an `InferenceSession` in the benchmark process with intra-op threads 1 or 2 "
          "(inter-op 1, all graph optimisations, as the Triton backend sets them). Triton: the same model.onnx in "
          "Triton's Python backend (committed config), called through the gateway's own client "
          "(`mobidem.triton_client.TritonClient`, one request at a time) with tensors over gRPC or through "
          f"system shared memory. {cfg['model_rounds']} interleaved rounds; each cell is the median over rounds of "
          f"the mean over {min(mr['calls'].values())}-{max(mr['calls'].values())} calls.", "",
          *perf_models.table(mr), "",
          "Triton's own benchmarking client, `perf_analyzer` (C++, from tritonclient; concurrency 1, inputs and outputs "
          "in system shared memory, 1.5 s measurement windows until 3 agree within 20 %), on the same Triton in the same "
          f"run, median of {perf_models.PA_ROUNDS} rounds: the Triton path without the Python client's per-call cost. "
          "The server-side split is Triton's own statistics (compute infer = the Python backend stub's round trip, "
          "ONNX Runtime included).", "",
          *perf_models.pa_table(mr), "",
          "Triton vs ORT parity on the batch-16 inputs (max |diff|, both transports): "
          + ", ".join(f"{k} {v:.1e}" for k, v in mr["parity"].items()) + ".", ""]

    ref = res["reference"]
    L += ["## 3. The gateway end to end", "",
          f"Frames: hamilton 640x360 = {res['videos']['hamilton 640x360']} frames (mostly one face), 1080p "
          f"(facenet_pytorch_video, 1920x1080) = {res['videos']['1080p']} frames (about 3 faces), JPEG q90, encoded "
          "before timing. Streams run concurrently in client threads of this process against a `mobidem serve` "
          f"process (default settings: image threads 2, max_in_flight {res['in_flight']['none']} with backpressure, "
          "detector `blazeface`, face plugin "
          "`face_multitask`; all tasks: detect, identify against an empty gallery, expression). Stream i starts "
          "i/N of the way into the video so the streams together cover it; frames per stream = the whole video "
          f"or {cfg['max_frames_per_run']} / N, whichever is smaller. Client, gateway, Triton and its stubs share "
          "the 2 cores.", "",
          "### Throughput (DROP_POLICY_NONE: backpressure, no drops)", "",
          f"Medians over {cfg['gateway_reps']} interleaved repetitions. Server latency = the gateway's "
          "`timings.total_ms` (frame received -> result ready, includes waiting for the stream's in-flight slots); "
          "client latency with backpressure and no pacing is mostly queueing in the client, see the camera-paced "
          "table for latency at a real frame rate.", "",
          "| video | streams | frames/run | frames/s | spread | faces/s | faces/frame | server p50 / p99 ms | dropped | failed | reference frames/s | ours / reference |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["gateway"]:
        rf = ref[r["video"]]["fps"]
        L.append(f"| {r['video']} | {r['streams']} | {r['frames']} | {r['fps']:.1f} | {spread(r['fps_all']):.0f}% | "
                 f"{r['faces_per_s']:.1f} | {r['faces'] / max(1, r['ok']):.2f} | {r['srv_p50']:.0f} / {r['srv_p99']:.0f} | "
                 f"{r['dropped']:.0f} | {r['failed']:.0f} | {rf:.2f} | {r['fps'] / rf:.1f}x |")
    errs = sorted({e for r in res["gateway"] + res["paced"] for e in r["errors"]})
    if errs:
        L += ["", "Failures seen: " + "; ".join(errs)]

    L += ["", "### Camera-paced, latest-frame-wins", "",
          f"Each stream sends at the video's frame rate for {cfg['paced_seconds']} s (DROP_POLICY_LATEST_FRAME_WINS, "
          f"max_in_flight {res['in_flight']['latest']}, the server's default for this policy); medians over "
          f"{cfg['paced_reps']} repetitions. Latency = client: frame handed to gRPC "
          "-> result received (processed frames only).", "",
          "| video | streams | offered frames/s | processed frames/s | faces/s | client p50 ms | client p99 ms | p99 / p50 | server p50 / p99 ms | dropped % |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["paced"]:
        L.append(f"| {r['video']} | {r['streams']} | {r['streams'] * r['source_fps']:.0f} | {r['fps']:.1f} | "
                 f"{r['faces_per_s']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p99'] / r['p50']:.2f} | "
                 f"{r['srv_p50']:.0f} / {r['srv_p99']:.0f} | {100 * r['dropped'] / r['frames']:.0f} % |")

    L += ["", "### Sequential paths on the same frames (one frame at a time)", "",
          "Direct = the built-in plugin objects (`blazeface` detector: short range with margin + full range, + "
          "640 px tiles for frames over 1280 px; `face_multitask`) driven by a minimal Context whose `infer` calls "
          "tritonclient gRPC synchronously: exactly the tensors the gateway sends, no JPEG, no gateway. ORT = the "
          "same plugins with ONNX Runtime sessions in one process (intra-op 1 thread), no Triton: the "
          "single-process baseline. Gateway in-flight 1 = one stream, max_in_flight 1; in-flight default = one "
          f"stream, the server's default ({res['in_flight']['none']}). "
          f"Medians over {cfg['overhead_reps']} interleaved repetitions.", "",
          "| video | single-process ORT frames/s (ms/frame) | direct to Triton frames/s (ms/frame) | gateway in-flight 1 frames/s | gateway in-flight default frames/s | JPEG decode ms/frame | gateway overhead ms/frame (in-flight 1 - direct) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for vname, o in res["overhead"].items():
        d, dfps = _ov(res, vname, "direct", "mean"), _ov(res, vname, "direct")
        om, ofps = _ov(res, vname, "ort", "mean"), _ov(res, vname, "ort")
        g1, g4 = _ov(res, vname, "gw1"), _ov(res, vname, "gw4")
        L.append(f"| {vname} | {ofps:.1f} ({om:.1f}) | {dfps:.1f} ({d:.1f}) | {g1:.1f} | {g4:.1f} | {o['decode_ms']:.1f} | "
                 f"{1000 / g1 - 1000 / dfps:.1f} |")

    L += ["", "### Reference: the face_recognition pipeline with dlib (same frames)", "",
          "face_recognition itself does not import here (face_recognition_models needs pkg_resources), so its "
          "default pipeline is reproduced with dlib: HOG detector upsample 1, 5-point shape predictor, "
          "`compute_face_descriptor` (num_jitters 1) for every face; one thread, nothing of ours running; no "
          "expression. Faces compared on the same frames with ours (the single-process pipeline's detections, "
          "which are the gateway's): a reference box matches one of ours when its centre lies inside ours and "
          "the widths are within 3x.", "",
          "| video | frames (evenly spaced) | frames/s | faces/s | median ms/frame | best gateway frames/s | ours / reference | faces: reference / ours / both / reference only / ours only | target |",
          "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for vname, target in (("hamilton 640x360", 10), ("1080p", 15)):
        r = ref[vname]
        c = r["compare"]
        best = max(g["fps"] for g in res["gateway"] if g["video"] == vname)
        L.append(f"| {vname} | {r['frames']} | {r['fps']:.2f} | {r['faces_per_s']:.2f} | {median(r['ms_per_frame']):.0f} | "
                 f"{best:.1f} | {best / r['fps']:.1f}x | {r['faces']} / {r['ours_faces']} / {c['both']} / {c['ref_only']} / "
                 f"{c['ours_only']} | >= {target}x: {'met' if best / r['fps'] >= target else 'NOT met'} |")

    L += ["", "### Where the time goes at 8 streams", "",
          "CPU used by each process of the run during the backpressure runs (cores of 2, median over repetitions); "
          "the embedder's share is what turns into faces/s.", "",
          "| role | hamilton 640x360 x8 | 1080p x8 |", "|---|---:|---:|"]
    g8 = {v: _g(res, v, 8) for v in VIDEOS}
    roles = sorted({r for g in g8.values() for r in g["cpu"]}, key=lambda r: -g8["hamilton 640x360"]["cpu"].get(r, 0))
    for role in roles:
        L.append(f"| {role} | {g8['hamilton 640x360']['cpu'].get(role, 0):.2f} | {g8['1080p']['cpu'].get(role, 0):.2f} |")
    L.append(f"| total | {sum(g8['hamilton 640x360']['cpu'].values()):.2f} | {sum(g8['1080p']['cpu'].values()):.2f} |")

    L += ["", "### Triton's dynamic batching during the backpressure runs", "",
          "Deltas of Triton's statistics over the runs (summed over repetitions): items / model executions = "
          "average batch.", "",
          "| video | streams | model | items | executions | average batch |", "|---|---:|---|---:|---:|---:|"]
    for r in res["gateway"]:
        for model, (inf, ex) in sorted(r["counts"].items()):
            if ex:
                L.append(f"| {r['video']} | {r['streams']} | {model} | {inf} | {ex} | {inf / ex:.2f} |")

    # 4. fast path steps
    L += ["", "## 4. Making the fast path faster: each step measured", "",
          "### a. System shared memory to a co-located Triton", "",
          "`triton_shared_memory` (on | off | auto; auto = on for the managed Triton or a 127.0.0.1/localhost URL): "
          "the gateway's TritonClient writes inputs into a pool of pre-registered /dev/shm regions and Triton "
          "writes outputs into the same region; gRPC carries only metadata. Model level: the `Triton shm` column "
          "of section 2. Gateway level: two gateways on the same Triton, one with shared memory, one without, "
          f"interleaved, medians of {cfg['shm_reps']}:", "",
          "| video | streams | gRPC frames/s | shared memory frames/s | shm / gRPC | spread gRPC / shm | server p50 gRPC / shm ms |",
          "|---|---:|---:|---:|---:|---|---|"]
    on = "default" if res["default_shm"] in ("auto", "on") else "other"
    off = "other" if on == "default" else "default"
    for vname in VIDEOS:
        for n in (1, 8):
            a, b = res["shm"][f"{vname}|{n}|{off}"], res["shm"][f"{vname}|{n}|{on}"]
            L.append(f"| {vname} | {n} | {a['fps']:.1f} | {b['fps']:.1f} | {b['fps'] / a['fps']:.2f} | "
                     f"{spread(a['fps_all']):.0f}% / {spread(b['fps_all']):.0f}% | {a['srv_p50']:.0f} / {b['srv_p50']:.0f} |")

    L += ["", "### b. Triton instances, ONNX Runtime threads, queue delays", "",
          "Each configuration is loaded into the running Triton with a config override (explicit model control, "
          "`load_model(config=...)`) and measured through the default gateway: hamilton 640x360 and 1080p, 1 and "
          f"8 streams, backpressure; configurations interleaved, medians of {cfg['sweep_reps']} (frames per stream "
          f"{cfg['sweep_frames']}). Detectors = blazeface_short + blazeface_full.", "",
          "| configuration | ham x1 frames/s | ham x8 frames/s | 1080p x1 frames/s | 1080p x8 frames/s | ham x8 server p50 / p99 ms | 1080p x8 server p50 / p99 ms |",
          "|---|---:|---:|---:|---:|---|---|"]
    for name in cfg["sweep_configs"]:
        s = {(v, n): res["sweep"][f"{name}|{v}|{n}"] for v in VIDEOS for n in (1, 8)}
        L.append(f"| {name} | {s[('hamilton 640x360', 1)]['fps']:.1f} | {s[('hamilton 640x360', 8)]['fps']:.1f} | "
                 f"{s[('1080p', 1)]['fps']:.1f} | {s[('1080p', 8)]['fps']:.1f} | "
                 f"{s[('hamilton 640x360', 8)]['srv_p50']:.0f} / {s[('hamilton 640x360', 8)]['srv_p99']:.0f} | "
                 f"{s[('1080p', 8)]['srv_p50']:.0f} / {s[('1080p', 8)]['srv_p99']:.0f} |")
    L += ["", "### c. The gateway's own work: profile", "",
          "py-spy (`record --threads --nonblocking`, raw stacks) attached to the gateway while it serves; the "
          "threads table shows how the gateway's samples split between the event loop and the image thread pool "
          "(idle threads are sampled too).", ""]
    L += _profile_table(res["profile"], "One stream, hamilton 640x360, backpressure")
    L += _profile_table(res["profile8"], "Eight streams, hamilton 640x360, backpressure")

    L += ["## 5. Gallery search (bench/bench_gallery.py)", "",
          "Synthetic 128-D templates, identify = `Gallery.search(k=5)`; enrol = one template per transaction "
          "(fsync-bound).", "", *res["gallery"], ""]
    L += ["## 6. Phone photos and 4K frames", "",
          "Analyze latency and gateway peak memory from 640x360 to 48 MP and 4K streams, with the detector's size cap",
          "against tiles over the full image, side by side: `docs/PERFORMANCE_PHONE.md` "
          "(`.venv/bin/python bench/perf_phone.py`, about 2 minutes; a separate run, not part of `make bench`).", ""]
    L += ["## 7. Tracking", "",
          "The figures above are streams with tracking off (every face embedded in every frame, as before "
          "tracking existed). Tracking on against off, side by side at 8 streams, with a profile and one "
          "stream through `mobidem stream`: `docs/PERFORMANCE_TRACKING.md` (`.venv/bin/python "
          "bench/perf_tracking.py`, which `make bench` runs after this).", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
