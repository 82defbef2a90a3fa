import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGBA8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGRA8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_DETECT: _ClassVar[Task]
    TASK_IDENTIFY: _ClassVar[Task]
    TASK_EXPRESSION: _ClassVar[Task]
    TASK_PLUGINS: _ClassVar[Task]

class DropPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_POLICY_UNSPECIFIED: _ClassVar[DropPolicy]
    DROP_POLICY_NONE: _ClassVar[DropPolicy]
    DROP_POLICY_LATEST_FRAME_WINS: _ClassVar[DropPolicy]

class Tracking(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACKING_UNSPECIFIED: _ClassVar[Tracking]
    TRACKING_ON: _ClassVar[Tracking]
    TRACKING_OFF: _ClassVar[Tracking]

class Challenge(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHALLENGE_UNSPECIFIED: _ClassVar[Challenge]
    CHALLENGE_BLINK: _ClassVar[Challenge]
    CHALLENGE_TURN_LEFT: _ClassVar[Challenge]
    CHALLENGE_TURN_RIGHT: _ClassVar[Challenge]
    CHALLENGE_LOOK_UP: _ClassVar[Challenge]
    CHALLENGE_SMILE: _ClassVar[Challenge]
    CHALLENGE_OPEN_MOUTH: _ClassVar[Challenge]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGBA8: PixelFormat
PIXEL_FORMAT_BGRA8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
TASK_UNSPECIFIED: Task
TASK_DETECT: Task
TASK_IDENTIFY: Task
TASK_EXPRESSION: Task
TASK_PLUGINS: Task
DROP_POLICY_UNSPECIFIED: DropPolicy
DROP_POLICY_NONE: DropPolicy
DROP_POLICY_LATEST_FRAME_WINS: DropPolicy
TRACKING_UNSPECIFIED: Tracking
TRACKING_ON: Tracking
TRACKING_OFF: Tracking
CHALLENGE_UNSPECIFIED: Challenge
CHALLENGE_BLINK: Challenge
CHALLENGE_TURN_LEFT: Challenge
CHALLENGE_TURN_RIGHT: Challenge
CHALLENGE_LOOK_UP: Challenge
CHALLENGE_SMILE: Challenge
CHALLENGE_OPEN_MOUTH: Challenge

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "stride", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    stride: int
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., stride: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("tasks", "min_face_size", "drop_policy", "max_in_flight", "top_k", "tracking")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROP_POLICY_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[Task]
    min_face_size: int
    drop_policy: DropPolicy
    max_in_flight: int
    top_k: int
    tracking: Tracking
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, str]]] = ..., min_face_size: _Optional[int] = ..., drop_policy: _Optional[_Union[DropPolicy, str]] = ..., max_in_flight: _Optional[int] = ..., top_k: _Optional[int] = ..., tracking: _Optional[_Union[Tracking, str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "capture_time", "image")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    capture_time: _timestamp_pb2.Timestamp
    image: Image
    def __init__(self, sequence: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("options", "frame")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    options: StreamOptions
    frame: Frame
    def __init__(self, options: _Optional[_Union[StreamOptions, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("identity_id", "display_name", "distance")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    display_name: str
    distance: float
    def __init__(self, identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., distance: _Optional[float] = ...) -> None: ...

class IdentityMatch(_message.Message):
    __slots__ = ("known", "identity_id", "display_name", "distance", "threshold", "operating_point", "candidates", "stale_identities")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    STALE_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    known: bool
    identity_id: str
    display_name: str
    distance: float
    threshold: float
    operating_point: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    stale_identities: int
    def __init__(self, known: _Optional[bool] = ..., identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., distance: _Optional[float] = ..., threshold: _Optional[float] = ..., operating_point: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., stale_identities: _Optional[int] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Expression(_message.Message):
    __slots__ = ("label", "confidence", "probabilities")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ...) -> None: ...

class PluginValue(_message.Message):
    __slots__ = ("number", "text", "vector", "points")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    number: float
    text: str
    vector: Vector
    points: Points
    def __init__(self, number: _Optional[float] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., points: _Optional[_Union[Points, _Mapping]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Points(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "landmarks", "detection_score", "identity", "expression", "extensions", "track_id", "fresh_embedding", "quality", "track_embeddings", "smoothed_expression")
    class ExtensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PluginValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PluginValue, _Mapping]] = ...) -> None: ...
    BOX_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    FRESH_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TRACK_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHED_EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    box: Box
    landmarks: _containers.RepeatedCompositeFieldContainer[Point]
    detection_score: float
    identity: IdentityMatch
    expression: Expression
    extensions: _containers.MessageMap[str, PluginValue]
    track_id: int
    fresh_embedding: bool
    quality: float
    track_embeddings: int
    smoothed_expression: Expression
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., landmarks: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., detection_score: _Optional[float] = ..., identity: _Optional[_Union[IdentityMatch, _Mapping]] = ..., expression: _Optional[_Union[Expression, _Mapping]] = ..., extensions: _Optional[_Mapping[str, PluginValue]] = ..., track_id: _Optional[int] = ..., fresh_embedding: _Optional[bool] = ..., quality: _Optional[float] = ..., track_embeddings: _Optional[int] = ..., smoothed_expression: _Optional[_Union[Expression, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("role", "name", "version")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    role: str
    name: str
    version: str
    def __init__(self, role: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "detect_ms", "align_ms", "embed_ms", "match_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    DETECT_MS_FIELD_NUMBER: _ClassVar[int]
    ALIGN_MS_FIELD_NUMBER: _ClassVar[int]
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    MATCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    detect_ms: float
    align_ms: float
    embed_ms: float
    match_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., detect_ms: _Optional[float] = ..., align_ms: _Optional[float] = ..., embed_ms: _Optional[float] = ..., match_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("sequence", "capture_time", "status", "drop_reason", "width", "height", "faces", "models", "timings", "error_code", "error_message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[FrameResult.Status]
        STATUS_OK: _ClassVar[FrameResult.Status]
        STATUS_DROPPED: _ClassVar[FrameResult.Status]
        STATUS_FAILED: _ClassVar[FrameResult.Status]
    STATUS_UNSPECIFIED: FrameResult.Status
    STATUS_OK: FrameResult.Status
    STATUS_DROPPED: FrameResult.Status
    STATUS_FAILED: FrameResult.Status
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    capture_time: _timestamp_pb2.Timestamp
    status: FrameResult.Status
    drop_reason: str
    width: int
    height: int
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    timings: Timings
    error_code: int
    error_message: str
    def __init__(self, sequence: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[FrameResult.Status, str]] = ..., drop_reason: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class AnalyzeRequest(_message.Message):
    __slots__ = ("image", "tasks", "min_face_size", "top_k")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    image: Image
    tasks: _containers.RepeatedScalarFieldContainer[Task]
    min_face_size: int
    top_k: int
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[Task, str]]] = ..., min_face_size: _Optional[int] = ..., top_k: _Optional[int] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("id", "display_name", "metadata", "created", "updated", "template_count", "reenrolment_needed")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REENROLMENT_NEEDED_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    metadata: _containers.ScalarMap[str, str]
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    template_count: int
    reenrolment_needed: bool
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., template_count: _Optional[int] = ..., reenrolment_needed: _Optional[bool] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("identity_id", "display_name", "metadata", "images", "face_index", "idempotency_key", "replace_metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_METADATA_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    display_name: str
    metadata: _containers.ScalarMap[str, str]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    face_index: int
    idempotency_key: str
    replace_metadata: bool
    def __init__(self, identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., face_index: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., replace_metadata: _Optional[bool] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("identity", "templates_added", "replayed")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_ADDED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    identity: Identity
    templates_added: int
    replayed: bool
    def __init__(self, identity: _Optional[_Union[Identity, _Mapping]] = ..., templates_added: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ListIdentitiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIdentitiesResponse(_message.Message):
    __slots__ = ("identities", "next_page_token")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[Identity]
    next_page_token: str
    def __init__(self, identities: _Optional[_Iterable[_Union[Identity, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetIdentityRequest(_message.Message):
    __slots__ = ("identity_id",)
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    def __init__(self, identity_id: _Optional[str] = ...) -> None: ...

class DeleteIdentityRequest(_message.Message):
    __slots__ = ("identity_id",)
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    def __init__(self, identity_id: _Optional[str] = ...) -> None: ...

class DeleteIdentityResponse(_message.Message):
    __slots__ = ("templates_deleted",)
    TEMPLATES_DELETED_FIELD_NUMBER: _ClassVar[int]
    templates_deleted: int
    def __init__(self, templates_deleted: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("probe", "image", "identity_id", "operating_point", "probe_face_index", "reference_face_index", "transaction_ref")
    PROBE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    PROBE_FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_REF_FIELD_NUMBER: _ClassVar[int]
    probe: Image
    image: Image
    identity_id: str
    operating_point: str
    probe_face_index: int
    reference_face_index: int
    transaction_ref: str
    def __init__(self, probe: _Optional[_Union[Image, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., identity_id: _Optional[str] = ..., operating_point: _Optional[str] = ..., probe_face_index: _Optional[int] = ..., reference_face_index: _Optional[int] = ..., transaction_ref: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("match", "distance", "threshold", "operating_point", "far_target", "embedder", "request_id", "evidence", "evidence_record_id")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    FAR_TARGET_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    match: bool
    distance: float
    threshold: float
    operating_point: str
    far_target: float
    embedder: str
    request_id: str
    evidence: str
    evidence_record_id: str
    def __init__(self, match: _Optional[bool] = ..., distance: _Optional[float] = ..., threshold: _Optional[float] = ..., operating_point: _Optional[str] = ..., far_target: _Optional[float] = ..., embedder: _Optional[str] = ..., request_id: _Optional[str] = ..., evidence: _Optional[str] = ..., evidence_record_id: _Optional[str] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("probe", "top_k", "operating_point", "probe_face_index", "transaction_ref")
    PROBE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    PROBE_FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_REF_FIELD_NUMBER: _ClassVar[int]
    probe: Image
    top_k: int
    operating_point: str
    probe_face_index: int
    transaction_ref: str
    def __init__(self, probe: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ..., operating_point: _Optional[str] = ..., probe_face_index: _Optional[int] = ..., transaction_ref: _Optional[str] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("match", "embedder", "request_id", "evidence", "evidence_record_id")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    match: IdentityMatch
    embedder: str
    request_id: str
    evidence: str
    evidence_record_id: str
    def __init__(self, match: _Optional[_Union[IdentityMatch, _Mapping]] = ..., embedder: _Optional[str] = ..., request_id: _Optional[str] = ..., evidence: _Optional[str] = ..., evidence_record_id: _Optional[str] = ...) -> None: ...

class GetEvidenceKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvidenceKeys(_message.Message):
    __slots__ = ("jwks", "active_kid")
    JWKS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KID_FIELD_NUMBER: _ClassVar[int]
    jwks: str
    active_kid: str
    def __init__(self, jwks: _Optional[str] = ..., active_kid: _Optional[str] = ...) -> None: ...

class LivenessOptions(_message.Message):
    __slots__ = ("identity_id", "reference_image", "operating_point", "test_seed", "transaction_ref")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    TEST_SEED_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_REF_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    reference_image: Image
    operating_point: str
    test_seed: int
    transaction_ref: str
    def __init__(self, identity_id: _Optional[str] = ..., reference_image: _Optional[_Union[Image, _Mapping]] = ..., operating_point: _Optional[str] = ..., test_seed: _Optional[int] = ..., transaction_ref: _Optional[str] = ...) -> None: ...

class LivenessRequest(_message.Message):
    __slots__ = ("options", "frame")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    options: LivenessOptions
    frame: Frame
    def __init__(self, options: _Optional[_Union[LivenessOptions, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class ChallengePrompt(_message.Message):
    __slots__ = ("index", "count", "challenge", "text", "window_s", "ceremony_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CEREMONY_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    challenge: Challenge
    text: str
    window_s: float
    ceremony_id: str
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ..., challenge: _Optional[_Union[Challenge, str]] = ..., text: _Optional[str] = ..., window_s: _Optional[float] = ..., ceremony_id: _Optional[str] = ...) -> None: ...

class ChallengeTiming(_message.Message):
    __slots__ = ("challenge", "completed", "started_s", "completed_s", "window_s")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STARTED_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_S_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    completed: bool
    started_s: float
    completed_s: float
    window_s: float
    def __init__(self, challenge: _Optional[_Union[Challenge, str]] = ..., completed: _Optional[bool] = ..., started_s: _Optional[float] = ..., completed_s: _Optional[float] = ..., window_s: _Optional[float] = ...) -> None: ...

class LivenessOutcome(_message.Message):
    __slots__ = ("decision", "reasons", "challenges", "score", "ceremony_id", "frames", "duration_s", "verified", "match", "distance", "threshold", "operating_point", "evidence", "evidence_record_id")
    class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DECISION_UNSPECIFIED: _ClassVar[LivenessOutcome.Decision]
        DECISION_PASS: _ClassVar[LivenessOutcome.Decision]
        DECISION_FAIL: _ClassVar[LivenessOutcome.Decision]
    DECISION_UNSPECIFIED: LivenessOutcome.Decision
    DECISION_PASS: LivenessOutcome.Decision
    DECISION_FAIL: LivenessOutcome.Decision
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CHALLENGES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CEREMONY_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    decision: LivenessOutcome.Decision
    reasons: _containers.RepeatedScalarFieldContainer[str]
    challenges: _containers.RepeatedCompositeFieldContainer[ChallengeTiming]
    score: float
    ceremony_id: str
    frames: int
    duration_s: float
    verified: bool
    match: bool
    distance: float
    threshold: float
    operating_point: str
    evidence: str
    evidence_record_id: str
    def __init__(self, decision: _Optional[_Union[LivenessOutcome.Decision, str]] = ..., reasons: _Optional[_Iterable[str]] = ..., challenges: _Optional[_Iterable[_Union[ChallengeTiming, _Mapping]]] = ..., score: _Optional[float] = ..., ceremony_id: _Optional[str] = ..., frames: _Optional[int] = ..., duration_s: _Optional[float] = ..., verified: _Optional[bool] = ..., match: _Optional[bool] = ..., distance: _Optional[float] = ..., threshold: _Optional[float] = ..., operating_point: _Optional[str] = ..., evidence: _Optional[str] = ..., evidence_record_id: _Optional[str] = ...) -> None: ...

class LivenessResponse(_message.Message):
    __slots__ = ("prompt", "outcome")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    prompt: ChallengePrompt
    outcome: LivenessOutcome
    def __init__(self, prompt: _Optional[_Union[ChallengePrompt, _Mapping]] = ..., outcome: _Optional[_Union[LivenessOutcome, _Mapping]] = ...) -> None: ...

class CreateCeremonyRequest(_message.Message):
    __slots__ = ("identity_id", "transaction_ref", "operating_point", "test_seed", "ttl_s")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_REF_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    TEST_SEED_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    transaction_ref: str
    operating_point: str
    test_seed: int
    ttl_s: float
    def __init__(self, identity_id: _Optional[str] = ..., transaction_ref: _Optional[str] = ..., operating_point: _Optional[str] = ..., test_seed: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateCeremonyResponse(_message.Message):
    __slots__ = ("token", "path", "url", "expires_at", "ceremony_ref")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CEREMONY_REF_FIELD_NUMBER: _ClassVar[int]
    token: str
    path: str
    url: str
    expires_at: _timestamp_pb2.Timestamp
    ceremony_ref: str
    def __init__(self, token: _Optional[str] = ..., path: _Optional[str] = ..., url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ceremony_ref: _Optional[str] = ...) -> None: ...

class GetCeremonyRequest(_message.Message):
    __slots__ = ("ceremony_ref", "wait_s")
    CEREMONY_REF_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ceremony_ref: str
    wait_s: float
    def __init__(self, ceremony_ref: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class CeremonyStatus(_message.Message):
    __slots__ = ("state", "outcome", "transaction_ref", "identity_id", "error")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[CeremonyStatus.State]
        STATE_WAITING: _ClassVar[CeremonyStatus.State]
        STATE_RUNNING: _ClassVar[CeremonyStatus.State]
        STATE_DONE: _ClassVar[CeremonyStatus.State]
        STATE_EXPIRED: _ClassVar[CeremonyStatus.State]
        STATE_ERROR: _ClassVar[CeremonyStatus.State]
    STATE_UNSPECIFIED: CeremonyStatus.State
    STATE_WAITING: CeremonyStatus.State
    STATE_RUNNING: CeremonyStatus.State
    STATE_DONE: CeremonyStatus.State
    STATE_EXPIRED: CeremonyStatus.State
    STATE_ERROR: CeremonyStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_REF_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: CeremonyStatus.State
    outcome: LivenessOutcome
    transaction_ref: str
    identity_id: str
    error: str
    def __init__(self, state: _Optional[_Union[CeremonyStatus.State, str]] = ..., outcome: _Optional[_Union[LivenessOutcome, _Mapping]] = ..., transaction_ref: _Optional[str] = ..., identity_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...
