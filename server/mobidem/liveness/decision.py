"""The ceremony's decision: a pure state machine over per-frame observations (no I/O, no models).

For each frame the caller gives an ``Observation`` (capture time and every detected face's signals);
``Ceremony.feed`` returns what happened: the next challenge's prompt, or the outcome. The rules:

- capture times strictly increase, with no gap over ``max_gap_s``, at a mean rate within
  [``min_fps``, ``max_fps``];
- exactly one face: a second face (detection score >= ``second_face_score`` and mesh presence >=
  ``min_presence``) in ``action_frames`` consecutive frames fails; the one face keeps one track and
  a consistent identity (each fresh embedding within the operating point's threshold of the
  nearest of the ceremony's earlier ones); a new track id (a jump, a tracker split) is accepted only when its fresh
  embedding confirms that identity; the face may be missing or too small (< ``min_face_px``) for ``max_lost_s`` at most;
- the baseline (nose position, eye openness) comes from the first ``baseline_frames`` neutral,
  frontal frames; actions are changes against it;
- the challenges in order, each completed within ``window_s`` of its first frame (a run of
  ``action_frames`` frames showing it; a blink: closed eyes, then open again); another action (a turn,
  looking up, a smile, an open mouth) held as long during a challenge fails it; a turn or looking up counts
  only in frames whose face shows depth (``FaceSignals.flatness`` at most ``max_flatness``: a flat picture
  turned like a card moves the nose signals too, docs/LIVENESS.md "Turned photos"); between challenges the
  face returns to neutral (``neutral_frames`` frames) within ``neutral_window_s``; the ceremony passes
  after the last challenge's return to neutral.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from mobidem.liveness.challenges import Challenge, PROMPTS

POSES = ("TURN_LEFT", "TURN_RIGHT", "LOOK_UP")  # the challenges a flat picture turned like a card could mimic


@dataclass(frozen=True)
class FaceSignals:
    track_id: int
    size: float  # shorter side of the box, pixels
    score: float  # detection score
    presence: float  # face_mesh.face_presence
    u: float  # mobidem.liveness.headpose.affine_pose
    v: float
    eye: float  # face_mesh.eye_openness
    mouth: float  # headpose.mouth_open_ratio
    happy: float  # expression probability of "happy"
    identity_distance: float | None = None  # fresh embedding vs the nearest earlier one; None: not embedded now
    identity_threshold: float = 0.0
    # mobidem.liveness.parallax.flatness against the ceremony's first frontal frame: ~1 for any view of a
    # flat picture, lower for a head with depth; 1.0 (flat, no evidence of depth) where not measured
    flatness: float = 1.0


@dataclass(frozen=True)
class Observation:
    t: float  # capture time, seconds
    faces: tuple[FaceSignals, ...]


@dataclass(frozen=True)
class Rules:
    window_s: float = 6.0
    neutral_window_s: float = 4.0
    max_duration_s: float = 60.0
    baseline_frames: int = 3
    neutral_frames: int = 2
    action_frames: int = 2
    frontal_u: float = 0.12  # |u| of a frontal face (measured <= 0.07)
    turn_du: float = 0.12  # a turn: u moved this far from the baseline
    up_dv: float = 0.12  # looking up: v moved this far up from the baseline
    max_flatness: float = 0.95  # a pose action counts only when the face is less flat than this
    wrong_factor: float = 1.5  # another pose action counts as done when it goes this much further
    neutral_du: float = 0.08
    neutral_dv: float = 0.08
    smile_happy: float = 0.7
    neutral_happy: float = 0.5
    open_mouth: float = 0.28
    neutral_mouth: float = 0.15
    blink_ratio: float = 0.7  # closed: eye openness below this share of the baseline ...
    blink_max: float = 0.22  # ... and below this
    reopen_ratio: float = 0.8  # open again: at least this share of the baseline
    min_face_px: float = 80.0
    min_presence: float = 0.5
    second_face_score: float = 0.6
    max_lost_s: float = 0.6
    min_fps: float = 8.0
    max_fps: float = 61.0
    max_gap_s: float = 0.5


@dataclass
class Timing:
    challenge: Challenge
    window_s: float
    started_s: float = 0.0
    completed_s: float = 0.0
    completed: bool = False
    margin: float = 0.0  # peak signal over its threshold, minus 1


@dataclass
class Outcome:
    passed: bool
    reasons: list[str]
    timings: list[Timing]
    score: float
    frames: int
    duration_s: float


@dataclass(frozen=True)
class Prompt:
    index: int
    count: int
    challenge: Challenge
    text: str
    window_s: float


@dataclass
class Ceremony:
    challenges: tuple[Challenge, ...]
    rules: Rules = Rules()
    frames: int = 0
    t0: float | None = None
    last_t: float | None = None
    track_id: int | None = None
    track_changes: int = 0  # new tracks of the same identity
    lost_since: float | None = None
    two_faces: int = 0
    baseline: list[tuple[float, float]] = field(default_factory=list)  # (u, v) of the first neutral frames
    eyes: list[float] = field(default_factory=list)  # eye openness of recent neutral frames
    index: int = 0
    phase: str = "active"  # active (a challenge runs) or neutral (waiting for the return to neutral)
    phase_t: float | None = None  # capture time the phase began
    run: dict[str, int] = field(default_factory=dict)  # consecutive frames per action
    closed_seen: bool = False
    peak: float = 0.0
    flat: int = 0  # frames of this challenge that showed the asked pose but no depth
    timings: list[Timing] = field(default_factory=list)
    outcome: Outcome | None = None

    def __post_init__(self):
        self.timings = [Timing(c, self.rules.window_s) for c in self.challenges]

    def first_prompt(self) -> Prompt:
        return self._prompt(0)

    def _prompt(self, i: int) -> Prompt:
        c = self.challenges[i]
        return Prompt(i, len(self.challenges), c, PROMPTS[c], self.rules.window_s)

    # -- outcome

    def _end(self, passed: bool, reason: str = "") -> Outcome:
        duration = (self.last_t - self.t0) if self.t0 is not None and self.last_t is not None else 0.0
        score = 0.0
        if passed:
            score = sum(0.5 + 0.5 * min(1.0, max(0.0, t.margin)) for t in self.timings) / len(self.timings)
        self.outcome = Outcome(passed, [] if passed else [reason], self.timings, score, self.frames, duration)
        return self.outcome

    def stream_ended(self) -> Outcome:
        """The client closed its side before the decision."""
        if self.outcome is not None:
            return self.outcome
        return self._end(False, f"the stream ended after {self.frames} frame(s), before challenge "
                                f"{self.index + 1} of {len(self.challenges)} was decided: keep sending frames "
                                "until the outcome arrives")

    def fail(self, reason: str) -> Outcome:
        return self.outcome or self._end(False, reason)

    # -- frames

    def feed(self, obs: Observation) -> Prompt | Outcome | None:
        """One frame; the next prompt when a challenge begins, the outcome when decided, else None."""
        if self.outcome is not None:
            return self.outcome
        r = self.rules
        self.frames += 1
        if self.t0 is None:
            self.t0 = self.phase_t = obs.t
            self.timings[0].started_s = 0.0
        elif obs.t <= self.last_t:
            self.last_t = max(self.last_t, obs.t)
            return self._end(False, f"capture times must increase: frame {self.frames} at {obs.t:.3f} s does "
                                    "not come after the previous frame; send each frame's own capture time")
        elif obs.t - self.last_t > r.max_gap_s:
            gap = obs.t - self.last_t
            self.last_t = obs.t
            return self._end(False, f"a gap of {gap:.2f} s between frames (at most {r.max_gap_s:g} s): send "
                                    f"frames continuously, at least {r.min_fps:g} per second")
        self.last_t = obs.t
        elapsed = obs.t - self.t0
        if self.frames >= 10 and elapsed > 0 and (self.frames - 1) / elapsed > r.max_fps:
            return self._end(False, f"{(self.frames - 1) / elapsed:.0f} frames per second of capture time is "
                                    f"more than a camera gives (at most {r.max_fps:g}): capture times are implausible")
        if elapsed > r.max_duration_s:
            return self._end(False, f"the ceremony took longer than {r.max_duration_s:g} s")
        if elapsed >= 2.0 and (self.frames - 1) / elapsed < r.min_fps:
            return self._end(False, f"{(self.frames - 1) / elapsed:.1f} frames per second, fewer than the "
                                    f"{r.min_fps:g} needed: send more frames")

        face = self._one_face(obs)
        if isinstance(face, Outcome):
            return face
        if face is None:
            return self._timeouts(obs.t)
        return self._step(face, obs.t)

    def _one_face(self, obs: Observation) -> FaceSignals | Outcome | None:
        r = self.rules
        real = [f for f in obs.faces if f.score >= r.second_face_score and f.presence >= r.min_presence
                and f.size >= r.min_face_px / 2]
        self.two_faces = self.two_faces + 1 if len(real) >= 2 else 0
        if self.two_faces >= r.action_frames:
            return self._end(False, f"{len(real)} faces in view: the ceremony needs exactly one person in front "
                                    "of the camera")
        candidates = sorted(obs.faces, key=lambda f: -f.size)
        face = candidates[0] if candidates else None
        if face is not None and self.track_id is not None:
            same = [f for f in candidates if f.track_id == self.track_id]
            if same:
                face = same[0]
            elif face.size >= r.min_face_px and face.presence >= r.min_presence:
                # a new track (the face jumped, or the tracker split it): the same person only if its
                # fresh embedding (a new track is always embedded) agrees with the ceremony's identity
                if face.identity_distance is None or face.identity_distance > face.identity_threshold:
                    return self._end(False, "the face's track changed and its identity could not be confirmed "
                                            "(another person, or the face left the view): one person must stay "
                                            "in front of the camera for the whole ceremony")
                self.track_id = face.track_id
                self.track_changes += 1
        if face is None or face.size < r.min_face_px or face.presence < r.min_presence:
            if self.lost_since is None:
                self.lost_since = obs.t
            if obs.t - self.lost_since > r.max_lost_s:
                what = ("no face" if face is None else
                        f"the face is too small ({face.size:.0f} px, at least {r.min_face_px:g})"
                        if face.size < r.min_face_px else "no clear face (mesh presence low)")
                return self._end(False, f"{what} for more than {r.max_lost_s:g} s: keep the face in view, "
                                        "close enough and well lit")
            return None
        self.lost_since = None
        if self.track_id is None:
            self.track_id = face.track_id
        if face.identity_distance is not None and face.identity_distance > face.identity_threshold:
            return self._end(False, f"the identity changed during the ceremony (distance {face.identity_distance:.3f} "
                                    f"> {face.identity_threshold:.3f}): one person must do the whole ceremony")
        return face

    def _timeouts(self, t: float) -> Outcome | None:
        r = self.rules
        if self.phase == "active" and t - self.phase_t > r.window_s:
            c = self.challenges[self.index]
            flat = (f" ({self.flat} frame(s) showed the pose on a flat face: a picture turned in front of the "
                    "camera is not a head)") if self.flat else ""
            return self._end(False, f"challenge {self.index + 1} of {len(self.challenges)} ({PROMPTS[c]!r}) was "
                                    f"not completed within {r.window_s:g} s{flat}")
        if self.phase == "neutral" and t - self.phase_t > r.neutral_window_s:
            return self._end(False, f"the face did not return to neutral (frontal, eyes open, mouth closed, not "
                                    f"smiling) within {r.neutral_window_s:g} s after challenge {self.index}")
        return None

    def _flags(self, f: FaceSignals) -> tuple[dict[str, float], bool]:
        """Each action's strength (signal over threshold; >= 1: done) and whether the face is neutral."""
        r = self.rules
        u0 = median(b[0] for b in self.baseline)
        v0 = median(b[1] for b in self.baseline)
        eye0 = median(self.eyes)
        du, dv = f.u - u0, f.v - v0
        strength = {
            "TURN_LEFT": du / r.turn_du,
            "TURN_RIGHT": -du / r.turn_du,
            "LOOK_UP": -dv / r.up_dv,
            "SMILE": f.happy / r.smile_happy,
            "OPEN_MOUTH": f.mouth / r.open_mouth if f.happy < r.neutral_happy else 0.0,
            "BLINK": min(r.blink_max, r.blink_ratio * eye0) / max(f.eye, 1e-6),
        }
        neutral = (abs(du) < r.neutral_du and abs(dv) < r.neutral_dv and f.happy < r.neutral_happy
                   and f.mouth < r.neutral_mouth and f.eye >= r.reopen_ratio * eye0)
        return strength, neutral

    def _is_baseline(self, f: FaceSignals) -> bool:
        r = self.rules
        return abs(f.u) < r.frontal_u and f.happy < r.neutral_happy and f.mouth < r.neutral_mouth

    def _step(self, f: FaceSignals, t: float) -> Prompt | Outcome | None:
        r = self.rules
        if len(self.baseline) < r.baseline_frames:
            if self._is_baseline(f):
                self.baseline.append((f.u, f.v))
                self.eyes.append(f.eye)
            return self._timeouts(t)
        strength, neutral = self._flags(f)
        if neutral:
            self.eyes = (self.eyes + [f.eye])[-15:]
        if self.phase == "neutral":
            self.run["neutral"] = self.run.get("neutral", 0) + 1 if neutral else 0
            if self.run["neutral"] >= r.neutral_frames:
                self.index += 1
                if self.index == len(self.challenges):
                    return self._end(True)
                self.phase, self.phase_t, self.run, self.closed_seen, self.peak, self.flat = "active", t, {}, False, 0.0, 0
                self.timings[self.index].started_s = t - self.t0
                return self._prompt(self.index)
            return self._timeouts(t)

        asked = self.challenges[self.index]
        flat = f.flatness > r.max_flatness
        if asked.name in POSES and strength[asked.name] >= 1.0 and flat:
            self.flat += 1
            strength[asked.name] = 0.0  # the pose, but on a flat face: not the asked action
        for name, s in strength.items():
            if name == "BLINK":
                continue
            self.run[name] = self.run.get(name, 0) + 1 if s >= (1.0 if name == asked.name else r.wrong_factor) else 0
        if asked is Challenge.BLINK:
            if strength["BLINK"] >= 1.0:
                self.closed_seen = True
                self.peak = max(self.peak, strength["BLINK"])
            done = self.closed_seen and f.eye >= r.reopen_ratio * median(self.eyes)
        else:
            if strength[asked.name] >= 1.0:
                self.peak = max(self.peak, strength[asked.name])
            done = self.run.get(asked.name, 0) >= r.action_frames
        for name, n in self.run.items():
            wrong_ok = {asked.name} | ({"SMILE", "OPEN_MOUTH"} if asked.name in ("SMILE", "OPEN_MOUTH") else set())
            if name not in wrong_ok and n >= r.action_frames:
                return self._end(False, f"challenge {self.index + 1} asked {PROMPTS[asked]!r} but the face did "
                                        f"something else ({PROMPTS[Challenge[name]]!r}): follow the prompts in order")
        if done:
            timing = self.timings[self.index]
            timing.completed, timing.completed_s, timing.margin = True, t - self.t0, self.peak - 1.0
            self.phase, self.phase_t, self.run = "neutral", t, {}
            return None
        return self._timeouts(t)
