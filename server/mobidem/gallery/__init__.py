"""Identity gallery below the API layer: a durable store + an exact in-memory index (gallery/interfaces.py).

Pure Python + numpy + a database driver; no protobuf/gRPC here (the API layer converts at the edge).
The store is SQLite (embedded, the default) or PostgreSQL (shared by several gateways, each following
its change log: gallery/postgres.py, gallery/follower.py); gallery/backends.py picks one from a URL. A
gateway on a shared store may start its index from a snapshot file and the log after it (gallery/snapshot.py).

    gallery = Gallery.open("/var/lib/mobidem/gallery.db")
    gallery = Gallery.from_url("postgresql://mobidem@db/mobidem")
    res = gallery.enroll(None, "Ada", {"team": "x"}, [TemplateIn(emb, "dlib_resnet", "1")])
    hits = gallery.search(probe, k=5, model_name="dlib_resnet", model_version="1")

Each embedder's templates are compared in its own metric (gallery/index.py): Euclidean unless
``metrics`` names another for its model (``gallery.metrics["sface"] = "cosine"``, set by the server
from the embedder's calibration) or the caller passes one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from .errors import GalleryCorrupt, GalleryError, IdempotencyConflict, InvalidArgument, NotFound, SchemaTooNew
from .ann import AnnConfig, IvfAccelerator
from .index import GalleryIndex, distance
from .interfaces import Change, ChangeFeed, SearchIndex
from .records import (
    DEFAULT_DIM,
    EnrollResult,
    Identity,
    Match,
    ModelVersion,
    SearchResult,
    TemplateIn,
    TemplateRecord,
)
from .store import GalleryStore, SqliteGallery, compute_request_hash

log = logging.getLogger(__name__)

__all__ = [
    "AnnConfig",
    "Change",
    "ChangeFeed",
    "DEFAULT_DIM",
    "EnrollResult",
    "Gallery",
    "GalleryCorrupt",
    "GalleryError",
    "GalleryIndex",
    "GalleryStore",
    "IdempotencyConflict",
    "Identity",
    "InvalidArgument",
    "Match",
    "ModelVersion",
    "NotFound",
    "SchemaTooNew",
    "SearchIndex",
    "SearchResult",
    "SqliteGallery",
    "TemplateIn",
    "TemplateRecord",
    "compute_request_hash",
    "distance",
]


class Gallery:
    """Store + index kept in step. Writes go to the store first; the index changes only
    after the commit succeeded (a failed write leaves both untouched). Searches never
    touch the database.

    A store shared with other processes (a ``ChangeFeed``: PostgreSQL) is followed: the index starts
    from a snapshot and then applies the store's change log, this process's own writes included (a
    write returns once its change is applied here, or, with the database lost right after the
    commit, once it is committed: the follower applies it when the database is back)."""

    def __init__(self, store: GalleryStore, index: SearchIndex | None = None, *,
                 sync_interval_s: float = 1.0, snapshot_path: str = "", snapshot_interval_s: float = 0.0,
                 ann: AnnConfig | None = None) -> None:
        self.store = store
        self.ann = ann
        self._write_lock = threading.Lock()  # orders store commit + index update across writers
        self._names: dict[str, str] = {}  # display names for search results, kept in step with writes
        self.metrics: dict[str, str] = {}  # embedder model name -> its metric ("euclidean" when absent)
        self.follower = None
        self.snapshot_path = snapshot_path
        self.loaded_from = "database"  # or "snapshot": where the index came from at start
        self.snapshot_refused = ""  # why a configured snapshot file was not used ("" when it was, or none is set)
        self._snapshotter = None
        if snapshot_path and not isinstance(store, ChangeFeed):
            raise GalleryError("gallery_snapshot_path needs a gallery shared through a change log (gallery_url = "
                               "postgresql://…): SQLite's gallery has no log to catch up from")
        if isinstance(store, ChangeFeed):
            from .follower import ChangeFollower

            seq = 0
            if index is None:
                snap = self._read_snapshot(store, snapshot_path) if snapshot_path else None
                if snap is not None:
                    index, seq = GalleryIndex.from_arrays(snap.arrays, ann=ann), snap.seq
                    self._names.update(snap.names)
                    self.loaded_from = "snapshot"
                else:
                    index = GalleryIndex(dim=store.dim, ann=ann)
                    seq, names = store.load_snapshot(index.add_records)
                    self._names.update(names)
                self._build_ann(index)
            else:
                seq = store.last_seq()
            self.index = index
            self.follower = ChangeFollower(store, self, seq, sync_interval_s=sync_interval_s,
                                           connect_timeout_s=getattr(store, "_timeout", 5.0))
            if self.loaded_from == "snapshot":  # what was committed after the snapshot, before serving anything
                n = self.follower.catch_up()
                log.info("gallery index: snapshot %s at change %d + %d later changes from the log",
                         snapshot_path, seq, n)
            self.follower.start()
            if snapshot_path and snapshot_interval_s > 0:
                self._snapshotter = _Snapshotter(self, float(snapshot_interval_s)).start()
        else:
            self.index = index if index is not None else GalleryIndex.from_store(store, ann=ann)

    @staticmethod
    def _build_ann(index: GalleryIndex) -> None:
        t0 = time.perf_counter()
        built = index.build_ann()
        if built:
            log.info("gallery index: approximate search trained for %s in %.1f s",
                     ", ".join(f"{m}:{v}" for m, v in built), time.perf_counter() - t0)

    def _read_snapshot(self, store, path: str):
        from . import snapshot

        t0 = time.perf_counter()
        try:
            snap = snapshot.read(path, dim=store.dim, fingerprint_of=store.change_fingerprint,
                                 cipher=getattr(store, "cipher", None),
                                 load_ann=IvfAccelerator.load_index if self.ann is not None else None)
        except (snapshot.SnapshotRefused, OSError) as exc:
            self.snapshot_refused = str(exc)
            log.log(logging.INFO if isinstance(exc, snapshot.SnapshotMissing) else logging.WARNING, "gallery index snapshot not used: %s; loading every template from %s", exc,
                    getattr(store, "where", "the store"))
            return None
        log.info("gallery index snapshot %s read in %.1f s (change %d, %d templates)", path,
                 time.perf_counter() - t0, snap.seq, sum(seg[2].shape[0] for seg in snap.arrays.segments))
        return snap

    def write_snapshot(self, path: str = "") -> tuple[int, int]:
        """Write this gateway's index to an index snapshot file (``path``, else ``snapshot_path``), atomically.
        Returns (the change it ends with, its size in bytes). Only for a store with a change log."""
        from . import snapshot

        path = path or self.snapshot_path
        if self.follower is None or not path:
            raise GalleryError("an index snapshot needs a gallery shared through a change log and a file to write")
        with self.follower._lock:  # the index and the change it ends with agree
            seq = self.follower.applied_seq
            arrays = self.index.export()
            names = dict(self._names)
        fingerprint = self.store.change_fingerprint(seq)
        if fingerprint is None:  # trimmed meanwhile: a reader could not check it
            raise GalleryError(f"change {seq} left the log before the snapshot was written; write it again")
        size = snapshot.write(path, snapshot.Snapshot(seq, arrays, names, time.time()), fingerprint,
                              getattr(self.store, "cipher", None))
        return seq, size

    @classmethod
    def open(cls, path: str, *, ann: AnnConfig | None = None, **store_kwargs) -> Gallery:
        return cls(SqliteGallery(path, **store_kwargs), ann=ann)

    @classmethod
    def from_url(cls, url: str, *, sync_interval_s: float = 1.0, snapshot_path: str = "",
                 snapshot_interval_s: float = 0.0, ann: AnnConfig | None = None, **store_kwargs) -> Gallery:
        """The gallery a URL names (gallery/backends.py): a SQLite path or ``postgresql://…``; with
        ``snapshot_path`` its index starts from that snapshot file when it fits (gallery/snapshot.py) and,
        with ``snapshot_interval_s``, is written there that often when it changed."""
        from .backends import open_store

        store = open_store(url, **store_kwargs)
        try:
            return cls(store, sync_interval_s=sync_interval_s, snapshot_path=snapshot_path,
                       snapshot_interval_s=snapshot_interval_s, ann=ann)
        except BaseException:
            store.close()
            raise

    def _apply(self, changes: Sequence[Change], records: Mapping[str, TemplateRecord]) -> None:
        """Apply changes of a shared store's log (called by the follower, under its lock)."""
        for ch in changes:
            if ch.op == "delete":
                self.index.remove_identity(ch.identity_id)
                self._names.pop(ch.identity_id, None)
            else:
                recs = [records[t] for t in ch.template_ids if t in records]
                if recs:
                    self.index.add_records(recs)
                if ch.display_name is not None:
                    self._names[ch.identity_id] = ch.display_name

    def _sync_after_write(self) -> None:
        try:
            self.follower.catch_up()
        except GalleryError as exc:  # committed; the follower applies it once the database is back
            log.warning("a committed write is not in this gateway's index yet: %s", exc)

    def enroll(
        self,
        identity_id: str | None,
        display_name: str | None,
        metadata: Mapping[str, str] | None,
        templates: Sequence[TemplateIn],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        merge_metadata: bool = False,
    ) -> EnrollResult:
        if self.follower is not None:
            res = self.store.enroll(identity_id, display_name, metadata, templates, idempotency_key, request_hash,
                                    merge_metadata)
            if not res.replayed:
                self._sync_after_write()
            return res
        with self._write_lock:
            res = self.store.enroll(identity_id, display_name, metadata, templates, idempotency_key, request_hash,
                                    merge_metadata)
            if not res.replayed:
                self.index.add_records(
                    TemplateRecord(tid, res.identity.id, np.asarray(t.embedding), t.model_name, t.model_version,
                                   t.quality, res.identity.updated_at)
                    for tid, t in zip(res.template_ids, templates)
                )
                self._names[res.identity.id] = res.identity.display_name
            return res

    def delete(self, identity_id: str) -> int:
        if self.follower is not None:
            n = self.store.delete(identity_id)
            with self.follower._lock:  # after any catch-up in flight, which may hold the identity's old rows
                self.index.remove_identity(identity_id)
                self._names.pop(identity_id, None)
            self._sync_after_write()
            return n
        with self._write_lock:
            n = self.store.delete(identity_id)
            self.index.remove_identity(identity_id)
            self._names.pop(identity_id, None)
            return n

    def display_name(self, identity_id: str) -> str:
        """An identity's display name ("" if unknown), from memory after the first look-up: matching
        calls this for every candidate of every face, so it must not query the store each time."""
        name = self._names.get(identity_id)
        if name is None:
            identity = self.store.get(identity_id)
            name = identity.display_name if identity else ""
            if identity is not None:
                self._names[identity_id] = name
        return name

    def search(
        self,
        embedding: np.ndarray,
        k: int = 1,
        model_name: str = "",
        model_version: str = "",
        max_distance: float | None = None,
        metric: str | None = None,
        only: Collection[str] | None = None,
    ) -> SearchResult:
        """Top-k identities among the templates of that embedder version, in its metric (``metric``, else
        ``metrics[model_name]``, else Euclidean); ``only``: among these identities alone."""
        return self.index.search(embedding, k, model_name, model_version, max_distance,
                                 metric or self.metrics.get(model_name, "euclidean"), only)

    def distance_to_identity(self, embedding: np.ndarray, identity_id: str, model_name: str,
                             model_version: str, metric: str | None = None) -> float | None:
        """Distance to the identity's nearest template of that embedder (None: it has none), in its metric."""
        return self.index.identity_distance(embedding, identity_id, model_name, model_version,
                                            metric or self.metrics.get(model_name, "euclidean"))

    # kept enrolment photos (keep_enrolment_images), for `mobidem gallery reembed`

    def add_enrolment_images(self, identity_id: str, images: Sequence[tuple[bytes, int | None]]) -> int:
        """Keep (encoded photo, face index) pairs for the identity, sealed like its templates."""
        return self.store.add_enrolment_images(identity_id, images)

    def enrolment_images(self, identity_id: str) -> list[tuple[bytes, int | None]]:
        return self.store.enrolment_images(identity_id)

    def identities_with_enrolment_images(self) -> list[str]:
        return self.store.identities_with_enrolment_images()

    def get(self, identity_id: str) -> Identity | None:
        return self.store.get(identity_id)

    def list(self, page_size: int = 100, page_token: str | None = None) -> tuple[list[Identity], str]:
        return self.store.list(page_size, page_token)

    def count(self) -> int:
        return self.store.count()

    def _load_snapshot(self) -> None:
        """Replace the index by a fresh snapshot of the shared store (with the follower's lock held)."""
        index = GalleryIndex(dim=self.store.dim, ann=self.ann)
        seq, names = self.store.load_snapshot(index.add_records)
        self._build_ann(index)
        self.index, self.follower.applied_seq = index, seq
        self._names = dict(names)

    def rebuild_index(self) -> None:
        if self.follower is not None:
            with self.follower._lock:
                self._load_snapshot()
            return
        with self._write_lock:
            self.index = GalleryIndex.from_store(self.store, ann=self.ann)

    def close(self) -> None:
        if self._snapshotter is not None:
            self._snapshotter.stop()
        if self.follower is not None:
            self.follower.stop()
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Snapshotter:
    """Writes the gateway's index snapshot every ``interval_s`` when the index changed since the last one."""

    def __init__(self, gallery: Gallery, interval_s: float) -> None:
        self.gallery = gallery
        self.interval_s = interval_s
        self.written_seq = gallery.follower.applied_seq if gallery.loaded_from == "snapshot" else -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-snapshot", daemon=True)

    def start(self) -> _Snapshotter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.gallery.follower.applied_seq == self.written_seq:
                continue
            t0 = time.perf_counter()
            try:
                self.written_seq, size = self.gallery.write_snapshot()
            except Exception as exc:  # noqa: BLE001 - the next interval tries again
                log.warning("gallery index snapshot not written to %s: %s", self.gallery.snapshot_path, exc)
                continue
            log.info("gallery index snapshot written to %s (change %d, %.0f MB) in %.1f s", self.gallery.snapshot_path,
                     self.written_seq, size / 1e6, time.perf_counter() - t0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
