"""Shared helpers for bench/run.py: machine facts, CPU-noise accounting, frames, statistics."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = Path("/work/shared/data/faces/videos")
HAMILTON = VIDEOS / "short_hamilton_clip.mp4"
HD = VIDEOS / "facenet_pytorch_video.mp4"
CLK = os.sysconf("SC_CLK_TCK")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def spread(xs) -> float:
    """(max - min) / median, in percent: how much repetitions disagreed."""
    if len(xs) < 2:
        return 0.0
    m = median(xs)
    return 100.0 * (max(xs) - min(xs)) / m if m else 0.0


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    triton = "?"
    try:
        import pytriton
        vfile = Path(pytriton.__file__).parent / "tritonserver" / "TRITON_VERSION"
        triton = vfile.read_text().strip() if vfile.exists() else "2.51 (bundled)"
    except Exception:
        pass
    import onnxruntime
    import dlib
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "triton": triton,
        "nvidia-pytriton": ver("nvidia-pytriton"),
        "tritonclient": ver("tritonclient"),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": ver("grpcio"),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "dlib": dlib.__version__,
        "command": " ".join([".venv/bin/python", *[a if i else "bench/run.py" for i, a in enumerate(sys.argv)]]),
    }


def _tree_pids(root: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo += parents.get(pid, [])
    return out


def _proc_cpu(pid: int) -> int:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime + stime of this process (threads included)
    except (OSError, IndexError, ValueError):
        return 0


def _system_busy() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle


@dataclass
class Noise:
    """CPU seconds used by processes that are not this benchmark during a section."""

    wall: float = 0.0
    total_cpu: float = 0.0
    ours_cpu: float = 0.0
    sections: list = field(default_factory=list)

    @property
    def foreign_cores(self) -> float:
        return max(0.0, self.total_cpu - self.ours_cpu) / self.wall if self.wall else 0.0


class NoiseMeter:
    """Measures how much of the machine other processes took while a section ran.

    Our CPU = this process and its descendants (Triton, its stubs, the gateway), counted from
    /proc/<pid>/stat of processes alive at both ends; everything else on /proc/stat is foreign.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, float, float, float]] = []  # (section, wall s, foreign cores, load1)

    def section(self, name: str):
        meter = self

        class _Ctx:
            def __enter__(self):
                self.pids = _tree_pids(os.getpid())
                self.ours0 = {p: _proc_cpu(p) for p in self.pids}
                self.busy0 = _system_busy()
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                wall = time.perf_counter() - self.t0
                busy = (_system_busy() - self.busy0) / CLK
                pids = _tree_pids(os.getpid())
                ours = sum(_proc_cpu(p) - self.ours0.get(p, 0) for p in pids) / CLK
                foreign = max(0.0, busy - ours) / wall if wall > 0 else 0.0
                load1 = float(Path("/proc/loadavg").read_text().split()[0])
                meter.log.append((name, wall, foreign, load1))

        return _Ctx()


def load_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    from mobidem.client import video_frames
    return list(video_frames(str(path), max_frames=limit))


def encode_jpeg(frames: list[np.ndarray], quality: int = 90) -> list[bytes]:
    """The same encoding as mobidem.client.to_image, done once before any timing."""
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(buf.tobytes())
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def matmul_peak(seconds: float = 3.0, n: int = 2048) -> dict:
    """float32 matrix-multiply peak of this machine with numpy's BLAS (all cores): best of repeated
    n x n products, GFLOP/s = 2 n^3 / time."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best, runs, t_end = 0.0, [], time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        g = 2 * n ** 3 / (time.perf_counter() - t) / 1e9
        runs.append(g)
        best = max(best, g)
    return {"best": best, "median": median(runs), "runs": len(runs), "n": n}


def cpu_by_process(root: int) -> dict[str, float]:
    """CPU seconds so far of this benchmark's process tree, by role (gateway, tritonserver, each
    Python-backend stub by model, this benchmark process)."""
    out: dict[str, float] = {}
    for pid in _tree_pids(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(c.decode(errors="replace") for c in cmd)
        if pid == root:
            role = "benchmark process (clients)"
        elif "tritonserver" in text and "stub" not in text:
            role = "tritonserver (gRPC, dynamic batcher)"
        elif "stub" in text:
            model = next((part for part in Path(text.split()[1]).parts if part in (
                "blazeface_short", "blazeface_full", "face_multitask", "dlib_resnet", "fer_xception")), "?") \
                if len(text.split()) > 1 else "?"
            role = f"Triton stub {model} (ONNX Runtime)"
        elif "serve" in text:
            role = "gateway (mobidem serve)"
        else:
            role = "other: " + Path(text.split()[0]).name if text.split() else "other"
        out[role] = out.get(role, 0.0) + _proc_cpu(pid) / CLK
    return out
