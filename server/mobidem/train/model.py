"""The multi-task network: dlib's face-recognition ResNet rebuilt in PyTorch, with two heads.

The trunk follows the layer list that :func:`mobidem.convert.dlib_resnet.parse` returns, layer by
layer (con -> ``nn.Conv2d``, affine -> a learnable per-channel scale and shift, as dlib computes it at
inference; relu, max/avg pool, tag/skip/add_prev with dlib's zero padding at the END of channels and
spatial dimensions). Its output is the shared 256-D globally pooled feature.

Heads on the shared feature:

* identity: dlib's 128-D ``fc_no_bias`` (loaded from the dlib weights; output not L2-normalised,
  exactly dlib's descriptor before fine-tuning);
* expression: a linear layer to 7 logits in :data:`EXPRESSION_LABELS` order
  (newly initialised: dlib has no expression head).

Input: uint8 (or float 0..255) RGB chips NHWC [N, 150, 150, 3] from
:func:`mobidem.vision.align.align_chip`; normalised inside as dlib does, ``(x - mean_rgb) / 256``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobidem.convert.dlib_resnet import DlibLayer, DlibNet, parse

from mobidem.train.data import EXPRESSION_LABELS  # noqa: E402
N_EXPRESSIONS = len(EXPRESSION_LABELS)
FEATURE_DIM = 256
EMBEDDING_DIM = 128


class Affine(nn.Module):
    """dlib's affine layer: y = gamma * x + beta per channel (no batch statistics)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray):
        super().__init__()
        self.gamma = nn.Parameter(torch.as_tensor(np.asarray(gamma, np.float32)).clone())
        self.beta = nn.Parameter(torch.as_tensor(np.asarray(beta, np.float32)).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def _pad_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the END of the channel, row and column dims (dlib's add_prev rule)."""
    _, c, h, w = x.shape
    if (c, h, w) == tuple(shape):
        return x
    return F.pad(x, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))


class DlibTrunk(nn.Module):
    """Every dlib layer below the fc: chip -> shared 256-D pooled features."""

    def __init__(self, net: DlibNet):
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(net.input.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.layers = nn.ModuleList()
        self.ops: list[tuple[str, dict]] = []  # (kind, attrs); modules in self.layers for con/affine
        for layer in net.layers:
            if layer.kind == "fc":
                break
            if layer.kind == "con":
                w = layer.weights["weight"]
                conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(layer.attrs["kernel"]),
                                 stride=tuple(layer.attrs["stride"]), padding=tuple(layer.attrs["padding"]))
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(w))
                    conv.bias.copy_(torch.from_numpy(layer.weights["bias"]))
                self.layers.append(conv)
            elif layer.kind == "affine":
                self.layers.append(Affine(layer.weights["gamma"], layer.weights["beta"]))
            self.ops.append((layer.kind, dict(layer.attrs)))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = chips.permute(0, 3, 1, 2).float()
        x = (x - self.mean_rgb) / 256.0
        modules = iter(self.layers)
        tags: dict[int, torch.Tensor] = {}
        for kind, attrs in self.ops:
            if kind in ("con", "affine"):
                x = next(modules)(x)
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "max_pool":
                x = F.max_pool2d(x, attrs["window"], attrs["stride"], attrs["padding"])
            elif kind == "avg_pool":
                if tuple(attrs["window"]) == (0, 0):
                    x = x.mean(dim=(2, 3))
                else:
                    x = F.avg_pool2d(x, attrs["window"], attrs["stride"], attrs["padding"])
            elif kind == "tag":
                tags[attrs["id"]] = x
            elif kind == "skip":
                x = tags[attrs["id"]]
            elif kind == "add_prev":
                other = tags[attrs["id"]]
                shape = tuple(max(a, b) for a, b in zip(x.shape[1:], other.shape[1:]))
                x = _pad_to(x, shape) + _pad_to(other, shape)
            else:  # pragma: no cover
                raise ValueError(f"unsupported layer kind {kind}")
        return x  # [N, 256]


class MultiTaskNet(nn.Module):
    """Shared dlib trunk + identity head (128-D, dlib's fc) + expression head (7 logits)."""

    def __init__(self, net: DlibNet, n_expressions: int = N_EXPRESSIONS, seed: int = 0):
        super().__init__()
        self.trunk = DlibTrunk(net)
        fc = net.layers[-1]
        if fc.kind != "fc" or fc.attrs.get("has_bias"):
            raise ValueError("expected dlib's fc_no_bias as the last layer")
        w = fc.weights["weight"]  # [in, out]
        self.identity = nn.Linear(w.shape[0], w.shape[1], bias=False)
        with torch.no_grad():
            self.identity.weight.copy_(torch.from_numpy(w.T.copy()))
        g = torch.Generator().manual_seed(seed)
        self.expression = nn.Linear(w.shape[0], n_expressions)
        with torch.no_grad():
            self.expression.weight.copy_(torch.randn(n_expressions, w.shape[0], generator=g) * 0.01)
            self.expression.bias.zero_()

    def forward(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (embedding [N,128], expression logits [N,7], shared features [N,256])."""
        features = self.trunk(chips)
        return self.identity(features), self.expression(features), features

    def main_parameters(self):
        """Everything the main optimiser updates (trunk and both heads)."""
        return list(self.parameters())

    def to_dlibnet(self, template: DlibNet) -> DlibNet:
        """The trunk and identity head written back into dlib's layer list (for ONNX export)."""
        modules = iter(self.trunk.layers)
        layers = []
        for layer in template.layers:
            weights = {}
            if layer.kind == "con":
                m = next(modules)
                weights = {"weight": _np(m.weight), "bias": _np(m.bias)}
            elif layer.kind == "affine":
                m = next(modules)
                weights = {"gamma": _np(m.gamma), "beta": _np(m.beta)}
            elif layer.kind == "fc":
                weights = {"weight": _np(self.identity.weight).T.copy()}
            layers.append(DlibLayer(layer.kind, dict(layer.attrs), weights))
        return DlibNet(template.input, layers, dict(template.loss))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32).copy()


DLIB_DISTRIBUTION = "face-recognition-models"
DLIB_FILE = "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"


def dlib_weights_path() -> Path:
    """The dlib ResNet weights file that the model build converts (in face-recognition-models)."""
    import importlib.metadata as md

    if os.environ.get("MOBIDEM_DLIB_DAT"):  # e.g. on a GPU host without face-recognition-models
        return Path(os.environ["MOBIDEM_DLIB_DAT"])
    try:
        path = Path(md.distribution(DLIB_DISTRIBUTION).locate_file(DLIB_FILE))
    except md.PackageNotFoundError:
        raise FileNotFoundError(f"{DLIB_DISTRIBUTION} is not installed (requirements/weights.txt)") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


def from_dlib(dat_path: str | os.PathLike | None = None, seed: int = 0) -> tuple[MultiTaskNet, DlibNet]:
    """A MultiTaskNet whose trunk and identity head are dlib's converted weights."""
    net = parse(dat_path or dlib_weights_path())
    return MultiTaskNet(net, seed=seed), net


def save_checkpoint(path: str | os.PathLike, model: MultiTaskNet, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike | None, dat_path=None, map_location="cpu") -> tuple[MultiTaskNet, DlibNet, dict]:
    """A model from a checkpoint written by ``train`` (None: the converted dlib weights)."""
    model, net = from_dlib(dat_path)
    meta: dict = {"source": "dlib"}
    if path is not None:
        state = torch.load(path, map_location=map_location, weights_only=False)
        model.load_state_dict(state["state_dict"])
        meta = state.get("meta", {})
    return model, net, meta
