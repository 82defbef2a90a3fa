"""`mobidem serve`: assemble Triton (managed or external), the gallery, the pipeline and the gRPC server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
from tritonclient.utils import triton_to_np_dtype
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from mobidem import calibration, certs, imaging, modelbuild
from mobidem.api import auth as api_auth
from mobidem.api.analysis import FaceAnalysisServicer
from mobidem.api.drain import Drain, DrainInterceptor
from mobidem.api.errors import ObservingInterceptor
from mobidem.api.gallery import GalleryServicer
from mobidem.config import Settings
from mobidem.errors import FailedPrecondition, InvalidArgument, Unavailable
from mobidem.audit import AuditLog
from mobidem.evidence import checkpoints as evidence_checkpoints
from mobidem.evidence import keys as evidence_keys
from mobidem.evidence import records as evidence_records
from mobidem.gallery import AnnConfig, Gallery
from mobidem.gallery.ann import backend as ann_backend
from mobidem.gallery.crypto import load_key
from mobidem.identity import IdentityService
from mobidem.imaging import ImageLimits
from mobidem.managed_triton import ManagedTriton
from mobidem.metrics import Metrics, serve_http
from mobidem.pipeline import Pipeline, PipelineConfig
from mobidem.plugins import PluginSet, check_io
from mobidem.streaming import StreamStats
from mobidem.triton_client import TritonPool, is_local
from mobidem.v1 import mobidem_pb2, mobidem_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration.json"


def shipped_calibration(model: str) -> Path:
    """The shipped calibration file (data/calibration*.json) of the embedder ``model``; the default one when
    none is for it (the start then refuses it, naming both embedders)."""
    for path in sorted(DEFAULT_CALIBRATION.parent.glob("calibration*.json")):
        if calibration.load(path).model_name == model:
            return path
    return DEFAULT_CALIBRATION
SERVICES = ("mobidem.v1.FaceAnalysis", "mobidem.v1.Gallery", "mobidem.v1.Liveness", "mobidem.v1.Ceremonies")


class MobidemServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.managed: ManagedTriton | None = None
        self.server: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self.stats = StreamStats()
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.web = None  # mobidem.web.WebServer when web_listen is set
        self.drain = Drain()  # SIGTERM: refuse new calls, end what outlives the grace UNAVAILABLE
        self.web_port: int | None = None
        self.ready = False
        self._http = None
        self._monitor: asyncio.Task | None = None
        self._housekeeping: asyncio.Task | None = None
        self._audit_housekeeping: asyncio.Task | None = None

    def _liveness(self, s: Settings, limits: ImageLimits):
        """The liveness ceremony's servicer (docs/LIVENESS.md), its rules read from the settings."""
        from mobidem.api.liveness import LivenessServicer
        from mobidem.liveness.decision import Rules
        from mobidem.liveness.limits import FailureLimiter

        if s.liveness_test_mode:
            log.warning("LIVENESS TEST MODE IS ON (liveness_test_mode): clients may fix the challenge sequence "
                        "with a seed, so ceremonies can be replayed; never run this in production")
        rules = Rules(window_s=s.liveness_window_s, neutral_window_s=s.liveness_neutral_window_s,
                      min_face_px=s.liveness_min_face_px)
        return LivenessServicer(self.pipeline, self.identities, limits, rules, s.liveness_challenges, s.tracking(),
                                test_mode=s.liveness_test_mode,
                                limiter=FailureLimiter(s.liveness_max_failures, s.liveness_failure_window_s),
                                clock_slack_s=s.liveness_clock_slack_s, audit=self.audit)

    async def start(self) -> "MobidemServer":
        s = self.settings
        data = s.data_path
        private_dir(data)
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        # fails fast on a bad configuration
        plugins = PluginSet.from_settings(s)
        urls = s.triton_urls  # several: one pool of replicas (docs/SCALING.md)
        credentials = certs.triton_credentials(s.triton_tls_ca, s.triton_tls_cert, s.triton_tls_key)
        if not urls:
            if credentials is not None:
                raise InvalidArgument("triton_tls_* is set but triton_url is empty: the managed Triton listens "
                                      "on loopback only, without TLS; set triton_url to grpcs://host:port")
            self.managed = ManagedTriton([Path(s.model_repository), *plugins.repositories()], data / "triton",
                                         grpc_port=s.triton_grpc_port, http_port=s.triton_http_port,
                                         metrics_port=s.triton_metrics_port, models=plugins.model_names,
                                         locked=True)
            await asyncio.to_thread(self.managed.start, s.triton_start_timeout_s)
            urls = [self.managed.grpc_url]
            log.info("managed Triton ready on %s (metrics on 127.0.0.1:%d)", urls[0], self.managed.metrics_port)
        shm = s.triton_shared_memory.strip().lower()
        if shm not in ("on", "off", "auto"):
            raise InvalidArgument(f"triton_shared_memory must be on, off or auto, got {s.triton_shared_memory!r}")
        def use_shm(url: str) -> bool:
            return shm == "on" or (shm == "auto" and (self.managed is not None or is_local(url)))

        self.triton = TritonPool.from_urls(urls, metrics=self.metrics, shared_memory=use_shm,
                                           headers=self.managed.auth_headers if self.managed is not None else None,
                                           credentials=credentials, probe_failures=s.triton_probe_failures)
        url = self.triton.url
        log.info("Triton %s, tensors via %s", url, ", ".join(
            "system shared memory" if use_shm(u) else "gRPC" for u in urls))
        config = PipelineConfig(threads=s.image_threads, detect_max_side=s.detect_max_side,
                                confirm_below=s.detector_confirm_below if plugins.confirmer is not None else 0.0,
                                confirm_min_score=s.detector_confirm_min_score)
        self.pipeline = Pipeline(self.triton, plugins, config, metrics=self.metrics)
        if not await self.triton.ready(self.pipeline.models):
            raise Unavailable(f"Triton at {url} is not ready with models {self.pipeline.models}")
        served = {m: await self.triton.metadata(m) for m in self.pipeline.models}
        for plugin in plugins.plugins:
            check_io(plugin, served)
        planned = await self.triton.plan(self.pipeline.models)  # versions pinned, batch limits from the configs
        log.info("models (version, max batch): %s", planned)
        if s.gallery_url.strip():  # shared by several gateways (docs/SCALING.md); unreachable: refuse to start
            self.gallery = await asyncio.to_thread(shared_gallery, s, s.gallery_snapshot_interval_s)
        elif s.gallery_snapshot_path:
            raise FailedPrecondition("gallery_snapshot_path is set but gallery_url is not: index snapshots are for "
                                     "a PostgreSQL gallery (SQLite's gallery loads without one)")
        else:
            for name in ("gallery.db", "gallery.db-wal", "gallery.db-shm"):  # templates: private before SQLite opens
                private_file(data / name, create=name == "gallery.db")
            self.gallery = await asyncio.to_thread(Gallery.open, str(data / "gallery.db"), ann=gallery_ann(s),
                                                   template_key=load_key(s.template_key_file, s.template_key))
        points = calibration.load(s.calibration or shipped_calibration(
            self.pipeline.embedder_model if self.pipeline.embedder is not None else ""))
        if self.pipeline.embedder is not None:
            self._check_calibration(points, planned, self.pipeline.embedder)
        fallback_points = None
        if plugins.fallback_embedder is not None:  # a migration: the old embedder's own thresholds
            fallback_points = calibration.load(s.fallback_calibration or shipped_calibration(
                plugins.fallback_embedder.models[0].name))
            self._check_calibration(fallback_points, planned, plugins.fallback_embedder)
        models = [f"{m}:{await self.triton.model_version(m)}" for m in self.pipeline.models]
        self.signer = signer = await asyncio.to_thread(evidence_signer, s, data)
        model_info = evidence_records.model_descriptions([Path(s.model_repository), *plugins.repositories()],
                                                         {m: planned[m][0] for m in self.pipeline.models})
        self.audit = AuditLog(s.audit_log or data / "audit.db", models, signer=signer, model_info=model_info,
                              witness=evidence_checkpoints.load_witness(s.audit_witness))
        await asyncio.to_thread(self.audit.checkpoint)  # the head as found at start (after a crash: its tail)
        self.identities = IdentityService(self.gallery, self.pipeline, points, s.operating_point, self.metrics,
                                          audit=self.audit, fallback_points=fallback_points,
                                          keep_enrolment_images=s.keep_enrolment_images)
        self.metrics.gallery_identities.set_function(  # a shared gallery: from memory, a scrape must not need the DB
            self.gallery.count if self.gallery.follower is None else lambda: self.gallery.index.identity_count())
        self.metrics.gallery_templates.set_function(lambda: len(self.gallery.index))
        if self.pipeline.embedder is not None:
            self.identities.model_version = await self.triton.model_version(self.pipeline.embedder_model)
        if self.identities.fallback is not None:
            self.identities.fallback.version = await self.triton.model_version(self.identities.fallback.model_name)
        self.pipeline.matcher = self.identities

        await asyncio.to_thread(imaging.warm_up)
        limits = ImageLimits(max_encoded_bytes=s.max_message_bytes, max_side=s.max_image_side,
                             max_pixels=s.max_image_pixels, decode_min_side=s.detect_max_side // 2)
        options = [("grpc.max_receive_message_length", s.max_message_bytes + 64 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if s.grpc_max_connection_age_s > 0:  # long-lived streams behind a balancer (docs/SCALING.md)
            options += [("grpc.max_connection_age_ms", int(s.grpc_max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(s.grpc_max_connection_age_grace_s * 1000))]
        auth = api_auth.from_settings(s)  # inside the observer: auth errors are mapped and counted too
        interceptors = [ObservingInterceptor(self.metrics), DrainInterceptor(self.drain), auth]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        analysis = FaceAnalysisServicer(self.pipeline, limits, s.default_in_flight, s.max_in_flight, self.stats,
                                        self.metrics, s.max_streams_per_client, s.default_in_flight_latest,
                                        max_streams=s.max_streams, idle_timeout_s=s.stream_idle_timeout_s,
                                        tracking=s.tracking())
        mobidem_pb2_grpc.add_FaceAnalysisServicer_to_server(analysis, self.server)
        mobidem_pb2_grpc.add_GalleryServicer_to_server(
            GalleryServicer(self.identities, limits, jwks=lambda: (signer.jwks(), signer.kid)), self.server)
        liveness = self._liveness(s, limits)
        mobidem_pb2_grpc.add_LivenessServicer_to_server(liveness, self.server)
        from mobidem.api.ceremonies import CeremoniesServicer

        ceremonies = CeremoniesServicer(self.identities, s.liveness_test_mode)  # links to the web page (docs/WEB.md)
        mobidem_pb2_grpc.add_CeremoniesServicer_to_server(ceremonies, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [mobidem_pb2.DESCRIPTOR.services_by_name[n.split(".")[-1]].full_name for n in SERVICES]
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], self.server)
        tls = certs.server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
        self.port = self.server.add_secure_port(s.listen, tls) if tls else self.server.add_insecure_port(s.listen)
        if not self.port:
            raise Unavailable(f"cannot listen on {s.listen}")
        await self.server.start()
        if s.metrics_listen:
            host, _, port = s.metrics_listen.rpartition(":")
            jwks = {"/.well-known/jwks.json": lambda: json.dumps(signer.jwks()).encode()}
            self._http, self.metrics_port = serve_http(self.metrics, host or "127.0.0.1", int(port), lambda: self.ready,
                                                       json_routes=jwks)
        if s.web_listen:  # the web page's streams go through the same servicer (docs/WEB.md)
            from mobidem.web import WebServer

            self.web = ceremonies.web = WebServer(s, analysis, auth, liveness)
            self.web_port = await self.web.start()
            log.info("live view on %s", self.web.url)
        await self._set_ready(True)
        self._monitor = asyncio.ensure_future(self._watch_triton())
        self._housekeeping = asyncio.ensure_future(self._purge_idempotency())
        self._audit_housekeeping = asyncio.ensure_future(self._audit_rounds())
        log.info("mobidem serving gRPC on %s (port %d), metrics on %s", s.listen, self.port,
                 f"{s.metrics_listen.rpartition(':')[0]}:{self.metrics_port}" if self._http else "(off)")
        return self

    def _check_calibration(self, points: calibration.Calibration, planned: dict[str, tuple[str, int]],
                           embedder) -> None:
        """The thresholds hold only for the embedder they were computed with: refuse another one."""
        s = self.settings
        model = embedder.models[0].name
        metric = getattr(embedder, "metric", "euclidean")  # how the plugin's embeddings are compared
        if points.metric != metric:
            raise FailedPrecondition(f"the calibration for {model} compares by {points.metric} distance but the "
                                     f"{embedder.name} plugin's embeddings compare by {metric}: use its own calibration")
        repositories = [Path(s.model_repository), *self.pipeline.plugins.repositories()]
        version = planned[model][0]
        # the ONNX file's sha256 from the build manifest, when it describes the version Triton serves
        sha = next((e["sha256"] for r in repositories
                    if (e := modelbuild.load_manifest(r)["models"].get(model))
                    and e.get("file", "").split("/")[-2:-1] == [version]), "")
        problem = calibration.embedder_mismatch(points, model, version, sha)
        if problem is None:
            return
        advice = ("recalibrate on labelled pairs with `python bench/accuracy.py --calibration FILE` and pass "
                  "--calibration FILE, or set allow_uncalibrated_embedder to use these thresholds anyway")
        if not s.allow_uncalibrated_embedder:
            raise FailedPrecondition(f"{problem}: its thresholds would not mean what they say; {advice}")
        log.warning("%s; allow_uncalibrated_embedder is set, so its thresholds are used anyway", problem)

    async def _set_ready(self, ready: bool) -> None:
        if ready != self.ready and self._monitor is not None:
            log.warning("Triton is %s: health %s", "ready" if ready else "NOT ready",
                        "SERVING" if ready else "NOT_SERVING")
        self.ready = ready
        self.metrics.triton_up.set(1 if ready else 0)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *SERVICES):
            await self.health.set(service, status)

    async def _watch_triton(self, interval: float = 1.0) -> None:
        """Health follows Triton: its readiness, and whether a tiny inference actually completes (a
        wedged Triton can say ready while every request hangs). A managed Triton that died, or that
        fails ``triton_probe_failures`` probes in a row, is restarted with backoff."""
        backoff = 1.0
        failures = 0
        probe_every = self.settings.triton_probe_interval_s  # 0: readiness only
        next_probe = 0.0
        # the probe: one inference of the detector's first model on a blank input (planned once)
        spec = self.pipeline.plugins.detector.models[0]
        probe = (spec.name, {t.name: np.zeros((1, *t.shape), triton_to_np_dtype(t.dtype)) for t in spec.inputs},
                 [spec.outputs[0].name])
        while True:
            await asyncio.sleep(interval)
            try:
                if self.managed is not None and not self.managed.running:
                    await self._set_ready(False)
                    log.warning("managed Triton exited; restarting in %.0f s", backoff)
                    await asyncio.sleep(backoff)
                    try:
                        await asyncio.to_thread(self.managed.start, self.settings.triton_start_timeout_s)
                        backoff = 1.0
                        failures = 0
                    except Exception as exc:  # noqa: BLE001 - keep trying, with backoff
                        log.error("restarting Triton failed: %s", exc)
                        backoff = min(backoff * 2, 30.0)
                        continue
                ready = await self.triton.ready(self.pipeline.models)
                if probe_every > 0 and time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + probe_every
                    if await self._probe(*probe):  # some replica answered (each is judged in the pool)
                        failures = 0
                    else:  # not ready, or ready but not answering: both count
                        failures += 1
                        log.warning("Triton is not answering (%d check(s) in a row)", failures)
                    if failures >= self.settings.triton_probe_failures and self.managed is not None \
                            and self.managed.running:
                        log.error("managed Triton is wedged (%d failed checks): killing it to restart it", failures)
                        await asyncio.to_thread(self.managed.kill)
                        failures = 0
                await self._set_ready(ready and failures == 0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must not die
                log.exception("Triton watch failed")

    async def _probe(self, model: str, inputs: dict, outputs: list[str]) -> bool:
        """Whether one inference completes within triton_probe_timeout_s (on any live replica; the pool
        takes a replica that fails triton_probe_failures probes in a row out of rotation)."""
        try:
            return await self.triton.probe(model, inputs, outputs, timeout_s=self.settings.triton_probe_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure counts
            log.info("Triton probe failed: %s", exc)
            return False

    async def _purge_idempotency(self) -> None:
        """Forget idempotency keys older than ``idempotency_retention_s`` and, on a shared gallery, trim its
        change log to ``change_log_retention_s``: at start, then hourly (or every half retention, when that
        is shorter)."""
        retention = self.settings.idempotency_retention_s
        changes = self.settings.change_log_retention_s if self.gallery.follower is not None else 0.0
        while True:
            try:
                n = await asyncio.to_thread(self.gallery.store.purge_idempotency, retention)
                if n:
                    log.info("purged %d idempotency record(s) older than %.0f s", n, retention)
                if changes > 0:
                    n = await asyncio.to_thread(self.gallery.store.trim_changes, changes)
                    if n:
                        log.info("trimmed %d change(s) older than %.0f s from the gallery's change log", n, changes)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - housekeeping must not die; the next round retries
                log.exception("purging idempotency records or trimming the change log failed")
            await asyncio.sleep(max(0.2, min(3600.0, retention / 2, *([changes / 2] if changes > 0 else []))))

    async def _audit_rounds(self) -> None:
        """A signed checkpoint of the audit log every ``audit_checkpoint_interval_s`` (when its head
        moved), and with ``audit_retention_s`` a retention purge at start and then hourly."""
        s = self.settings
        every = s.audit_checkpoint_interval_s
        purge_every = max(1.0, min(3600.0, s.audit_retention_s / 2)) if s.audit_retention_s > 0 else None
        next_purge = time.monotonic()
        while True:
            try:
                if purge_every is not None and time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + purge_every
                    purged = await asyncio.to_thread(self.audit.purge, s.audit_retention_s)
                    if purged:
                        log.info("purged %d audit record(s) older than %.0f s (through record %d)", purged["count"],
                                 s.audit_retention_s, purged["through_seq"])
                if every > 0:
                    await asyncio.to_thread(self.audit.checkpoint)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - housekeeping must not die; the next round retries
                log.exception("audit checkpoint or purge failed")
            waits = [w for w in (every if every > 0 else None, purge_every) if w]
            await asyncio.sleep(min(waits) if waits else 3600.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds, then close."""
        for task in (self._monitor, self._housekeeping, self._audit_housekeeping):
            if task is not None:
                task.cancel()
        self.ready = False
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.web is not None:  # its sockets close first: their streams run on the gRPC servicer
            await self.web.stop()
        if self.server is not None:
            await self.drain.run(grace)  # new calls UNAVAILABLE; those in flight get the grace, then UNAVAILABLE
            await self.server.stop(0.5)
        if self._http is not None:
            self._http.shutdown()
        if getattr(self, "triton", None) is not None:
            await self.triton.close()
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()
        if getattr(self, "gallery", None) is not None:
            await asyncio.to_thread(self.gallery.close)
        if getattr(self, "audit", None) is not None:
            try:
                await asyncio.to_thread(self.audit.checkpoint)  # the head at shutdown, signed
            finally:
                self.audit.close()
        if self.managed is not None:
            await asyncio.to_thread(self.managed.stop)


def gallery_ann(s: Settings) -> AnnConfig | None:
    """The approximate search settings (None: exact only); refuses a kind it does not know or missing FAISS."""
    if not s.gallery_ann.strip():
        return None
    ann = AnnConfig(kind=s.gallery_ann.strip(), min_templates=s.gallery_ann_min_templates, nprobe=s.gallery_ann_nprobe)
    ann_backend()
    return ann


def shared_gallery(s: Settings, snapshot_interval_s: float = 0.0) -> Gallery:
    """The PostgreSQL gallery ``gallery_url`` names, with this gateway's key, pool, follower, index snapshot
    (written every ``snapshot_interval_s``; 0: only read) and approximate search settings."""
    return Gallery.from_url(s.gallery_url.strip(), template_key=load_key(s.template_key_file, s.template_key),
                            pool_size=s.gallery_pool_size, timeout_s=s.gallery_timeout_s,
                            sync_interval_s=s.gallery_sync_interval_s, snapshot_path=s.gallery_snapshot_path,
                            snapshot_interval_s=snapshot_interval_s, ann=gallery_ann(s))


def evidence_signer(s: Settings, data: Path) -> evidence_keys.Signer:
    """The evidence signing key: ``evidence_key_file``, else ``<data_dir>/evidence-keys.json`` (made
    on first start); a configured file that is missing or unreadable fails the start."""
    path = Path(s.evidence_key_file).expanduser() if s.evidence_key_file else data / "evidence-keys.json"
    if not s.evidence_key_file and not path.exists():
        kid = evidence_keys.create(path)
        log.info("made the evidence signing key %s in %s (mode 0600)", kid, path)
    try:
        return evidence_keys.Signer.load(path)
    except evidence_keys.KeyFileError as exc:
        raise FailedPrecondition(f"evidence_key_file: {exc}") from None


def private_dir(path: Path) -> None:
    """``path`` as a directory only its owner can enter (0700); a looser existing one is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("data directory %s was mode %o; setting 0700 (it holds face templates and keys)", path, mode)
        os.chmod(path, 0o700)


def private_file(path: Path, create: bool = False) -> None:
    """``path`` readable by its owner only (0600): created so, or tightened (with a warning) if looser."""
    if create:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    if not path.exists():
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was mode %o; setting 0600 (it holds face templates)", path, mode)
        os.chmod(path, 0o600)


async def reembed_gallery(settings: Settings, echo=print) -> dict[str, int]:
    """`mobidem gallery reembed`: for every identity with kept enrolment photos (keep_enrolment_images), the
    templates of each configured embedder it lacks (the primary one after a migration), made from those photos
    through the configured Triton. Runs a server without listeners; a SQLite gallery's serving gateway sees
    the new templates after its restart (a PostgreSQL gallery's gateways follow them at once). Returns the
    templates added per identity."""
    import dataclasses

    quiet = dataclasses.replace(settings, listen="127.0.0.1:0", metrics_listen="", web_listen="")
    server = MobidemServer(quiet)
    added: dict[str, int] = {}
    try:
        await server.start()
        embedders = ", ".join(e.label for e in server.identities.embedders)
        ids = await asyncio.to_thread(server.gallery.identities_with_enrolment_images)
        echo(f"{len(ids)} identities have kept enrolment photos; embedders: {embedders}")
        for identity_id in ids:
            added[identity_id] = await server.identities.reembed(identity_id)
            echo(f"{identity_id}: {added[identity_id]} template(s) added")
    finally:
        await server.stop(grace=0)
    return added


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    server = MobidemServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        print(f"mobidem: serving on {settings.listen}", flush=True)
        if server.web is not None:
            print(f"mobidem: live view on {server.web.url}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await server.stop(settings.shutdown_grace_s)  # in-flight calls get this long
