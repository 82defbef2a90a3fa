"""Optional training package (``pip install -r requirements/train.txt``, PyTorch): fine-tune the face model.

* :mod:`mobidem.train.losses` — class-wise triplet loss (ICCVW 2017) and plain triplet losses;
* :mod:`mobidem.train.weighting` — the dynamic task-weighting unit (ICCVW 2019, arXiv 1911.03281);
* :mod:`mobidem.train.model` — dlib's ResNet rebuilt in PyTorch + identity and expression heads;
* :mod:`mobidem.train.data` — folder-per-label datasets -> serving-path chips (Triton), cached;
* :mod:`mobidem.train.engine` — the fine-tuning loop and the evaluation metrics;
* :mod:`mobidem.train.export` — ONNX under the face_multitask contract, as a new Triton version.

Command line: ``python -m mobidem.train {prepare,train,evaluate,export} ...`` (see docs/TRAINING.md).
Nothing outside this package imports torch; the server runs without it.
"""
