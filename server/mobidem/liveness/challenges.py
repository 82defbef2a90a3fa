"""The challenge sequence of a ceremony: drawn with the operating system's cryptographic RNG
(``secrets``), or, in the server's explicit test mode only, from a seed so recorded ceremonies replay."""

from __future__ import annotations

import random
import secrets
from enum import IntEnum


class Challenge(IntEnum):  # values match mobidem.v1.Challenge
    BLINK = 1
    TURN_LEFT = 2  # the subject's left: nose towards the image's right (frames as the camera took them)
    TURN_RIGHT = 3
    LOOK_UP = 4
    SMILE = 5
    OPEN_MOUTH = 6


PROMPTS = {
    Challenge.BLINK: "Blink",
    Challenge.TURN_LEFT: "Turn your head to your left",
    Challenge.TURN_RIGHT: "Turn your head to your right",
    Challenge.LOOK_UP: "Look up",
    Challenge.SMILE: "Smile",
    Challenge.OPEN_MOUTH: "Open your mouth",
}

ALL = tuple(Challenge)


def draw(count: int, seed: int | None = None, pool: tuple[Challenge, ...] = ALL) -> tuple[Challenge, ...]:
    """``count`` distinct challenges in random order. ``seed`` None: ``secrets.SystemRandom`` (what a
    real ceremony gets); a seed: a reproducible draw, for the server's test mode only."""
    if not 1 <= count <= len(pool):
        raise ValueError(f"a ceremony has 1 to {len(pool)} challenges, not {count}")
    rng = secrets.SystemRandom() if seed is None else random.Random(seed)
    return tuple(rng.sample(list(pool), count))
