"""What does YuNet's second opinion (``detector_confirm=yunet``, the default) cost a gateway's throughput?

    .venv/bin/python bench/confirm_ab.py [--reps 3] [--out docs/CONFIRM_AB.json]

One managed Triton serving what the default gateway needs (the built-in models and YuNet), two `mobidem
serve` gateways on it: A as shipped (a face BlazeFace scores below 0.7 counts only if YuNet also finds it),
B with ``--detector-confirm ""`` (BlazeFace alone). Interleaved repetitions (A, B, B, A, ...) of what
docs/PERFORMANCE.md compares with the face_recognition library: 8 concurrent streams of the 640x360 Hamilton
clip and of the 1080p video (tracking off: every frame detected), and one stream of the Hamilton clip.
Only one gateway works at a time. Prints frames/s per run and the median ratio A / B; writes the raw
numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import perf_gateway as gw  # noqa: E402
from perf_common import HAMILTON, HD, ROOT, encode_jpeg, load_frames, log  # noqa: E402

CASES = (("hamilton 640x360, 8 streams", HAMILTON, 8, 0), ("1080p, 8 streams", HD, 8, 40),
         ("hamilton 640x360, 1 stream", HAMILTON, 1, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "CONFIRM_AB.json"))
    args = ap.parse_args()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton

    res: dict = {"reps": args.reps, "A": "as shipped: detector_confirm=yunet below 0.7",
                 "B": "detector_confirm='' (BlazeFace alone)", "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-confirm-") as tmp:
        tmp = Path(tmp)
        triton, gateways = None, {}
        try:
            log("starting Triton")
            triton = ManagedTriton(served_by_triton()[0], tmp / "triton").start(180)
            for name, extra in (("A", ()), ("B", ("--detector-confirm", ""))):
                (tmp / name).mkdir()
                gateways[name] = gw.Gateway(triton.grpc_url, tmp / name, *extra)
            for case, path, n, per_stream in CASES:
                run = gw.interleaved({k: g.target for k, g in gateways.items()},
                                     encode_jpeg(load_frames(path, None)), n, per_stream, args.reps, case)
                res["runs"][case] = run
                log(f"{case}: A (confirm) {run['median_A']:.1f}, B (BlazeFace alone) {run['median_B']:.1f} "
                    f"frames/s, A / B {run['A_over_B']:.3f}")
        finally:
            for g in gateways.values():
                g.stop()
            if triton is not None:
                triton.stop()
    res["at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
