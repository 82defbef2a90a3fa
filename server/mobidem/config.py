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


@dataclass
class Settings:
    listen: str = "127.0.0.1:50051"            # gRPC address
    data_dir: str = "~/.local/share/mobidem"   # gallery database, managed Triton's work files
    triton_url: str = ""                       # external Triton (host:port, gRPC); empty: start the managed one
    model_repository: str = dataclasses.field(default_factory=_default_repository)
    triton_start_timeout_s: float = 180.0
    detector: str = "blazeface"                # detector plugin: blazeface | blazeface_short | blazeface_full | ...
    face_plugins: str = "face_multitask"       # face plugins, comma-separated (e.g. "face_multitask,face_mesh")
    operating_point: str = "far_1e-3"          # default verification threshold
    calibration: str = ""                      # calibration JSON; empty: the one shipped with mobidem
    max_message_bytes: int = 16 * 1024 * 1024
    max_image_side: int = 8192
    max_image_pixels: int = 40_000_000
    # frames held per stream when the client does not say: with backpressure (a file, a batch job) more
    # frames in flight buy throughput (one 640x360 stream: 119 frames/s at 8 against 106 at 4, measured);
    # with latest-frame-wins (a live camera) fewer keep the answer fresh under overload
    default_in_flight: int = 8
    default_in_flight_latest: int = 4
    max_in_flight: int = 32
    max_streams_per_client: int = 16           # open Stream calls per client (API key, else peer host)
    shutdown_grace_s: float = 10.0             # SIGTERM: in-flight calls get this long to finish
    image_threads: int = 2
    metrics_listen: str = "127.0.0.1:9095"    # HTTP /metrics, /healthz, /readyz; empty: off
    triton_grpc_port: int = 0                  # managed Triton's ports on 127.0.0.1 (0: any free port)
    triton_http_port: int = 0
    triton_metrics_port: int = 8002            # Triton's own Prometheus metrics (0: any free port)
    triton_shared_memory: str = "auto"         # tensors via system shared memory: on | off | auto (on for the
                                               # managed Triton or a 127.0.0.1/localhost URL; gRPC otherwise)
    log_level: str = "INFO"
    log_format: str = "text"                   # text | json
    # security (docs/SECURITY.md)
    tls_cert: str = ""                         # PEM server certificate (chain); with tls_key: TLS
    tls_key: str = ""                          # PEM private key of tls_cert
    tls_client_ca: str = ""                    # PEM CA: clients must present a certificate it signed (mutual TLS)
    api_keys_file: str = ""                    # hashed API keys with roles (`mobidem keys add`); empty: auth OFF
    auth_exempt_health: bool = True            # grpc.health.v1 needs no key
    auth_exempt_reflection: bool = False       # server reflection needs a key (any role)
    template_key_file: str = ""                # 256-bit key (hex/base64) encrypting templates at rest
    template_key: str = ""                     # the same key inline; prefer the env MOBIDEM_TEMPLATE_KEY to a flag
    audit_log: str = ""                        # Verify/Identify audit database; empty: <data_dir>/audit.db

    @property
    def face_plugin_names(self) -> list[str]:
        return [n.strip() for n in self.face_plugins.split(",") if n.strip()]

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))


def _coerce(field: dataclasses.Field, value, source: str):
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
                            help=f"(env MOBIDEM_{f.name.upper()})")


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
