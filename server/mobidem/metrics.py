"""Every Prometheus metric the gateway exports, in one place, on one registry per server.

Naming follows Prometheus conventions: ``mobidem_`` prefix, base units in the name (seconds,
bytes), ``_total`` counters. Label values are bounded sets (stage, model, reason, gRPC method and
code, decision outcome): never a stream id, identity or request id.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
STAGES = ("decode", "detect", "align", "embed", "match", "total")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.frames_received = Counter("mobidem_frames_received_total", "Stream frames received", registry=r)
        self.frames_processed = Counter("mobidem_frames_processed_total",
                                        "Stream frames answered with a result (status OK)", registry=r)
        self.frames_dropped = Counter("mobidem_frames_dropped_total", "Stream frames dropped, by reason",
                                      ["reason"], registry=r)
        self.frames_failed = Counter("mobidem_frames_failed_total", "Stream frames that failed, by gRPC status code",
                                     ["code"], registry=r)
        self.unconfirmed_faces = Counter("mobidem_faces_unconfirmed_total",
                                         "Faces the detector was unsure of that the second detector did not find "
                                         "(dropped)", registry=r)
        self.tracks_started = Counter("mobidem_tracks_started_total",
                                      "Face tracks started in tracked streams (splits included)", registry=r)
        self.track_splits = Counter("mobidem_track_splits_total",
                                    "Tracks split because a fresh embedding disagreed with the track", registry=r)
        self.embeddings_fresh = Counter("mobidem_track_embeddings_fresh_total",
                                        "Tracked faces embedded in their frame", registry=r)
        self.embeddings_skipped = Counter("mobidem_track_embeddings_skipped_total",
                                          "Tracked faces whose embedding was skipped (the track's identity reused)",
                                          registry=r)
        self.faces_detected = Counter("mobidem_faces_detected_total", "Faces found in analysed images", registry=r)
        self.active_streams = Gauge("mobidem_active_streams", "Open Stream calls", registry=r)
        self.in_flight = Gauge("mobidem_frames_in_flight", "Frames received whose result is not yet sent", registry=r)
        self.stage_seconds = Histogram("mobidem_stage_duration_seconds", "Time per pipeline stage per image",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.triton_batch = Histogram("mobidem_triton_request_batch_size", "Batch size of each request sent to Triton",
                                      ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.triton_seconds = Histogram("mobidem_triton_request_duration_seconds", "Triton inference call latency",
                                        ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.triton_errors = Counter("mobidem_triton_errors_total", "Failed Triton calls by model and status",
                                     ["model", "code"], registry=r)
        self.grpc_requests = Counter("mobidem_grpc_requests_total", "gRPC calls by method and status code",
                                     ["method", "code"], registry=r)
        self.grpc_seconds = Histogram("mobidem_grpc_request_duration_seconds", "gRPC call duration by method",
                                      ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.gallery_identities = Gauge("mobidem_gallery_identities", "Enrolled identities", registry=r)
        self.gallery_templates = Gauge("mobidem_gallery_templates", "Enrolled templates", registry=r)
        self.decisions = Counter("mobidem_decisions_total", "Verify and Identify decisions by outcome",
                                 ["kind", "outcome"], registry=r)
        self.triton_up = Gauge("mobidem_triton_up", "1 when Triton and every configured model are ready", registry=r)
        self.triton_replica_up = Gauge("mobidem_triton_replica_up", "1 when this Triton replica is in rotation "
                                       "(ready, answering, serving the pinned model versions)", ["replica"],
                                       registry=r)
        self.triton_failovers = Counter("mobidem_triton_failovers_total", "Triton calls retried on another replica "
                                        "after theirs failed UNAVAILABLE", ["model"], registry=r)
        for stage in STAGES:
            self.stage_seconds.labels(stage)

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage).observe(ms / 1000.0)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no per-scrape access log lines
        pass


def serve_http(metrics: Metrics, host: str, port: int, ready: Callable[[], bool],
               json_routes: dict[str, Callable[[], bytes]] | None = None) -> tuple[WSGIServer, int]:
    """/metrics (Prometheus), /healthz (liveness: the process answers) and /readyz (readiness:
    Triton and the gallery are ready) on one port, in a daemon thread; ``json_routes``: more paths,
    each answered with the JSON its function returns (the evidence keys' /.well-known/jwks.json)."""
    metrics_app = make_wsgi_app(metrics.registry)
    json_routes = dict(json_routes or {})

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path in json_routes:
            body = json_routes[path]()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ready\n" if ok else b"not ready\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /metrics, /healthz or /readyz\n"]

    server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True, name="mobidem-metrics").start()
    return server, server.server_port
