"""What phones and cameras send, and what attackers send, through the real server and Triton.

Phone-size photos (12 MP, 48 MP, portrait stored sideways with EXIF orientation, JPEG/HEIC/WebP/PNG)
and 4K frames are made at test time from the shared face data; hostile files are made here too.
Also: Triton's limits read at start (batches split at max_batch_size), Triton's statuses mapped,
a plugin bug failing one frame only, the calibration bound to its embedder, idempotency purging.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, memory_kb, person_photos, spawn_server, start_failure
from test_imaging_unit import BOMBS
from mobidem.client import MobidemClient, video_frames
from mobidem.v1 import mobidem_pb2 as pb

OK, FAILED = pb.FrameResult.STATUS_OK, pb.FrameResult.STATUS_FAILED


def rgb_of(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _borders(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The grey borders (left, right, top, bottom) that give a w x h photo the aspect ratio of width x height."""
    target = width / height
    if w / h < target:
        pad = int(round(h * target)) - w
        return pad // 2, pad - pad // 2, 0, 0
    pad = int(round(w / target)) - h
    return 0, 0, pad // 2, pad - pad // 2


def phone_size(rgb: np.ndarray, width: int, height: int, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """``rgb`` padded to the target's aspect ratio (grey borders, no stretching) and upscaled to it."""
    left, right, top, bottom = _borders(rgb.shape[1], rgb.shape[0], width, height)
    rgb = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def phone_box(box, w: int, h: int, width: int, height: int) -> np.ndarray:
    """Where the box (x0, y0, x1, y1) of a w x h photo lies in ``phone_size(photo, width, height)``."""
    left, right, top, bottom = _borders(w, h, width, height)
    sx, sy = width / (w + left + right), height / (h + top + bottom)
    return np.array([(box[0] + left) * sx, (box[1] + top) * sy, (box[2] + left) * sx, (box[3] + top) * sy])


# HEIC as a phone's HEVC encoder makes it, at x265's fastest settings (ultrafast, no coding units below 32x32:
# 0.6 s of CPU for 12 MP instead of 4.8 s at the defaults); still a real HEIC file of the full size
_HEIC = dict(quality=70, enc_params={"preset": "ultrafast", "x265:min-cu-size": "32"})


def encode(rgb: np.ndarray, fmt: str, orientation: int = 1) -> bytes:
    """Encoded as a phone would store it: JPEG q90, HEIC, WebP, PNG; ``orientation``: the EXIF tag."""
    if fmt == "JPEG" and orientation == 1:  # libjpeg through OpenCV: twice Pillow's speed at 48 MP
        return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    options = {"JPEG": dict(quality=90), "HEIF": _HEIC, "WEBP": dict(quality=85, method=0),
               "PNG": dict(compress_level=1)}[fmt]
    Image.fromarray(rgb).save(out, fmt, exif=exif.tobytes(), **options)
    return out.getvalue()


# ------------------------------------------------------------------------------------ phone photos

# Every identity photo in each of these: a 4032x3024 JPEG; a 3024x4032 portrait stored sideways with EXIF
# orientation 6 (as phones store it); an 8064x6048 JPEG; and 12-MP HEIC, WebP and PNG files, every other
# photo of them (odd positions) a sideways portrait with EXIF orientation 6, the others 4032x3024.
PHONE_VARIANTS = ("12mp-jpeg", "portrait-exif6-jpeg", "48mp-jpeg", "heic", "webp", "png")
_FORMATS = {"heic": "HEIF", "webp": "WEBP", "png": "PNG"}


def phone_file(rgb: np.ndarray, variant: str, position: int) -> tuple[bytes, tuple[int, int]]:
    """The file of ``variant`` made of the photo ``rgb`` (at ``position`` among the photos), and the
    upright width x height a decoder must show."""
    fmt = _FORMATS.get(variant, "JPEG")
    if variant == "48mp-jpeg":
        return encode(phone_size(rgb, 8064, 6048, cv2.INTER_LINEAR), "JPEG"), (8064, 6048)
    if variant == "portrait-exif6-jpeg" or (fmt != "JPEG" and position % 2):
        upright = phone_size(rgb, 3024, 4032, cv2.INTER_LINEAR)  # stored turned 90° anticlockwise: EXIF 6
        return encode(np.ascontiguousarray(np.rot90(upright, 1)), fmt, orientation=6), (3024, 4032)
    return encode(phone_size(rgb, 4032, 3024, cv2.INTER_LINEAR), fmt), (4032, 3024)


def analysed(variant: str, position: int) -> bool:
    """Whether Analyze (size, orientation, where the face is) checks this file besides Verify (which
    proves a face was found and matches): every sideways JPEG portrait, and one other variant of each
    photo in turn, so that every format is analysed at both orientations (Analyze of a 12-MP HEIC, WebP
    or PNG costs what its Verify does: the decode)."""
    others = [v for v in PHONE_VARIANTS if v != "portrait-exif6-jpeg"]
    return variant == "portrait-exif6-jpeg" or others[position % len(others)] == variant


def _largest(faces) -> object:
    return max(faces, key=lambda f: (f.box.x1 - f.box.x0) * (f.box.y1 - f.box.y0))


@pytest.fixture(scope="module")
def identity_originals(server, faces) -> list[tuple[Path, pb.FrameResult]]:
    """Every identity photo of the manifest with the server's Analyze of it as it is."""
    rows = [line.split("\t") for line in (faces / "MANIFEST.tsv").read_text().splitlines()[1:]]
    paths = [faces / row[0] for row in rows if row[1] == "identity"]
    assert sorted(paths) == sorted((faces / "identities").glob("*/*.jpg")), "MANIFEST.tsv and identities/ differ"
    with server.client(timeout=120) as c, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: c.analyze(p, tasks=[pb.TASK_DETECT]), paths))
    return list(zip(paths, results))


