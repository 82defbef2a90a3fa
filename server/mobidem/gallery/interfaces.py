"""The gallery's two small interfaces: where identities live (a store) and how they are searched (an index).

* ``GalleryStore`` (gallery/store.py): the durable system of record. ``SqliteGallery`` (embedded, one
  process) and ``PostgresGallery`` (gallery/postgres.py, shared by several gateways) implement it.
* ``ChangeFeed``: what a store shared by several processes adds, so that each process keeps its own
  in-memory index in step: a monotonic change log (one sequence number per committed write, commit
  order = sequence order) and a consistent snapshot to start from. ``Gallery`` follows a store that has
  it (gallery/follower.py); a store without it is only ever changed through this process.
* ``SearchIndex``: the in-memory search (``GalleryIndex``, exact). An approximate index is another
  implementation of it.

A new backend is a new module plus one line in gallery/backends.py; nothing above the gallery changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .records import SearchResult, TemplateRecord
from .store import GalleryStore

__all__ = ["Change", "ChangeFeed", "GalleryStore", "SearchIndex"]


@dataclass(frozen=True)
class Change:
    """One committed write. ``upsert``: templates ``template_ids`` were added to ``identity_id`` (its display
    name is now ``display_name``); ``delete``: the identity and all its templates are gone."""

    seq: int
    op: str  # "upsert" | "delete"
    identity_id: str
    display_name: str | None
    template_ids: tuple[str, ...]


@runtime_checkable
class ChangeFeed(Protocol):
    channel: str  # what a follower listens to (PostgreSQL LISTEN/NOTIFY channel; follower.py speaks
    url: str      # PostgreSQL's protocol for it: another feed brings its own follower)
    where: str    # the URL without its password, for messages

    def load_snapshot(self, sink: Callable[[Iterator[TemplateRecord]], object]) -> tuple[int, dict[str, str]]:
        """Feed every template to ``sink`` from one consistent snapshot; returns (the last change's seq in it,
        display names by identity id)."""
        ...

    def last_seq(self) -> int:
        """The newest change's seq (0: none)."""
        ...

    def change_fingerprint(self, seq: int) -> str | None:
        """What identifies change ``seq`` in this log (None: not in it); an index snapshot ending at ``seq``
        is used only while it matches (gallery/snapshot.py)."""
        ...

    def changes_since(self, seq: int, limit: int = 1000) -> tuple[list[Change], dict[str, TemplateRecord]]:
        """Changes after ``seq`` in order (at most ``limit``), and the templates of their upserts that still
        exist, by template id (a template deleted since is absent: it must not be added back). Raises
        ``ChangesTrimmed`` when some of them are no longer in the log (the caller reloads a snapshot)."""
        ...

    def trim_changes(self, older_than_s: float) -> int:
        """Drop changes older than ``older_than_s`` from the log (never the newest one); returns how many."""
        ...


@runtime_checkable
class SearchIndex(Protocol):
    dim: int

    def add_records(self, records: Iterable[TemplateRecord]) -> int: ...

    def remove_identity(self, identity_id: str) -> int: ...

    def search(self, embedding: np.ndarray, k: int = 1, model_name: str = "", model_version: str = "",
               max_distance: float | None = None, metric: str = "euclidean",
               only: Collection[str] | None = None) -> SearchResult: ...

    def identity_distance(self, embedding: np.ndarray, identity_id: str, model_name: str,
                          model_version: str, metric: str = "euclidean") -> float | None: ...

    def identity_count(self) -> int: ...

    def __len__(self) -> int: ...
