"""Approximate nearest-template search for large galleries (``gallery_ann: ivf``; docs/SCALING.md).

The exact index (gallery/index.py) stays what answers: its float32 rows give every reported distance, and
``only`` searches, cosine searches and ``identity_distance`` read them as before. For a segment (one
embedder version) of at least ``AnnConfig.min_templates`` templates, an ``IvfAccelerator`` proposes the
candidate rows of a Euclidean search instead of a product with every row: FAISS's
``IndexIVFScalarQuantizer`` (inverted lists of float16 vectors, L2), ``nlist_factor`` x sqrt(N) lists whose
centroids come from k-means (10 iterations on 20 templates per list) and are searched through an HNSW
graph, ``nprobe`` lists scanned per probe. The index then re-ranks the candidates' identities by their exact
distances, so what is approximate is only whether the nearest template is among the candidates (recall@1,
measured against exact search in docs/SCALING.md); a reported distance is exact.

The accelerator is trained once, when a loaded segment is large enough (``GalleryIndex.build_ann``), and
then kept in step with the segment: appended rows are added, a deletion removes the identity's rows.
FAISS ids are serial numbers that never change; ``row_of_serial`` / ``serial_of_row`` map them to the
segment's rows, which a deletion compacts. Its lock orders FAISS calls and the segment's changes; the
segment's writers take it inside the index's lock, searches alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .errors import GalleryError


@dataclass(frozen=True)
class AnnConfig:
    """``kind``: "ivf" (the only one); a segment of at least ``min_templates`` templates gets an accelerator
    when it is loaded; ``nprobe`` lists are searched per probe; ``nlist_factor`` x sqrt(N) lists."""

    kind: str = "ivf"
    min_templates: int = 200_000
    nprobe: int = 256
    nlist_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.kind != "ivf":
            raise GalleryError(f"unknown approximate index {self.kind!r}; known: ivf (or empty for exact search)")
        if self.min_templates < 1000 or self.nprobe < 1 or self.nlist_factor <= 0:
            raise GalleryError("gallery_ann: min_templates must be at least 1000, nprobe and nlist_factor positive")


def backend():
    """The FAISS module; a clear error when it is not installed."""
    try:
        import faiss
    except ImportError:
        raise GalleryError("gallery_ann needs FAISS: pip install 'mobidem[ann]' (faiss-cpu)") from None
    return faiss


class IvfAccelerator:
    def __init__(self, ivf, nprobe: int, serial_of_row: np.ndarray, next_serial: int) -> None:
        self.ivf = ivf
        self.nprobe = int(nprobe)
        self.lock = threading.Lock()
        self.rows = serial_of_row.shape[0]
        self._sor = np.empty(self.rows + max(1024, self.rows // 8), dtype=np.int64)  # spare room for appends
        self._sor[: self.rows] = serial_of_row
        self.next_serial = int(next_serial)
        self.row_of_serial = np.full(max(1024, self.next_serial), -1, dtype=np.int64)
        self.row_of_serial[serial_of_row] = np.arange(self.rows)
        self.set_nprobe(nprobe)

    @property
    def serial_of_row(self) -> np.ndarray:
        """int64 [rows]: the FAISS id of each row of the segment."""
        return self._sor[: self.rows]

    def set_nprobe(self, nprobe: int) -> None:
        """Lists scanned per probe (the HNSW over the centroids looks at twice as many, at least 64)."""
        faiss = backend()
        self.nprobe = int(nprobe)
        self.ivf.nprobe = self.nprobe
        quantizer = faiss.downcast_index(self.ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            quantizer.hnsw.efSearch = max(64, 2 * self.nprobe)

    @classmethod
    def train(cls, emb: np.ndarray, config: AnnConfig, seed: int = 18) -> IvfAccelerator:
        """An accelerator over the rows ``emb`` [n, dim] (float32), ids 0..n-1."""
        faiss = backend()
        n, dim = emb.shape
        nlist = max(1, min(n // 20, int(round(config.nlist_factor * np.sqrt(n)))))
        quantizer = faiss.IndexHNSWFlat(dim, 32)
        quantizer.hnsw.efConstruction = 40
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        ivf.cp.niter = 10
        ivf.cp.max_points_per_centroid = 20
        ivf.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = emb[np.sort(rng.choice(n, min(n, 20 * nlist), replace=False))]
        ivf.train(np.ascontiguousarray(sample))
        for i in range(0, n, 1_000_000):
            part = np.ascontiguousarray(emb[i:i + 1_000_000])
            ivf.add_with_ids(part, np.arange(i, i + part.shape[0], dtype=np.int64))
        return cls(ivf, config.nprobe, np.arange(n, dtype=np.int64), n)

    # -- kept in step with the segment (called with ``lock`` held)

    def add(self, embs: np.ndarray, first_row: int) -> None:
        if first_row != self.rows:
            raise GalleryError(f"accelerator out of step: row {first_row} appended after {self.rows} rows")
        m = embs.shape[0]
        serials = np.arange(self.next_serial, self.next_serial + m, dtype=np.int64)
        self.ivf.add_with_ids(np.ascontiguousarray(embs, dtype=np.float32), serials)
        need = self.next_serial + m
        if need > self.row_of_serial.shape[0]:
            grown = np.full(max(need, 2 * self.row_of_serial.shape[0]), -1, dtype=np.int64)
            grown[: self.row_of_serial.shape[0]] = self.row_of_serial
            self.row_of_serial = grown
        self.row_of_serial[serials] = np.arange(first_row, first_row + m)
        if first_row + m > self._sor.shape[0]:
            grown = np.empty(max(first_row + m, 2 * self._sor.shape[0]), dtype=np.int64)
            grown[:first_row] = self._sor[:first_row]
            self._sor = grown
        self._sor[first_row:first_row + m] = serials
        self.rows = first_row + m
        self.next_serial = need

    def compact(self, keep: np.ndarray, n_old: int) -> None:
        """The segment kept rows ``keep`` (ascending) of its ``n_old``; the others' templates are gone."""
        mask = np.ones(n_old, dtype=bool)
        mask[keep] = False
        gone = self.serial_of_row[:n_old][mask]
        if gone.shape[0]:
            self.ivf.remove_ids(backend().IDSelectorBatch(gone))
            self.row_of_serial[gone] = -1
        kept = self.serial_of_row[keep]
        self._sor = np.empty(kept.shape[0] + max(1024, kept.shape[0] // 8), dtype=np.int64)
        self._sor[: kept.shape[0]] = kept
        self.rows = kept.shape[0]
        self.row_of_serial[kept] = np.arange(self.rows)

    # -- search (called with ``lock`` held)

    def candidates(self, q: np.ndarray, m: int) -> np.ndarray:
        """Rows of (approximately) the ``m`` nearest templates to ``q``, nearest first."""
        _, serials = self.ivf.search(q.reshape(1, -1), int(m))
        serials = serials[0]
        return self.row_of_serial[serials[serials >= 0]]

    # -- snapshot files

    def serialize(self) -> tuple[dict, list[tuple[str, np.ndarray]]]:
        return ({"kind": "ivf", "nprobe": self.nprobe, "next_serial": self.next_serial},
                [("ann", backend().serialize_index(self.ivf)), ("ann_rows", self.serial_of_row.copy())])

    @staticmethod
    def load_index(meta: dict, read) -> object:
        """The FAISS index of a snapshot's accelerator section, drawn with ``read(n) -> bytes`` (streamed: no
        second copy of its bytes in memory)."""
        if meta.get("kind") != "ivf":
            raise GalleryError(f"unknown approximate index {meta.get('kind')!r} in the snapshot")
        faiss = backend()
        return faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 20))

    @classmethod
    def restore(cls, meta: dict, ivf, serial_of_row: np.ndarray, nprobe: int) -> IvfAccelerator:
        if ivf.ntotal != serial_of_row.shape[0]:
            raise GalleryError("the snapshot's approximate index does not hold its segment's rows")
        return cls(ivf, nprobe or meta["nprobe"], serial_of_row, meta["next_serial"])
