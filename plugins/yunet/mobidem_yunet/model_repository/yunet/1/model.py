"""Triton Python-backend model "yunet": model.onnx run by ONNX Runtime (see mobidem.triton_backend)."""
import os, site  # noqa: E401  (the stub runs isolated: add the mobidem environment by hand)
for _path in filter(None, os.environ.get("MOBIDEM_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)
from mobidem.triton_backend import OnnxModel as TritonPythonModel  # noqa: E402,F401
