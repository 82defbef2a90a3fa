"""Does the dynamic batcher's queue policy (the request timeouts the gateway sends, issue 20) cost throughput?

    .venv/bin/python bench/queue_policy_ab.py [--reps 3] [--out docs/QUEUE_POLICY_AB.json]

Two managed Tritons on the same models: A serves model_repository as shipped (every dynamic-batching
config has ``default_queue_policy { timeout_action: REJECT ... allow_timeout_override: true }``), B a copy of
it with that line removed (as before the wedge fix). One `mobidem serve` gateway on each; interleaved
repetitions (A, B, A, B, ...) of 8 concurrent streams of the 640x360 Hamilton clip, tracking off (every
frame detected and embedded: the most Triton calls per frame), and of the 1080p video. Prints frames/s per
run and the median ratio B / A; writes the raw numbers to ``--out``. Only one of them runs at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import perf_gateway as gw  # noqa: E402
from perf_common import HAMILTON, HD, ROOT, encode_jpeg, load_frames, log  # noqa: E402


def without_queue_policy(src: Path, dst: Path) -> list[str]:
    """A copy of the repository (model files linked) whose configs have no default_queue_policy line."""
    changed = []
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        out = dst / rel
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.name == "config.pbtxt":
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if "default_queue_policy" not in line]
            if len(kept) != len(lines):
                changed.append(str(rel.parent))
            out.write_text("".join(kept))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(path.resolve())
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "QUEUE_POLICY_AB.json"))
    args = ap.parse_args()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton
    from mobidem.v1 import mobidem_pb2 as pb

    res: dict = {"reps": args.reps, "streams": 8, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-queue-") as tmp:
        tmp = Path(tmp)
        res["models_without_policy_in_B"] = without_queue_policy(ROOT / "model_repository", tmp / "repo-b")
        tritons, gateways = {}, {}
        try:
            for name, repo in (("A", ROOT / "model_repository"), ("B", tmp / "repo-b")):
                log(f"starting Triton {name}")
                plugin_repos = served_by_triton()[0][1:]  # the default plugins' models (yunet), unchanged in B
                tritons[name] = ManagedTriton([repo, *plugin_repos], tmp / f"triton-{name}").start(180)
                (tmp / name).mkdir()
                gateways[name] = gw.Gateway(tritons[name].grpc_url, tmp / name)
            for vname, path, per_stream in (("hamilton 640x360", HAMILTON, 0), ("1080p", HD, 40)):
                jpegs = encode_jpeg(load_frames(path, None))
                runs: dict = {"A": [], "B": []}
                for name in ("A", "B"):
                    gw.streams(gateways[name].target, jpegs[:8], 2, pb.DROP_POLICY_NONE)  # warm up
                for rep in range(args.reps):
                    for name in (("A", "B") if rep % 2 == 0 else ("B", "A")):
                        r = gw.streams(gateways[name].target, jpegs, 8, pb.DROP_POLICY_NONE, per_stream=per_stream,
                                       tracking=pb.TRACKING_OFF)
                        if r["failed"] or r["errors"]:
                            raise RuntimeError(f"{name}: {r['failed']} failed frames, {r['errors']}")
                        runs[name].append(r["fps"])
                        log(f"{vname} rep {rep + 1} {name}: {r['fps']:.1f} frames/s")
                ratio = float(np.median(runs["B"]) / np.median(runs["A"]))
                res["runs"][vname] = {**runs, "median_A": float(np.median(runs["A"])),
                                      "median_B": float(np.median(runs["B"])), "B_over_A": ratio}
                log(f"{vname}: A (queue policy) {np.median(runs['A']):.1f}, B (none) {np.median(runs['B']):.1f} "
                    f"frames/s, B / A {ratio:.3f}")
        finally:
            for g in gateways.values():
                g.stop()
            for t in tritons.values():
                t.stop()
    res["at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
