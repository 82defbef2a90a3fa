"""Running a ceremony as a client: frames with their capture times in, prompts and the outcome out."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from mobidem.client import to_image
from mobidem.v1 import mobidem_pb2 as pb


def ceremony(stub, frames: Iterable[tuple[float, np.ndarray]], identity_id: str = "", reference: bytes | None = None,
             test_seed: int | None = None, operating_point: str = "", timeout: float | None = 120,
             on_prompt: Callable[[pb.ChallengePrompt], None] | None = None, metadata=(),
             after_prompt: bool = True, transaction_ref: str = "",
             ) -> tuple[list[pb.ChallengePrompt], pb.LivenessOutcome | None]:
    """Run one ceremony on ``stub`` (a LivenessStub). ``frames``: (capture time in seconds since the epoch,
    RGB frame), sent in order; with ``after_prompt`` the first frame goes only after the first prompt
    came (a live client shows it first); ``transaction_ref`` is signed into the outcome's evidence. Returns the prompts and the outcome (None if the server ended
    the call without one)."""
    options = pb.LivenessOptions(operating_point=operating_point, transaction_ref=transaction_ref)
    if identity_id:
        options.identity_id = identity_id
    elif reference is not None:
        options.reference_image.encoded = reference
    if test_seed is not None:
        options.test_seed = test_seed
    started = threading.Event()
    done = threading.Event()

    def requests() -> Iterator[pb.LivenessRequest]:
        yield pb.LivenessRequest(options=options)
        if after_prompt:
            started.wait(timeout)
        for seq, (t, frame) in enumerate(frames, 1):
            if done.is_set():
                return
            msg = pb.Frame(sequence=seq, image=to_image(frame))
            msg.capture_time.FromNanoseconds(int(t * 1e9))
            yield pb.LivenessRequest(frame=msg)

    prompts, outcome = [], None
    try:
        for response in stub.Ceremony(requests(), timeout=timeout, metadata=metadata):
            if response.WhichOneof("message") == "prompt":
                prompts.append(response.prompt)
                started.set()
                if on_prompt is not None:
                    on_prompt(response.prompt)
            else:
                outcome = response.outcome
    finally:
        started.set()
        done.set()
    return prompts, outcome


def timed(frames: Iterable[np.ndarray], fps: float, start: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """A recording's frames on its own timeline from ``start`` (default now)."""
    start = time.time() if start is None else start
    for i, frame in enumerate(frames):
        yield start + i / fps, frame


def live(frames: Iterable[np.ndarray]) -> Iterator[tuple[float, np.ndarray]]:
    """A camera's frames, each stamped when it is read."""
    for frame in frames:
        yield time.time(), frame
