"""Exact in-memory 1:N search over the gallery's templates.

Templates are grouped in one segment per (model_name, model_version, dim); a probe is
compared only with the segment of its own embedder version, never across versions.
Each segment holds a float32 matrix plus precomputed squared norms, so a search is
one matrix-vector product, then ``argpartition`` for the candidates and an exact
float64 distance for the winners. The distance is the embedder's (``METRICS``):

* ``euclidean`` (dlib's ResNet): ||e - q||, from d² = ||e||² - 2 e·q + ||q||²;
* ``cosine`` (SFace): 1 - e·q / (||e|| ||q||), in [0, 2]; 0 is the same direction.

The caller says which (the embedder's calibration file records it); smaller is always nearer.

Concurrency: copy-on-write. Appends write rows past every published length (or into
a fresh, larger buffer); deletes build new compacted arrays. A search takes a
snapshot under the lock and computes without it, so searches run in parallel with
each other and with writers.

Large galleries (``ann``: gallery/ann.py): a segment of at least ``ann.min_templates``
rows gets an accelerator after a load (``build_ann``) that proposes the candidate
rows of a Euclidean search; the same exact re-ranking then gives the result. Its
FAISS calls hold the accelerator's lock (searches of that segment take turns there).
Exports and imports of the arrays (``export``, ``from_arrays``) serve index snapshot
files (gallery/snapshot.py).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from contextlib import nullcontext

import numpy as np

from .errors import InvalidArgument
from .records import DEFAULT_DIM, Match, SearchResult, TemplateRecord
from .ann import AnnConfig, IvfAccelerator
from .snapshot import IndexArrays

MAX_K = 1000
METRICS = ("euclidean", "cosine")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InvalidArgument(f"unknown embedding metric {metric!r}; known: {', '.join(METRICS)}")
    return metric


def _distances(rows: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distances of ``rows`` [n, dim] to ``q`` [dim]."""
    rows = rows.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(q)
        return 1.0 - (rows @ q) / np.maximum(norms, np.finfo(np.float64).tiny)
    diff = rows - q
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def distance(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> float:
    """The distance between two embeddings of one embedder (float64 arithmetic): Euclidean, or
    ``1 - cosine similarity`` for ``metric="cosine"``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise InvalidArgument(f"embedding dimension mismatch: {a.shape[0]} vs {b.shape[0]}")
    return float(_distances(a[None], b, check_metric(metric))[0])


class _Segment:
    """Templates of one embedder version. Rows [0, n) are immutable once published."""

    __slots__ = ("dim", "n", "emb", "sq", "codes", "tids", "members", "accel")

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.n = 0
        self.emb = np.empty((capacity, dim), dtype=np.float32)
        self.sq = np.empty(capacity, dtype=np.float32)
        self.codes = np.empty(capacity, dtype=np.int64)
        self.tids: list[str] = []
        self.members: dict[int, int] = {}  # identity code -> template count in this segment
        self.accel: IvfAccelerator | None = None  # candidate rows for large segments (gallery/ann.py)

    def _accel_lock(self):
        return self.accel.lock if self.accel is not None else nullcontext()

    def append(self, embs: np.ndarray, codes: np.ndarray, tids: list[str]) -> None:
        with self._accel_lock():
            if self.accel is not None:
                self.accel.add(embs, self.n)
            self._append(embs, codes, tids)

    def _append(self, embs: np.ndarray, codes: np.ndarray, tids: list[str]) -> None:
        m = embs.shape[0]
        need = self.n + m
        if need > self.emb.shape[0]:
            cap = max(need, 2 * self.emb.shape[0])
            emb = np.empty((cap, self.dim), dtype=np.float32)
            sq = np.empty(cap, dtype=np.float32)
            cd = np.empty(cap, dtype=np.int64)
            emb[: self.n] = self.emb[: self.n]
            sq[: self.n] = self.sq[: self.n]
            cd[: self.n] = self.codes[: self.n]
            self.emb, self.sq, self.codes = emb, sq, cd
        self.emb[self.n : need] = embs
        self.sq[self.n : need] = np.einsum("ij,ij->i", embs, embs)
        self.codes[self.n : need] = codes
        self.tids.extend(tids)
        for c in codes.tolist():
            self.members[c] = self.members.get(c, 0) + 1
        self.n = need  # publish last

    def remove_code(self, code: int) -> int:
        removed = self.members.pop(code, 0)
        if not removed:
            return 0
        with self._accel_lock():
            self._remove(code)
        return removed

    def _remove(self, code: int) -> None:
        keep = np.flatnonzero(self.codes[: self.n] != code)
        cap = max(1024, keep.shape[0] * 2)
        emb = np.empty((cap, self.dim), dtype=np.float32)
        sq = np.empty(cap, dtype=np.float32)
        cd = np.empty(cap, dtype=np.int64)
        k = keep.shape[0]
        emb[:k] = self.emb[keep]
        sq[:k] = self.sq[keep]
        cd[:k] = self.codes[keep]
        tids = [self.tids[i] for i in keep.tolist()]
        if self.accel is not None:
            self.accel.compact(keep, self.n)
        # Replace wholesale: snapshots taken before keep the old arrays.
        self.emb, self.sq, self.codes, self.tids, self.n = emb, sq, cd, tids, k

    def snapshot(self):
        n = self.n
        return self.emb[:n], self.sq[:n], self.codes[:n], self.tids, n


class GalleryIndex:
    """Exact nearest-identity search, kept in step with a ``GalleryStore``."""

    def __init__(self, dim: int = DEFAULT_DIM, ann: AnnConfig | None = None) -> None:
        self.dim = int(dim)
        self.ann = ann  # approximate search for large segments (gallery/ann.py); None: exact only
        self._lock = threading.Lock()
        self._segments: dict[tuple[str, str], _Segment] = {}
        self._code_of: dict[str, int] = {}
        self._id_of: list[str] = []
        self._enrolled: set[int] = set()  # codes of identities with templates, any version
        self._stale_cache: dict[tuple[str, str], frozenset[str]] = {}

    # -- building

    @classmethod
    def from_store(cls, store, ann: AnnConfig | None = None) -> GalleryIndex:
        idx = cls(dim=store.dim, ann=ann)
        idx.add_records(store.iter_templates())
        idx.build_ann()
        return idx

    def build_ann(self) -> list[tuple[str, str]]:
        """Train an accelerator for every segment of at least ``ann.min_templates`` rows that has none
        (after a load; writers may go on meanwhile). Returns the segments it trained."""
        built = []
        if self.ann is None:
            return built
        for key, seg in list(self._segments.items()):
            while seg.accel is None and seg.n >= self.ann.min_templates:
                base, n = seg.emb, seg.n
                accel = IvfAccelerator.train(base[:n], self.ann)
                with self._lock, accel.lock:
                    if seg.emb is not base:  # a deletion compacted the rows meanwhile: train again
                        continue
                    if seg.n > n:  # appended meanwhile
                        accel.add(seg.emb[n:seg.n], n)
                    seg.accel = accel
                built.append(key)
        return built

    def export(self) -> IndexArrays:
        """The index as arrays (views of the published rows, no copy), for an index snapshot."""
        with self._lock:
            identity_ids = list(self._id_of)
            segments = []
            for key, seg in self._segments.items():
                with seg._accel_lock():  # rows and accelerator agree
                    emb, _, codes, tids, n = seg.snapshot()
                    ann = seg.accel.serialize() if seg.accel is not None else None
                segments.append((key, emb, codes, tids[:n], ann))
        return IndexArrays(self.dim, identity_ids, segments)

    @classmethod
    def from_arrays(cls, arrays: IndexArrays, ann: AnnConfig | None = None) -> GalleryIndex:
        """An index holding ``arrays`` (gallery/snapshot.py). The embedding arrays may have spare rows past
        their codes' length: appends use them before copying. A segment's accelerator is kept when ``ann``
        is set (then ``build_ann`` trains those a large segment lacks)."""
        idx = cls(dim=arrays.dim, ann=ann)
        idx._id_of = list(arrays.identity_ids)
        idx._code_of = dict(zip(idx._id_of, range(len(idx._id_of))))
        if len(idx._code_of) != len(idx._id_of):
            raise InvalidArgument("an index's identity ids must be distinct")
        for key, emb, codes, tids, ann_state in arrays.segments:
            n = codes.shape[0]
            seg = idx._segments[key] = _Segment(arrays.dim, capacity=0)
            if emb.shape[0] < n or emb.shape[1:] != (arrays.dim,) or emb.dtype != np.float32 or len(tids) != n:
                raise InvalidArgument(f"index arrays of {key} are inconsistent")
            seg.emb, seg.tids = emb, list(tids)
            seg.codes = np.empty(emb.shape[0], dtype=np.int64)  # the same capacity as the embeddings
            seg.codes[:n] = codes
            seg.sq = np.empty(emb.shape[0], dtype=np.float32)
            np.einsum("ij,ij->i", emb[:n], emb[:n], out=seg.sq[:n])
            present, counts = np.unique(seg.codes[:n], return_counts=True)
            seg.members = dict(zip(present.tolist(), counts.tolist()))
            idx._enrolled.update(seg.members)
            seg.n = n
            if ann is not None and ann_state is not None:
                meta, ivf, serial_of_row = ann_state
                if serial_of_row.shape[0] != n:
                    raise InvalidArgument(f"the accelerator of {key} does not match its rows")
                seg.accel = IvfAccelerator.restore(meta, ivf, serial_of_row, ann.nprobe)
        return idx

    def _code(self, identity_id: str) -> int:
        c = self._code_of.get(identity_id)
        if c is None:
            c = len(self._id_of)
            self._code_of[identity_id] = c
            self._id_of.append(identity_id)
        return c

    def add(
        self, identity_id: str, template_id: str, embedding: np.ndarray, model_name: str, model_version: str
    ) -> None:
        self.add_records(
            [TemplateRecord(template_id, identity_id, embedding, model_name, model_version, None, 0.0)]
        )

    def add_records(self, records: Iterable[TemplateRecord], batch: int = 8192) -> int:
        """Append templates (grouped per version, one copy per batch). Returns how many were added."""
        total = 0
        groups: dict[tuple[str, str], list[TemplateRecord]] = {}

        def flush() -> None:
            nonlocal total
            with self._lock:
                for key, recs in groups.items():
                    embs = np.stack([np.asarray(r.embedding, dtype=np.float32).reshape(-1) for r in recs])
                    if embs.shape[1] != self.dim:
                        raise InvalidArgument(f"embedding dimension mismatch: got {embs.shape[1]}, index has {self.dim}")
                    codes = np.fromiter((self._code(r.identity_id) for r in recs), dtype=np.int64, count=len(recs))
                    seg = self._segments.get(key)
                    if seg is None:
                        seg = self._segments[key] = _Segment(self.dim)
                    seg.append(embs, codes, [r.id for r in recs])
                    self._enrolled.update(codes.tolist())
                    total += len(recs)
                self._stale_cache.clear()
            groups.clear()

        pending = 0
        for r in records:
            groups.setdefault((r.model_name, r.model_version), []).append(r)
            pending += 1
            if pending >= batch:
                flush()
                pending = 0
        if pending:
            flush()
        return total

    def remove_identity(self, identity_id: str) -> int:
        """Drop every template of the identity. Returns how many rows were removed."""
        with self._lock:
            code = self._code_of.get(identity_id)
            if code is None:
                return 0
            n = sum(seg.remove_code(code) for seg in self._segments.values())
            self._enrolled.discard(code)
            self._stale_cache.clear()
            return n

    def __len__(self) -> int:
        return sum(seg.n for seg in self._segments.values())

    def identity_count(self) -> int:
        with self._lock:
            return len(self._enrolled)

    def model_versions(self) -> dict[tuple[str, str], int]:
        """Template count per (model_name, model_version)."""
        with self._lock:
            return {k: s.n for k, s in self._segments.items() if s.n}

    # -- search

    def identity_distance(self, embedding: np.ndarray, identity_id: str, model_name: str,
                          model_version: str, metric: str = "euclidean") -> float | None:
        """Distance (``metric``) to the identity's nearest template of (model_name, model_version)."""
        check_metric(metric)
        q = np.asarray(embedding, dtype=np.float64).reshape(-1)
        with self._lock:
            code = self._code_of.get(identity_id)
            seg = self._segments.get((model_name, model_version))
            if code is None or seg is None:
                return None
            emb, _, codes, _, n = seg.snapshot()
        rows = emb[:n][codes[:n] == code]
        if rows.shape[0] == 0:
            return None
        return float(_distances(rows, q, metric).min())

    def _stale_for(self, key: tuple[str, str]) -> frozenset[str]:
        # Called with the lock held. Identities with templates, none of them of `key`.
        cached = self._stale_cache.get(key)
        if cached is None:
            seg = self._segments.get(key)
            current = seg.members if seg is not None else {}
            if len(current) == len(self._enrolled):
                cached = frozenset()
            else:
                cached = frozenset(self._id_of[c] for c in self._enrolled if c not in current)
            self._stale_cache[key] = cached
        return cached

    def search(
        self,
        embedding: np.ndarray,
        k: int = 1,
        model_name: str = "",
        model_version: str = "",
        max_distance: float | None = None,
        metric: str = "euclidean",
        only: Collection[str] | None = None,
    ) -> SearchResult:
        """Top-``k`` identities by the distance (``metric``) of their best template, nearest first.

        Only templates of the probe's (model_name, model_version) are compared; the others
        are counted in ``skipped_templates`` and identities left with nothing comparable
        are listed in ``stale_identities``. ``max_distance`` drops matches farther than it.
        ``only``: search just these identities (a migration's fallback embedder searches the
        identities that have no template of the new one).
        Equal distances keep enrolment order (stable sorts), so a result is reproducible.
        """
        check_metric(metric)
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise InvalidArgument(f"embedding dimension mismatch: got {q.shape[0]}, index has {self.dim}")
        if not np.isfinite(q).all():
            raise InvalidArgument("embedding contains NaN or infinity")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidArgument("k must be a positive integer")
        k = min(int(k), MAX_K)
        key = (model_name, model_version)
        with self._lock:
            seg = self._segments.get(key)
            emb, sq, codes, tids, n = seg.snapshot() if seg is not None else (None, None, None, None, 0)
            total = sum(s.n for s in self._segments.values())
            stale = self._stale_for(key)
            id_of = self._id_of  # append-only list: safe to read outside the lock
            allowed = None if only is None else [self._code_of[i] for i in only if i in self._code_of]
        skipped = total - n
        accel = seg.accel if seg is not None else None
        if accel is not None and allowed is None and metric == "euclidean" and n:
            return self._search_ann(seg, accel, q, k, max_distance, stale, total, id_of)
        if allowed is not None and n:
            rows = np.flatnonzero(np.isin(codes, np.asarray(allowed, np.int64)))
            emb, sq, codes, tids, n = emb[rows], sq[rows], codes[rows], [tids[i] for i in rows.tolist()], len(rows)
        if n == 0:
            return SearchResult([], stale, skipped, 0)

        if metric == "cosine":  # 1 - cos; the ranking key of a row is its distance
            qn = float(np.sqrt(q @ q))
            if qn == 0.0:
                raise InvalidArgument("a zero embedding has no direction to compare by cosine")
            d2 = emb @ q
            d2 /= np.sqrt(np.maximum(sq, np.finfo(np.float32).tiny)) * np.float32(qn)
            np.subtract(1.0, d2, out=d2)
        else:
            d2 = emb @ q
            d2 *= -2.0
            d2 += sq
            d2 += np.float32(q @ q)

        # Exact top-k distinct identities: if the m smallest rows hold >= k distinct
        # identities, any identity outside them is no nearer than all of them.
        m = min(n, max(4 * k, 32))
        while True:
            cand = np.argpartition(d2, m - 1)[:m] if m < n else np.arange(n)
            cand = cand[np.argsort(d2[cand], kind="stable")]
            _, first = np.unique(codes[cand], return_index=True)
            if first.shape[0] >= k or m >= n:
                break
            m = min(n, m * 4)
        # First occurrences in d2 order = each identity's best row; keep 2k so the exact
        # re-ranking below can fix float32 near-ties at the k-th place.
        best_rows = cand[np.sort(first)][: 2 * k]
        return _ranked(emb, codes, tids, id_of, best_rows, q, metric, k, max_distance, stale, skipped, n)

    def _search_ann(self, seg: _Segment, accel: IvfAccelerator, q: np.ndarray, k: int, max_distance: float | None,
                    stale: frozenset[str], total: int, id_of: list[str]) -> SearchResult:
        """Euclidean search of a large segment: the accelerator's candidate rows, nearest first, until they
        hold k identities (or the probed lists hold no more), then exact distances as in ``search``."""
        m = max(4 * k, 32)
        while True:
            with accel.lock:
                emb, _, codes, tids, n = seg.snapshot()
                cand = accel.candidates(q, min(m, n))
            _, first = np.unique(codes[cand], return_index=True)
            if first.shape[0] >= k or cand.shape[0] < min(m, n) or m >= n:
                break
            m *= 4
        best_rows = cand[np.sort(first)][: 2 * k]
        return _ranked(emb, codes, tids, id_of, best_rows, q, "euclidean", k, max_distance, stale, total - n, n)


def _ranked(emb, codes, tids, id_of, best_rows, q, metric, k, max_distance, stale, skipped, n) -> SearchResult:
    """The k best of ``best_rows`` (one row per identity) by exact distance (float64, no cancellation)."""
    dist = _distances(emb[best_rows], q, metric)
    order = np.argsort(dist, kind="stable")[:k]
    matches = []
    for i in order.tolist():
        dv = float(dist[i])
        if max_distance is not None and dv > max_distance:
            break
        row = int(best_rows[i])
        matches.append(Match(id_of[int(codes[row])], dv, tids[row]))
    return SearchResult(matches, stale, skipped, n)
