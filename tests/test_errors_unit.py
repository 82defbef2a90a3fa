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
