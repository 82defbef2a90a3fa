"""`mobidem demo`: the main job end to end on a fresh machine, with no data of ours.

It starts the server on its embedded default (managed Triton + SQLite gallery in a temporary data
directory), enrols one person from a real photo that a PyPI package ships -- scikit-image's
"astronaut", a public-domain NASA portrait of Eileen Collins -- and streams a clip through the
bidirectional Stream RPC, printing one line per frame with identity and expression.

The built-in clip is honest about what it is: it is synthesised from photos, not filmed. Its
frames are the astronaut photo under a slow zoom and pan with changing brightness (so no frame is
the enrolment image itself), then a few frames of scikit-image's cat photo, where nobody should be
found. Pass --video FILE or --camera N to stream something real instead.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading

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


def run_demo(args) -> int:
    from skimage import data

    astronaut = data.astronaut()
    with tempfile.TemporaryDirectory(prefix="mobidem-demo-") as tmp:
        settings = config.load(None, environ={"MOBIDEM_DATA_DIR": tmp, "MOBIDEM_LISTEN": "127.0.0.1:0",
                                                    "MOBIDEM_METRICS_LISTEN": "127.0.0.1:0", "MOBIDEM_TRITON_METRICS_PORT": "0"})
        server, loop, started = _start_server(settings)
        try:
            target = f"127.0.0.1:{server.port}"
            print(f"mobidem demo: server on {target} with managed Triton "
                  f"(gRPC {server.managed.grpc_url}, metrics on 127.0.0.1:{server.managed.metrics_port})")
            with MobidemClient(target) as client:
                enrolled = client.enroll("Eileen Collins (astronaut)", [astronaut], face_index=0)
                print(f"enrolled {enrolled.identity.display_name!r} from scikit-image's astronaut photo "
                      f"as {enrolled.identity.id}")
                if args.video or args.camera is not None:
                    source = int(args.camera) if args.camera is not None else args.video
                    frames = video_frames(source)
                    print(f"streaming {source}")
                else:
                    frames = synthetic_clip(astronaut, data.chelsea(), args.frames)
                    print(f"streaming a {len(frames)}-frame clip synthesised from the astronaut photo "
                          "(zoom, pan, rotation, brightness), ending on scikit-image's cat photo (no face)")
                recognised = total = 0
                for result in client.stream(frames):
                    print(describe(result), flush=True)
                    total += 1
                    recognised += any(f.identity.known for f in result.faces)
                print(f"done: {total} frames, the enrolled person recognised in {recognised}")
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
    return 0


def _start_server(settings):
    from mobidem.app import MobidemServer

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="mobidem-demo-server").start()
    server = MobidemServer(settings)
    started = asyncio.run_coroutine_threadsafe(server.start(), loop).result(300)
    return server, loop, started
