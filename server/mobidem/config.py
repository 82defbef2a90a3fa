"""Server configuration: defaults, then a YAML file, then MOBIDEM_* environment variables, then flags.

Every field of :class:`Settings` can be set in all three places: ``listen: ...`` in the file,
``MOBIDEM_LISTEN=...`` in the environment, ``--listen ...`` on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from mobidem.errors import InvalidArgument


def _default_repository() -> str:
    return str(Path(__file__).resolve().parents[2] / "model_repository")


def setting(default, help: str, factory=None):
    """A settings field with its one-line description (shown by ``mobidem serve --help``)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Settings:
    listen: str = setting("127.0.0.1:50051", "gRPC address (host:port; port 0: any free port)")
    data_dir: str = setting("~/.local/share/mobidem", "gallery database, audit log, managed Triton's work files")
    triton_url: str = setting("", "external Triton(s): host:port (gRPC), grpcs://host:port (TLS); several, comma-"
                                  "separated or a YAML list: one pool of replicas (docs/SCALING.md); empty: start "
                                  "the managed one")
    model_repository: str = setting(None, "Triton model repository (`mobidem models build` fills it)",
                                    factory=_default_repository)
    triton_start_timeout_s: float = setting(180.0, "seconds the managed Triton may take to have every model ready")
    detector: str = setting("blazeface", "detector plugin: blazeface | blazeface_short | blazeface_full | ...")
    detector_confirm: str = setting("yunet", "a second detector plugin that must also find a face the detector "
                                    "scores below detector_confirm_below, searching near its box, for it to count "
                                    "(BlazeFace's false faces score low: docs/ACCURACY.md, \"A second opinion\"); "
                                    "empty: off")
    detector_confirm_below: float = setting(0.7, "faces the detector scores below this need detector_confirm")
    detector_confirm_min_score: float = setting(0.3, "the score detector_confirm's face near the box needs")
    face_plugins: str = setting("face_multitask", "face plugins, comma-separated (e.g. face_multitask,face_mesh)")
    track_expression_plugin: str = setting(
        "fer_xception", "tracked streams: expression plugin for faces not embedded in a frame (when the "
                        "face plugins' expression comes from the embedder)")
    track_lost_s: float = setting(1.0, "tracked streams: a face unseen this long (capture time) ends its track")
    track_iou_min: float = setting(0.3, "tracked streams: box overlap (IoU) with its track that continues it")
    track_embed_every_frames: int = setting(15, "tracked streams: a tracked face is embedded again at least "
                                                "every this many frames")
    track_embed_every_s: float = setting(1.0, "tracked streams: ... and at least this often (capture time)")
    track_quality_gain: float = setting(1.25, "tracked streams: ... and when its quality beats the track's best "
                                              "embedded one by this factor")
    track_detect_every_frames: int = setting(
        5, "tracked streams: whole-image detection on every this many frames; in between each tracked face "
           "is looked for near where it is expected (1: whole-image detection on every frame)")
    operating_point: str = setting("far_1e-3", "default operating point of the calibration (far_1e-3 | far_1e-2)")
    calibration: str = setting("", "calibration JSON of the embedder (bench/accuracy.py writes it); empty: the one "
                                   "shipped for it")
    fallback_embedder: str = setting(
        "", "a migration between embedders: the old embedder plugin (e.g. face_multitask). Enrolment stores templates "
            "of both; Identify/Verify fall back to it for identities without a template of the primary one "
            "(docs/PLUGINS.md, \"Embedders\"); empty: none")
    fallback_calibration: str = setting("", "calibration JSON of fallback_embedder; empty: the one shipped for it")
    keep_enrolment_images: bool = setting(
        False, "keep every enrolment photo (PNG, encrypted with the template key when one is set, deleted with its "
               "identity) so that `mobidem gallery reembed` can make templates of a new embedder; off: photos are "
               "discarded once embedded (docs/SECURITY.md)")
    allow_uncalibrated_embedder: bool = setting(
        False, "start even when the served embedder differs from the one the calibration was computed for")
    max_message_bytes: int = setting(16 * 1024 * 1024, "largest request message (and encoded image), in bytes")
    max_image_side: int = setting(8192, "largest image side in pixels (checked from the header before decoding)")
    max_image_pixels: int = setting(50_000_000, "most pixels per image (a 48-MP photo fits; checked before decoding)")
    detect_max_side: int = setting(2160, "the detector sees images shrunk to at most this side (bounded cost)")
    # frames held per stream when the client does not say: with backpressure (a file, a batch job) more
    # frames in flight buy throughput (one 640x360 stream: 119 frames/s at 8 against 106 at 4, measured);
    # with latest-frame-wins (a live camera) fewer keep the answer fresh under overload
    default_in_flight: int = setting(8, "frames a backpressure stream holds when the client does not say")
    default_in_flight_latest: int = setting(4, "frames a latest-frame-wins stream holds when the client does not say")
    max_in_flight: int = setting(32, "most frames a stream may ask to hold")
    max_streams_per_client: int = setting(16, "open Stream calls per client (API key, else one connection)")
    max_streams: int = setting(256, "open Stream calls of all clients together")
    stream_idle_timeout_s: float = setting(60.0, "a stream that sends nothing for this long is closed; 0: never")
    shutdown_grace_s: float = setting(10.0, "SIGTERM: in-flight calls get this long to finish")
    grpc_max_connection_age_s: float = setting(
        0.0, "a client connection older than this is told to go (GOAWAY), so clients reconnect and a balancer "
             "spreads them again; 0: never (docs/SCALING.md)")
    grpc_max_connection_age_grace_s: float = setting(
        30.0, "calls still open on such a connection get this long, then end UNAVAILABLE (a client that "
              "resumes its stream goes on elsewhere)")
    image_threads: int = setting(2, "threads that decode and warp images")
    idempotency_retention_s: float = setting(7 * 24 * 3600.0, "how long idempotency keys are kept (purged hourly)")
    metrics_listen: str = setting("127.0.0.1:9095", "HTTP /metrics, /healthz, /readyz (host:port); empty: off")
    triton_grpc_port: int = setting(0, "managed Triton's gRPC port on 127.0.0.1 (0: any free port)")
    triton_http_port: int = setting(0, "managed Triton's HTTP port on 127.0.0.1 (0: any free port)")
    triton_metrics_port: int = setting(0, "managed Triton's own Prometheus metrics port (0: any free port)")
    triton_probe_interval_s: float = setting(5.0, "how often a tiny inference checks that Triton answers; 0: never")
    triton_probe_timeout_s: float = setting(10.0, "a probe inference that takes longer than this has failed")
    triton_probe_failures: int = setting(3, "failed probes in a row after which Triton counts as wedged "
                                            "(not ready; a managed one is restarted)")
    triton_shared_memory: str = setting("auto", "tensors via system shared memory: on | off | auto (on for the "
                                                "managed Triton or a loopback URL)")
    triton_tls_ca: str = setting("", "PEM CA that signed the grpcs:// Tritons' certificates (empty: the system's "
                                     "roots)")
    triton_tls_cert: str = setting("", "PEM client certificate for grpcs:// Tritons that require one (mutual TLS)")
    triton_tls_key: str = setting("", "PEM private key of triton_tls_cert")
    log_level: str = setting("INFO", "DEBUG | INFO | WARNING | ERROR")
    log_format: str = setting("text", "text | json (JSON lines with request, stream and frame ids)")
    # security (docs/SECURITY.md)
    tls_cert: str = setting("", "PEM server certificate (chain); with tls_key: TLS")
    tls_key: str = setting("", "PEM private key of tls_cert")
    tls_client_ca: str = setting("", "PEM CA: clients must present a certificate it signed (mutual TLS)")
    api_keys_file: str = setting("", "hashed API keys with roles (`mobidem keys add`); empty: auth OFF")
    auth_exempt_health: bool = setting(True, "grpc.health.v1 needs no key")
    auth_exempt_reflection: bool = setting(False, "server reflection needs no key (default: any role's key)")
    template_key_file: str = setting("", "file with the 256-bit key (hex/base64) encrypting templates at rest")
    template_key: str = setting("", "the same key inline; prefer the env MOBIDEM_TEMPLATE_KEY to a flag")
    gallery_url: str = setting("", "the gallery's database: empty = SQLite in data_dir; postgresql://user@host:port/"
                                   "db = PostgreSQL shared by several gateways (password: PGPASSWORD or ~/.pgpass; "
                                   "docs/SCALING.md)")
    gallery_pool_size: int = setting(4, "PostgreSQL gallery: connections in this gateway's pool")
    gallery_timeout_s: float = setting(5.0, "PostgreSQL gallery: seconds to connect or wait for a pooled "
                                            "connection before a call fails UNAVAILABLE")
    gallery_sync_interval_s: float = setting(1.0, "PostgreSQL gallery: the change log is read at least this "
                                                  "often even without a notification")
    gallery_ann: str = setting("", "approximate 1:N search for large galleries: empty = exact search only; ivf = "
                                   "a FAISS IVF index proposes candidates in segments of at least "
                                   "gallery_ann_min_templates templates (needs mobidem[ann]; docs/SCALING.md)")
    gallery_ann_min_templates: int = setting(200_000, "gallery_ann: a segment (one embedder version) this large "
                                                      "gets the approximate index when the gallery is loaded")
    gallery_ann_nprobe: int = setting(256, "gallery_ann: IVF lists searched per probe (more: higher recall, slower)")
    gallery_snapshot_path: str = setting("", "PostgreSQL gallery: an index snapshot file; a gateway starts its "
                                              "index from it when it fits the database (then reads only the later "
                                              "changes) and writes it every gallery_snapshot_interval_s; empty: off")
    gallery_snapshot_interval_s: float = setting(3600.0, "PostgreSQL gallery: write the index snapshot this often "
                                                         "when the index changed; 0: only read it (`mobidem gallery "
                                                         "snapshot` writes it)")
    change_log_retention_s: float = setting(7 * 24 * 3600.0, "PostgreSQL gallery: changes older than this are "
                                            "trimmed from the change log (a gateway further behind reloads its index "
                                            "from a snapshot); 0 keeps them all")
    audit_log: str = setting("", "Verify/Identify audit database; empty: <data_dir>/audit.db")
    evidence_key_file: str = setting("", "Ed25519 key file signing evidence and audit checkpoints (`mobidem "
                                         "evidence keygen`); empty: <data_dir>/evidence-keys.json, made at first start")
    audit_checkpoint_interval_s: float = setting(300.0, "how often a signed checkpoint of the audit log's head is "
                                                        "written (also at start and shutdown); 0: only those")
    audit_retention_s: float = setting(0.0, "audit records and evidence older than this are purged (hourly, and "
                                            "by `mobidem audit purge`), leaving a signed purge record; 0: kept")
    audit_witness: str = setting("", "module:function countersigning each checkpoint (an RFC 3161 time-stamp or "
                                     "witness client; docs/SECURITY.md); empty: none")
    # the web page (docs/WEB.md)
    web_listen: str = setting("", "live-view web page and its WebSocket (host:port): HTTPS with tls_cert/tls_key, "
                                  "plain HTTP only on loopback; empty: off")
    web_max_fps: float = setting(15.0, "frames a second one web page may send; more are answered DROPPED, "
                                       "unprocessed (0: no bound)")
    web_max_message_bytes: int = setting(4 * 1024 * 1024, "largest WebSocket message (one JPEG frame) from a web "
                                                          "page; a larger one closes the socket (code 1009)")
    web_ceremony_ttl_s: float = setting(300.0, "how long a ceremony link (Ceremonies/CreateCeremony) may wait to be "
                                               "opened; each link works once")

    # liveness ceremonies (docs/LIVENESS.md)
    liveness_challenges: int = setting(3, "challenges per liveness ceremony (drawn from blink, turn left/right, "
                                          "look up, smile, open mouth)")
    liveness_window_s: float = setting(6.0, "capture-time seconds a person has to complete each challenge")
    liveness_neutral_window_s: float = setting(4.0, "seconds to return to neutral between challenges")
    liveness_min_face_px: float = setting(80.0, "smallest face (shorter box side, pixels) a ceremony accepts")
    liveness_max_failures: int = setting(5, "failed ceremonies per API key and per identity within "
                                            "liveness_failure_window_s, then RESOURCE_EXHAUSTED (0: no limit)")
    liveness_failure_window_s: float = setting(180.0, "the window of liveness_max_failures, seconds")
    liveness_clock_slack_s: float = setting(1.0, "how far a ceremony's capture times may run ahead of the "
                                                 "server's clock (frames sent faster than captured)")
    liveness_test_mode: bool = setting(False, "TESTS ONLY: accept LivenessOptions.test_seed (a known challenge "
                                              "sequence, no clock check); never in production")

    def tracking(self):
        from mobidem.tracking import TrackingConfig

        return TrackingConfig(iou_min=self.track_iou_min, lost_s=self.track_lost_s,
                              embed_every_frames=self.track_embed_every_frames,
                              embed_every_s=self.track_embed_every_s, quality_gain=self.track_quality_gain,
                              detect_every_frames=self.track_detect_every_frames)

    @property
    def triton_urls(self) -> list[str]:
        return [u for u in self.triton_url.replace(",", " ").split() if u]

    @property
    def face_plugin_names(self) -> list[str]:
        return [n.strip() for n in self.face_plugins.split(",") if n.strip()]

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))


