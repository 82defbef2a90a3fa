"""Shared fixtures: the shared face data, the built models, a real managed Triton, a real server.

Tests that need ../shared/data/faces skip with a reason where it is absent (a stranger's clone),
but fail under CI=true, where it is always present.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "faces"
IN_CI = os.environ.get("CI") == "true"


def need(condition: bool, reason: str) -> None:
    """Skip (fail under CI=true) when a test's prerequisite is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def faces() -> Path:
    need(FACES.is_dir(), f"the shared face data is absent ({FACES}); it comes with the project's workspace")
    return FACES


def person_photos(faces: Path, person: str) -> list[Path]:
    return sorted((faces / "identities" / person).glob("*.jpg"), key=lambda p: (len(p.name), p.name))


@pytest.fixture(scope="session")
def model_repository() -> Path:
    from mobidem import modelbuild

    try:
        modelbuild.build(REPO / "model_repository", echo=lambda _: None)
    except modelbuild.BuildError as exc:
        need(False, f"models cannot be built here: {exc}")
    return REPO / "model_repository"


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton

    # everything in the built-in repository, and the default plugins' models (yunet: detector_confirm)
    repositories, _ = served_by_triton()
    server = ManagedTriton([model_repository, *repositories[1:]], tmp_path_factory.mktemp("triton"))
    server.start(timeout=300)
    yield server
    server.stop()