@pytest.fixture(scope="module")
def phone_checks(request, server, identity_originals) -> dict[str, dict]:
    """Each photo whose original alone has a face, in each phone variant (those of the tests selected):
    Verify against the original, and Analyze where ``analysed``. Files are made in worker threads while
    the server works on others' (the encoders and gRPC release the GIL). Per variant: how many were
    verified, the upright sizes Analyze checked, and the failures, each in words."""
    selected = {item.callspec.params["variant"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_phone_formats_sizes_and_orientation"}
    variants = [v for v in PHONE_VARIANTS if v in selected] or list(PHONE_VARIANTS)
    found = [(n, path, result) for n, (path, result) in enumerate(identity_originals) if result.faces]

    def check(client, n, path, original, variant) -> tuple[tuple[int, int] | None, str | None]:
        """(the size Analyze checked or None, the failure or None)"""
        data, size = phone_file(rgb_of(path), variant, n)
        name = f"{path.parent.name}/{path.name} {variant} {size[0]}x{size[1]}"
        checked = None
        try:
            if analysed(variant, n):
                result = client.analyze(data, tasks=[pb.TASK_DETECT])
                if (result.width, result.height) != size:
                    return None, f"{name}: decoded as {result.width}x{result.height} (orientation or size wrong)"
                face = _largest(original.faces).box
                where = phone_box((face.x0, face.y0, face.x1, face.y1), original.width, original.height, *size)
                boxes = [np.array([f.box.x0, f.box.y0, f.box.x1, f.box.y1]) for f in result.faces]
                if not any(_iou(where, b) >= 0.5 for b in boxes):
                    return None, f"{name}: no face at {where.round()} (faces at {[b.round() for b in boxes]})"
                checked = size
            decision = client.verify(data, path.read_bytes(), probe_face_index=0, reference_face_index=0)
        except grpc.RpcError as exc:
            return checked, f"{name}: {exc.code().name} {exc.details()}"
        if not decision.match or decision.operating_point != "far_1e-3":  # the default operating point
            return checked, (f"{name}: no match at {decision.operating_point!r}: distance {decision.distance:.3f} "
                             f"threshold {decision.threshold:.3f}")
        return checked, None

    out = {v: {"verified": 0, "analysed": [], "failures": []} for v in variants}
    started = time.perf_counter()
    with server.client(timeout=300) as c, ThreadPoolExecutor(4) as pool:
        jobs = [(v, pool.submit(check, c, n, path, result, v)) for n, path, result in found for v in variants]
        for variant, job in jobs:
            size, failure = job.result()
            out[variant]["verified"] += failure is None
            out[variant]["analysed"] += [size] if size else []
            out[variant]["failures"] += [failure] if failure else []
    print(f"\nphone variants {variants} of {len(found)} photos: {time.perf_counter() - started:.1f} s")
    return {**out, "originals": {"all": len(identity_originals), "found": len(found),
                                 "positions": [n for n, _, _ in found]}}


@pytest.mark.parametrize("variant", PHONE_VARIANTS)
def test_phone_formats_sizes_and_orientation(phone_checks, variant):
    """Every identity photo whose original alone has a face (at least 90 % of them: the data set is
    chosen for faces), as a phone would send it: Verify against the original photo matches at the
    default operating point; where Analyze checks it, the upright size is right and the face is where
    the original's largest face is."""
    originals, checks = phone_checks["originals"], phone_checks[variant]
    assert originals["found"] >= 0.9 * originals["all"], originals
    failures = checks["failures"]
    assert not failures, f"{len(failures)} of {originals['found']} photos fail:\n" + "\n".join(failures[:12])
    assert checks["verified"] == originals["found"]
    if variant == "portrait-exif6-jpeg":
        assert checks["analysed"] == [(3024, 4032)] * originals["found"]
    else:  # one photo in five, the HEIC, WebP and PNG ones at both orientations
        assert len(checks["analysed"]) == sum(analysed(variant, n) for n in originals["positions"]) > 0
        assert set(checks["analysed"]) == ({(4032, 3024), (3024, 4032)} if variant in _FORMATS else
                                           {(8064, 6048) if variant == "48mp-jpeg" else (4032, 3024)})


def test_enrol_with_a_12_mp_photo(client, faces):
    photos = person_photos(faces, "tony_blair")
    enrolled = client.enroll("Tony Blair (12 MP)", [encode(phone_size(rgb_of(photos[0]), 4032, 3024), "JPEG")],
                             face_index=0)  # the photo shows a second, cut-off face at its edge
    assert enrolled.templates_added == 1
    match = client.identify(photos[1]).match
    assert match.known and match.identity_id == enrolled.identity.id


def test_a_4k_stream_finds_at_least_the_1080p_faces(client, faces):
    frames = list(video_frames(str(faces / "videos" / "facenet_pytorch_video.mp4"), 16))
    assert frames[0].shape[:2] == (1080, 1920)
    # the detector on every frame, not tracking (which searches the whole frame only on key frames)
    hd = list(client.stream(frames, tasks=[pb.TASK_DETECT], tracking=pb.TRACKING_OFF))
    uhd = list(client.stream((cv2.resize(f, (3840, 2160), interpolation=cv2.INTER_CUBIC) for f in frames),
                             tasks=[pb.TASK_DETECT], tracking=pb.TRACKING_OFF))
    assert [r.status for r in uhd] == [OK] * len(frames), [(r.error_code, r.error_message) for r in uhd]
    assert all((r.width, r.height) == (3840, 2160) for r in uhd)
    assert sum(len(r.faces) for r in hd) > 0
    # every face found at 1080p is found at 4K, where it lies (boxes scaled by 2, IoU >= 0.5); faces within
    # 0.1 of the full-range threshold (0.3) are left out: any resampling flips such borderline scores
    for a, b in zip(hd, uhd):
        for face in (f for f in a.faces if f.detection_score >= 0.4):
            box = np.array([face.box.x0, face.box.y0, face.box.x1, face.box.y1]) * 2
            assert any(_iou(box, np.array([g.box.x0, g.box.y0, g.box.x1, g.box.y1])) >= 0.5 for g in b.faces), \
                f"frame {a.sequence}: the face at {box.round()} (score {face.detection_score:.2f}) is missing at 4K"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_batches_above_max_batch_size_are_split(start_server, faces):
    """Without the detector's size cap a 12-MP photo needs 48 tiles of the full-range model, whose
    max_batch_size (read from Triton) is 16: the batch is split, never sent whole."""
    server = start_server(detect_max_side=8192)
    assert server.server.triton.max_batch("blazeface_full") == 16  # from model_repository's config.pbtxt
    photo = person_photos(faces, "barack_obama")[0]
    with server.client() as c:
        result = c.analyze(encode(phone_size(rgb_of(photo), 4032, 3024), "JPEG"))
    assert len(result.faces) >= 1
    stats = server.call(server.server.triton.statistics("blazeface_full"))
    batches = {int(b["batch_size"]) for s in stats["model_stats"] for b in s.get("batch_stats", [])}
    assert batches and max(batches) <= 16


def test_split_batches_equal_whole_ones(triton):
    from mobidem.triton_client import TritonClient

    async def run():
        client = TritonClient(triton.grpc_url)
        try:
            await client.plan(["blazeface_short"])
            rng = np.random.default_rng(1)
            images = rng.integers(0, 255, (40, 128, 128, 3), np.uint8)
            whole = await client.infer("blazeface_short", {"image": images}, ["scores"])
            alone = [await client.infer("blazeface_short", {"image": images[i:i + 1]}, ["scores"]) for i in (0, 17, 39)]
            return whole["scores"], [a["scores"][0] for a in alone]
        finally:
            await client.close()

    whole, alone = asyncio.run(run())
    assert whole.shape[0] == 40
    for i, a in zip((0, 17, 39), alone):
        assert np.allclose(whole[i], a, atol=1e-5)


# ------------------------------------------------------------------------------------ Triton statuses

def test_triton_failures_keep_their_meaning(triton):
    from mobidem.errors import Internal, InvalidArgument, Unavailable
    from mobidem.triton_client import TritonClient, _translate
    from tritonclient.utils import InferenceServerException

    async def run():
        client = TritonClient(triton.grpc_url)
        try:
            await client.plan(["blazeface_short"])
            outcomes = {}
            for name, call in {
                "bad shape": lambda: client.infer("blazeface_short", {"image": np.zeros((1, 64, 64, 3), np.uint8)},
                                                  ["scores"]),
                "no such model": lambda: client.infer("no_such_model", {"image": np.zeros((1, 8), np.uint8)}, ["x"]),
            }.items():
                try:
                    await call()
                except Exception as exc:  # noqa: BLE001
                    outcomes[name] = exc
            client._versions["blazeface_short"] = "9"  # as if Triton served another version than planned
            try:
                await client.infer("blazeface_short", {"image": np.zeros((1, 128, 128, 3), np.uint8)}, ["scores"])
            except Exception as exc:  # noqa: BLE001
                outcomes["other version"] = exc
            return outcomes
        finally:
            await client.close()

    outcomes = asyncio.run(run())
    assert isinstance(outcomes["bad shape"], InvalidArgument), outcomes
    assert isinstance(outcomes["no such model"], Unavailable), outcomes
    assert isinstance(outcomes["other version"], Unavailable) and "version 9" in str(outcomes["other version"])
    bug = _translate("m", InferenceServerException("division by zero in model.py", status="StatusCode.INTERNAL"))
    assert isinstance(bug, Internal) and "ref " in str(bug) and "division" not in str(bug)
    full = _translate("m", InferenceServerException("queue is full", status="StatusCode.RESOURCE_EXHAUSTED"))
    assert type(full).__name__ == "ResourceExhausted"


# ------------------------------------------------------------------------------------ hostile files

def _patched(fmt: str, w: int, h: int) -> bytes:
    """A small real file of ``fmt`` whose header claims w x h."""
    if fmt in BOMBS:  # the accepted formats: the same files the imaging unit tests refuse
        return BOMBS[fmt](w, h)
    if fmt == "TIFF":  # little-endian TIFF, one IFD: width, length, 8-bit RGB, one strip
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (262, 3, 1, 2), (273, 4, 1, 200), (277, 3, 1, 3),
                   (278, 4, 1, h), (279, 4, 1, 64)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
        return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 300
    if fmt == "BMP":
        return b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0) + b"\0" * 16
    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + b"," + struct.pack("<HHHH", 0, 0, w, h) + b"\x00\x02\x02\x44\x01\x00;"
    raise ValueError(fmt)


def _real_16000(fmt: str) -> bytes:
    """A real, highly compressible 16000x16000 image (a grey gradient)."""
    grey = np.broadcast_to(np.linspace(0, 255, 16000).astype(np.uint8), (16000, 16000))
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey)).save(out, fmt, **({"compress_level": 9} if fmt == "PNG" else {}))
    return out.getvalue()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    corpus = {f"{fmt} {side}x{side}": _patched(fmt, side, side)
              for fmt in ("PNG", "JPEG", "WEBP", "HEIF", "TIFF", "BMP", "GIF") for side in (30000, 65535)}
    corpus.update({f"real {fmt} 16000x16000": _real_16000(fmt) for fmt in ("PNG", "JPEG")})
    return corpus


