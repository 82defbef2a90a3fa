"""How should Triton drop a request whose caller gave up: in the model, or with the batcher's queue policy?

    .venv/bin/python bench/queue_policy_ab.py [--reps 3] [--out docs/QUEUE_POLICY_AB.json]

The gateway sends each Triton call its caller's deadline (issue 20). Two ways to act on it:

- A, as shipped: the model refuses a request that reaches it past that deadline
  (``mobidem_deadline_ns``, mobidem.triton_backend); the configs have no queue policy.
- B: model_repository with ``default_queue_policy { timeout_action: REJECT, default_timeout_microseconds:
  600000000, allow_timeout_override: true }`` added to every dynamic-batching config (what the wedge fix
  first shipped); Triton's batcher rejects a request that waited past its timeout. The deadline check in
  the model stays, so B differs from A only by the policy.

Measured on two managed Tritons, one at a time: perf_analyzer on blazeface_short, batch 1, concurrency 1
(latency percentiles, Triton's queue time; a failure to stabilise is recorded, not hidden), then one
`mobidem serve` gateway on each and interleaved repetitions (A, B, B, A, ...) of 8 concurrent streams
of the 640x360 Hamilton clip and of the 1080p video, tracking off (every frame detected and embedded: the
most Triton calls per frame). Writes the raw numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import perf_gateway as gw  # noqa: E402
import perf_models  # noqa: E402
from perf_common import HAMILTON, HD, ROOT, encode_jpeg, load_frames, log  # noqa: E402

POLICY = ("  default_queue_policy { timeout_action: REJECT, default_timeout_microseconds: 600000000, "
          "allow_timeout_override: true }\n")


def with_queue_policy(src: Path, dst: Path) -> list[str]:
    """A copy of the repository (model files linked) with POLICY in every ``dynamic_batching { }`` block."""
    changed = []
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        out = dst / rel
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.name == "config.pbtxt":
            text, n = re.subn(r"(dynamic_batching \{\n)", r"\1" + POLICY.replace("\\", "\\\\"), path.read_text())
            if n:
                changed.append(str(rel.parent))
            out.write_text(text)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(path.resolve())
    return changed


def latency(pa, url: str, model: str = "blazeface_short") -> dict:
    """perf_analyzer at batch 1, concurrency 1: p50/p99 and Triton's queue time, or why it failed."""
    exe, env = pa
    cmd = [str(exe), "-m", model, "-i", "grpc", "-u", url, "-b", "1", "--measurement-interval", "1500",
           "--stability-percentage", "30", "--max-trials", "20", "--shared-memory", "system",
           "--output-shared-memory-size", str(8 << 20)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    text = out.stdout + out.stderr
    found = {k: re.search(rf"{k} latency: (\d+) usec", text) for k in ("p50", "p99")}
    queue = re.search(r"queue (\d+) usec", text)
    if out.returncode != 0 or not all(found.values()):
        return {"failed": text.strip().splitlines()[-1][-200:] if text.strip() else f"exit {out.returncode}"}
    return {**{f"{k}_ms": int(m.group(1)) / 1000 for k, m in found.items()},
            "queue_ms": int(queue.group(1)) / 1000 if queue else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "QUEUE_POLICY_AB.json"))
    args = ap.parse_args()
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton

    pa = perf_models.perf_analyzer_env()
    if isinstance(pa, str):
        raise SystemExit(pa)
    res: dict = {"reps": args.reps, "streams": 8, "A": "shipped: deadline checked in the model, no queue policy",
                 "B": "shipped + default_queue_policy (REJECT, allow_timeout_override)", "latency": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mobidem-bench-queue-") as tmp:
        tmp = Path(tmp)
        res["models_with_policy_in_B"] = with_queue_policy(ROOT / "model_repository", tmp / "repo-b")
        tritons, gateways = {}, {}
        try:
            for name, repo in (("A", ROOT / "model_repository"), ("B", tmp / "repo-b")):
                log(f"starting Triton {name}")
                plugin_repos = served_by_triton()[0][1:]  # the default plugins' models (yunet), the same in both
                tritons[name] = ManagedTriton([repo, *plugin_repos], tmp / f"triton-{name}").start(180)
            for rep in range(args.reps):
                for name in (("A", "B") if rep % 2 == 0 else ("B", "A")):
                    m = latency(pa, tritons[name].grpc_url.replace("grpc://", ""))
                    res["latency"].setdefault(name, []).append(m)
                    log(f"perf_analyzer blazeface_short b1 {name}: {m}")
            for name in ("A", "B"):
                (tmp / name).mkdir()
                gateways[name] = gw.Gateway(tritons[name].grpc_url, tmp / name)
            for vname, path, per_stream in (("hamilton 640x360", HAMILTON, 0), ("1080p", HD, 40)):
                run = gw.interleaved({k: g.target for k, g in gateways.items()},
                                     encode_jpeg(load_frames(path, None)), 8, per_stream, args.reps, vname)
                res["runs"][vname] = run
                log(f"{vname}: A (model's check) {run['median_A']:.1f}, B (queue policy) {run['median_B']:.1f} "
                    f"frames/s, A / B {run['A_over_B']:.3f}")
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
