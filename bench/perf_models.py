"""Each model alone: ONNX Runtime in this process (1 and 2 intra-op threads) vs the same ONNX file
behind Triton, called through the gateway's own client (mobidem.triton_client.TritonClient, one
request at a time) with tensors over gRPC and through system shared memory; batch 1 and 16,
interleaved rounds."""

from __future__ import annotations

import time

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
    return {"ms": results, "calls": calls, "parity": parity}


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
