"""Drawing results on frames (OpenCV) and writing an annotated video."""

from __future__ import annotations

import cv2
import numpy as np

from mobidem.v1 import mobidem_pb2 as pb


def draw(frame_rgb: np.ndarray, result: pb.FrameResult) -> np.ndarray:
    """A BGR copy of the frame with boxes, keypoints, identity and expression."""
    out = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    for face in result.faces:
        known = face.HasField("identity") and face.identity.known
        color = (60, 200, 60) if known else (0, 170, 255)
        p0, p1 = (int(face.box.x0), int(face.box.y0)), (int(face.box.x1), int(face.box.y1))
        cv2.rectangle(out, p0, p1, color, 2)
        for point in face.landmarks:
            cv2.circle(out, (int(point.x), int(point.y)), 2, (255, 255, 0), -1)
        label = face.identity.display_name if known else "unknown"
        if face.track_id:
            label = f"#{face.track_id} {label}"
        if face.HasField("expression"):
            label += f" | {face.expression.label}"
        cv2.putText(out, label, (p0[0], max(12, p0[1] - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


def write_video(path: str, frames: list[np.ndarray], results: list[pb.FrameResult], fps: float = 25.0) -> None:
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        for frame, result in zip(frames, results):
            writer.write(draw(frame, result))
    finally:
        writer.release()
