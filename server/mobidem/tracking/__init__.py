"""Faces that persist across a stream's frames.

- ``motion``: which detection continues which track (a Kalman filter per box, an optimal assignment).
- ``quality``: how good a face is for identity (size, frontality, sharpness), to embed only when it helps.
- ``session``: one stream's tracks: when to embed, the identity decided over a track's embeddings,
  splits when a track's fresh embeddings disagree with it, the smoothed expression.

Transport-agnostic; the pipeline calls a ``StreamTracks`` from a stream's ordered sections.
"""

from mobidem.tracking.motion import BoxTracker, iou_matrix
from mobidem.tracking.quality import face_quality
from mobidem.tracking.session import FacePlan, StreamTracks, TrackingConfig

__all__ = ["BoxTracker", "FacePlan", "StreamTracks", "TrackingConfig", "face_quality", "iou_matrix"]
