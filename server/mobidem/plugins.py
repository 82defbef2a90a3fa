"""The plugin interface: how a model joins the server without the server changing.

A plugin brings one or more Triton models (their repository folders and their build step) and the
pre- and post-processing that turns frames or face crops into tensors and tensors into result
fields. Two kinds:

- ``DetectorPlugin``: a frame in, faces (box, keypoints, score) out. Exactly one runs per frame.
- ``FacePlugin``: aligned face chips (or the frame and its detections) in, per-face fields out.
  Standard fields have a typed place in the result: ``embedding`` (matched against the gallery)
  and ``expression`` (class probabilities, labels in ``labels``). Any other field goes into the
  face's ``extensions`` map as ``"<plugin>.<field>"`` (a number, a vector, points or text), so a
  new plugin needs no proto change.

Plugins are found through the ``mobidem.plugins`` entry-point group (``name = "module:Class"``).
The pipeline to run is configuration (``detector``, ``face_plugins``) and is validated at start:
unknown plugin, a model whose I/O differs from what Triton serves, two plugins filling one field.
Plugins know this interface, numpy and OpenCV; never gRPC, protobuf or the gallery.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np

from mobidem.errors import FailedPrecondition
from mobidem.vision.align import BLAZEFACE, ChipTemplate

ENTRY_POINT_GROUP = "mobidem.plugins"
STANDARD_FIELDS = ("embedding", "expression")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton datatype: UINT8, FP32, ...
    shape: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class ModelSpec:
    """A Triton model a plugin calls, as the plugin expects it to be served."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # float [4] x0, y0, x1, y1 in image pixels
    score: float
    keypoints: np.ndarray  # float [K, 2]; the first four: right eye, left eye, nose tip, mouth centre

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


class Context(Protocol):
    """What the host gives a plugin to do its work."""

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run a Triton model (batched by Triton with other frames' and streams' requests)."""

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """Run CPU work (OpenCV, numpy) off the event loop, in the host's thread pool."""


class Plugin:
    name: ClassVar[str]
    kind: ClassVar[str]
    models: ClassVar[tuple[ModelSpec, ...]] = ()
    # The folder that holds this plugin's Triton model folders; None: the server's model_repository.
    repository: ClassVar[Path | None] = None

    def build_targets(self) -> list:
        """The plugin's model build step: ``mobidem.modelbuild.Target`` objects."""
        return []


class DetectorPlugin(Plugin):
    kind = "detector"
    # True when ``detect_near`` is implemented: tracked streams then run the whole-image ``detect``
    # only on key frames and look for each tracked face near where it is expected in between
    detects_near: ClassVar[bool] = False
    # Where this detector's keypoints go in the embedder's aligned chip (mobidem.vision.align): each
    # detector places its keypoints a little differently, so a detector fits its own template
    # (bench/alignment_study.py); one that declares none gets BlazeFace's
    chip_template: ClassVar[ChipTemplate] = BLAZEFACE

    async def detect(self, image: np.ndarray, ctx: Context) -> list[Detection]:
        """Faces in an RGB uint8 image, best first."""
        raise NotImplementedError

    async def detect_near(self, image: np.ndarray, boxes: np.ndarray, ctx: Context,
                          min_score: float | None = None) -> list[Detection | None]:
        """For each expected face box [N, 4] (x0, y0, x1, y1), the face found near it, or None. ``min_score``:
        the score a face needs (default: the plugin's own threshold; a confirmation may ask for less or more)."""
        raise NotImplementedError


class FacePlugin(Plugin):
    kind = "face"
    fields: ClassVar[tuple[str, ...]] = ()
    labels: ClassVar[tuple[str, ...]] = ()  # class labels of the ``expression`` field

    async def process(self, image: np.ndarray, faces: Sequence[Detection], chips: np.ndarray,
                      ctx: Context) -> list[dict[str, Any]]:
        """Per face, field -> value. ``chips``: uint8 [N,150,150,3] aligned like dlib's chips.

        The default runs ``preprocess`` (in the thread pool), the plugin's first model, and
        ``postprocess``.
        """
        inputs = await ctx.run(self.preprocess, image, faces, chips)
        model = self.models[0]
        outputs = await ctx.infer(model.name, inputs, [o.name for o in model.outputs])
        return self.postprocess(outputs, image, faces)

    def preprocess(self, image: np.ndarray, faces: Sequence[Detection], chips: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, np.ndarray], image: np.ndarray,
                    faces: Sequence[Detection]) -> list[dict[str, Any]]:
        raise NotImplementedError


class PluginError(FailedPrecondition):
    """A configuration of plugins that cannot run; the message names the plugin and the problem."""


def available() -> dict[str, md.EntryPoint]:
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> Plugin:
    eps = available()
    if name not in eps:
        raise PluginError(f"unknown plugin {name!r}: installed plugins are {sorted(eps)} "
                          f"(entry-point group {ENTRY_POINT_GROUP!r})")
    try:
        cls = eps[name].load()
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to import: {exc}") from exc
    plugin = cls()
    if plugin.name != name:
        raise PluginError(f"plugin entry point {name!r} loads a plugin named {plugin.name!r}")
    return plugin


