"""Plain value types passed across the gallery boundary (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_DIM = 128  # dlib ResNet face descriptor


@dataclass(frozen=True)
class TemplateIn:
    """One embedding to enrol. ``quality`` is optional (NULL in the store)."""

    embedding: np.ndarray
    model_name: str
    model_version: str
    quality: float | None = None


@dataclass(frozen=True)
class ModelVersion:
    """An embedder version present among an identity's templates, with how many templates use it."""

    model_name: str
    model_version: str
    template_count: int


@dataclass(frozen=True)
class Identity:
    id: str
    display_name: str
    metadata: dict[str, str]
    created_at: float  # UTC epoch seconds
    updated_at: float
    template_count: int = 0
    model_versions: tuple[ModelVersion, ...] = ()


@dataclass(frozen=True)
class TemplateRecord:
    """A stored template, as yielded by ``iter_templates`` (used to rebuild the index)."""

    id: str
    identity_id: str
    embedding: np.ndarray  # float32, shape (dim,)
    model_name: str
    model_version: str
    quality: float | None
    created_at: float


@dataclass(frozen=True)
class EnrollResult:
    identity: Identity  # state right after the (first) enrolment
    template_ids: tuple[str, ...]  # ids of the templates this request added, in request order
    created: bool  # True if this request created the identity
    replayed: bool = False  # True if this answer is the stored answer of an earlier request with the same key

    @property
    def templates_added(self) -> int:
        return len(self.template_ids)


@dataclass(frozen=True)
class Match:
    identity_id: str
    distance: float  # in the embedder's metric (gallery/index.py), best template of the identity
    template_id: str


@dataclass(frozen=True)
class SearchResult:
    """Top-k identities, nearest first.

    ``stale_identities``: identities that have templates but none of the probe's
    (model_name, model_version); they were not compared and need re-enrolment.
    ``skipped_templates``: how many templates were skipped for a version mismatch
    (includes those of identities that also have current templates).
    """

    matches: list[Match]
    stale_identities: frozenset[str] = field(default_factory=frozenset)
    skipped_templates: int = 0
    searched_templates: int = 0

    def __iter__(self):
        return iter(self.matches)

    def __len__(self) -> int:
        return len(self.matches)

    def __getitem__(self, i):
        return self.matches[i]
