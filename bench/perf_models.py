"""Each model alone: ONNX Runtime in this process (1 and 2 intra-op threads) vs the same ONNX file
behind Triton, called through the gateway's own client (mobidem.triton_client.TritonClient, one
request at a time) with tensors over gRPC and through system shared memory, and through Triton's own
C++ benchmarking client, perf_analyzer (tritonclient ships it; concurrency 1, system shared memory);
batch 1 and 16, interleaved rounds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from perf_common import ROOT, log, median, spread

MODELS = {  # model -> (input name, per-item shape, outputs)
    "blazeface_short": ("image", (128, 128, 3), ["regressors", "scores"]),
    "blazeface_full": ("image", (192, 192, 3), ["regressors", "scores"]),
    "dlib_resnet": ("chip", (150, 150, 3), ["embedding"]),
    "fer_xception": ("face", (64, 64, 1), ["probabilities"]),
    "face_multitask": ("chip", (150, 150, 3), ["embedding", "expression"]),
}
BATCHES = (1, 16)
PATHS = ("ort1", "ort2", "triton", "triton_shm")
PA_ROUNDS = 3  # perf_analyzer rounds (each call measures for a few seconds)


def perf_analyzer_env() -> tuple[Path, dict] | str:
    """The perf_analyzer binary and its environment, or why it cannot run here."""
    exe = Path(sys.executable).with_name("perf_analyzer")
    if not exe.exists():
        return f"{exe} not found (it comes with tritonclient[all])"
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime  # its libcudart.so.12, which perf_analyzer links even on a CPU machine

        lib = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    except ImportError:
        pass
    probe = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env)
    if "error while loading shared libraries" in probe.stderr:
        return ("perf_analyzer cannot start: " + probe.stderr.strip()[-200:]
                + " (make bench installs requirements/bench.txt and Debian's libb64-0d)")
    return exe, env


def perf_analyzer(pa: tuple[Path, dict], url: str, model: str, batch: int, interval_ms: int = 1500) -> dict:
    """One perf_analyzer measurement at concurrency 1: client ms per call and Triton's server-side split."""
    exe, env = pa
    # stable = 3 windows whose averages agree within 20 % (perf_analyzer's default, 10 %, often never comes on
    # this shared 2-core machine at ~2 ms per call), giving up after 20 windows
    cmd = [str(exe), "-m", model, "-i", "grpc", "-u", url, "-b", str(batch), "--measurement-interval",
           str(interval_ms), "--stability-percentage", "20", "--max-trials", "20", "--shared-memory", "system",
           "--output-shared-memory-size", str(8 << 20)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    text = out.stdout + out.stderr
    m = re.search(r"Avg latency: (\d+) usec", text)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"perf_analyzer failed for {model} batch {batch}: {text[-400:]}")
    server = re.search(r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute input "
                       r"(\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)", text)
    split = dict(zip(("total", "overhead", "queue", "input", "infer", "output"),
                     (int(v) / 1000 for v in server.groups()))) if server else {}
    return {"ms": int(m.group(1)) / 1000, "server": split}


def _ort_session(model: str, threads: int):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(ROOT / "model_repository" / model / "1" / "model.onnx"), o,
                                providers=["CPUExecutionProvider"])


def _inputs(shape, batch, rng):
    return rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)