@dataclass(frozen=True)
class PluginSet:
    detector: DetectorPlugin
    face: tuple[FacePlugin, ...]
    # tracked streams: expression for the faces not embedded in a frame, when the configured
    # expression comes from the embedder (face_multitask); None: not needed or not configured
    track_expression: FacePlugin | None = None
    # a migration between embedders: the old embedder, run for enrolment and for identities that have no
    # template of the new one (mobidem.identity); never in streams. None: no migration
    fallback_embedder: FacePlugin | None = None
    # a second detector that must also find a face the detector is unsure of (Pipeline.detect); None: off
    confirmer: DetectorPlugin | None = None

    @classmethod
    def from_config(cls, detector: str, face_plugins: Sequence[str], track_expression: str = "",
                    fallback_embedder: str = "", confirm_detector: str = "") -> "PluginSet":
        det = load(detector)
        if not isinstance(det, DetectorPlugin):
            raise PluginError(f"plugin {detector!r} is a {det.kind} plugin; `detector` needs a detector plugin")
        confirmer = None
        if confirm_detector and confirm_detector != detector:
            confirmer = load(confirm_detector)
            if not isinstance(confirmer, DetectorPlugin) or not confirmer.detects_near:
                raise PluginError(f"detector_confirm {confirm_detector!r} must be a detector plugin that searches "
                                  "near given boxes (detects_near)")
        faces = []
        owner: dict[str, str] = {}
        for name in face_plugins:
            plugin = load(name)
            if not isinstance(plugin, FacePlugin):
                raise PluginError(f"plugin {name!r} is a {plugin.kind} plugin; `face_plugins` needs face plugins")
            for f in plugin.fields:
                if f in owner:
                    raise PluginError(f"plugins {owner[f]!r} and {name!r} both fill the field {f!r}; configure one")
                owner[f] = name
            faces.append(plugin)
        tracking = None
        expresser = next((p for p in faces if "expression" in p.fields), None)
        if track_expression and expresser is not None and "embedding" in expresser.fields:
            tracking = load(track_expression)
            if not isinstance(tracking, FacePlugin) or tuple(tracking.fields) != ("expression",):
                raise PluginError(f"track_expression_plugin {track_expression!r} must be a face plugin that fills "
                                  "`expression` alone")
        fallback = None
        if fallback_embedder:
            fallback = load(fallback_embedder)
            primary = owner.get("embedding")
            if not isinstance(fallback, FacePlugin) or "embedding" not in fallback.fields:
                raise PluginError(f"fallback_embedder {fallback_embedder!r} must be a face plugin that fills `embedding`")
            if primary is None:
                raise PluginError("fallback_embedder is set but no face plugin fills `embedding`: a fallback needs a "
                                  "primary embedder in face_plugins")
            if fallback.models[0].name == load(primary).models[0].name:
                raise PluginError(f"fallback_embedder {fallback_embedder!r} is the primary embedder's model; a fallback "
                                  "is another embedder (the one being migrated from)")
        return cls(det, tuple(faces), tracking, fallback, confirmer)

    @classmethod
    def from_settings(cls, settings) -> "PluginSet":
        """The plugins a gateway with these ``mobidem.config.Settings`` runs."""
        s = settings
        return cls.from_config(s.detector, s.face_plugin_names, s.track_expression_plugin,
                               s.fallback_embedder.strip(), s.detector_confirm.strip())

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        extra = tuple(p for p in (self.track_expression, self.fallback_embedder, self.confirmer) if p is not None)
        return (self.detector, *self.face, *extra)

    @property
    def model_names(self) -> list[str]:
        return list(dict.fromkeys(m.name for p in self.plugins for m in p.models))

    def filling(self, field: str) -> FacePlugin | None:
        return next((p for p in self.face if field in p.fields), None)

    def repositories(self) -> list[Path]:
        return list(dict.fromkeys(p.repository for p in self.plugins if p.repository is not None))


def served_by_triton(settings=None) -> tuple[list[Path], list[str]]:
    """What a Triton must serve for a gateway with these settings (default: the default ones): the
    model repositories (the built-in one, then each plugin's) and the model names. For everything that
    starts a Triton for a gateway (the managed Triton, test fixtures, benchmarks)."""
    from mobidem.config import Settings

    s = settings if settings is not None else Settings()
    plugins = PluginSet.from_settings(s)
    return [Path(s.model_repository), *plugins.repositories()], plugins.model_names


def check_io(plugin: Plugin, served: dict[str, dict]) -> None:
    """Compare a plugin's ModelSpecs with Triton's model metadata ({model: metadata-as-json})."""
    for spec in plugin.models:
        meta = served.get(spec.name)
        if meta is None:
            raise PluginError(f"plugin {plugin.name!r}: Triton does not serve its model {spec.name!r}")
        for direction, wanted in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            have = {t["name"]: (t["datatype"], tuple(int(d) for d in t["shape"])[1:]) for t in meta.get(direction, [])}
            for t in wanted:
                got = have.get(t.name)
                if got != (t.dtype, t.shape):
                    shown = f"{got[0]} {list(got[1])}" if got else "absent"
                    raise PluginError(
                        f"plugin {plugin.name!r}: model {spec.name!r} {direction[:-1]} {t.name!r} is "
                        f"{t.dtype} {list(t.shape)} for the plugin but {shown} in Triton's config"
                    )
