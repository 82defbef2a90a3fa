"""The one place that talks to Triton: async gRPC inference, readiness and model versions.

Tensors go to a co-located Triton through system shared memory when ``shared_memory`` is on: a pool
of /dev/shm regions, each registered with Triton once (``register_system_shared_memory``) and reused
for request after request (inputs written in place, outputs read back from the same region); gRPC
carries only the request's metadata. Regions are named ``mobidem_gw_<pid>_<random>_<n>`` (unique per
process), unregistered and unlinked at ``close()``; a crashed process's leftovers are removed by the
next one. A request that does not fit the pool (too large, pool exhausted, outputs of unknown size)
and every request to a remote Triton goes over plain gRPC. tritonclient's own
``tritonclient.utils.shared_memory`` helper is not used because it imports ``pkg_resources``, which
this environment does not have; the regions are plain POSIX shared memory (``/dev/shm`` + mmap),
which is what that helper creates too.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import secrets
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from mobidem.errors import (DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, ResourceExhausted,
                            Unavailable)
from mobidem.logs import deadline

log = logging.getLogger(__name__)


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "mobidem_gw_"
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def is_local(url: str) -> bool:
    """Whether a Triton URL (host:port) names this machine's loopback."""
    host = url.rsplit(":", 1)[0].strip("[]").lower() if ":" in url else url.lower()
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class _Region:
    """One POSIX shared-memory region (/dev/shm/<name>), mapped into this process."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        self.path = SHM_DIR / name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.generation = -1  # the pool generation it was registered in; -1: not registered

    def array(self, dtype, shape, offset: int) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self.mm, offset=offset)

    def destroy(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a view is still alive somewhere; the unlink below frees it at exit
            pass
        self.path.unlink(missing_ok=True)


class SharedMemoryPool:
    """Pre-registered regions in power-of-two size classes, reused across requests.

    Only the event loop's thread touches it. ``max_bytes`` bounds the regions' total size; a request
    that finds no free region of its class and no room for a new one goes over gRPC instead.
    """

    MIN_SIZE = 256 * 1024
    MAX_SIZE = 16 * 1024 * 1024

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, headers: dict[str, str] | None = None):
        _reap_dead()
        self.headers = headers  # the managed Triton's credential for its restricted protocols
        self.prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        self.max_bytes = max_bytes
        self.free: dict[int, list[_Region]] = {}
        self.regions: list[_Region] = []
        self.generation = 0  # bumped when Triton lost the registrations (it restarted)
        self.closed = False

    @property
    def total(self) -> int:
        return sum(r.size for r in self.regions)

    def size_class(self, nbytes: int) -> int:
        size = self.MIN_SIZE
        while size < nbytes:
            size *= 2
        return size

    async def acquire(self, client, nbytes: int) -> _Region | None:
        if self.closed or nbytes > self.MAX_SIZE:
            return None
        size = self.size_class(nbytes)
        free = self.free.setdefault(size, [])
        if free:
            region = free.pop()
        elif self.total + size <= self.max_bytes:
            region = _Region(f"{self.prefix}{len(self.regions)}", size)
            self.regions.append(region)
        else:
            return None
        if region.generation != self.generation:
            try:
                if region.generation >= 0:  # registered with a Triton that has since restarted
                    try:
                        await client.unregister_system_shared_memory(region.name, headers=self.headers, client_timeout=5)
                    except InferenceServerException:
                        pass
                await client.register_system_shared_memory(region.name, "/" + region.name, region.size,
                                                           headers=self.headers, client_timeout=5)
            except Exception:
                free.append(region)
                raise
            region.generation = self.generation
        return region

    def release(self, region: _Region) -> None:
        if self.closed:
            region.destroy()
        else:
            self.free.setdefault(region.size, []).append(region)

    async def close(self, client) -> None:
        self.closed = True
        for region in self.regions:
            if region.generation >= 0 and client is not None:
                try:
                    await client.unregister_system_shared_memory(region.name, headers=self.headers, client_timeout=5)
                except Exception:  # noqa: BLE001 - Triton may be gone already; unlink anyway
                    pass
            region.destroy()
        self.regions.clear()
        self.free.clear()


def _reap_dead() -> None:
    """Remove regions of mobidem processes that died without cleaning up (their pid is gone)."""
    if not SHM_DIR.is_dir():
        return
    for path in SHM_DIR.glob(SHM_PREFIX + "*"):
        try:
            pid = int(path.name[len(SHM_PREFIX):].split("_", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


class TritonClient:
    """Async inference against a Triton server (managed or external) over gRPC, tensors through
    system shared memory when ``shared_memory`` is on (Triton on this machine)."""

    def __init__(self, url: str, timeout_s: float = 30.0, metrics=None, shared_memory: bool = False,
                 headers: dict[str, str] | None = None):
        self.url = url
        # sent with every call that a locked Triton restricts (mobidem.managed_triton: inference, shared
        # memory, model config, statistics; model control is refused to everyone)
        self.headers = headers
        self.timeout_s = timeout_s
        self.metrics = metrics  # mobidem.metrics.Metrics or None
        self._client: grpcclient.InferenceServerClient | None = None
        self._versions: dict[str, str] = {}  # model -> the version pinned at start (plan) or first use
        self._max_batch: dict[str, int] = {}  # model -> max_batch_size from Triton's model config
        self.shm: SharedMemoryPool | None = SharedMemoryPool(headers=headers) if shared_memory else None
        self._out_shapes: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}  # model -> output -> (dtype, dims)

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self.shm is not None:
            await self.shm.close(self._client)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self, models: list[str] = ()) -> bool:
        try:
            if not await self.client.is_server_ready(client_timeout=2):
                return False
            for m in models:
                if not await self.client.is_model_ready(m, self._versions.get(m, ""), client_timeout=2):
                    return False
            return True
        except Exception:
            return False

    async def model_version(self, model: str) -> str:
        """The version of ``model`` this client calls: the newest ready one when first asked, then pinned
        (every inference names it, so a Triton that serves another version later fails loudly)."""
        if model not in self._versions:
            meta = await self.client.get_model_metadata(model, client_timeout=5)
            self._versions[model] = max(meta.versions, key=int) if meta.versions else ""
        return self._versions[model]

    async def plan(self, models: list[str]) -> dict[str, tuple[str, int]]:
        """Read each model's limits from its source, Triton's model config, once at start: the version
        (pinned from now on) and ``max_batch_size`` (larger batches are split, never sent). A model
        without a batch dimension (max_batch_size 0) cannot take the gateway's batches: refused here."""
        planned = {}
        for model in models:
            version = await self.model_version(model)
            config = await self.client.get_model_config(model, version, headers=self.headers, as_json=True,
                                                        client_timeout=5)
            max_batch = int(config.get("config", config).get("max_batch_size", 0))
            if max_batch < 1:
                raise FailedPrecondition(
                    f"Triton model {model} has max_batch_size {max_batch}: mobidem sends batches (frames, tiles, "
                    "faces), so its config.pbtxt needs max_batch_size >= 1")
            self._max_batch[model] = max_batch
            planned[model] = (version, max_batch)
        return planned

    def max_batch(self, model: str) -> int:
        """The model's max_batch_size as planned (0: not planned, batches go as they are)."""
        return self._max_batch.get(model, 0)

    async def metadata(self, model: str) -> dict:
        return await self.client.get_model_metadata(model, as_json=True, client_timeout=5)

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        timeout = timeout_s or self.timeout_s
        call_deadline = deadline.get()
        if call_deadline is not None:  # the RPC's own deadline bounds its Triton work
            timeout = min(timeout, call_deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline passed before its Triton work could start")
        batch = next(iter(inputs.values())).shape[0]
        limit = self._max_batch.get(model, 0)
        if limit and batch > limit:  # split at the model's max_batch_size; the parts run concurrently
            parts = await asyncio.gather(*(
                self.infer(model, {k: v[i:i + limit] for k, v in inputs.items()}, outputs, timeout_s)
                for i in range(0, batch, limit)))
            return {name: np.concatenate([p[name] for p in parts]) for name in outputs}
        started = time.perf_counter()
        arrays = None
        if self.shm is not None:
            arrays = await self._infer_shm(model, inputs, outputs, timeout, batch)
        if arrays is None:
            arrays = await self._infer_grpc(model, inputs, outputs, timeout)
        if self.metrics is not None:
            self.metrics.triton_seconds.labels(model).observe(time.perf_counter() - started)
            self.metrics.triton_batch.labels(model).observe(batch)
        for name in outputs:
            value = arrays.get(name)
            if value is None or (value.size == 0 and batch > 0):
                # the failure mode of numpy 2 inside the Python backend stub: empty outputs, no error
                raise Unavailable(f"Triton model {model} returned an empty {name!r} output")
        return arrays

    async def _call(self, model, tensors, requested, timeout):
        try:
            # the deadline goes to Triton too (``timeout``, microseconds): it may drop the request unrun
            return await self.client.infer(model, tensors, model_version=self._versions.get(model, ""),
                                           outputs=requested, headers=self.headers, client_timeout=timeout,
                                           timeout=max(1, int(timeout * 1e6)))
        except InferenceServerException as exc:
            error = _translate(model, exc, self._versions.get(model, ""))
            self._count_error(model, error)
            raise error from None
        except asyncio.TimeoutError:
            self._count_error(model, DeadlineExceeded())
            raise DeadlineExceeded(f"Triton model {model} did not answer in time") from None

    async def _infer_grpc(self, model, inputs, outputs, timeout) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array)
            tensors.append(t)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        result = await self._call(model, tensors, requested, timeout)
        try:
            return {o: result.as_numpy(o) for o in outputs}
        except ValueError:  # tritonclient cannot shape an empty output
            return {}

    async def _output_shapes(self, model: str) -> dict[str, tuple[str, tuple[int, ...]]]:
        if model not in self._out_shapes:
            meta = await self.metadata(model)
            self._out_shapes[model] = {o["name"]: (o["datatype"], tuple(int(d) for d in o["shape"])[1:])
                                       for o in meta.get("outputs", [])}
        return self._out_shapes[model]

    async def _infer_shm(self, model, inputs, outputs, timeout, batch) -> dict[str, np.ndarray] | None:
        """Inputs and outputs in one pooled region; None: this request goes over gRPC instead."""
        if any(a.dtype == np.object_ for a in inputs.values()):
            return None
        shapes = await self._output_shapes(model)
        layout, offset = [], 0
        for name, array in inputs.items():
            layout.append((name, offset, array.nbytes))
            offset += _aligned(array.nbytes)
        out_layout = []
        for name in outputs:
            if name not in shapes or any(d < 0 for d in shapes[name][1]):
                return None  # unknown output size: gRPC
            dtype, dims = shapes[name]
            nbytes = batch * int(np.prod(dims, dtype=np.int64)) * np.dtype(triton_to_np_dtype(dtype)).itemsize
            out_layout.append((name, offset, nbytes))
            offset += _aligned(nbytes)
        try:
            region = await self.shm.acquire(self.client, offset)
        except Exception as exc:  # noqa: BLE001 - registration failed: this request over gRPC
            log.warning("registering a shared-memory region with Triton failed (%s); using gRPC", exc)
            return None
        if region is None:
            return None
        tensors = []
        for (name, off, nbytes), array in zip(layout, inputs.values()):
            region.array(array.dtype, array.shape, off)[...] = array
            t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_shared_memory(region.name, nbytes, off)
            tensors.append(t)
        requested = []
        for name, off, nbytes in out_layout:
            r = grpcclient.InferRequestedOutput(name)
            r.set_shared_memory(region.name, nbytes, off)
            requested.append(r)
        try:
            result = await self._call(model, tensors, requested, timeout)
        except BaseException as exc:
            # Triton may still write this region's outputs: keep it out of the pool for a while
            asyncio.get_running_loop().call_later(self.timeout_s + 5, self.shm.release, region)
            if "shared memory" in f"{exc} {getattr(exc, 'detail', '')}".lower():
                self.shm.generation += 1  # Triton lost the registrations (restarted): register again
                log.warning("Triton lost the shared-memory registrations (%s); re-registering", exc)
                return None
            raise
        try:
            arrays = {}
            for name, off, _ in out_layout:
                out = result.get_output(name)
                dtype = triton_to_np_dtype(out.datatype)
                arrays[name] = region.array(dtype, tuple(out.shape), off).copy()
            return arrays
        finally:
            self.shm.release(region)

    def _count_error(self, model: str, error: Exception) -> None:
        if self.metrics is not None:
            self.metrics.triton_errors.labels(model, _CODES.get(type(error), "INTERNAL")).inc()

    async def statistics(self, model: str = "") -> dict:
        stats = await self.client.get_inference_statistics(model, headers=self.headers, as_json=True)
        return stats