def run(triton_url: str, rounds: int, target_s: float) -> dict:
    """Returns {(model, path, batch): [ms per call, one per round]}."""
    import asyncio

    from mobidem.triton_client import TritonClient

    rng = np.random.default_rng(0)
    loop = asyncio.new_event_loop()
    clients = {"triton": TritonClient(triton_url, shared_memory=False),
               "triton_shm": TritonClient(triton_url, shared_memory=True)}
    callers = {}
    for model, (name, shape, outs) in MODELS.items():
        s1, s2 = _ort_session(model, 1), _ort_session(model, 2)
        for batch in BATCHES:
            x = _inputs(shape, batch, rng)
            callers[(model, "ort1", batch)] = lambda s=s1, n=name, x=x, o=outs: s.run(o, {n: x})
            callers[(model, "ort2", batch)] = lambda s=s2, n=name, x=x, o=outs: s.run(o, {n: x})

            for path, c in clients.items():
                def tri(c=c, model=model, name=name, x=x, outs=outs):
                    r = loop.run_until_complete(c.infer(model, {name: x}, outs))
                    return [r[o] for o in outs]
                callers[(model, path, batch)] = tri

    # parity check: Triton's answer equals ONNX Runtime's for the same input
    parity = {}
    for model in MODELS:
        a = callers[(model, "ort1", 16)]()
        parity[model] = max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                            for path in clients for u, v in zip(a, callers[(model, path, 16)]()))

    # calibrate calls per measurement so that one measurement takes about target_s
    calls = {}
    for key, fn in callers.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        calls[key] = max(2, min(200, int(target_s / max(dt, 1e-4))))
    results = {key: [] for key in callers}
    for r in range(rounds):
        t_round = time.perf_counter()
        for key, fn in callers.items():
            n = calls[key]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            results[key].append((time.perf_counter() - t0) / n * 1000)
        log(f"models: round {r + 1}/{rounds} took {time.perf_counter() - t_round:.1f} s")
    for c in clients.values():
        loop.run_until_complete(c.close())
    loop.close()

    # Triton's own C++ client: the Triton path without the Python client's per-call cost
    pa = perf_analyzer_env()
    pa_res: dict = {"error": pa} if isinstance(pa, str) else {"runs": {}}
    if not isinstance(pa, str):
        for r in range(PA_ROUNDS):
            for model in MODELS:
                for batch in BATCHES:
                    pa_res["runs"].setdefault(f"{model}/{batch}", []).append(perf_analyzer(pa, triton_url, model, batch))
            log(f"models: perf_analyzer round {r + 1}/{PA_ROUNDS} done")
    return {"ms": results, "calls": calls, "parity": parity, "perf_analyzer": pa_res}


def pa_ms(res: dict, model: str, batch: int) -> float | None:
    """Median perf_analyzer client ms per call, or None when it did not run."""
    runs = res.get("perf_analyzer", {}).get("runs", {}).get(f"{model}/{batch}")
    return median([r["ms"] for r in runs]) if runs else None


def pa_table(res: dict) -> list[str]:
    pa = res.get("perf_analyzer", {})
    if "error" in pa:
        return [f"perf_analyzer did not run: {pa['error']}"]
    lines = ["| model | batch | perf_analyzer ms/call (client) | items/s | spread | Triton server-side ms: queue / "
             "compute input / compute infer / compute output | ORT 1 thread ms/call | perf_analyzer / ORT 1 thread |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for model in MODELS:
        for b in BATCHES:
            runs = pa["runs"][f"{model}/{b}"]
            ms = median([r["ms"] for r in runs])
            sv = {k: median([r["server"].get(k, float("nan")) for r in runs]) for k in ("queue", "input", "infer", "output")}
            o1 = median(res["ms"][(model, "ort1", b)])
            lines.append(f"| {model} | {b} | {ms:.3f} | {1000 * b / ms:.0f} | {spread([r['ms'] for r in runs]):.0f}% | "
                         f"{sv['queue']:.3f} / {sv['input']:.3f} / {sv['infer']:.3f} / {sv['output']:.3f} | "
                         f"{o1:.3f} | {ms / o1:.2f} |")
    return lines


def table(res: dict) -> list[str]:
    ms = res["ms"]
    lines = [
        "| model | batch | ORT 1 thread ms/call | ORT 2 threads ms/call | Triton gRPC ms/call | Triton shm ms/call | "
        "items/s ORT 1t | items/s ORT 2t | items/s Triton gRPC | items/s Triton shm | Triton gRPC / best ORT (throughput) | "
        "shm / gRPC time | spread (ORT1/ORT2/gRPC/shm) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in MODELS:
        for b in BATCHES:
            o1, o2, tr, sh = (median(ms[(model, p, b)]) for p in PATHS)
            sp = "/".join(f"{spread(ms[(model, p, b)]):.0f}%" for p in PATHS)
            lines.append(
                f"| {model} | {b} | {o1:.2f} | {o2:.2f} | {tr:.2f} | {sh:.2f} | "
                f"{1000 * b / o1:.0f} | {1000 * b / o2:.0f} | {1000 * b / tr:.0f} | {1000 * b / sh:.0f} | "
                f"{100 * min(o1, o2) / tr:.0f} % | {sh / tr:.2f} | {sp} |"
            )
    return lines
