"""The one place that talks to Triton: async gRPC inference, readiness and model versions, for one
Triton (``TritonClient``) or a pool of replicas (``TritonPool``: balancing, failover, version pinning
across replicas, TLS; docs/SCALING.md). The server always uses a pool; one URL is a pool of one.

A ModelInfer RPC is never cancelled because its caller's deadline ran out or its caller went away
(``TritonClient._call``): that is what wedged Triton 2.41 (docs/RELIABILITY.md, "Faults").

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

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from mobidem.errors import (DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, ResourceExhausted,
                            Unavailable)
from mobidem.logs import deadline

log = logging.getLogger(__name__)


# tritonclient's own channel options, plus a short reconnect back-off: a Triton that restarts is seen
# within about a second, not after gRPC's default back-off (growing to 120 s) has run out
CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.keepalive_time_ms", 2**31 - 1), ("grpc.keepalive_timeout_ms", 20000),
                ("grpc.keepalive_permit_without_calls", 0), ("grpc.http2.max_pings_without_data", 2),
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000)]

# the request parameter that carries a call's deadline to the model (wall-clock ns; mobidem.triton_backend
# reads it under the same name and answers a request past it UNAVAILABLE, unrun)
DEADLINE_PARAMETER = "mobidem_deadline_ns"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "mobidem_gw_"
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def parse_url(url: str) -> tuple[str, bool]:
    """A Triton URL -> (host:port, TLS?): ``grpcs://host:port`` is TLS, ``grpc://host:port`` or a bare
    ``host:port`` plaintext."""
    url = url.strip()
    for scheme, tls in (("grpcs://", True), ("grpc://", False)):
        if url.lower().startswith(scheme):
            return url[len(scheme):].rstrip("/"), tls
    if "://" in url:
        raise InvalidArgument(f"Triton URL {url!r}: the scheme must be grpc:// or grpcs:// (TLS), or none")
    return url, False


def is_local(url: str) -> bool:
    """Whether a Triton URL (host:port) names this machine's loopback."""
    url = parse_url(url)[0]
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
                 headers: dict[str, str] | None = None, credentials: grpc.ChannelCredentials | None = None):
        self.url, tls = parse_url(url)
        if tls and credentials is None:
            credentials = grpc.ssl_channel_credentials()  # grpcs:// without a CA setting: the system's roots
        self.credentials = credentials  # TLS to Triton (None: plaintext)
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
        self._abandoned: set[asyncio.Future] = set()  # calls whose caller stopped waiting, still running (_call)

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url, creds=self.credentials,
                                                            channel_args=CHANNEL_ARGS)
        return self._client


    async def close(self) -> None:
        if self._abandoned:  # let calls nobody waits for end rather than cancel them (see _call), briefly
            await asyncio.wait(list(self._abandoned), timeout=2)
        if self.shm is not None:
            await self.shm.close(self._client)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self, models: list[str] = (), pinned: bool = True) -> bool:
        """Whether the server and ``models`` are ready (in their pinned versions; any version: ``pinned`` False)."""
        try:
            if not await self.client.is_server_ready(client_timeout=2):
                return False
            for m in models:
                version = self._versions.get(m, "") if pinned else ""
                if not await self.client.is_model_ready(m, version, client_timeout=2):
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
        planned = await self.served(models, self._versions)
        self.pin(planned)
        return planned

    async def served(self, models: list[str], versions: dict[str, str] | None = None) -> dict[str, tuple[str, int]]:
        """What Triton serves now, pinning nothing: each model's version (from ``versions``, else the newest
        ready one) and its ``max_batch_size`` (0 is refused: FailedPrecondition)."""
        planned = {}
        for model in models:
            version = (versions or {}).get(model)
            if version is None:
                meta = await self.client.get_model_metadata(model, client_timeout=5)
                version = max(meta.versions, key=int) if meta.versions else ""
            config = await self.client.get_model_config(model, version, headers=self.headers, as_json=True,
                                                        client_timeout=5)
            max_batch = int(config.get("config", config).get("max_batch_size", 0))
            if max_batch < 1:
                raise FailedPrecondition(
                    f"Triton model {model} has max_batch_size {max_batch}: mobidem sends batches (frames, tiles, "
                    "faces), so its config.pbtxt needs max_batch_size >= 1")
            planned[model] = (version, max_batch)
        return planned

    def pin(self, planned: dict[str, tuple[str, int]]) -> None:
        """Call these versions from now on, split batches at these limits."""
        for model, (version, max_batch) in planned.items():
            if self._versions.get(model) != version:
                self._out_shapes.pop(model, None)
            self._versions[model] = version
            self._max_batch[model] = max_batch

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

    async def _call(self, model, tensors, requested, timeout, on_abandon=None):
        """One ModelInfer call; the caller waits at most ``timeout`` seconds.

        The gRPC call itself is never cancelled because the caller stops waiting, and its gRPC deadline is
        this client's own bound (``timeout_s``, 30 s), not the caller's possibly tiny one: Triton 2.41 (the
        managed one) loses one of its two ModelInfer accept slots for good whenever a call is already
        cancelled when its handler thread first takes it up, and after two such calls accepts no inference
        at all (the wedge of issue 20; docs/RELIABILITY.md, tools/triton_wedge.py). The caller's deadline
        still reaches Triton, as the request parameter ``mobidem_deadline_ns`` (wall clock), so the model
        drops a request that waited past it unrun (mobidem.triton_backend). A call the caller gave up on
        runs to its end in the background; ``on_abandon(call)`` is told of it then (the shared-memory
        region waits for its end).
        """
        expires = time.monotonic() + timeout
        call = asyncio.ensure_future(self.client.infer(
            model, tensors, model_version=self._versions.get(model, ""), outputs=requested, headers=self.headers,
            client_timeout=max(timeout, self.timeout_s),
            parameters={DEADLINE_PARAMETER: time.time_ns() + int(timeout * 1e9)}))
        try:
            return await asyncio.wait_for(asyncio.shield(call), timeout)
        except InferenceServerException as exc:
            if time.monotonic() >= expires and (exc.status() or "").endswith("UNAVAILABLE"):
                # the model's refusal of a request past its deadline (UNAVAILABLE) that came in
                # before this event loop ran the wait's own timer: the deadline, not a Triton that is down
                exc = InferenceServerException(exc.message(), "StatusCode.DEADLINE_EXCEEDED")
            error = _translate(model, exc, self._versions.get(model, ""))
            self._count_error(model, error)
            raise error from None
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            self._abandoned.add(call)
            call.add_done_callback(self._abandoned_ended)
            if on_abandon is not None:
                on_abandon(call)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._count_error(model, DeadlineExceeded())
            raise DeadlineExceeded(f"Triton model {model} did not answer in time") from None

    def _abandoned_ended(self, call: asyncio.Future) -> None:
        self._abandoned.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: its outcome no longer matters to anyone

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
        abandoned = False

        def hand_over(call: asyncio.Future) -> None:  # the caller gave up: the region waits for the call's end
            nonlocal abandoned
            abandoned = True
            call.add_done_callback(lambda c: self._release_after(region, c))

        try:
            result = await self._call(model, tensors, requested, timeout, on_abandon=hand_over)
        except BaseException as exc:
            if not abandoned:  # Triton may still write this region's outputs: keep it out of the pool a while
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

    def _release_after(self, region: _Region, call: asyncio.Future) -> None:
        """An abandoned call ended: its region goes back to the pool now when Triton answered it (outputs,
        an error, the queue's rejection), after ``timeout_s`` + 5 s when the client side ended it (its gRPC
        deadline, a cancel at close: Triton may still write the outputs)."""
        exc = None if call.cancelled() else call.exception()
        answered = exc is None or (isinstance(exc, InferenceServerException)
                                   and not (exc.status() or "").endswith(("DEADLINE_EXCEEDED", "CANCELLED")))
        if answered:
            self.shm.release(region)
        else:
            asyncio.get_running_loop().call_later(self.timeout_s + 5, self.shm.release, region)

    def _count_error(self, model: str, error: Exception) -> None:
        if self.metrics is not None:
            self.metrics.triton_errors.labels(model, _CODES.get(type(error), "INTERNAL")).inc()

    async def statistics(self, model: str = "") -> dict:
        stats = await self.client.get_inference_statistics(model, headers=self.headers, as_json=True)
        return stats


