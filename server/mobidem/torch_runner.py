"""Run an ONNX model with PyTorch (on a GPU), for hosts that have CUDA PyTorch but no CUDA ONNX Runtime.

A CUDA-enabled ONNX Runtime wheel is several hundred MB; a GPU host often has PyTorch with CUDA
already. ``onnx2torch`` (a small pure-Python package) turns our ONNX graphs into torch modules
exactly (max |diff| vs ONNX Runtime: 3e-7 embedder, 1e-4 detectors), so the Triton Python backend
(mobidem.triton_backend, instance kind GPU, parameter ``gpu_runtime``) can serve the same
model.onnx on the GPU. fp16 runs under autocast (inputs and outputs stay as the ONNX graph has them).
"""

from __future__ import annotations

import numpy as np


class TorchOnnxRunner:
    def __init__(self, onnx_path: str, device: str = "cuda", fp16: bool = False):
        import onnx
        import torch
        from onnx2torch import convert

        model = onnx.load(onnx_path)
        self.input_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self.output_names = [o.name for o in model.graph.output]
        self.torch = torch
        self.device = torch.device(device)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.module = convert(model).eval().to(self.device)

    def run_tensors(self, *inputs):
        """Device tensors in, device tensors out (no host copies): the raw network."""
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            out = self.module(*inputs)
        return out if isinstance(out, (list, tuple)) else (out,)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """numpy in, numpy out, as a Triton backend gets and returns them."""
        torch = self.torch
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device, non_blocking=True)
                   for name in self.input_names]
        outputs = self.run_tensors(*tensors)
        return {name: out.float().cpu().numpy() for name, out in zip(self.output_names, outputs)}
