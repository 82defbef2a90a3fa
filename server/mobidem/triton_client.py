"""The one place that talks to Triton: async gRPC inference, readiness and model versions."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from mobidem.errors import DeadlineExceeded, Unavailable
from mobidem.logs import deadline

log = logging.getLogger(__name__)

_UNAVAILABLE_HINTS = ("UNAVAILABLE", "failed to connect", "Connection refused", "Socket closed", "not ready",
                      "unavailable", "Stub process", "is not found")


class TritonClient:
    """Async inference against a Triton server (managed or external) over gRPC."""

    def __init__(self, url: str, timeout_s: float = 30.0, metrics=None):
        self.url = url
        self.timeout_s = timeout_s
        self.metrics = metrics  # mobidem.metrics.Metrics or None
        self._client: grpcclient.InferenceServerClient | None = None
        self._versions: dict[str, str] = {}

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self, models: list[str] = ()) -> bool:
        try:
            if not await self.client.is_server_ready(client_timeout=2):
                return False
            for m in models:
                if not await self.client.is_model_ready(m, client_timeout=2):
                    return False
            return True
        except Exception:
            return False

    async def model_version(self, model: str) -> str:
        """The newest ready version of ``model`` (cached)."""
        if model not in self._versions:
            meta = await self.client.get_model_metadata(model, client_timeout=5)
            self._versions[model] = max(meta.versions, key=int) if meta.versions else ""
        return self._versions[model]

    async def metadata(self, model: str) -> dict:
        return await self.client.get_model_metadata(model, as_json=True, client_timeout=5)

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array)
            tensors.append(t)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        timeout = timeout_s or self.timeout_s
        call_deadline = deadline.get()
        if call_deadline is not None:  # the RPC's own deadline bounds its Triton work
            timeout = min(timeout, call_deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline passed before its Triton work could start")
        started = time.perf_counter()
        try:
            result = await self.client.infer(model, tensors, outputs=requested, client_timeout=timeout)
        except InferenceServerException as exc:
            error = _translate(model, exc)
            self._count_error(model, error)
            raise error from None
        except asyncio.TimeoutError:
            self._count_error(model, DeadlineExceeded())
            raise DeadlineExceeded(f"Triton model {model} did not answer in time") from None
        if self.metrics is not None:
            self.metrics.triton_seconds.labels(model).observe(time.perf_counter() - started)
            self.metrics.triton_batch.labels(model).observe(next(iter(inputs.values())).shape[0])
        try:
            arrays = {o: result.as_numpy(o) for o in outputs}
        except ValueError:  # tritonclient cannot shape an empty output
            arrays = {}
        for name in outputs:
            value = arrays.get(name)
            if value is None or (value.size == 0 and next(iter(inputs.values())).shape[0] > 0):
                # the failure mode of numpy 2 inside the Python backend stub: empty outputs, no error
                raise Unavailable(f"Triton model {model} returned an empty {name!r} output")
        return arrays

    def _count_error(self, model: str, error: Exception) -> None:
        if self.metrics is not None:
            code = "DEADLINE_EXCEEDED" if isinstance(error, DeadlineExceeded) else "UNAVAILABLE"
            self.metrics.triton_errors.labels(model, code).inc()

    async def statistics(self, model: str = "") -> dict:
        stats = await self.client.get_inference_statistics(model, as_json=True)
        return stats


def _translate(model: str, exc: InferenceServerException) -> Exception:
    text = f"{exc.status() or ''} {exc.message() or ''}"
    if "DEADLINE" in text.upper():
        return DeadlineExceeded(f"Triton model {model} did not answer in time")
    if any(h in text for h in _UNAVAILABLE_HINTS) or exc.status() in ("StatusCode.UNAVAILABLE",):
        return Unavailable(f"Triton is unavailable for model {model}: {exc.message()}")
    return Unavailable(f"Triton inference on {model} failed: {exc.message()}")