class Replica:
    """One Triton endpoint of a :class:`TritonPool` and what the pool knows of it."""

    def __init__(self, client: TritonClient):
        self.client = client
        self.url = client.url
        self.alive = True  # server and models ready at the last check
        self.up = True  # in rotation: alive, not wedged, serving the pinned versions
        self.refused = ""  # why it is never used (it serves other model versions); "" = not refused
        self.outstanding = 0  # calls in flight on it
        self.failures = 0  # failed probe inferences in a row

    def state(self) -> str:
        if self.refused:
            return f"refused ({self.refused})"
        return "in rotation" if self.up else "out of rotation"


class TritonPool:
    """Several Triton replicas behind the interface the pipeline and the server use (``infer``,
    ``model_version``, ``plan``, ``max_batch``, ``metadata``, ``ready``, ``close``); one URL is a pool of one.

    - **Balancing**: each call goes to the replica in rotation with the fewest calls in flight (ties in
      turn). When none is in rotation a call still tries the replicas that are not refused, so a single
      Triton that restarts behaves as one client always did (its calls fail UNAVAILABLE until it is back).
    - **Failover**: a call that fails UNAVAILABLE on a replica (it died, restarted or lost the model)
      takes that replica out of rotation and is retried once on another replica in rotation; other
      errors (the request's fault, a model bug, a deadline) are not retried.
    - **Versions**: ``plan`` pins every model's version from the first replica that answers at start
      (the newest version it serves) and reads ``max_batch_size``; every call names the pinned version.
      A replica whose newest served version differs, or whose ``max_batch_size`` is smaller, is refused,
      logged and never used; it is judged again each time it is ready after being out.
    - **Readiness**: ``ready`` (the server's watchdog, every second) checks every replica and puts a
      ready one back after judging it again; ``probe`` runs one tiny inference on every live replica and
      takes one out after ``probe_failures`` failures in a row (wedged: ready, but answering nothing).
    """

    def __init__(self, replicas: list[TritonClient], probe_failures: int = 3, metrics=None):
        if not replicas:
            raise InvalidArgument("triton_url names no Triton endpoint")
        self.replicas = [Replica(c) for c in replicas]
        self.probe_failures = max(1, probe_failures)
        self.metrics = metrics
        self.timeout_s = replicas[0].timeout_s
        self._models: list[str] | None = None  # set by plan
        self._versions: dict[str, str] = {}
        self._max_batch: dict[str, int] = {}
        self._turn = 0

    @classmethod
    def from_urls(cls, urls: list[str], *, timeout_s: float = 30.0, metrics=None, shared_memory=lambda url: False,
                  headers: dict[str, str] | None = None, credentials: grpc.ChannelCredentials | None = None,
                  probe_failures: int = 3) -> "TritonPool":
        """A pool of ``urls`` (``grpcs://`` ones over TLS with ``credentials``, else the system's roots);
        ``shared_memory(url)``: whether that replica gets tensors through /dev/shm."""
        if len(set(urls)) != len(urls):
            raise InvalidArgument(f"triton_url names an endpoint twice: {urls}")
        if credentials is not None and not any(parse_url(u)[1] for u in urls):
            raise InvalidArgument(f"triton_tls_ca/cert/key are set but every triton_url is plaintext: write "
                                  f"grpcs://{parse_url(urls[0])[0]} for TLS to that Triton")
        clients = [TritonClient(u, timeout_s, metrics, shared_memory(u), headers,
                                credentials if parse_url(u)[1] else None) for u in urls]
        return cls(clients, probe_failures, metrics)

    @property
    def url(self) -> str:
        return ", ".join(r.url for r in self.replicas)

    def describe(self) -> str:
        return "; ".join(f"{r.url}: {r.state()}" for r in self.replicas)

    def _publish(self) -> None:
        if self.metrics is not None:
            for r in self.replicas:
                self.metrics.triton_replica_up.labels(r.url).set(1 if r.up and not r.refused else 0)

    # -- choosing a replica

    def _pick(self, exclude: list[Replica]) -> Replica | None:
        usable = [r for r in self.replicas if not r.refused and r not in exclude]
        live = [r for r in usable if r.up]
        # nothing in rotation: a first try still goes to a replica that may be back (a retry does not)
        choice = live or ([] if exclude else usable)
        if not choice:
            return None
        least = min(r.outstanding for r in choice)
        tied = [r for r in choice if r.outstanding == least]
        self._turn += 1
        return tied[self._turn % len(tied)]

    def _lost(self, replica: Replica, error: Exception) -> None:
        if replica.up:
            replica.up = False
            log.warning("Triton replica %s failed a call (%s): out of rotation until it is ready again",
                        replica.url, error)
            self._publish()

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        batch = next(iter(inputs.values())).shape[0]
        limit = self._max_batch.get(model, 0)
        if limit and batch > limit:  # split at the model's max_batch_size; the parts may go to different replicas
            parts = await asyncio.gather(*(
                self.infer(model, {k: v[i:i + limit] for k, v in inputs.items()}, outputs, timeout_s)
                for i in range(0, batch, limit)))
            return {name: np.concatenate([p[name] for p in parts]) for name in outputs}
        tried: list[Replica] = []
        while True:
            replica = self._pick(tried)
            if replica is None:
                raise Unavailable(f"no Triton replica can serve {model} ({self.describe()})")
            tried.append(replica)
            replica.outstanding += 1
            try:
                return await replica.client.infer(model, inputs, outputs, timeout_s)
            except Unavailable as exc:
                self._lost(replica, exc)
                if len(tried) > 1 or self._pick(tried) is None:  # retried once already, or nowhere to go
                    raise
                if self.metrics is not None:
                    self.metrics.triton_failovers.labels(model).inc()
                log.debug("retrying a %s call on another Triton replica after %s failed: %s", model, replica.url, exc)
            finally:
                replica.outstanding -= 1

    # -- versions and limits

    async def plan(self, models: list[str]) -> dict[str, tuple[str, int]]:
        """Pin each model's version and read its ``max_batch_size`` from the first replica that answers;
        judge the others against it (see the class). No replica answers: UNAVAILABLE."""
        self._models = list(models)
        planned, misfit = None, None
        for r in self.replicas:
            try:
                got = await r.client.served(self._models)
            except FailedPrecondition as exc:  # a model config mobidem cannot use
                misfit = misfit or exc
                self._refuse(r, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - down now: judged when it is ready
                r.alive = r.up = False
                log.warning("Triton replica %s did not answer at start (%s); it is used once it is ready",
                            r.url, exc)
                continue
            if planned is None:
                planned = got
                self._versions = {m: v for m, (v, _) in got.items()}
                self._max_batch = {m: b for m, (_, b) in got.items()}
                r.client.pin(got)
                r.alive = r.up = True
                log.info("Triton replica %s pins the model versions %s", r.url, self._versions)
            else:
                self._judge(r, got)
        self._publish()
        if planned is None:
            if misfit is not None:
                raise misfit
            raise Unavailable(f"no Triton replica answered ({self.describe()})")
        return planned

    def _refuse(self, r: Replica, why: str) -> None:
        if r.refused != why:
            log.error("Triton replica %s is REFUSED and will not be used: %s", r.url, why)
        r.refused, r.up = why, False

    def _judge(self, r: Replica, got: dict[str, tuple[str, int]]) -> bool:
        problems = [f"{m} version {v} where the other replicas serve {self._versions[m]}"
                    for m, (v, _) in got.items() if v != self._versions[m]]
        problems += [f"{m} max_batch_size {b} < {self._max_batch[m]}"
                     for m, (_, b) in got.items() if b < self._max_batch[m]]
        if problems:
            self._refuse(r, "; ".join(problems))
            return False
        if self._models is not None and (r.refused or not r.up):
            log.warning("Triton replica %s is ready with the pinned model versions: back in rotation", r.url)
        r.client.pin({m: (self._versions[m], b) for m, (_, b) in got.items()})
        r.refused, r.up, r.alive, r.failures = "", True, True, 0
        return True

    async def _admit(self, r: Replica) -> bool:
        """A replica ready again after being out: planned afresh from what it serves now, then judged."""
        try:
            got = await r.client.served(self._models)
        except FailedPrecondition as exc:
            self._refuse(r, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - not answering yet: the next check tries again
            log.info("Triton replica %s is not ready to be judged yet: %s", r.url, exc)
            return False
        if not self._judge(r, got):
            return False
        if r.client.shm is not None:
            r.client.shm.generation += 1  # a restarted Triton lost the shared-memory registrations
        return True

    async def model_version(self, model: str) -> str:
        if model in self._versions:
            return self._versions[model]
        return await self._first().client.model_version(model)

    def max_batch(self, model: str) -> int:
        return self._max_batch.get(model, 0)

    def _first(self) -> Replica:
        return next((r for r in self.replicas if r.up and not r.refused),
                    next((r for r in self.replicas if not r.refused), self.replicas[0]))

    async def metadata(self, model: str) -> dict:
        return await self._first().client.metadata(model)

    async def statistics(self, model: str = "", replica: int = 0) -> dict:
        return await self.replicas[replica].client.statistics(model)

    # -- readiness

    async def ready(self, models: list[str] = ()) -> bool:
        """Whether any replica is in rotation, after checking each (the watchdog calls this every second)."""
        states = await asyncio.gather(*(self._check(r, models) for r in self.replicas))
        self._publish()
        return any(states)

    async def _check(self, r: Replica, models) -> bool:
        # in rotation: ready in the pinned versions; out or refused: ready in any, then judged again
        r.alive = await r.client.ready(models, pinned=r.up and not r.refused)
        if not r.alive:
            if r.up and self._models is not None:
                log.warning("Triton replica %s is not ready: out of rotation", r.url)
            r.up = False
            return False
        if self._models is None:  # not planned yet: readiness is all there is
            r.up = True
            return True
        if r.failures >= self.probe_failures:  # wedged: back only after a probe answers
            return False
        if not r.up or r.refused:
            return await self._admit(r)
        return True

    async def probe(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], timeout_s: float) -> bool:
        """One tiny inference on every live, not refused replica; whether any answered."""
        targets = [r for r in self.replicas if r.alive and not r.refused]
        answered = await asyncio.gather(*(self._probe_one(r, model, inputs, outputs, timeout_s) for r in targets))
        self._publish()
        return any(answered)

    async def _probe_one(self, r: Replica, model, inputs, outputs, timeout_s) -> bool:
        try:
            await r.client.infer(model, inputs, outputs, timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure counts
            r.failures += 1
            log.info("Triton probe of %s failed (%d in a row): %s", r.url, r.failures, exc)
            if r.failures >= self.probe_failures and r.up:
                r.up = False
                log.warning("Triton replica %s failed %d probes in a row: out of rotation", r.url, r.failures)
            return False
        r.failures = 0
        return True

    async def close(self) -> None:
        await asyncio.gather(*(r.client.close() for r in self.replicas), return_exceptions=True)


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
