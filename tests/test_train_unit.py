"""mobidem.train: losses and the task-weighting unit against hand-computed values; model and export parity."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the optional training extra (requirements/train.txt) is not installed")

from mobidem.train import losses as L  # noqa: E402
from mobidem.train.weighting import SIGMA, DynamicWeights, TaskWeighting, total_loss, weighting_loss  # noqa: E402

# Four 2-D embeddings: a=(0,0), b=(1,0) in class 0; c=(3,0), d=(3,4) in class 1.
# Distances: ab=1, ac=3, ad=5, bc=2, bd=sqrt(20), cd=4.
X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
Y = torch.tensor([0, 0, 1, 1])
M = 2.5


def test_class_wise_triplet_loss_by_hand():
    # class 0: centre (0.5, 0); farthest member 0.5; nearest other-class sample c at 2.5 -> 0.5 - 2.5 + 2.5 = 0.5
    # class 1: centre (3, 2); farthest member 2; nearest other-class sample b at sqrt(8) -> 4.5 - sqrt(8)
    expected = (0.5 + 4.5 - math.sqrt(8)) / 2
    assert L.class_wise_triplet_loss(X, Y, M).item() == pytest.approx(expected, abs=1e-6)
    # centre variant: centres are sqrt(10.25) apart -> class 0: 0.5 - 3.2016 + 2.5 < 0; class 1: 4.5 - sqrt(10.25)
    expected_c = (0.0 + 4.5 - math.sqrt(10.25)) / 2
    assert L.class_wise_triplet_loss(X, Y, M, negative="centre").item() == pytest.approx(expected_c, abs=1e-6)
    assert L.triplet_count(Y, "classwise") == 2


def test_plain_triplet_losses_by_hand():
    # batch-all active triplets (a,p,n): (a,b,c) 0.5, (b,a,c) 1.5, (c,d,a) 3.5, (c,d,b) 4.5, (d,c,a) 1.5,
    # (d,c,b) 6.5 - sqrt(20); (a,b,d) and (b,a,d) are inactive.
    assert L.batch_all_triplet_loss(X, Y, M).item() == pytest.approx((18 - math.sqrt(20)) / 6, abs=1e-6)
    assert L.triplet_count(Y, "batch_all") == 8
    # batch-hard per anchor: a 0.5, b 1.5, c 4 - 2 + 2.5 = 4.5, d 4 - sqrt(20) + 2.5
    assert L.batch_hard_triplet_loss(X, Y, M).item() == pytest.approx((13 - math.sqrt(20)) / 4, abs=1e-6)


def test_losses_zero_when_satisfied_and_differentiable():
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]], requires_grad=True)
    for fn in L.LOSSES.values():
        loss = fn(far, Y, 0.5)
        assert loss.item() == 0.0
        loss.backward()  # a graph even when nothing is active
    one_class = torch.zeros(3, 2, requires_grad=True)
    assert L.class_wise_triplet_loss(one_class, torch.zeros(3, dtype=torch.long)).item() == 0.0
    x = X.clone().requires_grad_(True)
    L.class_wise_triplet_loss(x, Y, M).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_weighting_unit_by_hand():
    unit = TaskWeighting(in_features=2, n_tasks=2)
    with torch.no_grad():
        unit.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        unit.fc.bias.copy_(torch.tensor([0.0, 0.0]))
    feats = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    w = unit(feats)
    # sample 1: softmax(ln 3, 0) = (3/4, 1/4); sample 2: (1/2, 1/2); mean (5/8, 3/8)
    assert w.tolist() == pytest.approx([0.625, 0.375], abs=1e-6)
    losses = torch.tensor([1.0, 0.49])
    expected = 0.625 / (1.0 + SIGMA) + 0.375 / (0.49 + SIGMA)
    assert weighting_loss(w, losses).item() == pytest.approx(expected, rel=1e-6)
    assert total_loss(w, losses).item() == pytest.approx(0.625 * 1.0 + 0.375 * 0.49, rel=1e-6)
    assert TaskWeighting(4)(torch.randn(3, 4)).tolist() == pytest.approx([0.5, 0.5])  # zero init: equal weights


@pytest.mark.parametrize("l_id, l_expr, harder", [(2.0, 0.1, 0), (0.05, 1.9, 1)])
def test_weights_move_toward_the_task_with_the_larger_loss(l_id, l_expr, harder):
    torch.manual_seed(0)
    dyn = DynamicWeights(in_features=8, lr=1e-2)
    feats = torch.rand(16, 8)
    losses = torch.tensor([l_id, l_expr])
    first = dyn.weights(feats).detach()
    assert first.tolist() == pytest.approx([0.5, 0.5])
    for _ in range(20):
        dyn.step(dyn.weights(feats), losses)
    w = dyn.weights(feats).detach()
    assert w[harder] > 0.6 > first[harder]


def test_weighting_unit_is_isolated_from_the_main_network():
    """L_w never reaches the trunk; the main loss never reaches the unit."""
    trunk = torch.nn.Linear(3, 4)
    heads = torch.nn.Linear(4, 2)
    dyn = DynamicWeights(in_features=4, lr=1e-2)
    feats = trunk(torch.randn(5, 3))
    task = heads(feats).pow(2).mean(0)  # two "task losses" that depend on the trunk
    w = dyn.weights(feats)
    total_loss(w, task).backward(retain_graph=True)
    assert all(p.grad is None for p in dyn.unit.parameters())  # main loss: no gradient into the unit
    trunk.zero_grad(set_to_none=True)
    dyn.step(w, task)
    assert all(p.grad is None for p in trunk.parameters())  # L_w: no gradient into the trunk
    assert all(p.grad is not None for p in dyn.unit.parameters())


# ----------------------------------------------------------------------------------- model / export
@pytest.fixture(scope="module")
def model_and_net():
    from mobidem.train.model import from_dlib

    try:
        model, net = from_dlib()
    except FileNotFoundError as exc:
        from conftest import need

        need(False, str(exc))
    return model.eval(), net


def _chips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)


def test_trunk_matches_the_dlib_onnx_conversion(model_and_net):
    import onnxruntime as ort

    from mobidem.convert import dlib_resnet
    from mobidem.train.model import dlib_weights_path

    model, _ = model_and_net
    onnx_model = dlib_resnet.convert(dlib_weights_path())
    s = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    chips = _chips(3)
    ref = s.run(None, {"chip": chips.astype(np.float32)})[0]
    with torch.no_grad():
        emb, logits, feats = model(torch.from_numpy(chips))
    assert emb.shape == (3, 128) and logits.shape == (3, 7) and feats.shape == (3, 256)
    assert np.abs(emb.numpy() - ref).max() < 1e-4


def test_export_contract_and_parity(model_and_net, tmp_path):
    import onnx
    import onnxruntime as ort

    from mobidem.train.export import export_to_repository, model_to_onnx

    model, net = model_and_net
    with torch.no_grad():  # a non-trivial expression head
        model.expression.weight.normal_(0, 0.05)
        model.expression.bias.normal_(0, 0.1)
    m = model_to_onnx(model, net, {"test": True})
    assert m.opset_import[0].version == 17 and m.ir_version == 8
    io = lambda vs: [(v.name, v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in vs]  # noqa: E731
    assert io(m.graph.input) == [("chip", onnx.TensorProto.UINT8, ["N", 150, 150, 3])]
    assert io(m.graph.output) == [("embedding", onnx.TensorProto.FLOAT, ["N", 128]),
                                  ("expression", onnx.TensorProto.FLOAT, ["N", 7])]
    chips = _chips(4, seed=1)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    emb, probs = s.run(["embedding", "expression"], {"chip": chips})
    with torch.no_grad():
        e, logits, _ = model(torch.from_numpy(chips))
    assert np.abs(emb - e.numpy()).max() < 1e-4
    assert np.abs(probs - torch.softmax(logits, -1).numpy()).max() < 1e-5
    assert np.allclose(probs.sum(1), 1, atol=1e-5)

    # next free version number, model.py copied, nothing else touched
    repo = tmp_path / "repo"
    (repo / "face_multitask" / "1").mkdir(parents=True)
    (repo / "face_multitask" / "config.pbtxt").write_text('name: "face_multitask"\n')
    (repo / "face_multitask" / "1" / "model.py").write_text("# model.py\n")
    (repo / "face_multitask" / "3").mkdir()
    folder = export_to_repository(m, repo)
    assert folder == repo / "face_multitask" / "4"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.py"]
    assert (folder / "model.py").read_text() == "# model.py\n"
    assert sorted(p.name for p in (repo / "face_multitask").iterdir()) == ["1", "3", "4", "config.pbtxt"]
    with pytest.raises(FileNotFoundError):
        export_to_repository(m, tmp_path / "nowhere")


def test_server_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, mobidem.app, mobidem.pipeline, mobidem.cli, mobidem.train.data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