_CODES = {DeadlineExceeded: "DEADLINE_EXCEEDED", Unavailable: "UNAVAILABLE", InvalidArgument: "INVALID_ARGUMENT",
          ResourceExhausted: "RESOURCE_EXHAUSTED", Internal: "INTERNAL"}


def _translate(model: str, exc: InferenceServerException, version: str = "") -> Exception:
    """Triton's own status (tritonclient keeps the gRPC code) -> the error a client can act on:
    the request's fault -> INVALID_ARGUMENT / RESOURCE_EXHAUSTED, a server that is down, restarting or
    (re)loading the model -> UNAVAILABLE (retry), a deadline -> DEADLINE_EXCEEDED, anything else (a
    model or server bug) -> INTERNAL with a reference that the log line repeats. No message matching."""
    code = (exc.status() or "").rsplit(".", 1)[-1]
    message = exc.message() or ""
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"Triton model {model} did not answer in time")
    if code in ("UNAVAILABLE", "NOT_FOUND", "CANCELLED"):
        served = f" version {version}" if version else ""
        return Unavailable(f"Triton is unavailable for model {model}{served} ({code}): {message}")
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        return InvalidArgument(f"Triton refused the request to {model}: {message}")
    if code == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(f"Triton has no room for the request to {model}: {message}")
    ref = secrets.token_hex(6)
    log.error("Triton inference on %s failed (ref %s, %s): %s", model, ref, code or "no status", message)
    error = Internal(f"inference on {model} failed inside Triton (ref {ref}); the server log has details")
    error.detail = message
    return error
