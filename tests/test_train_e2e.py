"""mobidem.train end to end: serving-path chips from a real Triton, a short fine-tuning run that lowers both
losses, export as a new face_multitask version into a COPY of the model repository, the real Triton loads
it and the server answers with it (version visible in FrameResult.models)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the optional training extra (requirements/train.txt) is not installed")

from conftest import RunningServer, person_photos  # noqa: E402

PEOPLE = 5
EXPRESSION_PER_LABEL = 3


def _link_subset(src, dst, per_label: int | None = None, labels: list[str] | None = None):
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        if labels is not None and d.name not in labels:
            continue
        (dst / d.name).mkdir(parents=True)
        files = sorted(d.glob("*.jpg"))[:per_label] if per_label else sorted(d.glob("*.jpg"))
        for f in files:
            (dst / d.name / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def repo_copy(model_repository, tmp_path_factory):
    copy = tmp_path_factory.mktemp("train") / "model_repository"
    shutil.copytree(model_repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_fine_tune_export_and_serve(faces, repo_copy, tmp_path):
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from mobidem import config
    from mobidem.managed_triton import ManagedTriton
    from mobidem.plugins import served_by_triton
    from mobidem.train import data, engine
    from mobidem.train.export import export_to_repository, model_to_onnx
    from mobidem.train.model import from_dlib

    people = sorted(p.name for p in (faces / "identities").iterdir() if len(person_photos(faces, p.name)) >= 3)[:PEOPLE]
    _link_subset(faces / "identities", tmp_path / "ids", labels=people)
    _link_subset(faces / "expressions", tmp_path / "expr", per_label=EXPRESSION_PER_LABEL)

    # Triton #1, the detectors only: the training data's chips
    triton = ManagedTriton(repo_copy, tmp_path / "triton1", models=["blazeface_short", "blazeface_full"])
    triton.start(timeout=300)
    server = None
    try:
        # chips through the serving path (Triton detection + alignment), cached
        ids = data.load_or_build(tmp_path / "ids", tmp_path / "cache" / "ids.npz", triton.grpc_url)
        ex = data.load_or_build(tmp_path / "expr", tmp_path / "cache" / "expr.npz", triton.grpc_url)
        assert len(ids) >= 3 * PEOPLE and len(ex) >= 10
        assert ids.chips.dtype == np.uint8 and ids.chips.shape[1:] == (150, 150, 3)
        again = data.load_or_build(tmp_path / "ids", tmp_path / "cache" / "ids.npz", "127.0.0.1:1")  # cache hit
        assert np.array_equal(again.chips, ids.chips)

        model, net = from_dlib()
        # the PyTorch trunk equals the served dlib embedder on these real chips
        s = ort.InferenceSession(str(repo_copy / "dlib_resnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        ref = s.run(["embedding"], {"chip": ids.chips[:8]})[0]
        emb, _ = engine.embed(model, ids.chips[:8], torch.device("cpu"))
        assert np.abs(emb - ref).max() < 1e-4

        cfg = engine.TrainConfig(steps=12, weights="fixed", id_loss="classwise", persons=PEOPLE, per_person=3,
                                 expr_batch=8, lr=3e-5, head_lr=3e-3, device="cpu", log_every=4)
        result = engine.train(model, ids, ex.chips, data.expression_targets(ex), cfg, echo=lambda _: None)
        assert result.before["id_loss"] > 0
        assert result.after["id_loss"] < result.before["id_loss"]
        assert result.after["expr_loss"] < result.before["expr_loss"]

        folder = export_to_repository(model_to_onnx(model, net, {"test": "e2e"}), repo_copy)
        assert folder == repo_copy / "face_multitask" / "2"

        # Triton #2 on the whole (copied) repository, as a deployment restarts it: the newest version is served.
        # (Reloading in explicit mode also works, but then v1 stays listed UNAVAILABLE and strict readiness,
        # which the server checks, reports the server not ready.)
        triton.stop()
        triton = ManagedTriton([repo_copy, *served_by_triton()[0][1:]], tmp_path / "triton2")  # + default plugins
        triton.start(timeout=300)
        with grpcclient.InferenceServerClient(triton.grpc_url) as c:
            assert c.is_model_ready("face_multitask", "2")
            assert c.get_model_metadata("face_multitask").versions == ["2"]  # latest only

        # the fine-tuned embedder has no calibration of its own: the server refuses it unless told otherwise
        env = {"MOBIDEM_DATA_DIR": str(tmp_path / "data"), "MOBIDEM_LISTEN": "127.0.0.1:0",
               "MOBIDEM_TRITON_URL": triton.grpc_url, "MOBIDEM_ALLOW_UNCALIBRATED_EMBEDDER": "true"}
        server = RunningServer(config.load(None, environ=env))
        with server.client() as client:
            r = client.analyze(person_photos(faces, people[0])[0])
        assert r.faces
        face_models = [(m.name, m.version) for m in r.models if m.role == "face_model"]
        assert face_models == [("face_multitask", "2")]
        probs = [p.probability for p in r.faces[0].expression.probabilities]
        assert len(probs) == 7 and abs(sum(probs) - 1) < 1e-3
    finally:
        if server is not None:
            server.stop()
        triton.stop()
