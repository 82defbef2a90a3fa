"""Shared by the tests (and benchmarks) of plugin packages: install a plugin package when the Makefile has
not, build its models, run its own code on ONNX Runtime without Triton (to make parity inputs), read images.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from conftest import REPO, need


def _entry_point_installed(name: str) -> bool:
    return any(ep.name == name for ep in md.entry_points(group="mobidem.plugins"))


def installed_plugin(name: str, package_dir: Path):
    """The plugin ``name`` from the package in ``package_dir`` (installed here, editable and without
    dependencies, when the Makefile has not), with its models built into the main repository."""
    if not _entry_point_installed(name):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                               "-e", str(package_dir)], capture_output=True, text=True)
        importlib.invalidate_caches()
        if proc.returncode != 0 or not _entry_point_installed(name):
            need(False, f"the plugin package in {package_dir} cannot be installed: {proc.stderr[-2000:]}")
        if str(package_dir) not in sys.path:  # an editable install's path hook is read at interpreter start
            sys.path.insert(0, str(package_dir))
    from mobidem import modelbuild, plugins

    plugin = plugins.load(name)
    try:
        modelbuild.build(REPO / "model_repository", plugins=[name], echo=lambda _: None)
    except modelbuild.BuildError as exc:
        need(False, f"the {name} models cannot be built here: {exc}")
    return plugin


class LocalContext:
    """The plugin Context on ONNX Runtime sessions of the built models (no Triton): for parity inputs."""

    def __init__(self, *repositories: Path, threads: int = 0):
        self.repositories = repositories
        self.threads = threads  # ONNX Runtime intra-op threads; 0: its default
        self.sessions: dict = {}

    def session(self, model: str):
        import onnxruntime as ort

        if model not in self.sessions:
            path = next(r / model / "1" / "model.onnx" for r in self.repositories if (r / model).is_dir())
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            self.sessions[model] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self.sessions[model]

    async def infer(self, model, inputs, outputs):
        return dict(zip(outputs, self.session(model).run(list(outputs), inputs)))

    async def run(self, fn, *args):
        return fn(*args)


def rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"unreadable image {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