def test_bomb_corpus_is_refused_before_it_costs_anything(triton, tmp_path, faces, bombs):
    """Every file of the corpus is refused quickly with a status that says what to fix (the
    accepted formats by their header size, the others unread), the gateway's peak memory grows by
    under 50 MB over all of them, and eight at once leave a normal Analyze unaffected."""
    proc, target = spawn_server(triton.grpc_url, tmp_path / "data", tmp_path / "serve.log")
    photo = person_photos(faces, "barack_obama")[0]
    try:
        with MobidemClient(target, timeout=30) as client:
            assert client.analyze(photo).faces  # warm: buffers, threads, connections in place
            assert client.analyze(encode(phone_size(rgb_of(photo), 4032, 3024), "JPEG")).faces
            peak_before = memory_kb(proc.pid, "VmHWM")
            slow = []
            for name, data in bombs.items():
                elapsed = float("inf")
                for _ in range(3):  # the cost of refusing it: the best of three round trips, not scheduler noise
                    started = time.perf_counter()
                    with pytest.raises(grpc.RpcError) as info:
                        client.analysis.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=data)), timeout=30)
                    elapsed = min(elapsed, time.perf_counter() - started)
                accepted_format = name.split()[0 if not name.startswith("real") else 1] in ("PNG", "JPEG", "WEBP", "HEIF")
                expected = grpc.StatusCode.RESOURCE_EXHAUSTED if accepted_format else grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.code() == expected, (name, info.value.details())
                assert ("at most" in info.value.details()) if accepted_format else \
                    ("JPEG, PNG, WebP or HEIC" in info.value.details()), (name, info.value.details())
                if elapsed > 0.1:
                    slow.append(f"{name}: {elapsed * 1000:.0f} ms")
            assert not slow, slow

            def one(data):
                try:
                    client.analysis.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=data)), timeout=30)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            eight = list(bombs.values())[:8]
            with ThreadPoolExecutor(9) as pool:
                refused = [pool.submit(one, d) for d in eight]
                normal = pool.submit(client.analyze, photo)
                assert len(normal.result(60).faces) == 1
                assert all(f.result(60) != grpc.StatusCode.OK for f in refused)
            growth_mb = (memory_kb(proc.pid, "VmHWM") - peak_before) / 1024
            assert growth_mb < 50, f"peak memory grew by {growth_mb:.0f} MB"
    finally:
        proc.terminate()
        proc.wait(30)


