"""Identity gallery below the API layer: durable store (SQLite) + exact in-memory index.

Pure Python + numpy + sqlite3; no protobuf/gRPC here (the API layer converts at the edge).

    gallery = Gallery.open("/var/lib/mobidem/gallery.db")
    res = gallery.enroll(None, "Ada", {"team": "x"}, [TemplateIn(emb, "dlib_resnet", "1")])
    hits = gallery.search(probe, k=5, model_name="dlib_resnet", model_version="1")
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import GalleryCorrupt, GalleryError, IdempotencyConflict, InvalidArgument, NotFound, SchemaTooNew
from .index import GalleryIndex, distance
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

__all__ = [
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
    touch the database."""

    def __init__(self, store: GalleryStore, index: GalleryIndex | None = None) -> None:
        self.store = store
        self.index = index if index is not None else GalleryIndex.from_store(store)
        self._write_lock = threading.Lock()  # orders store commit + index update across writers
        self._names: dict[str, str] = {}  # display names for search results, kept in step with writes

    @classmethod
    def open(cls, path: str, **store_kwargs) -> Gallery:
        return cls(SqliteGallery(path, **store_kwargs))

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
    ) -> SearchResult:
        return self.index.search(embedding, k, model_name, model_version, max_distance)

    def distance_to_identity(self, embedding: np.ndarray, identity_id: str, model_name: str,
                             model_version: str) -> float | None:
        """Distance to the identity's nearest template of that embedder (None: it has none)."""
        return self.index.identity_distance(embedding, identity_id, model_name, model_version)

    def get(self, identity_id: str) -> Identity | None:
        return self.store.get(identity_id)

    def list(self, page_size: int = 100, page_token: str | None = None) -> tuple[list[Identity], str]:
        return self.store.list(page_size, page_token)

    def count(self) -> int:
        return self.store.count()

    def rebuild_index(self) -> None:
        with self._write_lock:
            self.index = GalleryIndex.from_store(self.store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
