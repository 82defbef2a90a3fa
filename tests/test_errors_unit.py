"""Error -> gRPC status, as docs/RELIABILITY.md states it (pure logic; the table is written out here)."""

from __future__ import annotations

import grpc
import pytest

from mobidem import errors
from mobidem.api.errors import status_for
from mobidem.gallery.errors import GalleryCorrupt
from mobidem.imaging import ImageTooLarge, InvalidImage

EXPECTED = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ImageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
    (GalleryCorrupt, grpc.StatusCode.DATA_LOSS),
]


@pytest.mark.parametrize("error, code", EXPECTED, ids=[e.__name__ for e, _ in EXPECTED])
def test_each_error_has_its_status(error, code):
    assert status_for(error("x")) == code


def test_anything_else_is_not_mapped():  # the interceptor answers INTERNAL with a reference for these
    assert status_for(ValueError("x")) is None and status_for(KeyError("x")) is None


@pytest.mark.parametrize("status, expected", [
    ("StatusCode.INVALID_ARGUMENT", "InvalidArgument"), ("StatusCode.RESOURCE_EXHAUSTED", "ResourceExhausted"),
    ("StatusCode.UNAVAILABLE", "Unavailable"), ("StatusCode.NOT_FOUND", "Unavailable"),
    ("StatusCode.DEADLINE_EXCEEDED", "DeadlineExceeded"), ("StatusCode.INTERNAL", "Internal"),
    ("StatusCode.UNKNOWN", "Internal"), (None, "Internal"),
])
def test_triton_statuses_by_code_not_by_message(status, expected):
    from tritonclient.utils import InferenceServerException

    from mobidem.triton_client import _translate

    # the message says "unavailable" and "shared memory": only the code may decide
    exc = InferenceServerException("Stub process is unavailable (shared memory)", status=status)
    assert type(_translate("m", exc)).__name__ == expected


class _Ended:
    """What the interceptor reads of a finished call's gRPC context: its status, if one was set, and the
    time left before its deadline (None: no deadline)."""

    def __init__(self, code=None, remaining=None):
        self._code, self._remaining = code, remaining

    def code(self):
        return self._code

    def time_remaining(self):
        return self._remaining


@pytest.mark.parametrize("context, exc, finished, label", [
    (_Ended(), None, True, "OK"),
    (_Ended(grpc.StatusCode.NOT_FOUND), None, False, "NOT_FOUND"),  # a status already set wins
    (_Ended(grpc.StatusCode.OK, 0), errors.Internal("x"), False, "OK"),
    (_Ended(), errors.FailedPrecondition("x"), False, "FAILED_PRECONDITION"),
    (_Ended(), ValueError("x"), False, "INTERNAL"),
    (_Ended(remaining=None), None, False, "CANCELLED"),  # the client went away, no deadline
    (_Ended(remaining=5.0), None, False, "CANCELLED"),  # ... with time left
    (_Ended(remaining=0.2), None, False, "CANCELLED"),
    (_Ended(remaining=0), None, False, "DEADLINE_EXCEEDED"),  # gRPC ended it at its deadline
    (_Ended(remaining=0.004), None, False, "DEADLINE_EXCEEDED"),  # the client's clock ran out a moment earlier
    (_Ended(remaining=0), None, True, "OK"),
])
def test_the_status_a_call_is_counted_with(context, exc, finished, label):
    """mobidem_grpc_requests_total's code label: a call that gRPC cancelled at its deadline counts as
    DEADLINE_EXCEEDED (what the client saw, and an error to the alert rules), not CANCELLED."""
    from mobidem.api.errors import _code

    assert _code(context, exc, finished) == label
