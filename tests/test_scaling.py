"""Several Triton replicas behind one gateway (issue 18, docs/SCALING.md), on this machine, loopback only:
two real Tritons on the same model repository (the second over TLS), streams and Identify running through
one gateway while one Triton is killed with SIGKILL and started again, and a replica that serves another
model version, refused at start and when it comes back."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import person_photos, start_failure
from mobidem import certs, config
from mobidem.client import to_image, video_frames
from mobidem.v1 import mobidem_pb2 as pb

OK = pb.FrameResult.STATUS_OK


def _models() -> list[str]:
    from mobidem.plugins import served_by_triton

    return served_by_triton()[1]


def _repositories(repository) -> list:
    """The given built-in repository and the default plugins' (yunet for detector_confirm)."""
    from mobidem.plugins import served_by_triton

    return [repository, *served_by_triton()[0][1:]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.make_dev(tmp_path_factory.mktemp("triton-pki"))


def _managed(repository, workdir: Path, pki=None, grpc_port: int = 0):
    from mobidem.managed_triton import ManagedTriton

    tls = dict(tls_cert=str(pki["server"]), tls_key=str(pki["server-key"]), tls_ca=str(pki["ca"])) if pki else {}
    return ManagedTriton(_repositories(repository), workdir, grpc_port=grpc_port, models=_models(), **tls)


@pytest.fixture(scope="module")
def second_triton(model_repository, tmp_path_factory, pki):
    """A second real Triton on the same repository, serving gRPC over TLS (the first: the session's, plaintext)."""
    server = _managed(model_repository, tmp_path_factory.mktemp("triton-b"), pki)
    server.start(timeout=300)
    yield server
    server.stop()


def version_2_repository(model_repository: Path, root: Path) -> Path:
    """The same models, but the embedder served as version 2 (a rolling update half done): symlinks, no copy."""
    root.mkdir(parents=True, exist_ok=True)
    for model in _models():
        if model == "face_multitask":
            (root / model).mkdir()
            (root / model / "config.pbtxt").symlink_to(model_repository / model / "config.pbtxt")
            (root / model / "2").symlink_to(model_repository / model / "1", target_is_directory=True)
        elif (model_repository / model).is_dir():  # a plugin's model comes from its own repository
            (root / model).symlink_to(model_repository / model, target_is_directory=True)
    return root


def inferences(triton, pki=None) -> int:
    """Successful inferences on ``triton`` (all models), from its own statistics."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}", ssl=pki is not None,
                                              root_certificates=str(pki["ca"]) if pki else None)
    try:
        stats = client.get_inference_statistics("", as_json=True, client_timeout=10)
    finally:
        client.close()
    return sum(int(m.get("inference_stats", {}).get("success", {}).get("count", 0)) for m in stats["model_stats"])


def wait_for(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} (after {timeout:.0f} s)"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def hamilton(faces):
    return [to_image(f).encoded for f in video_frames(str(faces / "videos" / "short_hamilton_clip.mp4"), 48)]


class Load:
    """Paced streams and an Identify loop against one gateway, recording every outcome."""

    def __init__(self, server, frames, probe: Path, streams: int = 2):
        self.stop = threading.Event()
        self.results: list[list] = [[] for _ in range(streams)]
        self.identified: list[object] = []
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._stream, args=(server, frames, k)) for k in range(streams)]
        self.threads.append(threading.Thread(target=self._identify, args=(server, probe)))
        [t.start() for t in self.threads]

    def _stream(self, server, frames, k):
        def paced():
            for i in itertools.count():
                if self.stop.is_set():
                    return
                time.sleep(1 / 10)
                yield frames[i % len(frames)]
        try:
            with server.client() as c:
                for r in c.stream(paced(), timeout=240):
                    self.results[k].append(r)
        except BaseException as exc:  # noqa: BLE001 - judged by the test
            self.errors.append(exc)

    def _identify(self, server, probe):
        with server.client(timeout=30) as c:
            while not self.stop.is_set():
                try:
                    self.identified.append(c.identify(probe, top_k=1).match)
                except grpc.RpcError as exc:
                    self.identified.append(exc.code())
                time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        [t.join(60) for t in self.threads]
        assert not any(t.is_alive() for t in self.threads), "a stream or the Identify loop hung"


async def _plan_and_call(urls, credentials=None):
    """A pool of ``urls`` planned as a gateway does at start, then six calls and a readiness check: what it
    planned, each replica's refusal, the embedder's pinned version."""
    from mobidem.triton_client import TritonPool

    pool = TritonPool.from_urls(urls, credentials=credentials)
    try:
        assert await pool.ready(_models())
        planned = await pool.plan(_models())
        for _ in range(6):
            await pool.infer("face_multitask", {"chip": np.zeros((2, 150, 150, 3), np.uint8)}, ["embedding"])
        assert await pool.ready(_models())  # the watchdog's check does not let a refused one in either
        return planned, [r.refused for r in pool.replicas], await pool.model_version("face_multitask")
    finally:
        await pool.close()


def test_two_tritons_balance_fail_over_come_back_and_a_changed_version_is_refused(
        start_server, triton, second_triton, pki, faces, hamilton, model_repository, tmp_path):
    """One gateway on two Tritons: calls are spread over both; SIGKILL of one fails no frame and no
    Identify (in-flight calls are retried on the other), it is taken out of rotation, then started
    again and used again; restarted as a build serving another version of the embedder, it is refused
    and never used. Pools planned at start pin the versions of whichever replica answers first."""
    b_url = second_triton.grpc_url
    assert b_url.startswith("grpcs://")
    server = start_server(triton_url=f"{triton.grpc_url},{b_url}", triton_tls_ca=pki["ca"],
                          triton_probe_interval_s=1)
    pool = server.server.triton
    a_rep, b_rep = pool.replicas
    lin = faces / "identities/lin_manuel_miranda/facerecognition_1.jpg"
    with server.client() as c:
        c.enroll("Lin", [lin], face_index=0)
    a0, b0 = inferences(triton), inferences(second_triton, pki)
    load = Load(server, hamilton, lin)
    try:
        time.sleep(2.0)
        a1, b1 = inferences(triton), inferences(second_triton, pki)
        assert a1 - a0 > 20 and b1 - b0 > 20, f"calls not spread over both replicas: A +{a1 - a0}, B +{b1 - b0}"

        second_triton.kill()  # SIGKILL, as a crash
        killed = time.monotonic()
        wait_for(lambda: not b_rep.up, 10, "the killed Triton was not taken out of rotation")
        time.sleep(2.0)
        a2 = inferences(triton)
        assert a2 - a1 > 40, "calls did not go on through the other Triton"
        assert server.server.ready, "one live replica is enough to serve"

        second_triton.start(timeout=120)  # a new process on the same port
        back = wait_for(lambda: b_rep.up, 30, "the restarted Triton was not put back in rotation")
        b2 = inferences(second_triton, pki)  # a fresh process: its counts start at 0
        time.sleep(2.0)
        b3 = inferences(second_triton, pki)
        assert b3 - b2 > 10, "the restarted Triton is in rotation but not used"
        print(f"\nkilled -> back in rotation {time.monotonic() - killed:.1f} s (after its restart {back:.1f} s)")
        failed = [(r.sequence, r.error_message) for out in load.results for r in list(out) if r.status != OK]
        assert not failed, f"frames failed although another replica was in rotation: {failed[:3]}"

        # the same replica comes back serving the embedder as version 2: refused, never used
        port = second_triton.grpc_port
        second_triton.stop()
        wait_for(lambda: not b_rep.up, 10, "the stopped Triton was not taken out of rotation")
        changed = _managed(version_2_repository(model_repository, tmp_path / "v2"), tmp_path / "triton-v2", pki,
                           grpc_port=port)
        changed.start(timeout=120)
        try:
            wait_for(lambda: b_rep.refused, 30, "a replica serving another model version was not refused")
            assert "face_multitask version 2" in b_rep.refused and "1" in b_rep.refused
            c0 = inferences(changed, pki)
            time.sleep(2.0)
            assert inferences(changed, pki) == c0, "a refused replica was used"
            assert not b_rep.up and a_rep.up
            metrics = server.server.metrics
            assert metrics.triton_replica_up.labels(a_rep.url)._value.get() == 1
            assert metrics.triton_replica_up.labels(b_rep.url)._value.get() == 0
            # at start the first replica that answers pins the versions, whichever of the two comes first
            creds = certs.triton_credentials(str(pki["ca"]))
            planned, refused, pinned = asyncio.run(_plan_and_call([triton.grpc_url, changed.grpc_url], creds))
            assert planned["face_multitask"][0] == pinned == "1"
            assert refused[0] == "" and "face_multitask version 2" in refused[1]
            assert inferences(changed, pki) == c0, "a refused replica was used"
            planned, refused, pinned = asyncio.run(_plan_and_call([changed.grpc_url, triton.grpc_url], creds))
            assert pinned == "2" and refused[0] == "" and "face_multitask version 1" in refused[1]
        finally:
            load.finish()
            changed.stop()
    finally:
        load.finish()
        server.stop()  # its probe (every 1 s) would otherwise go on for the rest of the session
        second_triton.start(timeout=120)  # for the module's other tests
    assert not load.errors, load.errors
    for out in load.results:
        assert len(out) > 60 and [r.sequence for r in out] == list(range(1, len(out) + 1))
        failed = [(r.sequence, r.error_message) for r in out if r.status != OK]
        assert not failed, f"frames failed although another replica was in rotation: {failed[:3]}"
    assert len(load.identified) > 20
    assert all(getattr(m, "known", False) and m.display_name == "Lin" for m in load.identified), \
        [m for m in load.identified if not getattr(m, "known", False)][:3]


def test_tls_to_triton_settings(triton, second_triton, pki, tmp_path):
    """grpcs:// needs a CA that signed Triton's certificate; TLS settings without a grpcs:// Triton, or
    with the managed one, are refused with what to fix."""
    from mobidem.triton_client import TritonPool

    other = certs.make_dev(tmp_path / "other")

    async def plan(urls, ca):
        pool = TritonPool.from_urls(urls, credentials=certs.triton_credentials(ca))
        try:
            return await pool.plan(_models())
        finally:
            await pool.close()

    assert asyncio.run(plan([second_triton.grpc_url], str(pki["ca"])))["face_multitask"][0] == "1"
    with pytest.raises(Exception, match="no Triton replica answered"):
        asyncio.run(plan([second_triton.grpc_url], str(other["ca"])))  # an untrusted certificate
    error = start_failure(triton, tmp_path / "a", triton_tls_ca=pki["ca"])  # triton_url is plaintext
    assert "every triton_url is plaintext" in str(error)
    error = start_failure(triton, tmp_path / "b", triton_url="", triton_tls_ca=pki["ca"])
    assert "managed Triton listens on loopback only, without TLS" in str(error)


def test_triton_url_as_a_list(tmp_path):
    (tmp_path / "c.yaml").write_text("triton_url:\n  - triton-0:8001\n  - grpcs://triton-1:8001\n")
    from_yaml = config.load(None, environ={"MOBIDEM_CONFIG": str(tmp_path / "c.yaml")})
    assert from_yaml.triton_urls == ["triton-0:8001", "grpcs://triton-1:8001"]
    assert config.load(None, environ={"MOBIDEM_TRITON_URL": "a:1, b:2"}).triton_urls == ["a:1", "b:2"]
    assert config.load(None, environ={"MOBIDEM_TRITON_URL": "a:1"}).triton_urls == ["a:1"]
    assert config.load(None, environ={}).triton_urls == []


# ------------------------------------------------------------------ long-lived streams behind balancers


def _paced(frames, seconds: float, fps: float = 10):
    for i in range(int(seconds * fps)):
        time.sleep(1 / fps)
        yield frames[i % len(frames)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _active_streams(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("mobidem_active_streams "))


def test_max_connection_age_ends_streams_and_the_client_resumes(start_server, hamilton):
    """grpc_max_connection_age_s: a stream outliving its connection's age and grace ends UNAVAILABLE
    (so balancers get to spread clients again); with resume the client goes on, losing no frame."""
    from mobidem.v1 import mobidem_pb2 as pb_

    server = start_server(grpc_max_connection_age_s=1.5, grpc_max_connection_age_grace_s=1)
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            list(c.stream(_paced(hamilton, 6), timeout=60))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with server.client() as c:
        out = list(c.stream(_paced(hamilton, 6), timeout=60, resume=True))
    assert [r.sequence for r in out] == list(range(1, 61))
    assert all(r.status == pb_.FrameResult.STATUS_OK for r in out)


# ------------------------------------------------------------------ everything together, one machine


def test_postgres_three_gateways_two_tritons_with_kills(postgres, triton, second_triton, pki, faces, hamilton,
                                                        tmp_path):
    """The issue's acceptance run on loopback: PostgreSQL, two Tritons (one TLS), three gateway processes
    sharing the gallery; a client enrols every person (idempotency key, retried on another gateway after
    UNAVAILABLE) while a resuming stream runs through a client given all three gateways. During it:
    SIGKILL of the gateway holding the stream, SIGKILL of a Triton, a PostgreSQL restart. Afterwards no
    acknowledged enrolment is lost or doubled, every surviving gateway lists and identifies every person
    alike, and the stream, resumed on another gateway, answered every frame once, in order."""
    import uuid

    from conftest import spawn_server
    from mobidem.client import MobidemClient

    url = postgres.database()
    urls = f"{triton.grpc_url},{second_triton.grpc_url}"
    metrics = [_free_port() for _ in range(3)]
    gateways = [spawn_server(urls, tmp_path / f"g{i}", tmp_path / f"g{i}.log", gallery_url=url,
                             triton_tls_ca=pki["ca"], triton_probe_interval_s=1, metrics_listen=f"127.0.0.1:{port}")
                for i, port in enumerate(metrics)]
    targets = [t for _, t in gateways]
    people = sorted(p.name for p in (faces / "identities").iterdir())
    photo = {p: person_photos(faces, p)[0] for p in people}
    acknowledged: dict[str, str] = {}  # person -> identity id, once an Enroll returned
    errors: list[BaseException] = []
    stop = threading.Event()
    stream_out: list = []

    def enrol_all():
        try:
            clients = [MobidemClient(t, timeout=20) for t in targets]
            for i, person in enumerate(people):
                key = str(uuid.uuid4())
                for attempt in range(60):
                    c = clients[(i + attempt) % len(clients)]
                    try:
                        r = c.enroll(person, [photo[person]], face_index=0, idempotency_key=key)
                        acknowledged[person] = r.identity.id
                        break
                    except grpc.RpcError as exc:
                        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                            raise
                        time.sleep(0.2)
                time.sleep(0.15)
        except BaseException as exc:  # noqa: BLE001 - judged below
            errors.append(exc)

    def stream():
        try:
            def frames():
                for i in itertools.count():
                    if stop.is_set():
                        return
                    time.sleep(0.1)
                    yield hamilton[i % len(hamilton)]
            with MobidemClient(targets, timeout=60) as c:
                stream_out.extend(c.stream(frames(), timeout=240, resume=True, resume_attempts=10))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=enrol_all), threading.Thread(target=stream)]
    try:
        [t.start() for t in threads]
        wait_for(lambda: len(stream_out) >= 10, 60, "the stream did not start")
        holder = next(i for i, port in enumerate(metrics) if _active_streams(port) == 1)
        gateways[holder][0].kill()  # SIGKILL the gateway that holds the stream: the client resumes elsewhere
        killed_at = len(stream_out)
        time.sleep(1.5)
        second_triton.kill()  # SIGKILL a Triton
        time.sleep(1.5)
        postgres.stop("fast")  # and restart PostgreSQL under it all
        postgres.start()
        threads[0].join(240)
        assert not threads[0].is_alive(), "enrolment hung"
        stop.set()
        threads[1].join(60)
        assert not threads[1].is_alive(), "the stream hung"
        assert not errors, errors
        assert set(acknowledged) == set(people)
        stored = dict(postgres.execute("SELECT display_name, id FROM identities", url.rsplit("/", 1)[1]))
        assert stored == acknowledged, "an acknowledged enrolment is missing or duplicated in the database"
        time.sleep(1.0)  # the propagation bound
        assert len(stream_out) > killed_at + 10, "the stream did not go on after its gateway died"
        for target in [t for i, t in enumerate(targets) if i != holder]:
            with MobidemClient(target, timeout=30) as c:
                assert {i.id for i in c.list_identities()} == set(acknowledged.values())
                for person in people[::5]:
                    match = c.identify(photo[person], top_k=1, probe_face_index=0).match
                    assert match.known and match.identity_id == acknowledged[person], (target, person)
        assert len(stream_out) > 30 and [r.sequence for r in stream_out] == list(range(1, len(stream_out) + 1))
        assert all(r.status == OK for r in stream_out), \
            [(r.sequence, r.error_message) for r in stream_out if r.status != OK][:3]
    finally:
        stop.set()
        for proc, _ in gateways:
            proc.kill()
            proc.wait(10)
        if not second_triton.running:
            second_triton.start(timeout=120)


def test_the_managed_tritons_secrets_stay_out_of_the_log(model_repository, tmp_path, caplog):
    """The locked Triton's command line carries its secrets; the log line that shows it does not."""
    import logging

    from mobidem.managed_triton import ManagedTriton

    server = ManagedTriton(model_repository, tmp_path, models=["blazeface_short"], locked=True)
    with caplog.at_level(logging.INFO, logger="mobidem.managed_triton"):
        server.start(timeout=120)
    try:
        line = next(r.getMessage() for r in caplog.records if "starting tritonserver" in r.getMessage())
        secret = server.auth_headers["triton-grpc-protocol-mobidem-triton-key"]
        assert secret not in line and line.count("=<redacted>") == 2, line
        assert "--grpc-restricted-protocol=model-repository:mobidem-model-control=<redacted>" in line
    finally:
        server.stop()