# ------------------------------------------------------------------------------------ fault isolation

FAULTY = '''
from mobidem.plugins import FacePlugin


class Faulty(FacePlugin):
    """Raises an ordinary exception on frames 321 pixels wide (a stand-in for a plugin bug)."""

    name = "faulty_test"
    fields = ("width_seen",)

    async def process(self, image, faces, chips, ctx):
        if image.shape[1] == 321:
            raise ValueError("a bug in a plugin")
        return [{"width_seen": float(image.shape[1])} for _ in faces]
'''


@pytest.fixture(scope="module")
def faulty_plugin(tmp_path_factory):
    """A plugin package found through the entry-point group, as an installed one is."""
    root = tmp_path_factory.mktemp("faulty_plugin")
    (root / "mobidem_faulty_test.py").write_text(FAULTY)
    info = root / "mobidem_faulty_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mobidem-faulty-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mobidem.plugins]\nfaulty_test = mobidem_faulty_test:Faulty\n")
    sys.path.insert(0, str(root))
    yield "faulty_test"
    sys.path.remove(str(root))


def test_a_plugin_exception_fails_that_frame_only(start_server, faulty_plugin, faces):
    server = start_server(face_plugins=f"face_multitask,{faulty_plugin}")
    photo = rgb_of(person_photos(faces, "barack_obama")[0])
    narrow = cv2.resize(photo, (321, int(photo.shape[0] * 321 / photo.shape[1])))
    with server.client() as c:
        out = list(c.stream([photo, narrow, photo, narrow, photo], tracking=pb.TRACKING_OFF))
        assert [r.status for r in out] == [OK, FAILED, OK, FAILED, OK]
        assert all(r.error_code == grpc.StatusCode.INTERNAL.value[0] and "ref " in r.error_message
                   for r in out if r.status == FAILED)
        assert out[2].faces[0].extensions["faulty_test.width_seen"].number == photo.shape[1]
        with pytest.raises(grpc.RpcError) as info:  # a unary call answers INTERNAL with a reference, too
            c.analyze(narrow)
        assert info.value.code() == grpc.StatusCode.INTERNAL and "ref " in info.value.details()


