"""The gateway end to end (a `mobidem serve` process on a shared Triton), N concurrent client streams,
plus the same work sent straight to Triton without the gateway, and Triton's batching statistics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from perf_common import ROOT, log, percentile


# ------------------------------------------------------------------------------------------ server
class Gateway:
    """`mobidem serve --triton-url ...` in its own process (its own GIL), on a free port."""

    def __init__(self, triton_url: str, workdir: Path):
        from mobidem.managed_triton import free_port

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.logfile = open(workdir / "gateway.log", "wb")
        exe = Path(sys.executable).with_name("mobidem")
        cmd = [str(exe), "serve", "--triton-url", triton_url, "--data-dir", str(workdir / "gateway"),
               "--listen", self.target, "--log-level", "WARNING"]
        self.process = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT, cwd=ROOT,
                                        start_new_session=True)
        from mobidem.client import MobidemClient
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.process.returncode}); see {workdir / 'gateway.log'}")
            try:
                with MobidemClient(self.target) as c:
                    c.wait_ready(timeout=2)
                    list(c.list_identities())
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.logfile.close()


# ------------------------------------------------------------------------------------------ streams
def _one_stream(target, jpegs, drop_policy, max_in_flight, fps, barrier, out):
    from mobidem.client import MobidemClient
    from mobidem.v1 import mobidem_pb2 as pb

    sent: dict[int, float] = {}
    rec = {"lat": [], "server": [], "ok": 0, "dropped": 0, "failed": 0, "faces": 0}

    def frames():
        t_start = time.perf_counter()
        for i, j in enumerate(jpegs):
            if fps:  # a camera: frame i exists at t_start + i / fps, not earlier
                delay = t_start + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent[i + 1] = time.perf_counter()
            yield j

    with MobidemClient(target, timeout=600) as client:
        client.wait_ready()
        barrier.wait()
        rec["t0"] = time.perf_counter()
        for r in client.stream(frames(), drop_policy=drop_policy, max_in_flight=max_in_flight):
            now = time.perf_counter()
            if r.status == pb.FrameResult.STATUS_OK:
                rec["ok"] += 1
                rec["faces"] += len(r.faces)
                rec["lat"].append((now - sent[r.sequence]) * 1000)
                rec["server"].append(r.timings.total_ms)
            elif r.status == pb.FrameResult.STATUS_DROPPED:
                rec["dropped"] += 1
            else:
                rec["failed"] += 1
                rec.setdefault("errors", set()).add(r.error_message[:200])
        rec["t1"] = time.perf_counter()
    out.append(rec)


def streams(target: str, jpegs: list[bytes], n: int, drop_policy: int, max_in_flight: int = 0,
            fps: float = 0.0) -> dict:
    """n concurrent streams, each sending all of ``jpegs``; aggregate numbers."""
    barrier = threading.Barrier(n)
    out: list[dict] = []
    threads = [threading.Thread(target=_one_stream, args=(target, jpegs, drop_policy, max_in_flight, fps, barrier, out))
               for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != n:
        raise RuntimeError("a stream thread failed")
    wall = max(r["t1"] for r in out) - min(r["t0"] for r in out)
    lat = [x for r in out for x in r["lat"]]
    srv = [x for r in out for x in r["server"]]
    ok, faces = sum(r["ok"] for r in out), sum(r["faces"] for r in out)
    errors = set().union(*(r.get("errors", set()) for r in out))
    return {"streams": n, "frames": n * len(jpegs), "ok": ok, "dropped": sum(r["dropped"] for r in out),
            "failed": sum(r["failed"] for r in out), "errors": sorted(errors), "faces": faces, "wall_s": wall,
            "fps": ok / wall, "faces_per_s": faces / wall, "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "srv_p50": percentile(srv, 50), "srv_p99": percentile(srv, 99)}


def combine(reps: list[dict], video: str) -> dict:
    """Medians over repetitions of one (video, streams) configuration; Triton counts summed."""
    out = {"video": video, "reps": len(reps), "streams": reps[0]["streams"], "frames": reps[0]["frames"],
           "errors": sorted(set().union(*(r["errors"] for r in reps)))}
    for k in ("ok", "dropped", "failed", "faces"):
        out[k] = sum(r[k] for r in reps) / len(reps)
    for k in ("fps", "faces_per_s", "p50", "p99", "srv_p50", "srv_p99", "wall_s"):
        out[k] = float(np.median([r[k] for r in reps]))
    out["fps_all"] = [r["fps"] for r in reps]
    counts: dict = {}
    for r in reps:
        for m, (a, b) in r["counts"].items():
            x, y = counts.get(m, (0, 0))
            counts[m] = (x + a, y + b)
    out["counts"] = counts
    return out


# ------------------------------------------------------------------------------------------ direct
def direct(triton_url: str, frames: list[np.ndarray]) -> dict:
    """What the gateway does for a frame, sequentially, straight to Triton (no JPEG, no gRPC front end):
    letterbox -> blazeface_short (then blazeface_full if nothing) -> decode -> chips -> face_multitask."""
    import tritonclient.grpc as grpcclient

    from mobidem.vision import blazeface
    from mobidem.vision.align import CHIP_SIZE, align_chip

    client = grpcclient.InferenceServerClient(triton_url)

    def infer(model, name, x, outs):
        t = grpcclient.InferInput(name, list(x.shape), "UINT8")
        t.set_data_from_numpy(x)
        r = client.infer(model, [t], outputs=[grpcclient.InferRequestedOutput(o) for o in outs])
        return [r.as_numpy(o) for o in outs]

    def one(image):
        found = []
        for spec in (blazeface.SHORT_RANGE, blazeface.FULL_RANGE):
            boxed, lb = blazeface.letterbox(image, spec.input_size)
            reg, sc = infer(spec.name, "image", boxed[None], ["regressors", "scores"])
            found = blazeface.decode(reg[0], sc[0], spec, lb, score_threshold=0.5)
            if found:
                break
        found = found[:32]
        if found:
            chips = np.empty((len(found), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
            for i, d in enumerate(found):
                chips[i] = align_chip(image, d.keypoints)[0]
            infer("face_multitask", "chip", chips, ["embedding", "expression"])
        return len(found)

    one(frames[0])  # warm-up
    per, faces = [], 0
    t0 = time.perf_counter()
    for f in frames:
        t = time.perf_counter()
        faces += one(f)
        per.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    client.close()
    return {"frames": len(frames), "faces": faces, "fps": len(frames) / wall, "p50": percentile(per, 50),
            "p99": percentile(per, 99), "mean": float(np.mean(per))}


def decode_ms(jpegs: list[bytes]) -> float:
    """Median JPEG decode + BGR->RGB per frame (part of the gateway's work, not of the direct path)."""
    import cv2
    per = []
    for j in jpegs[: min(len(jpegs), 40)]:
        t = time.perf_counter()
        cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        per.append((time.perf_counter() - t) * 1000)
    return float(np.median(per))


# ------------------------------------------------------------------------------------------ Triton stats
def triton_counts(triton_url: str) -> dict:
    """{model: (inference_count, execution_count)} summed over versions."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_url)
    stats = client.get_inference_statistics("", as_json=True)
    client.close()
    out = {}
    for m in stats.get("model_stats", []):
        inf, ex = int(m.get("inference_count", 0)), int(m.get("execution_count", 0))
        a, b = out.get(m["name"], (0, 0))
        out[m["name"]] = (a + inf, b + ex)
    return out


def counts_delta(before: dict, after: dict) -> dict:
    return {m: (after[m][0] - before.get(m, (0, 0))[0], after[m][1] - before.get(m, (0, 0))[1]) for m in after}
