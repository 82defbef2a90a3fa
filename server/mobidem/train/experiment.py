"""The docs/TRAINING.md experiment, for a GPU host whose Python has torch (maybe not onnx): run from the repository root,
`OUT=dir STEPS=300 python server/mobidem/train/experiment.py 0 1 2` (training seeds); needs .data/train-cache and MOBIDEM_DLIB_DAT."""
import os, sys, types
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
try:
    import onnx  # noqa
except ImportError:
    for name in ("onnx", "onnx.helper", "onnx.numpy_helper"):
        sys.modules[name] = types.ModuleType(name)
    o = sys.modules["onnx"]; o.TensorProto = o.ModelProto = o.GraphProto = o.NodeProto = object
    o.helper = sys.modules["onnx.helper"]; o.numpy_helper = sys.modules["onnx.numpy_helper"]
os.environ.setdefault("MOBIDEM_DLIB_DAT", ".data/dlib.dat")
from mobidem.train.__main__ import main
out = os.environ.get("OUT", "/tmp/out"); steps = os.environ.get("STEPS", "200")
common = ["--identities", "/nonexistent/identities", "--expressions", "/nonexistent/expressions", "--cache-dir", ".data/train-cache"]
main(["evaluate", *common, "--out", f"{out}/eval_dlib.json"])
for seed in sys.argv[1:] or ["0"]:
    for w in ("fixed", "dynamic"):
        for l in ("classwise", "batch_all"):
            tag = f"{w}-{l}-s{seed}"
            main(["train", *common, "--steps", steps, "--weights", w, "--id-loss", l, "--seed", seed, "--log-every", "20",
                  "--out", f"/tmp/{tag}.pt", "--summary", f"{out}/train_{tag}.json"])
            main(["evaluate", *common, "--checkpoint", f"/tmp/{tag}.pt", "--out", f"{out}/eval_{tag}.json"])
