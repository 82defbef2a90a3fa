"""The managed Triton: the `tritonserver` that the nvidia-pytriton wheel ships, run as a child process.

``ManagedTriton`` finds the binary, prepares a backend directory whose Python backend stub matches
the running interpreter, starts Triton on 127.0.0.1 with the model repository, waits until every
model is ready and stops it cleanly. Triton is started in its own session with
``PR_SET_PDEATHSIG`` so that neither it nor its Python-backend stubs outlive the parent, even when
the parent is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SITE_PACKAGES_ENV = "MOBIDEM_SITE_PACKAGES"
SECRET_HEADER = "mobidem-triton-key"  # a locked Triton's restricted protocols need it (ManagedTriton.locked)


class TritonError(RuntimeError):
    """The managed Triton could not be found, started or made ready."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths of the Triton that the nvidia-pytriton distribution installed."""

    root: Path

    @classmethod
    def find(cls) -> "TritonInstall":
        try:
            import pytriton  # noqa: F401  (only to locate the wheel)
        except ImportError as exc:
            raise TritonError(
                "the nvidia-pytriton distribution is not installed; it carries tritonserver: "
                "pip install nvidia-pytriton"
            ) from exc
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        install = cls(root)
        if not install.binary.exists():
            raise TritonError(f"tritonserver binary missing at {install.binary}")
        return install

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub(self, version: str | None = None) -> Path:
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            available = sorted(p.name for p in (self.root / "python_backend_stubs").iterdir())
            raise TritonError(f"no Python backend stub for Python {version}; this wheel has {available}")
        return stub

    def prepare_backends(self, target: Path) -> Path:
        """A backend directory with the Python backend and the stub for this interpreter."""
        python = target / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in (self.root / "backends" / "python").iterdir():
            if item.is_file():
                _copy_if_changed(item, python / item.name)
        _copy_if_changed(self.stub(), python / "triton_python_backend_stub")
        return target


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def site_packages() -> list[str]:
    """The running environment's import paths, handed to model.py through the environment."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # looked up here, in the parent: the child may not dlopen between fork and exec
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec, while the parent may have other threads: only a call of
    the preloaded prctl (a dlopen here can find the loader lock held by one of those threads and abort
    the child, as seen once when the health watcher restarted Triton)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class ManagedTriton:
    """A tritonserver child process serving ``repository`` (one folder or several) on loopback ports."""

    repository: Path | list[Path]
    workdir: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    models: list[str] | None = None  # None: every model in the repository
    log_verbose: int = 0
    python_path: list[str] | None = None  # import paths for model.py (default: this environment's)
    extra_args: list[str] = field(default_factory=list)
    # locked (what `mobidem serve` starts): no HTTP endpoint, model control (load/unload) refused to
    # everyone, and inference, shared memory, model config and statistics only with this instance's
    # random secret in the header `auth_headers` names; health and metadata stay open
    locked: bool = False
    # TLS on gRPC (PEM files): grpc_url becomes grpcs://; tests use it for the gateway's TLS to Triton
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # the CA that signed tls_cert (what wait_ready trusts)
    # where Triton listens; `mobidem triton --listen 0.0.0.0` serves other machines (a Kubernetes pod),
    # and must not be locked then (the gateways there know no secret)
    address: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, init=False)
    _group: int | None = field(default=None, init=False)  # process group of the last start (Triton + stubs)

    def __post_init__(self) -> None:
        repos = self.repository if isinstance(self.repository, (list, tuple)) else [self.repository]
        self.repositories = [Path(r).resolve() for r in repos]
        self.repository = self.repositories[0]
        self.workdir = Path(self.workdir).resolve()
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        # the Python backend's shared-memory regions get a prefix of their own, so that two Tritons on
        # one machine never collide and a crashed one's leftovers can be removed before a restart
        self.shm_prefix = f"mobidem_{os.getpid()}_{self.grpc_port}_{secrets.token_hex(3)}_"  # one per instance
        self._secret = secrets.token_urlsafe(24)

    @property
    def auth_headers(self) -> dict[str, str] | None:
        """What a client sends to use a locked Triton (None: not locked)."""
        return {f"triton-grpc-protocol-{SECRET_HEADER}": self._secret} if self.locked else None

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs://' if self.tls_cert else ''}127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def command(self, install: TritonInstall) -> list[str]:
        backends = install.prepare_backends(self.workdir / "backends")
        cmd = [
            str(install.binary),
            *(f"--model-repository={r}" for r in self.repositories),
            f"--backend-directory={backends}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.tls_cert:
            cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls_cert}", f"--grpc-server-key={self.tls_key}"]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models]
        if self.locked:
            # model-repository (load, unload, index) needs a secret that nobody is told: refused to all
            cmd += ["--allow-http=false",
                    f"--grpc-restricted-protocol=model-repository:mobidem-model-control={secrets.token_urlsafe(24)}",
                    f"--grpc-restricted-protocol=inference,shared-memory,model-config,statistics,trace,logging:"
                    f"{SECRET_HEADER}={self._secret}"]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 120.0) -> "ManagedTriton":
        if self.running:
            return self
        install = TritonInstall.find()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._reap()  # what a crashed predecessor left behind: orphaned stubs, shared memory
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH", "")]))
        env[SITE_PACKAGES_ENV] = os.pathsep.join(self.python_path or site_packages())
        cmd = self.command(install)
        # the restricted protocols' secrets stay out of the log (whoever reads it could load models or infer)
        log.info("starting tritonserver: %s", re.sub(r"(mobidem-model-control|" + SECRET_HEADER + r")=\S+",
                                                    r"\1=<redacted>", " ".join(cmd)))
        # util-linux's setpriv sets PR_SET_PDEATHSIG and execs Triton, so no Python runs in the forked child
        # (with preexec_fn it does, and an abseil mutex another thread held at the fork aborted the child
        # when a gateway under load restarted a Triton); without setpriv, the preexec_fn
        setpriv = shutil.which("setpriv")
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd, stdout=logfile,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=None if setpriv else _die_with_parent, close_fds=True, start_new_session=True,
            )
        self._group = self.process.pid
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}", ssl=bool(self.tls_cert),
                                                  root_certificates=self.tls_ca or None)
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise TritonError(
                        f"tritonserver exited with status {self.process.returncode if self.process else None}; "
                        f"last log lines:\n{self.tail_log()}"
                    )
                try:
                    if client.is_server_ready(client_timeout=2):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        raise TritonError(f"tritonserver not ready after {timeout:.0f} s; last log lines:\n{self.tail_log()}")

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        if self._group is not None:
            try:
                os.killpg(self._group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._group = None
        shm = Path("/dev/shm")
        if shm.is_dir():
            for region in shm.glob(self.shm_prefix + "*"):
                region.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole process group (Triton and its stubs), SIGKILL what is left."""
        process, self.process = self.process, None
        if process is None:
            self._reap()
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the stubs share the process group; make sure none is left behind
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        self._reap()

    def kill(self) -> None:
        """SIGKILL tritonserver alone, as a crash would (for fault tests)."""
        if self.process is not None:
            self.process.kill()

    def __enter__(self) -> "ManagedTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