# ------------------------------------------------------------------------------------ calibration

def test_a_calibration_for_another_embedder_is_refused(triton, tmp_path):
    from mobidem.errors import FailedPrecondition

    shipped = json.loads((REPO / "server" / "mobidem" / "data" / "calibration.json").read_text())
    manifest = json.loads((REPO / "model_repository" / "MANIFEST.json").read_text())
    assert shipped["embedder"]["onnx_sha256"] == manifest["models"]["face_multitask"]["sha256"]
    other_version = json.loads(json.dumps(shipped))
    other_version["embedder"]["model_version"] = "7"
    other_file = json.loads(json.dumps(shipped))
    other_file["embedder"]["onnx_sha256"] = "ab" * 32
    for n, cal in enumerate((other_version, other_file)):
        path = tmp_path / f"cal{n}.json"
        path.write_text(json.dumps(cal))
        error = start_failure(triton, tmp_path / f"d{n}", calibration=path)
        assert isinstance(error, FailedPrecondition), error
        text = str(error)
        assert "face_multitask version 1" in text and "recalibrate" in text
        assert ("face_multitask version 7" in text) if n == 0 else ("abababababab" in text), text
    path = tmp_path / "cal0.json"
    assert start_failure(triton, tmp_path / "d2", calibration=path, allow_uncalibrated_embedder="true") is None


# ------------------------------------------------------------------------------------ idempotency purge

def test_idempotency_records_are_purged_after_their_retention(start_server, faces):
    server = start_server(idempotency_retention_s=1)
    photo = person_photos(faces, "barack_obama")[0]
    with server.client() as c:
        first = c.enroll("Obama", [photo], face_index=0, idempotency_key="purge-me")
        again = c.enroll("Obama", [photo], face_index=0, idempotency_key="purge-me")
        assert again.replayed and again.identity.id == first.identity.id
        time.sleep(2.5)  # retention 1 s: purged within half of it after expiring
        later = c.enroll("Obama", [photo], face_index=0, idempotency_key="purge-me")
    assert not later.replayed and later.identity.id != first.identity.id
