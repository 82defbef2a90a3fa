"""Gallery errors. The API layer maps them to gRPC status codes at the edge."""

from __future__ import annotations

from mobidem import errors


class GalleryError(errors.MobidemError):
    """Base class of every error the gallery raises on purpose."""


class NotFound(GalleryError, errors.NotFound):
    """The identity does not exist (gRPC NOT_FOUND)."""


class InvalidArgument(GalleryError, errors.InvalidArgument, ValueError):
    """A request field is malformed (gRPC INVALID_ARGUMENT)."""


class IdempotencyConflict(GalleryError, errors.AlreadyExists):
    """An idempotency key was reused with a different request (gRPC ALREADY_EXISTS / FAILED_PRECONDITION)."""


class GalleryCorrupt(GalleryError):
    """The database file failed its integrity check or is not a database at all."""


class ChangesTrimmed(GalleryError):
    """Changes a follower has not applied yet were trimmed from the change log: it must reload its index
    from a snapshot."""

    def __init__(self, after: int, through: int):
        super().__init__(f"the change log was trimmed through seq {through}; this follower had applied {after}")
        self.after, self.through = after, through


class SchemaTooNew(GalleryError, errors.FailedPrecondition):
    """The database was written by a newer mobidem (more migrations than this code knows)."""