def _coerce(field: dataclasses.Field, value, source: str):
    if isinstance(value, list) and field.type in (str, "str"):  # a YAML list (triton_url): comma-separated
        value = ",".join(str(v) for v in value)
    if field.type in (bool, "bool"):
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise InvalidArgument(f"{source}: {field.name} must be true or false, got {value!r}")
        return text in ("true", "1", "yes", "on")
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float, "str": str}.get(field.type, str)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{source}: {field.name} must be {kind.__name__}, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with settings")
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"{f.metadata['help']} (env MOBIDEM_{f.name.upper()})")


def load(args: argparse.Namespace | None = None, environ: dict | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    values: dict = {}
    config_file = getattr(args, "config", None) or environ.get("MOBIDEM_CONFIG")
    known = {f.name: f for f in fields(Settings)}
    if config_file:
        data = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(data, dict):
            raise InvalidArgument(f"{config_file}: expected a mapping of settings")
        unknown = set(data) - set(known)
        if unknown:
            raise InvalidArgument(f"{config_file}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        values.update({k: _coerce(known[k], v, config_file) for k, v in data.items()})
    for name, f in known.items():
        env = environ.get(f"MOBIDEM_{name.upper()}")
        if env is not None:
            values[name] = _coerce(f, env, f"MOBIDEM_{name.upper()}")
        flag = getattr(args, name, None) if args is not None else None
        if flag is not None:
            values[name] = _coerce(f, flag, f"--{name.replace('_', '-')}")
    return Settings(**values)
