"""Aggregate frames/s through one gateway with one and with two Triton replicas (issue 18); writes
docs/SCALING_REPLICAS.json and prints a Markdown table.

    nice .venv/bin/python bench/replicas.py [--reps 3] [--streams 8] [--frames 40]

Two managed Tritons, each serving what a default gateway needs (``mobidem.plugins.served_by_triton()``:
the built-in repository and the yunet plugin's, for the default detector_confirm), and two `mobidem serve`
processes: one with ``--triton-url A``, one with ``--triton-url A,B`` (the gateway balances by outstanding
requests). ``--streams`` concurrent streams of the shared Hamilton clip (640x360), ``--frames`` frames each,
drop policy NONE (every frame processed), interleaved repetitions: 1 replica, 2 replicas, 1, 2, ...
Each run records Triton's inference counts per replica (that both replicas did work), the CPU this
benchmark's process tree used (clients, gateways, Tritons and their stubs) and how much of the machine other
processes took meanwhile (perf_common.NoiseMeter): on a shared machine, frames/s per core obtained is the
figure that compares the two configurations.

On one machine both Tritons share its cores: with 2 cores, two replicas cannot add compute that one
replica does not already have; what this measures is the gateway's balancing and its overhead, not the
scaling of a cluster, where each replica brings its own GPU or cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import perf_gateway as gw  # noqa: E402
from perf_common import (HAMILTON, ROOT, NoiseMeter, cpu_by_process, encode_jpeg, load_frames, log,  # noqa: E402
                         machine)

OUT = ROOT / "docs" / "SCALING_REPLICAS.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40, help="frames per stream")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton
    from mobidem.v1 import mobidem_pb2 as pb

    repositories, models = served_by_triton()
    noise = NoiseMeter()
    t_start = time.perf_counter()
    res: dict = {"machine": machine(), "reps": args.reps, "streams": args.streams, "frames_per_stream": args.frames,
                 "video": HAMILTON.name, "models": models,
                 "command": " ".join(["bench/replicas.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-replicas-") as tmp:
        tmp = Path(tmp)
        tritons, gateways = [], {}
        try:
            for name in ("a", "b"):
                log(f"starting Triton {name}")
                tritons.append(ManagedTriton(repositories, tmp / f"triton-{name}", models=models).start(300))
            urls = [t.grpc_url for t in tritons]
            for n in (1, 2):
                (tmp / f"gw{n}").mkdir()
                gateways[n] = gw.Gateway(",".join(urls[:n]), tmp / f"gw{n}")
            jpegs = encode_jpeg(load_frames(HAMILTON))
            for n, g in gateways.items():  # warm up: every model on every replica it uses
                gw.streams(g.target, jpegs[:16], args.streams, pb.DROP_POLICY_NONE, per_stream=8)
            runs: dict[int, list] = {1: [], 2: []}
            for rep in range(args.reps):
                for n, g in gateways.items():
                    log(f"rep {rep + 1}: {n} replica(s)")
                    before = [gw.triton_counts(u) for u in urls]
                    cpu0 = sum(cpu_by_process(os.getpid()).values())
                    with noise.section(f"{n} replicas rep {rep + 1}"):
                        r = gw.streams(g.target, jpegs, args.streams, pb.DROP_POLICY_NONE, per_stream=args.frames)
                    ours = (sum(cpu_by_process(os.getpid()).values()) - cpu0) / r["wall_s"]
                    after = [gw.triton_counts(u) for u in urls]
                    r["inferences_by_replica"] = [sum(v[0] for v in gw.counts_delta(b, a).values())
                                                  for b, a in zip(before, after)]
                    r["foreign_cores"] = round(noise.log[-1][2], 2)
                    r["our_cores"] = round(ours, 2)  # this benchmark's tree: clients, gateways, Tritons, stubs
                    r["fps_per_our_core"] = round(r["fps"] / ours, 1) if ours else None
                    r["errors"] = sorted(r["errors"])
                    runs[n].append(r)
                    log(f"  {r['fps']:.1f} frames/s, inferences by replica {r['inferences_by_replica']}, "
                        f"our tree {r['our_cores']} cores, other processes {r['foreign_cores']} cores")
        finally:
            for g in gateways.values():
                g.stop()
            for t in tritons:
                t.stop()
    res["runs"] = {str(n): rs for n, rs in runs.items()}
    res["summary"] = {str(n): {"fps_median": round(float(np.median([r["fps"] for r in rs])), 1),
                               "fps_all": [round(r["fps"], 1) for r in rs],
                               "p50_ms": round(float(np.median([r["p50"] for r in rs])), 1),
                               "p99_ms": round(float(np.median([r["p99"] for r in rs])), 1),
                               "failed": sum(r["failed"] for r in rs),
                               "inferences_by_replica": [sum(r["inferences_by_replica"][i] for r in rs)
                                                         for i in range(2)],
                               "our_cores": [r["our_cores"] for r in rs],
                               "fps_per_our_core_median": round(float(np.median([r["fps_per_our_core"] for r in rs])), 1),
                               "foreign_cores": [r["foreign_cores"] for r in rs]}
                      for n, rs in runs.items()}
    res["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"\n{args.streams} streams x {args.frames} frames of {HAMILTON.name}, {args.reps} interleaved reps, "
          f"{res['machine']['cores']} cores\n")
    print("| Triton replicas | frames/s (median) | each rep | latency p50 / p99 ms | inferences on A / B | "
          "cores this bench got | frames/s per core it got (median) | other processes (cores) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, s in res["summary"].items():
        print(f"| {n} | {s['fps_median']} | {', '.join(map(str, s['fps_all']))} | {s['p50_ms']} / {s['p99_ms']} | "
              f"{s['inferences_by_replica'][0]} / {s['inferences_by_replica'][1]} | "
              f"{', '.join(map(str, s['our_cores']))} | {s['fps_per_our_core_median']} | "
              f"{', '.join(map(str, s['foreign_cores']))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
