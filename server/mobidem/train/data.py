"""Training data: folder-per-label image sets -> aligned 150x150 chips, cached as .npz.

Layout (identities and expressions are separate datasets, as in the paper)::

    identities/<person>/<image>.jpg        expressions/<label>/<image>.jpg   (label in EXPRESSION_LABELS)

Chips come from the serving path itself: each image is decoded with :func:`mobidem.imaging.decode_encoded`,
its faces detected by :meth:`mobidem.pipeline.Pipeline.detect` through a real Triton (the server's
default detector plugin, ``blazeface``), and the LARGEST face aligned with :func:`mobidem.vision.align.align_chip`, as the
server's enrolment does. Training therefore sees exactly the chips the server embeds. This is
done once per dataset and cached (``<cache>/<name>.npz``, keyed on the files' paths, sizes and mtimes);
images without a face are listed in the cache and skipped. No torch here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPRESSION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer's order, as served
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DETECTOR = "blazeface"  # the server's default detector plugin (mobidem.config.Settings.detector)


def _plugins(detector: str = DETECTOR):
    from mobidem.plugins import PluginSet

    return PluginSet.from_config(detector, ["face_multitask"])


def natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def scan(root: str | Path) -> list[tuple[str, str]]:
    """(relative path, label) for every image under root/<label>/, in natural order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of <label>/<image> folders")
    items = []
    for d in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        for f in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f"{d.name}/{f.name}", d.name))
    if not items:
        raise FileNotFoundError(f"no images under {root}/<label>/")
    return items


def _fingerprint(root: Path, items: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for rel, label in items:
        st = (root / rel).stat()
        h.update(f"{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class ChipSet:
    """Aligned chips of one dataset with integer labels into ``names``."""

    chips: np.ndarray  # uint8 [N, 150, 150, 3]
    labels: np.ndarray  # int64 [N]
    names: list[str]  # label index -> label name
    paths: list[str]  # relative paths, one per chip

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "ChipSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ChipSet(self.chips[idx], self.labels[idx], self.names, [self.paths[i] for i in idx])

    def by_label(self) -> dict[int, np.ndarray]:
        return {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}


async def extract_chips(root: Path, rels: list[str], triton_url: str, concurrency: int = 4) -> list[np.ndarray | None]:
    """The largest face's chip of each image via Pipeline.detect + align_chip (None: no face)."""
    from mobidem.imaging import decode_encoded
    from mobidem.pipeline import Pipeline, PipelineConfig
    from mobidem.triton_client import TritonClient
    from mobidem.vision.align import align_chip

    client = TritonClient(triton_url, timeout_s=120)
    pipe = Pipeline(client, _plugins(), PipelineConfig())
    sem = asyncio.Semaphore(concurrency)

    async def one(rel: str):
        async with sem:
            image = decode_encoded((root / rel).read_bytes())
            found = await pipe.detect(image)
            if not found:
                return None
            best = max(found, key=lambda d: d.area)
            return align_chip(image, best.keypoints, template=pipe.plugins.detector.chip_template)[0]

    try:
        return await asyncio.gather(*(one(r) for r in rels))
    finally:
        pipe.close()
        await client.close()


class _Triton:
    """An external Triton (url) or a managed one on ``repository`` with the detectors only."""

    def __init__(self, url: str | None, repository: str | Path | None):
        self.url, self.repository, self.managed, self.tmp = url, repository, None, None

    def __enter__(self) -> str:
        if self.url:
            return self.url
        from mobidem.managed_triton import ManagedTriton
        from mobidem.modelbuild import default_repository

        self.tmp = tempfile.TemporaryDirectory(prefix="mobidem-train-triton-")
        self.managed = ManagedTriton(Path(self.repository or default_repository()), Path(self.tmp.name),
                                     models=[m.name for m in _plugins().detector.models])
        self.managed.start(timeout=300)
        return self.managed.grpc_url

    def __exit__(self, *exc) -> None:
        if self.managed is not None:
            self.managed.stop()
        if self.tmp is not None:
            self.tmp.cleanup()


def load_or_build(root: str | Path, cache: str | Path, triton_url: str | None = None,
                  repository: str | Path | None = None, echo=print) -> ChipSet:
    """The dataset's chips, from ``cache`` when it matches the files, else extracted through Triton."""
    root, cache = Path(root), Path(cache)
    if not root.exists() and cache.exists():  # cache only (e.g. copied to a GPU host without the images)
        echo(f"{root} is absent: using the cached chips in {cache} as they are")
        with np.load(cache, allow_pickle=False) as z:
            return ChipSet(z["chips"], z["labels"].astype(np.int64), [str(n) for n in z["names"]],
                           [str(p) for p in z["paths"]])
    items = scan(root)
    fp = _fingerprint(root, items)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fp:
                return ChipSet(z["chips"], z["labels"].astype(np.int64), [str(n) for n in z["names"]],
                               [str(p) for p in z["paths"]])
    echo(f"extracting chips of {len(items)} images under {root} through Triton ...")
    with _Triton(triton_url, repository) as url:
        chips = asyncio.run(extract_chips(root, [r for r, _ in items], url))
    names = list(dict.fromkeys(label for _, label in items))
    keep = [i for i, c in enumerate(chips) if c is not None]
    missing = [items[i][0] for i, c in enumerate(chips) if c is None]
    if missing:
        echo(f"no face found in {len(missing)} image(s): {', '.join(missing)}")
    out = ChipSet(
        np.stack([chips[i] for i in keep]) if keep else np.zeros((0, 150, 150, 3), np.uint8),
        np.array([names.index(items[i][1]) for i in keep], np.int64), names, [items[i][0] for i in keep],
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez_compressed(tmp, chips=out.chips, labels=out.labels, names=np.array(names), paths=np.array(out.paths),
                        missing=np.array(missing, dtype=str), fingerprint=np.array(fp))
    tmp.replace(cache)
    return out


def expression_targets(ds: ChipSet) -> np.ndarray:
    """Map the dataset's label names to EXPRESSION_LABELS indices (raises on an unknown label)."""
    unknown = [n for n in ds.names if n not in EXPRESSION_LABELS]
    if unknown:
        raise ValueError(f"expression folders {unknown} are not among {EXPRESSION_LABELS}")
    lut = np.array([EXPRESSION_LABELS.index(n) for n in ds.names], np.int64)
    return lut[ds.labels]


def split_identities(ds: ChipSet, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, test idx), split BY PERSON: no identity is in both."""
    people = np.unique(ds.labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(people)
    n_test = int(round(len(people) * test_fraction))
    test_people = set(perm[:n_test].tolist())
    test = np.array([i for i, l in enumerate(ds.labels) if int(l) in test_people], np.int64)
    train = np.array([i for i, l in enumerate(ds.labels) if int(l) not in test_people], np.int64)
    return train, test


def split_stratified(ds: ChipSet, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, test idx) with each label split in the same proportion (at least one each side if >= 2)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, idx in sorted(ds.by_label().items()):
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return np.array(sorted(train), np.int64), np.array(sorted(test), np.int64)
