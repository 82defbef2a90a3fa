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

    def __init__(self, triton_url: str, workdir: Path, *extra: str):
        from mobidem.managed_triton import free_port

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.logfile = open(workdir / f"gateway-{self.port}.log", "wb")
        exe = Path(sys.executable).with_name("mobidem")
        cmd = [str(exe), "serve", "--triton-url", triton_url, "--data-dir", str(workdir / "gateway"),
               "--listen", self.target, "--log-level", "WARNING", "--metrics-listen", "", *extra]
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
def _one_stream(target, jpegs, drop_policy, max_in_flight, fps, barrier, out, tracking=None, tasks=()):
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
        # without a word about tracking: off, so that these figures keep meaning what they measured
        # before tracking existed (bench/perf_tracking.py compares the two)
        tracking = pb.TRACKING_OFF if tracking is None else tracking
        for r in client.stream(frames(), drop_policy=drop_policy, max_in_flight=max_in_flight, tracking=tracking,
                               tasks=tasks, fps=fps or 30.0):
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
            fps: float = 0.0, per_stream: int = 0, tracking: int | None = None, tasks=()) -> dict:
    """n concurrent streams, each sending ``per_stream`` consecutive frames of ``jpegs`` (all when 0),
    stream i starting i/n of the way into the video (wrapping), so that together they cover it;
    aggregate numbers."""
    barrier = threading.Barrier(n)
    out: list[dict] = []
    k = per_stream or len(jpegs)
    parts = [[jpegs[(i * len(jpegs) // n + j) % len(jpegs)] for j in range(k)] for i in range(n)]
    threads = [threading.Thread(target=_one_stream, args=(target, parts[i], drop_policy, max_in_flight, fps, barrier, out,
                                                          tracking, tasks))
               for i in range(n)]
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
    return {"streams": n, "frames": n * k, "ok": ok, "dropped": sum(r["dropped"] for r in out),
            "failed": sum(r["failed"] for r in out), "errors": sorted(errors), "faces": faces, "wall_s": wall,
            "fps": ok / wall, "faces_per_s": faces / wall, "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "srv_p50": percentile(srv, 50), "srv_p99": percentile(srv, 99)}


def interleaved(targets: dict[str, str], jpegs: list[bytes], n: int, per_stream: int, reps: int, case: str) -> dict:
    """Two gateways side by side, {"A": target, "B": target}: a warm-up on each, then ``reps`` interleaved
    repetitions (A, B, B, A, ...) of ``n`` streams, tracking off (every frame detected), one gateway at a
    time. Frames/s and faces per frame of every run, their medians and A / B; a failed frame stops it."""
    from mobidem.v1 import mobidem_pb2 as pb

    runs: dict = {"A": [], "B": [], "faces_per_frame": {"A": [], "B": []}}
    for name in ("A", "B"):
        streams(targets[name], jpegs[:8], 2, pb.DROP_POLICY_NONE)  # warm up
    for rep in range(reps):
        for name in (("A", "B") if rep % 2 == 0 else ("B", "A")):
            r = streams(targets[name], jpegs, n, pb.DROP_POLICY_NONE, per_stream=per_stream, tracking=pb.TRACKING_OFF)
            if r["failed"] or r["errors"]:
                raise RuntimeError(f"{name}: {r['failed']} failed frames, {r['errors']}")
            runs[name].append(r["fps"])
            runs["faces_per_frame"][name].append(r["faces"] / max(1, r["ok"]))
            log(f"{case} rep {rep + 1} {name}: {r['fps']:.1f} frames/s, {r['faces'] / max(1, r['ok']):.2f} faces/frame")
    median_a, median_b = float(np.median(runs["A"])), float(np.median(runs["B"]))
    return {**runs, "median_A": median_a, "median_B": median_b, "A_over_B": median_a / median_b}


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


# ------------------------------------------------------------------------------------------ profile
def profile(pid: int, seconds: float, out: Path) -> dict:
    """py-spy (sampling, --threads, --gil off) on the gateway for ``seconds``: top functions by own
    samples and by inclusive samples, and each thread's share of the samples."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        return {"error": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    cmd = [str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
           "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return {"proc": proc, "out": out}


def profile_result(handle: dict) -> dict:
    if "error" in handle:
        return handle
    _, err = handle["proc"].communicate(timeout=60)
    path = handle["out"]
    if not path.exists():
        return {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        thread = frames[0]
        name = "event loop (main thread)" if "MainThread" in thread or "mobidem" not in thread and "Thread" not in thread \
            else ("image pool (mobidem-image)" if "mobidem-image" in thread else thread.split("(")[0].strip()[:40])
        threads[name] = threads.get(name, 0) + n
        fn = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if "/" in f else f for f in frames[1:]]
        if fn:
            own[fn[-1]] = own.get(fn[-1], 0) + n
        for f in set(fn):
            incl[f] = incl.get(f, 0) + n
    top = lambda d: [(k, 100.0 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:15]]  # noqa: E731
    return {"samples": total, "own": top(own), "inclusive": top(incl),
            "threads": [(k, 100.0 * v / total) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])]}


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
