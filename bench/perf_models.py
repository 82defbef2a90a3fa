"""Each model alone: ONNX Runtime in this process (1 and 2 intra-op threads) vs the same ONNX file
behind Triton (tritonclient gRPC, one synchronous client), batch 1 and 16, interleaved rounds."""

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
PATHS = ("ort1", "ort2", "triton")


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
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(0)
    client = grpcclient.InferenceServerClient(triton_url)
    callers = {}
    for model, (name, shape, outs) in MODELS.items():
        s1, s2 = _ort_session(model, 1), _ort_session(model, 2)
        for batch in BATCHES:
            x = _inputs(shape, batch, rng)
            callers[(model, "ort1", batch)] = lambda s=s1, n=name, x=x, o=outs: s.run(o, {n: x})
            callers[(model, "ort2", batch)] = lambda s=s2, n=name, x=x, o=outs: s.run(o, {n: x})

            def tri(model=model, name=name, x=x, outs=outs):
                t = grpcclient.InferInput(name, list(x.shape), "UINT8")
                t.set_data_from_numpy(x)
                r = client.infer(model, [t], outputs=[grpcclient.InferRequestedOutput(o) for o in outs])
                return [r.as_numpy(o) for o in outs]
            callers[(model, "triton", batch)] = tri

    # parity check: Triton's answer equals ONNX Runtime's for the same input
    parity = {}
    for model in MODELS:
        a = callers[(model, "ort1", 16)]()
        b = callers[(model, "triton", 16)]()
        parity[model] = max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                            for u, v in zip(a, b))

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
    client.close()
    return {"ms": results, "calls": calls, "parity": parity}


def table(res: dict) -> list[str]:
    ms = res["ms"]
    lines = [
        "| model | batch | ORT 1 thread ms/call | ORT 2 threads ms/call | Triton ms/call | ms/item ORT 2t | "
        "ms/item Triton | items/s ORT 1t | items/s ORT 2t | items/s Triton | Triton / ORT 1t | Triton / ORT 2t | "
        "spread (ORT1/ORT2/Triton) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in MODELS:
        for b in BATCHES:
            o1, o2, tr = (median(ms[(model, p, b)]) for p in PATHS)
            sp = "/".join(f"{spread(ms[(model, p, b)]):.0f}%" for p in PATHS)
            lines.append(
                f"| {model} | {b} | {o1:.2f} | {o2:.2f} | {tr:.2f} | {o2 / b:.2f} | {tr / b:.2f} | "
                f"{1000 * b / o1:.0f} | {1000 * b / o2:.0f} | {1000 * b / tr:.0f} | {tr / o1:.2f} | {tr / o2:.2f} | {sp} |"
            )
    return lines
