"""Errors the core raises, each mapped to one gRPC status at the edge (mobidem.api.errors).

The core (pipeline, gallery, imaging) knows nothing of gRPC; it raises these, and the API layer
turns them into status codes with the message unchanged.
"""


class MobidemError(Exception):
    """Base class; the message is shown to the client, so it says what to fix."""


class InvalidArgument(MobidemError):
    pass


class NotFound(MobidemError):
    pass


class AlreadyExists(MobidemError):
    pass


class FailedPrecondition(MobidemError):
    pass


class ResourceExhausted(MobidemError):
    pass


class Unavailable(MobidemError):
    """A dependency (Triton, the gallery) cannot serve right now; retrying later may work."""


class DeadlineExceeded(MobidemError):
    pass


class Unauthenticated(MobidemError):
    pass


class PermissionDenied(MobidemError):
    pass


class Internal(MobidemError):
    """A bug (ours or a model's) that retrying will not fix; the message carries a reference the log repeats."""
