"""The embedders' cost through Triton: face_multitask (dlib ResNet + expression), dlib_resnet alone and sface.

    .venv/bin/python bench/perf_embedders.py [--rounds 5] [--calls 40]

Starts a managed Triton serving the main repository and the sface plugin's, then calls each model through
the gateway's own client (mobidem.triton_client.TritonClient, system shared memory, one request at a time)
with batches of 1 and 8 chips, in interleaved rounds (a round runs every model and batch once, so a load
change on the machine hits all of them alike). Writes docs/PERFORMANCE_EMBEDDERS.md and
docs/PERFORMANCE_EMBEDDERS.json. The chips are random pixels: a convolutional network's cost does not depend
on what the pixels show.
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

from perf_common import ROOT, machine, median, spread

MODELS = {  # model -> (input, chip side, outputs, what)
    "face_multitask": ("chip", 150, ["embedding", "expression"], "dlib ResNet embedding + mini-Xception expression (the default)"),
    "dlib_resnet": ("chip", 150, ["embedding"], "dlib ResNet embedding alone"),
    "sface": ("chip", 112, ["embedding"], "SFace embedding (plugins/sface)"),
}
BATCHES = (1, 8)


async def measure(url: str, rounds: int, calls: int, headers=None) -> dict:
    from mobidem.triton_client import TritonClient

    client = TritonClient(url, shared_memory=True, headers=headers)
    rng = np.random.default_rng(19)
    inputs = {(m, b): rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8)
              for m, (_, side, _, _) in MODELS.items() for b in BATCHES}
    times: dict[str, list[float]] = {f"{m}@{b}": [] for m in MODELS for b in BATCHES}
    try:
        for (m, b), x in inputs.items():  # warm up every model and batch size
            for _ in range(3):
                await client.infer(m, {MODELS[m][0]: x}, MODELS[m][2])
        for _ in range(rounds):
            for (m, b), x in inputs.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    await client.infer(m, {MODELS[m][0]: x}, MODELS[m][2])
                times[f"{m}@{b}"].append((time.perf_counter() - t0) / calls * 1000)
        versions = {m: await client.model_version(m) for m in MODELS}
    finally:
        await client.close()
    return {"ms_per_call": times, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args(argv)
    from mobidem import modelbuild, plugins
    from mobidem.managed_triton import ManagedTriton

    sface = plugins.load("sface")
    repo = modelbuild.default_repository()
    modelbuild.build(repo, plugins=["face_multitask", "dlib_resnet", "sface"], echo=lambda _: None)
    with tempfile.TemporaryDirectory(prefix="mobidem-perf-embedders-") as wd:
        triton = ManagedTriton([repo, sface.repository], wd, models=list(MODELS))
        triton.start()
        try:
            started = time.perf_counter()
            result = asyncio.run(measure(triton.grpc_url, args.rounds, args.calls, triton.auth_headers))
            elapsed = time.perf_counter() - started
        finally:
            triton.stop()
    manifests = {m: modelbuild.load_manifest(sface.repository if m == "sface" else repo)["models"][m] for m in MODELS}
    report = {
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "command": f".venv/bin/python bench/perf_embedders.py --rounds {args.rounds} --calls {args.calls}",
        "machine": machine(),
        "seconds": elapsed,
        "load_average_1min_at_end": os.getloadavg()[0],
        "models": {m: {"what": MODELS[m][3], "chip": MODELS[m][1], "onnx_bytes": manifests[m]["bytes"],
                       "onnx_sha256": manifests[m]["sha256"], "version": result["versions"][m]} for m in MODELS},
        "ms_per_call": {k: {"median": median(v), "spread": spread(v), "rounds": v}
                        for k, v in result["ms_per_call"].items()},
    }
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, "PERFORMANCE_EMBEDDERS.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.docs, "PERFORMANCE_EMBEDDERS.md"), "w") as f:
        f.write(render(report))
    print(f"wrote {args.docs}/PERFORMANCE_EMBEDDERS.md in {elapsed:.0f} s")
    return 0


def render(r: dict) -> str:
    L = []
    w = L.append
    w("# The embedders' cost through Triton\n")
    load = (f"{r['load_average_1min_at_end']:.1f} at the end" if "load_average_1min_at_end" in r
            else f"{r['load_average_1min_before']:.1f} just before")
    w(f"Measured {r['date']} with `{r['command']}` (regenerates this file and `docs/PERFORMANCE_EMBEDDERS.json`). "
      f"Machine: {r['machine'].get('cpu', '?')}, {r['machine'].get('cores', '?')} cores, shared with other "
      f"work while measuring (1-minute load average {load}): "
      "compare the rows with each other (they were measured in interleaved rounds), not with other documents; the "
      "spreads say how much the rounds disagreed.\n")
    w("Each model through the managed Triton (Python backend, ONNX Runtime, the model's own `config.pbtxt`: two "
      "intra-op threads for the embedders) and the gateway's own client with system shared memory, one request at "
      "a time. Median milliseconds per call over the rounds (spread = (max - min) / median of the rounds).\n")
    w("| model | what | chip | ONNX MB | batch 1: ms per call (spread) | batch 8: ms per call (spread) | batch 8: ms per face |")
    w("|---|---|---|---|---|---|---|")
    for m, info in r["models"].items():
        one, eight = r["ms_per_call"][f"{m}@1"], r["ms_per_call"][f"{m}@8"]
        w(f"| `{m}` | {info['what']} | {info['chip']}x{info['chip']} | {info['onnx_bytes'] / 1e6:.1f} | "
          f"{one['median']:.2f} ({one['spread']:.0f} %) | {eight['median']:.2f} ({eight['spread']:.0f} %) | "
          f"{eight['median'] / 8:.2f} |")
    w("")
    s1, d1 = r["ms_per_call"]["sface@1"]["median"], r["ms_per_call"]["dlib_resnet@1"]["median"]
    s8, d8 = r["ms_per_call"]["sface@8"]["median"], r["ms_per_call"]["dlib_resnet@8"]["median"]
    m1 = r["ms_per_call"]["face_multitask@1"]["median"]
    w(f"SFace costs {s1 / d1:.2f}x dlib's ResNet per call at batch 1 ({s1:.2f} against {d1:.2f} ms) and "
      f"{s8 / d8:.2f}x at batch 8; against the default face_multitask call (which also gives the expression) "
      f"{s1 / m1:.2f}x at batch 1. An SFace server still needs an expression model for streams (`fer_xception`, "
      "configured beside it: `face_plugins: sface,fer_xception`). During a migration (`fallback_embedder`) an "
      "enrolment runs both embedders, and so does an Identify (one extra embedding per probe); Verify runs the "
      "one that decides; streams run the primary alone.\n")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
