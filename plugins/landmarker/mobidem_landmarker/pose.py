"""Head pose (yaw, pitch, roll in degrees) from the 478 landmarks against MediaPipe's canonical face model.

The canonical face and its Procrustes basis come from the bundle's ``geometry_pipeline_metadata_landmarks.binarypb``
(MediaPipe's ``GeometryPipelineMetadata`` protobuf: a 468-vertex ``canonical_mesh`` in centimetres, x to the
image's right for a face looking at the camera, y up, z towards the camera; and 33 weighted
``procrustes_landmark_basis`` points chosen to follow head pose rather than expression).

Method (weak perspective, documented instead of MediaPipe's perspective geometry pipeline, which needs the
camera's field of view): the landmarks in image pixels, with the landmark model's relative depth on x's
scale, are put in the same right-handed frame as the canonical model (x right, y up = -image y, z towards
the camera = -model z); the rotation R that best aligns the weighted, centred basis points of the canonical
model onto them (weighted Kabsch, ``scipy.spatial.transform.Rotation.align_vectors``; the scale drops out of
the optimal rotation) is the head's rotation in the camera frame. Euler angles: R = Ry(yaw) Rx(pitch)
Rz(roll) (intrinsic y-x'-z'').

Sign convention, in the image as the camera took it (not a mirrored preview):

- yaw > 0: the nose points to the image's right (the subject's left);
- pitch > 0: the head tilts down (the nose points to the image's bottom);
- roll > 0: the head tilts counter-clockwise in the image (the eye on the image's right rises).

These match ``mobidem.liveness.headpose`` (``u`` > 0 nose to the image's right; ``v`` grows as the head
tilts down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CanonicalFace:
    vertices: np.ndarray  # [468, 3] centimetres (x right, y up, z towards the camera)
    basis: np.ndarray  # [K] landmark ids of the Procrustes basis
    weights: np.ndarray  # [K] their weights


def _metadata_class():
    """The GeometryPipelineMetadata message class, declared from MediaPipe's .proto field numbers
    (mediapipe/tasks/cc/vision/face_geometry/proto/{geometry_pipeline_metadata,mesh_3d}.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="mobidem_landmarker/geometry_pipeline_metadata.proto",
                                            package="mobidem_landmarker", syntax="proto2")
    mesh = fd.message_type.add(name="Mesh3d")
    mesh.field.add(name="vertex_type", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    mesh.field.add(name="primitive_type", number=2, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    mesh.field.add(name="vertex_buffer", number=3, type=f.TYPE_FLOAT, label=f.LABEL_REPEATED)
    mesh.field.add(name="index_buffer", number=4, type=f.TYPE_UINT32, label=f.LABEL_REPEATED)
    ref = fd.message_type.add(name="WeightedLandmarkRef")
    ref.field.add(name="landmark_id", number=1, type=f.TYPE_UINT32, label=f.LABEL_OPTIONAL)
    ref.field.add(name="weight", number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
    meta = fd.message_type.add(name="GeometryPipelineMetadata")
    meta.field.add(name="input_source", number=3, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    meta.field.add(name="canonical_mesh", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                   type_name=".mobidem_landmarker.Mesh3d")
    meta.field.add(name="procrustes_landmark_basis", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                   type_name=".mobidem_landmarker.WeightedLandmarkRef")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mobidem_landmarker.GeometryPipelineMetadata"))


def canonical_face(data: bytes) -> CanonicalFace:
    """Parse the bundle's geometry metadata."""
    meta = _metadata_class().FromString(data)
    mesh = meta.canonical_mesh
    if mesh.vertex_type != 0:  # VERTEX_PT: x, y, z, u, v per vertex
        raise ValueError(f"canonical mesh vertex type {mesh.vertex_type} is not VERTEX_PT")
    vertices = np.asarray(mesh.vertex_buffer, np.float64).reshape(-1, 5)[:, :3]
    basis = np.array([r.landmark_id for r in meta.procrustes_landmark_basis], np.int64)
    weights = np.array([r.weight for r in meta.procrustes_landmark_basis], np.float64)
    if len(vertices) != 468 or not len(basis) or basis.max() >= len(vertices) or (weights <= 0).any():
        raise ValueError(f"unexpected geometry metadata: {len(vertices)} vertices, {len(basis)} basis points")
    return CanonicalFace(vertices, basis, weights)


def head_pose(face: CanonicalFace, landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from landmarks [>=468, 3] in image pixels (x right, y down, z: the
    landmark model's depth, smaller is nearer, on x's scale)."""
    from scipy.spatial.transform import Rotation

    p = np.asarray(landmarks, np.float64)[face.basis] * np.array([1.0, -1.0, -1.0])
    c = face.vertices[face.basis]
    w = face.weights
    p = p - np.average(p, axis=0, weights=w)
    c = c - np.average(c, axis=0, weights=w)
    rotation, _ = Rotation.align_vectors(p, c, weights=w)
    yaw, pitch, roll = rotation.as_euler("YXZ", degrees=True)
    return float(yaw), float(pitch), float(roll)