class RunningServer:
    """A MobidemServer on its own event loop thread, for tests that call it over gRPC."""

    def __init__(self, settings):
        from mobidem.app import MobidemServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = MobidemServer(settings)
        self.call(self.server.start(), 300)
        self.target = f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **kw):
        from mobidem.client import MobidemClient

        return MobidemClient(self.target, **kw)

    def stop(self):
        if not self.thread.is_alive():  # stopped already (a test restarts a server on the same data)
            return
        self.call(self.server.stop(grace=2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def spawn_server(triton_url: str, data: Path, log: Path, **settings) -> tuple[subprocess.Popen, str]:
    """`mobidem serve` as its own process (for kills, signals and its memory as the OS sees it) on
    ``triton_url``; returns when it serves. ``settings``: extra MOBIDEM_* settings by name."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MOBIDEM_DATA_DIR=str(data), MOBIDEM_TRITON_URL=triton_url,
               MOBIDEM_LISTEN=f"127.0.0.1:{port}", MOBIDEM_METRICS_LISTEN="")
    env.update({f"MOBIDEM_{k.upper()}": str(v) for k, v in settings.items()})
    proc = subprocess.Popen([sys.executable, "-m", "mobidem.cli", "serve"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
        if "serving on" in log.read_text(errors="replace"):
            return proc, f"127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")


def memory_kb(pid: int, field: str) -> int:
    """A process's VmRSS or VmHWM (peak) from /proc, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_failure(triton, tmp_path, **overrides) -> BaseException | None:
    """What a MobidemServer on ``triton`` raises while starting with these settings (None: it started)."""
    from mobidem import config
    from mobidem.app import MobidemServer

    env = {"MOBIDEM_DATA_DIR": str(tmp_path), "MOBIDEM_LISTEN": "127.0.0.1:0", "MOBIDEM_TRITON_URL": triton.grpc_url,
           "MOBIDEM_METRICS_LISTEN": ""}
    env.update({f"MOBIDEM_{k.upper()}": str(v) for k, v in overrides.items()})
    server = MobidemServer(config.load(None, environ=env))

    async def start():
        try:
            await asyncio.wait_for(server.start(), 60)
        finally:
            await server.stop(grace=0)

    try:
        asyncio.run(start())
    except Exception as exc:  # noqa: BLE001 - the caller judges it
        return exc
    return None


@pytest.fixture(scope="session")
def start_server(triton, tmp_path_factory):
    """Factory: a gateway on the session's Triton with its own data directory (stopped at the end)."""
    from mobidem import config

    started = []

    def start(**overrides) -> RunningServer:
        env = {"MOBIDEM_DATA_DIR": str(tmp_path_factory.mktemp("data")), "MOBIDEM_LISTEN": "127.0.0.1:0",
               "MOBIDEM_TRITON_URL": triton.grpc_url, "MOBIDEM_METRICS_LISTEN": "127.0.0.1:0",
               "MOBIDEM_TRITON_METRICS_PORT": "0"}
        env.update({f"MOBIDEM_{k.upper()}": str(v) for k, v in overrides.items()})
        server = RunningServer(config.load(None, environ=env))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def plugin_triton(model_repository: Path, workdir: Path, *names: str):
    """A started managed Triton serving the main repository and the plugins ``names``' own (their models
    built); skips (fails under CI=true) where a plugin is not installed or not buildable."""
    from mobidem import modelbuild, plugins
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton

    try:
        loaded = [plugins.load(n) for n in names]
        modelbuild.build(REPO / "model_repository", plugins=list(names), echo=lambda _: None)
    except Exception as exc:  # noqa: BLE001 - not installed or not buildable here
        need(False, f"the plugins {', '.join(names)} are not usable here (the Makefile installs them): {exc}")
    defaults, _ = served_by_triton()  # the default plugins' models too (yunet: detector_confirm)
    server = ManagedTriton(list(dict.fromkeys([model_repository, *defaults[1:], *(p.repository for p in loaded)])),
                           workdir)
    server.start(timeout=300)
    return server


@pytest.fixture(scope="session")
def mesh_triton(model_repository, tmp_path_factory):
    """A managed Triton serving the main repository and the face_mesh plugin's (liveness, web, plugins)."""
    server = plugin_triton(model_repository, tmp_path_factory.mktemp("mesh-triton"), "face_mesh")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def start_mesh_server(mesh_triton, tmp_path_factory):
    """Factory: a gateway with face_multitask + face_mesh on that Triton (stopped at the end)."""
    from mobidem import config

    started = []

    def start(**overrides) -> RunningServer:
        env = {"MOBIDEM_DATA_DIR": str(tmp_path_factory.mktemp("data")), "MOBIDEM_LISTEN": "127.0.0.1:0",
               "MOBIDEM_TRITON_URL": mesh_triton.grpc_url, "MOBIDEM_METRICS_LISTEN": "",
               "MOBIDEM_FACE_PLUGINS": "face_multitask,face_mesh"}
        env.update({f"MOBIDEM_{k.upper()}": str(v) for k, v in overrides.items()})
        started.append(RunningServer(config.load(None, environ=env)))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> RunningServer:
    return start_server()


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c


# --------------------------------------------------------------------------- PostgreSQL (issue 18)


def _pg_bin() -> Path | None:
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    return dirs[-1] if dirs else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster (Debian's postgresql package) in a temporary directory, on a free
    loopback port; as root its processes run as the postgres user. ``database()``: a fresh database URL."""

    def __init__(self, root: Path):
        import pwd

        self.bin = _pg_bin()
        need(self.bin is not None and (self.bin / "initdb").exists(),
             "PostgreSQL is not installed (make test-system-deps installs Debian's postgresql)")
        self.root = root
        self.data = root / "pgdata"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        # ICU en-US collation, as most real clusters sort text (not byte order): the gallery must not depend on it
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
                  "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US")
        self.start()
        self._n = 0

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, timeout=120)
        if done.returncode:
            raise AssertionError(f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr).decode()[-2000:]}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        self._n += 1
        name = f"gallery_{os.getpid()}_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres", params=()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def postgres():
    import shutil
    import tempfile

    # not under pytest's tmp_path: as root that is private (0700) and the postgres user could not enter it
    root = Path(tempfile.mkdtemp(prefix="mobidem-pg-"))
    try:
        cluster = PostgresCluster(root)
        yield cluster
        try:
            cluster.stop("immediate")
        except AssertionError:
            pass
    finally:
        shutil.rmtree(root, ignore_errors=True)
