"""Reproduce the Triton gRPC wedge of issue #20: ModelInfer calls whose gRPC deadline runs out just as
Triton receives them.

Triton 2.41 (the tritonserver in nvidia-pytriton 0.5.0) accepts ModelInfer RPCs through exactly two
outstanding ``RequestModelInfer`` slots (``REGISTER_GRPC_INFER_THREAD_COUNT`` = 2 handler threads). When
a call is already cancelled (its deadline passed, or the client cancelled it) by the time a handler thread
takes it off the completion queue at step START, ``ModelInferHandler::Process`` releases it through
``HandleCancellation`` without calling ``StartNewRequest()``: that slot is gone for good. After two such
calls Triton accepts no ModelInfer at all (every inference waits out its deadline) while ServerReady,
ModelReady and metadata, served by another handler, still answer. Fixed upstream in Triton 2.47
(triton-inference-server/server PR #7325, "Cancelling at step START").

The script starts a managed Triton serving one small model with ``--log-verbose=1``, sends bursts of
calls whose deadlines are spread over ``--min-ms``..``--max-ms`` and after each burst one normal call
(10 s deadline). It prints the outcome of every burst, the normal call's latency and the server log's
count of "Cancellation notification received" lines (all, and those at step START), and stops at the first
wedge. mobidem's client since the fix never cancels a ModelInfer call (docs/RELIABILITY.md, "Faults"): with
it the log shows no cancellation and Triton never wedges; run the client of an older commit with
``PYTHONPATH=<checkout>/server`` to see the wedge through it.

    .venv/bin/python tools/triton_wedge.py --client raw       # tritonclient with client_timeout = deadline
    .venv/bin/python tools/triton_wedge.py --client mobidem   # mobidem's TritonClient, the call's deadline set

Exit status 1 when Triton wedged, 0 when every normal call answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "blazeface_short"
ANY_CANCEL = re.compile(r"Cancellation notification received for ModelInferHandler")
START_CANCEL = re.compile(r"Cancellation notification received for ModelInferHandler, rpc_ok=1, "
                          r"context \d+, \d+ step START")


async def raw_call(client, image, budget_s: float) -> str:
    import tritonclient.grpc.aio as aio
    from tritonclient.utils import InferenceServerException

    tensor = aio.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    try:
        await client.infer(MODEL, [tensor], client_timeout=budget_s, timeout=max(1, int(budget_s * 1e6)))
        return "OK"
    except InferenceServerException as exc:
        return (exc.status() or "?").rsplit(".", 1)[-1]


async def mobidem_call(client, image, budget_s: float) -> str:
    from mobidem.errors import DeadlineExceeded
    from mobidem.logs import deadline

    token = deadline.set(time.monotonic() + budget_s)
    try:
        await client.infer(MODEL, {"image": image}, ["regressors", "scores"])
        return "OK"
    except DeadlineExceeded:
        return "DEADLINE_EXCEEDED"
    except Exception as exc:  # noqa: BLE001 - report, do not stop
        return type(exc).__name__
    finally:
        deadline.reset(token)


async def run(args) -> int:
    from mobidem.managed_triton import ManagedTriton

    rng = random.Random(args.seed)
    image = np.zeros((1, 128, 128, 3), np.uint8)
    triton = ManagedTriton(ROOT / "model_repository", Path(tempfile.mkdtemp(prefix="triton_wedge_")),
                           models=[MODEL], log_verbose=1)
    triton.start()
    if args.one_cpu:  # Triton (every thread) and this client on one core: Triton's gRPC threads fall behind
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        for task in Path(f"/proc/{triton.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})
    try:
        if args.client == "raw":
            import tritonclient.grpc.aio as aio

            client = aio.InferenceServerClient(triton.grpc_url)
            call = raw_call
        else:
            from mobidem.triton_client import TritonClient

            client = TritonClient(triton.grpc_url, shared_memory=args.shm)
            await client.plan([MODEL])
            call = mobidem_call
        print(f"Triton {triton.grpc_url} ({MODEL}), client {args.client}; log {triton.log_path}", flush=True)
        for burst in range(args.bursts):
            budgets = [rng.uniform(args.min_ms, args.max_ms) / 1000 for _ in range(args.calls)]
            codes = await asyncio.gather(*(call(client, image, b) for b in budgets))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            normal = await call(client, image, 10.0)
            took = time.monotonic() - started
            if args.client == "raw":
                ready = await client.is_server_ready(client_timeout=2)
            else:
                ready = await client.ready([MODEL])
            log = triton.log_path.read_text(errors="replace")
            at_start, cancelled = len(START_CANCEL.findall(log)), len(ANY_CANCEL.findall(log))
            summary = ", ".join(f"{c} {codes.count(c)}" for c in sorted(set(codes)))
            print(f"burst {burst}: {summary}; then a 10-s call: {normal} after {took:.2f} s; server ready: {ready}; "
                  f"log: {cancelled} cancellation notifications, {at_start} at step START", flush=True)
            if normal != "OK":
                print("WEDGED: Triton answers readiness but no inference", flush=True)
                return 1
        print("not wedged", flush=True)
        return 0
    finally:
        await client.close()
        triton.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=["raw", "mobidem"], default="mobidem")
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200, help="calls per burst, sent at once")
    parser.add_argument("--min-ms", type=float, default=1.0, help="shortest deadline")
    parser.add_argument("--max-ms", type=float, default=30.0, help="longest deadline")
    parser.add_argument("--shm", action="store_true", help="mobidem client: tensors through shared memory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one-cpu", action="store_true", help="pin Triton and this client to one core")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
