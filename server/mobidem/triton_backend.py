"""ONNX Runtime inside Triton's Python backend.

Every model folder in ``model_repository/`` has a three-line ``1/model.py`` that puts the
mobidem environment on ``sys.path`` and re-exports :class:`OnnxModel` as ``TritonPythonModel``.
The class loads ``model.onnx`` next to that file and answers each request with exactly one
response. Requests that the dynamic batcher hands over together are concatenated into one
ONNX Runtime call and split again.

Model config ``parameters`` it reads (all optional):

- ``intra_op_threads`` / ``inter_op_threads``: ONNX Runtime thread pools (default 1 / 1). On a 2-core
  machine shared with the gateway the committed configs give the embedder models 2 intra-op threads
  and the rest 1, as measured fastest (docs/PERFORMANCE.md, section 4b).
- ``allow_spinning``: ``true`` lets idle ONNX Runtime intra-op threads spin-wait for work (ONNX
  Runtime's own default); default ``false``: they sleep, and leave the cores to the gateway and the
  other models.
- ``providers``: comma-separated ONNX Runtime execution providers, overriding the default
  (CPU, or CUDA first when the instance kind is GPU and the installed ONNX Runtime has it).
- ``gpu_runtime``: for instance kind GPU: ``auto`` (default: ONNX Runtime's CUDA provider when
  installed, else PyTorch with CUDA through mobidem.torch_runner), ``onnxruntime`` or ``torch``;
  ``gpu_fp16`` = ``true`` runs the PyTorch path under fp16 autocast.

A request whose sender has stopped waiting is answered UNAVAILABLE without being run: the gateway sends
its caller's deadline as the request parameter ``mobidem_deadline_ns`` (wall-clock nanoseconds since
the epoch), and a request that reaches ``execute`` after it is dropped from the batch. This replaces a
Triton queue policy (``default_queue_policy`` with ``allow_timeout_override``), which does the same in
the batcher but, in Triton 2.41, turns off the batcher's prefetching and stalls some requests for the
batcher's 500 ms idle wait (docs/RELIABILITY.md). The check trusts the gateway's and Triton's clocks
to agree to within a few milliseconds (same host, or NTP); a Triton clock ahead by more than a call's
remaining budget would drop that call early, and the caller would see DEADLINE_EXCEEDED.

This module runs inside the Triton stub process, so it imports nothing from mobidem that
would pull in gRPC or OpenCV.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value not in (None, "") else default


def select_providers(kind: str, available: list[str], requested: str = "") -> list[str]:
    """Execution providers for an instance kind ("CPU"/"GPU") given what ORT offers."""
    if requested:
        wanted = [p.strip() for p in requested.split(",") if p.strip()]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise RuntimeError(f"providers {missing} are not available in this ONNX Runtime ({available})")
        return wanted
    if kind == "GPU":
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        return gpu[-1:] + ["CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


DEADLINE_PARAMETER = "mobidem_deadline_ns"  # mobidem.triton_client.DEADLINE_PARAMETER (that one imports gRPC)


def deadline_ns(parameters: str) -> int:
    """The sender's deadline from a request's parameters (Triton's JSON string); 0: none."""
    if not parameters or DEADLINE_PARAMETER not in parameters:
        return 0
    try:
        value = json.loads(parameters).get(DEADLINE_PARAMETER, 0)
    except ValueError:
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _error_response(message: str, code=None):
    """A response carrying an error. Each response gets its own TritonError: this Python backend crashes
    Triton when one error object answers several requests of a batch."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class OnnxModel:
    """A Triton Python-backend model that runs ``model.onnx`` with ONNX Runtime."""

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        if int(np.__version__.split(".")[0]) >= 2:
            # With numpy 2 in the stub, this Triton's Python backend returns empty outputs silently.
            raise pb_utils.TritonModelException(
                f"numpy {np.__version__} is loaded in the Python backend stub ({np.__file__}); Triton 2.51's "
                "Python backend returns empty outputs with numpy 2: install numpy<2 in the model environment"
            )

        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(
                f"{path} is missing: build the models first with `mobidem models build`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(self.config, "intra_op_threads", "1"))
        options.inter_op_num_threads = int(_param(self.config, "inter_op_threads", "1"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle intra-op threads block instead of spinning, so that they leave the cores to the gateway
        # and the other models between calls
        spin = "1" if _param(self.config, "allow_spinning", "false") == "true" else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        kind = args.get("model_instance_kind", "CPU")
        self.torch_runner = None
        runtime = _param(self.config, "gpu_runtime", "auto")
        cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
        if kind == "GPU" and (runtime == "torch" or (runtime == "auto" and not cuda_ort)):
            from mobidem.torch_runner import TorchOnnxRunner

            device = f"cuda:{int(args.get('model_instance_device_id', 0))}"
            self.torch_runner = TorchOnnxRunner(path, device, _param(self.config, "gpu_fp16", "false") == "true")
        providers = select_providers(kind if self.torch_runner is None else "CPU", ort.get_available_providers(),
                                     _param(self.config, "providers", ""))
        if kind == "GPU" and providers[0] == "CUDAExecutionProvider":
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.providers = self.session.get_providers()
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]
        }
        session_inputs = {i.name for i in self.session.get_inputs()}
        session_outputs = {o.name for o in self.session.get_outputs()}
        if set(self.inputs) != session_inputs or not set(self.outputs) <= session_outputs:
            raise pb_utils.TritonModelException(
                f"{self.name}: config.pbtxt I/O {self.inputs}->{self.outputs} does not match "
                f"model.onnx {sorted(session_inputs)}->{sorted(session_outputs)}"
            )

    def execute(self, requests: list) -> list:
        now = time.time_ns()
        expired = [0 < deadline_ns(request.parameters()) < now for request in requests]
        if not any(expired):
            return self._run(requests)
        live = self._run([r for r, late in zip(requests, expired) if not late]) if not all(expired) else []
        answered = iter(live)
        return [_error_response(f"{self.name}: the request's deadline passed while it queued; not run",
                                pb_utils.TritonError.UNAVAILABLE) if gone else next(answered)
                for gone in expired]

    def _run(self, requests: list) -> list:
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                feeds[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(feeds[self.inputs[0]][-1].shape[0])
        try:
            batch = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in feeds.items()}
            if self.torch_runner is not None:
                by_name = self.torch_runner.run(batch)
                results = [by_name[name] for name in self.outputs]
            else:
                results = self.session.run(self.outputs, batch)
        except Exception as exc:  # one bad batch must not take the model down
            return [_error_response(f"{self.name}: inference failed: {exc}") for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size], dtype=self.output_dtypes[name]))
                for name, out in zip(self.outputs, results)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self) -> None:
        self.session = None
