"""Regenerate docs/PERFORMANCE.md: models alone (ONNX Runtime vs Triton), the gateway end to end
against the face_recognition-style dlib pipeline, gateway overhead, and Triton's batching.

Usage (from the repository root):
    .venv/bin/python bench/run.py            # full run, about 10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # fewer frames and repetitions, about 2-3 minutes
    options: --json FILE (keep the raw numbers), --render FILE (re-render a report from them, no measuring)

It starts its own Triton (mobidem.managed_triton, the model_repository/ of this checkout) and a
`mobidem serve --triton-url ...` gateway process that uses that Triton, so every number of one run
comes from the same Triton, side by side, and Triton's statistics can be read.
Frames are JPEG-encoded once before any timing (quality 90, as mobidem.client.to_image does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import perf_gateway as gw  # noqa: E402
import perf_models  # noqa: E402
import perf_reference  # noqa: E402
from perf_common import HAMILTON, HD, ROOT, NoiseMeter, encode_jpeg, load_frames, log, machine, median, spread  # noqa: E402

EMBEDDER_TARGET = {1: 6.8, 16: 4.3 * 16}  # ms per call, ORT 2 threads (docs/notes, measured earlier here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer frames and repetitions (about 2-3 minutes)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only re-render the report from a --json file of an earlier run (no measuring)")
    args = ap.parse_args()
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["models"]["ms"] = {tuple(_key(k)): v for k, v in res["models"]["ms"].items()}
        res["models"]["calls"] = {tuple(_key(k)): v for k, v in res["models"]["calls"].items()}
        Path(args.out).write_text(render(res))
        return
    q = args.quick
    cfg = {
        "model_rounds": 2 if q else 5,
        "model_target_s": 0.1 if q else 0.25,
        "ham_frames": 60 if q else None,
        "hd_frames": 20 if q else None,
        "streams": (1, 4, 8),
        "overhead_reps": 1 if q else 3,
        "ref_ham": 20 if q else 275,
        "ref_hd": 2 if q else 15,
        "gateway_reps": 1 if q else 3,
    }
    t_start = time.perf_counter()
    info = machine()
    noise = NoiseMeter()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.v1 import mobidem_pb2 as pb

    res: dict = {"config": cfg, "machine": info}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-") as tmp:
        tmp = Path(tmp)
        log("starting Triton")
        triton = ManagedTriton(ROOT / "model_repository", tmp / "triton").start(timeout=180)
        import tritonclient.grpc as grpcclient
        with grpcclient.InferenceServerClient(triton.grpc_url) as c:
            info["triton"] = c.get_server_metadata().version
        gateway = None
        try:
            with noise.section("models alone"):
                log("models alone: ORT vs Triton")
                res["models"] = perf_models.run(triton.grpc_url, cfg["model_rounds"], cfg["model_target_s"])

            log("loading frames")
            ham = load_frames(HAMILTON, cfg["ham_frames"])
            hd = load_frames(HD, cfg["hd_frames"])
            videos = {"hamilton 640x360": (ham, encode_jpeg(ham), 29.97), "1080p": (hd, encode_jpeg(hd), 25.0)}
            res["videos"] = {k: len(v[0]) for k, v in videos.items()}

            log("starting the gateway")
            gateway = gw.Gateway(triton.grpc_url, tmp)
            for _, jpegs, _ in videos.values():  # warm-up: first frames through every model
                gw.streams(gateway.target, jpegs[:8], 1, pb.DROP_POLICY_NONE)

            # 3. throughput, backpressure (no drops), N streams; repetitions interleaved
            runs: dict = {}
            for rep in range(cfg["gateway_reps"]):
                for vname, (_, jpegs, _) in videos.items():
                    for n in cfg["streams"]:
                        log(f"gateway rep {rep + 1}: {vname}, {n} stream(s) x {len(jpegs)} frames")
                        before = gw.triton_counts(triton.grpc_url)
                        with noise.section(f"gateway {vname} x{n}"):
                            r = gw.streams(gateway.target, jpegs, n, pb.DROP_POLICY_NONE)
                        r["counts"] = gw.counts_delta(before, gw.triton_counts(triton.grpc_url))
                        runs.setdefault((vname, n), []).append(r)
                        log(f"  {r['fps']:.1f} frames/s, server p50 {r['srv_p50']:.0f} ms")
            res["gateway"] = [gw.combine(v, key[0]) for key, v in runs.items()]

            # camera-paced: each stream sends at the video's frame rate, latest frame wins
            res["paced"] = []
            for vname, (_, jpegs, fps) in videos.items():
                for n in cfg["streams"]:
                    log(f"gateway paced at {fps} fps: {vname}, {n} stream(s)")
                    with noise.section(f"paced {vname} x{n}"):
                        r = gw.streams(gateway.target, jpegs, n, pb.DROP_POLICY_LATEST_FRAME_WINS, fps=fps)
                    r["video"] = vname
                    r["source_fps"] = fps
                    res["paced"].append(r)

            # gateway overhead: sequential, the same frames straight to Triton vs one gateway stream
            res["overhead"] = {}
            for vname, (frames, jpegs, _) in videos.items():
                reps = {"direct": [], "gw1": [], "gw4": []}
                for i in range(cfg["overhead_reps"]):
                    log(f"overhead {vname} rep {i + 1}")
                    with noise.section(f"overhead {vname}"):
                        reps["direct"].append(gw.direct(triton.grpc_url, frames))
                        reps["gw1"].append(gw.streams(gateway.target, jpegs, 1, pb.DROP_POLICY_NONE, max_in_flight=1))
                        reps["gw4"].append(gw.streams(gateway.target, jpegs, 1, pb.DROP_POLICY_NONE))
                res["overhead"][vname] = {"reps": reps, "decode_ms": gw.decode_ms(jpegs)}
        finally:
            if gateway is not None:
                gateway.stop()
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
        res["reference"][vname] = r
        log(f"  {r['fps']:.2f} frames/s")

    res["noise"] = noise.log
    res["elapsed_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(render(res))
    if args.json:
        raw = dict(res, models={k: {"/".join(map(str, kk)): vv for kk, vv in v.items()} if k in ("ms", "calls") else v
                                for k, v in res["models"].items()})
        Path(args.json).write_text(json.dumps(raw, default=str, indent=1))
    log(f"wrote {args.out} in {res['elapsed_s']:.0f} s")


# ------------------------------------------------------------------------------------------ report
def _key(k: str):
    model, path, batch = k.split("/")
    return model, path, int(batch)


def findings(res: dict) -> list[str]:
    ms = res["models"]["ms"]
    L = ["", "## Findings (computed from the numbers above)", ""]
    over = ", ".join(f"{m} {median(ms[(m, 'triton', 1)]) - median(ms[(m, 'ort1', 1)]):.1f} ms"
                     for m in perf_models.MODELS)
    L.append(f"- Triton's per-request cost at batch 1 (Triton minus in-process ORT with the same 1 thread): {over}. "
             "That fixed cost (gRPC, Python backend stub, shared-memory copies) is paid on every detector call of every "
             "frame; at batch 16 it is amortised.")
    sp = {p: max(spread(ms[(m, p, b)]) for m in perf_models.MODELS for b in perf_models.BATCHES) for p in perf_models.PATHS}
    L.append(f"- Noise sensitivity: the worst spread over rounds was ORT 1 thread {sp['ort1']:.0f} %, ORT 2 threads "
             f"{sp['ort2']:.0f} %, Triton {sp['triton']:.0f} %. Two spinning intra-op threads on a 2-core machine "
             "that other processes also use are the least stable configuration; compare medians with that in mind.")
    thr = {(g["video"], g["streams"]): g["fps"] for g in res["gateway"]}
    for p in res["paced"]:
        cap = thr.get((p["video"], p["streams"]))
        offered = p["streams"] * p["source_fps"]
        if cap and offered > cap:
            L.append(f"- Overload with latest-frame-wins, {p['video']}, {p['streams']} streams: offered {offered:.0f} "
                     f"frames/s, backpressure capacity {cap:.0f} frames/s, but only {p['fps']:.0f} frames/s processed "
                     f"({100 * p['fps'] / cap:.0f} % of capacity; {100 * p['dropped'] / p['frames']:.0f} % dropped).")
    for g in res["gateway"]:
        if g["streams"] == 1:
            c = g["counts"]
            if "blazeface_short" in c and "blazeface_full" in c and c["blazeface_short"][0]:
                L.append(f"- Detector `auto` on {g['video']}: blazeface_full ran for "
                         f"{100 * c['blazeface_full'][0] / c['blazeface_short'][0]:.0f} % of the frames (blazeface_short "
                         "found nothing first), i.e. two detector requests per such frame.")
    for vname, r in res["reference"].items():
        best = max((g for g in res["gateway"] if g["video"] == vname), key=lambda g: g["fps"])
        L.append(f"- {vname}: ours {best['faces'] / max(1, best['ok']):.2f} faces/frame vs reference "
                 f"{r['faces'] / r['frames']:.2f}; faces/s ours {best['faces_per_s']:.0f} vs reference "
                 f"{r['faces_per_s']:.1f} = {best['faces_per_s'] / max(r['faces_per_s'], 1e-9):.0f}x (frames/s "
                 f"{best['fps'] / r['fps']:.1f}x). The reference uses one core; ours uses both.")
    return L


def render(res: dict) -> str:
    m, cfg = res["machine"], res["config"]
    L = ["# Performance", "",
         f"Generated by `{m['command']}` on {m['date']} in {res['elapsed_s'] / 60:.1f} minutes"
         f"{' (--quick: fewer frames and repetitions)' if '--quick' in m['command'] else ''}. "
         "Do not edit by hand; rerun the command.", "",
         "## 1. Machine and versions", "",
         "| | |", "|---|---|",
         f"| CPU | {m['cpu']}, {m['cores']} cores (shared: other processes ran during the benchmark, see Noise) |",
         f"| OS | {m['os']} |",
         f"| Python | {m['python']} |",
         f"| Triton | {m['triton']} (the tritonserver that nvidia-pytriton {m['nvidia-pytriton']} ships), Python backend + ONNX Runtime, KIND_CPU |",
         f"| ONNX Runtime | {m['onnxruntime']} |",
         f"| tritonclient / grpcio | {m['tritonclient']} / {m['grpcio']} |",
         f"| OpenCV / numpy / dlib | {m['opencv']} / {m['numpy']} / {m['dlib']} |",
         "", "### Noise", "",
         "Foreign load = CPU cores' worth of time used by processes that are not this benchmark (not Triton, "
         "not the gateway, not this process) during each section, from /proc/stat minus our process tree.", "",
         "| section | wall s | foreign load (cores of 2) | load avg 1 min at end |", "|---|---:|---:|---:|"]
    for name, wall, foreign, load1 in res["noise"]:
        L.append(f"| {name} | {wall:.1f} | {foreign:.2f} | {load1:.2f} |")

    # 2. models
    mr = res["models"]
    L += ["", "## 2. Each model alone: ONNX Runtime vs Triton", "",
          f"Random uint8 inputs. ORT: an `InferenceSession` in the benchmark process with intra-op threads 1 or 2 "
          f"(inter-op 1, all graph optimisations, as the Triton backend sets them). Triton: the same model.onnx in "
          f"Triton's Python backend (config: 1 instance, `intra_op_threads` 1), called with tritonclient gRPC "
          f"(synchronous, one client, one request at a time). {cfg['model_rounds']} interleaved rounds; each cell is "
          f"the median over rounds of the mean over {min(mr['calls'].values())}-{max(mr['calls'].values())} calls. "
          "Spread = (max-min)/median over rounds.", "",
          *perf_models.table(mr), "",
          "Triton vs ORT parity on the batch-16 inputs (max |diff|): "
          + ", ".join(f"{k} {v:.1e}" for k, v in mr["parity"].items()) + ".", ""]
    ms = mr["ms"]
    emb = {b: (median(ms[("dlib_resnet", "ort2", b)]), median(ms[("dlib_resnet", "triton", b)])) for b in (1, 16)}
    L += ["Embedder targets (dlib_resnet, ORT 2 threads measured earlier: 6.8 ms/chip at batch 1, 4.3 ms/chip at "
          "batch 16; Triton within 20 %):", "",
          "| batch | target ms/chip | ORT 2t ms/chip (now) | Triton ms/chip | Triton vs target | Triton / ORT 2t now | within 20 %? |",
          "|---:|---:|---:|---:|---:|---:|---|"]
    for b in (1, 16):
        o2, tr = emb[b][0] / b, emb[b][1] / b
        tgt = EMBEDDER_TARGET[b] / b
        L.append(f"| {b} | {tgt:.1f} | {o2:.2f} | {tr:.2f} | {tr / tgt:.2f}x | {tr / o2:.2f}x | "
                 f"{'yes' if tr <= 1.2 * o2 else 'no'} vs ORT 2t now, {'yes' if tr <= 1.2 * tgt else 'no'} vs target |")

    # 3. gateway
    ref = res["reference"]
    L += ["", "## 3. The gateway end to end", "",
          f"Frames: hamilton 640x360 = {res['videos']['hamilton 640x360']} frames, 1080p (facenet_pytorch_video, "
          f"1920x1080) = {res['videos']['1080p']} frames, JPEG q90, encoded before timing. Each stream sends every frame "
          "of the video through `MobidemClient.stream` (all tasks: detect, identify against an empty gallery, "
          "expression), streams run concurrently in client threads against a `mobidem serve` process (image "
          "threads 2, default max_in_flight 4), which uses the benchmark's Triton. Client, gateway, Triton and "
          "its stubs share the 2 cores.", "",
          "### Throughput (DROP_POLICY_NONE: backpressure, no drops)", "",
          f"Medians over {cfg['gateway_reps']} interleaved repetitions (spread = (max-min)/median of frames/s). "
          "Server latency = the gateway's `timings.total_ms`, frame received -> result ready (includes waiting for "
          "the stream's in-flight slots). Client latency = the client handing the frame to gRPC -> result received; "
          "with backpressure and no pacing the client queues frames in gRPC/HTTP2 buffers as fast as flow control "
          "lets it, so this is mostly queueing (about half the run), not service time; see the camera-paced table "
          "for latency at a real frame rate.", "",
          "| video | streams | frames/run | frames/s | spread | faces/s | faces/frame | server p50 / p99 ms | client p50 / p99 ms | dropped | failed | reference frames/s | ours / reference |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["gateway"]:
        rf = ref[r["video"]]["fps"]
        L.append(f"| {r['video']} | {r['streams']} | {r['frames']} | {r['fps']:.1f} | {spread(r['fps_all']):.0f}% | "
                 f"{r['faces_per_s']:.1f} | {r['faces'] / max(1, r['ok']):.2f} | {r['srv_p50']:.0f} / {r['srv_p99']:.0f} | "
                 f"{r['p50']:.0f} / {r['p99']:.0f} | {r['dropped']:.0f} | {r['failed']:.0f} | {rf:.2f} | {r['fps'] / rf:.1f}x |")
    errs = sorted({e for r in res["gateway"] + res["paced"] for e in r["errors"]})
    if errs:
        L += ["", "Failures seen: " + "; ".join(errs)]
    L += ["", "### Reference: the face_recognition pipeline with dlib (same frames)", "",
          "face_recognition itself does not import here (face_recognition_models needs pkg_resources), so its "
          "default pipeline is reproduced with dlib: HOG detector upsample 1, 5-point shape predictor, "
          "`compute_face_descriptor` (num_jitters 1) for every face; one thread, nothing of ours running. It does "
          "no expression.", "",
          "| video | frames (evenly spaced) | frames/s | faces/s | faces/frame | median ms/frame | best ours frames/s | ours / reference | target |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for vname, target in (("hamilton 640x360", 10), ("1080p", 15)):
        r = ref[vname]
        best = max(g["fps"] for g in res["gateway"] if g["video"] == vname)
        L.append(f"| {vname} | {r['frames']} | {r['fps']:.2f} | {r['faces_per_s']:.2f} | {r['faces'] / r['frames']:.2f} | "
                 f"{median(r['ms_per_frame']):.0f} | {best:.1f} | {best / r['fps']:.1f}x | >= {target}x: "
                 f"{'met' if best / r['fps'] >= target else 'NOT met'} |")

    L += ["", "### Camera-paced (each stream at the video's frame rate, DROP_POLICY_LATEST_FRAME_WINS, max_in_flight 4)", "",
          "| video | streams | offered frames/s | processed frames/s | p50 ms | p99 ms | dropped | dropped % |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["paced"]:
        L.append(f"| {r['video']} | {r['streams']} | {r['streams'] * r['source_fps']:.0f} | {r['fps']:.1f} | {r['p50']:.0f} | "
                 f"{r['p99']:.0f} | {r['dropped']} | {100 * r['dropped'] / r['frames']:.0f} % |")

    L += ["", "### Gateway overhead (one stream, sequential)", "",
          "Direct = the same frames' RGB tensors sent straight to Triton from this process, one frame after the "
          "other: letterbox, blazeface_short (blazeface_full if it finds nothing), decode, aligned chips, "
          "face_multitask, with synchronous tritonclient gRPC (no JPEG, no gateway). Gateway in-flight 1 = one "
          "stream with max_in_flight 1 (also one frame at a time); in-flight 4 = the default. "
          f"Medians over {cfg['overhead_reps']} interleaved repetitions.", "",
          "| video | direct ms/frame | direct frames/s | gateway in-flight 1 ms/frame | frames/s | gateway in-flight 4 frames/s | "
          "JPEG decode ms/frame (in the gateway, not in direct) | gateway overhead ms/frame (in-flight 1 - direct) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for vname, o in res["overhead"].items():
        d = median([x["mean"] for x in o["reps"]["direct"]])
        dfps = median([x["fps"] for x in o["reps"]["direct"]])
        g1fps = median([x["fps"] for x in o["reps"]["gw1"]])
        g4fps = median([x["fps"] for x in o["reps"]["gw4"]])
        L.append(f"| {vname} | {d:.1f} | {dfps:.1f} | {1000 / g1fps:.1f} | {g1fps:.1f} | {g4fps:.1f} | "
                 f"{o['decode_ms']:.1f} | {1000 / g1fps - 1000 / dfps:.1f} |")

    # 4. batching
    L += ["", "## 4. Triton's dynamic batching during the gateway runs", "",
          "Deltas of Triton's statistics (`get_inference_statistics`) over the throughput runs above (summed over "
          "repetitions): inference "
          "count (items) / execution count (model executions) = average batch size. face_multitask requests "
          "already carry every face of a frame, so its batch is > 1 even with one stream on multi-face video.", "",
          "| video | streams | model | items | executions | average batch |", "|---|---:|---|---:|---:|---:|"]
    for r in res["gateway"]:
        for model, (inf, ex) in sorted(r["counts"].items()):
            if ex:
                L.append(f"| {r['video']} | {r['streams']} | {model} | {inf} | {ex} | {inf / ex:.2f} |")
    L += findings(res)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
