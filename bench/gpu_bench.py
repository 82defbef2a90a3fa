"""GPU benchmark: mobidem's served ONNX models on a GPU, against ONNX Runtime on the same host's CPUs.

Self-contained: needs Python 3.10+, PyTorch with CUDA, onnx, onnxruntime and numpy (all in NVIDIA's
and most GPU images) plus onnx2torch (a 80 KB pure-Python wheel; `bench/gpu_run.sh` installs it
from a local wheel directory if it is missing) and the built model.onnx files.

For each model and batch size it measures, in one run:
- `serving path`: mobidem.torch_runner.TorchOnnxRunner.run() -- exactly what the Triton Python
  backend runs per request on a KIND_GPU instance without a CUDA ONNX Runtime: numpy uint8 in,
  host->device copy, the network, device->host copy, numpy out (fp32, and fp16 autocast);
- `raw network`: the same module on device-resident inputs, CUDA-synchronised, no copies -- the
  ceiling; `share` = serving path / raw;
- ONNX Runtime on the host CPUs (all cores) for the CPU/GPU ratio;
- parity of the GPU outputs against ONNX Runtime.

    bash bench/gpu_run.sh         # on a GPU host; writes gpu_results.json and gpu_results.md to $OUT (or .)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "server"))

MODELS = {  # model -> (input name, per-item shape)
    "face_multitask": ("chip", (150, 150, 3)),
    "blazeface_short": ("image", (128, 128, 3)),
    "blazeface_full": ("image", (192, 192, 3)),
    "fer_xception": ("face", (64, 64, 1)),
}


def timed(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    from mobidem.torch_runner import TorchOnnxRunner

    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    rows, parity = [], {}
    for model, (name, shape) in MODELS.items():
        path = REPO / "model_repository" / model / "1" / "model.onnx"
        if not path.exists():
            print(f"skip {model}: {path} missing", flush=True)
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        cpu = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        gpu32 = TorchOnnxRunner(str(path), "cuda", fp16=False)
        gpu16 = TorchOnnxRunner(str(path), "cuda", fp16=True)
        x = rng.integers(0, 256, (8, *shape), dtype=np.uint8)
        ref = cpu.run(None, {name: x})
        parity[model] = {
            "fp32_max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(ref, gpu32.run({name: x}).values())),
            "fp16_max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(ref, gpu16.run({name: x}).values())),
        }
        for batch in batches:
            xb = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
            row = {"model": model, "batch": batch}
            if batch <= 64:
                row["ort_cpu_s"] = timed(lambda: cpu.run(None, {name: xb}), max(3, args.reps // 4))
            for label, runner in (("fp32", gpu32), ("fp16", gpu16)):
                row[f"serving_{label}_s"] = timed(lambda: runner.run({name: xb}), args.reps)
                dev = torch.from_numpy(xb).cuda()

                def raw(r=runner, d=dev):
                    r.run_tensors(d)
                    torch.cuda.synchronize()
                row[f"raw_{label}_s"] = timed(raw, args.reps)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del gpu32, gpu16
        torch.cuda.empty_cache()
    info = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_results.json").write_text(json.dumps({"info": info, "rows": rows, "parity": parity}, indent=1))
    (args.out / "gpu_results.md").write_text(report(info, rows, parity))
    print(report(info, rows, parity))


def report(info, rows, parity) -> str:
    lines = [
        f"GPU: {info['gpu']}; PyTorch {info['torch']} (CUDA {info['cuda']}); ONNX Runtime {info['onnxruntime']} "
        f"on {info['cpu_cores']} CPU cores; Python {info['python']}; {info['date']}.",
        "",
        "Items per second (images for detectors, face chips for face models); `share` = serving path / raw network.",
        "",
        "| model | batch | ORT CPU | GPU serving fp32 | GPU raw fp32 | share fp32 | GPU serving fp16 | GPU raw fp16 | share fp16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["batch"]
        ips = lambda key: b / r[key] if key in r else None  # noqa: E731
        cells = [ips("ort_cpu_s"), ips("serving_fp32_s"), ips("raw_fp32_s"), None, ips("serving_fp16_s"),
                 ips("raw_fp16_s"), None]
        cells[3] = cells[1] / cells[2]
        cells[6] = cells[4] / cells[5]
        fmt = [f"{c:,.0f}" if c is not None and i not in (3, 6) else (f"{c:.0%}" if c is not None else "-")
               for i, c in enumerate(cells)]
        lines.append(f"| {r['model']} | {b} | " + " | ".join(fmt) + " |")
    lines += ["", "Parity of the GPU outputs against ONNX Runtime (max |diff|, 8 random inputs):", ""]
    for m, p in parity.items():
        lines.append(f"- {m}: fp32 {p['fp32_max_abs_diff']:.2e}, fp16 autocast {p['fp16_max_abs_diff']:.2e}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
