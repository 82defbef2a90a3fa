"""Blendshapes as expression features against mini-Xception on the shared expression set (issue 19).

    .venv/bin/python bench/expression_blendshapes.py

For every image of shared/data/faces/expressions (56 grayscale in-the-wild crops, 6 labels) the largest
face is found by the default detector and run through face_multitask (mini-Xception's 7 probabilities,
as served) and the face_landmarker plugin (52 blendshape scores), with the plugins' own code on the built
ONNX models (ONNX Runtime in this process, the files Triton serves). Compared, by leave-one-out over the
56 images (each image predicted by a model that never saw it):

- mini-Xception as served: the argmax of its probabilities (no training on this set);
- multinomial logistic regression (L2, fitted with scipy's L-BFGS) on the 52 blendshapes, on
  mini-Xception's 7 log-probabilities (the same classifier, so that training on this set is not what
  makes the difference), and on both; the L2 strength is chosen inside each training fold by an inner
  5-fold cross-validation over a fixed grid (never on the held-out image).

Reported: accuracy, per-label correct counts, and the mean negative log-probability of the true label
(NLL; mini-Xception's over its 7 labels, the classifiers' over the 6 labels present). An image without a
face counts as wrong.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from plugin_support import LocalContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces"
LAMBDAS = (0.01, 0.1, 1.0, 10.0)  # L2 strength per sample on standardised features
INNER_FOLDS = 5




def fit(x: np.ndarray, y: np.ndarray, k: int, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty on the weights: (mean, std, W [d+1, k])."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    onehot = np.eye(k)[y]

    def loss(w):
        w = w.reshape(z.shape[1], k)
        logp = log_softmax(z @ w, axis=1)
        grad = z.T @ (np.exp(logp) - onehot) / len(z)
        grad[:-1] += lam * w[:-1]
        return -(onehot * logp).sum() / len(z) + 0.5 * lam * (w[:-1] ** 2).sum(), grad.ravel()

    w = minimize(loss, np.zeros(z.shape[1] * k), jac=True, method="L-BFGS-B").x.reshape(z.shape[1], k)
    return mu, sd, w


def log_proba(model, x: np.ndarray) -> np.ndarray:
    mu, sd, w = model
    return log_softmax(np.c_[(x - mu) / sd, np.ones(len(x))] @ w, axis=1)


def choose_lambda(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> float:
    folds = np.random.default_rng(seed).permutation(len(x)) % INNER_FOLDS
    nll = []
    for lam in LAMBDAS:
        total = 0.0
        for f in range(INNER_FOLDS):
            tr, te = folds != f, folds == f
            total -= log_proba(fit(x[tr], y[tr], k, lam), x[te])[np.arange(te.sum()), y[te]].sum()
        nll.append(total)
    return LAMBDAS[int(np.argmin(nll))]


def leave_one_out(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out log-probabilities [n, k] and the L2 strength chosen for each held-out image."""
    out, lams = np.zeros((len(x), k)), np.zeros(len(x))
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        lams[i] = choose_lambda(x[keep], y[keep], k, seed=i)
        out[i] = log_proba(fit(x[keep], y[keep], k, lams[i]), x[i:i + 1])[0]
    return out, lams


def main() -> None:
    from mobidem import plugins
    from mobidem.vision.align import align_chip

    started = time.monotonic()
    detector, multitask, landmarker = (plugins.load(n) for n in ("blazeface", "face_multitask", "face_landmarker"))
    ctx = LocalContext(ROOT / "model_repository", landmarker.repository)
    xlabels = multitask.labels  # mini-Xception's 7, in its order
    paths = sorted(FACES.glob("expressions/*/*.jpg"))
    labels = sorted({p.parent.name for p in paths})
    y = np.array([labels.index(p.parent.name) for p in paths])

    async def features(path: Path):
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        found = await detector.detect(image, ctx)
        if not found:
            return None
        face = [max(found, key=lambda d: d.area)]
        chips = align_chip(image, face[0].keypoints[:6])[0][None]
        probs = (await multitask.process(image, face, chips, ctx))[0]["expression"]
        shapes = (await landmarker.process(image, face, chips, ctx))[0]
        from mobidem_landmarker import BLENDSHAPE_NAMES
        return np.asarray(probs, np.float64), np.array([shapes[n] for n in BLENDSHAPE_NAMES])

    feats = [asyncio.run(features(p)) for p in paths]
    have = np.array([f is not None for f in feats])
    probs = np.stack([f[0] if f is not None else np.full(len(xlabels), 1 / len(xlabels)) for f in feats])
    shapes = np.stack([f[1] if f is not None else np.zeros(52) for f in feats])

    rows = []
    # mini-Xception as served: argmax over its own 7 labels
    truth = np.array([xlabels.index(labels[t]) for t in y])
    pred = np.where(have, probs.argmax(1), -1)
    nll = -np.log(np.clip(probs[np.arange(len(y)), truth], 1e-12, None)).mean()
    rows.append(("mini-Xception as served (argmax of its 7 probabilities, no training)", pred == truth, nll, ""))
    k = len(labels)
    for name, x in (("blendshapes (52)", shapes), ("mini-Xception log-probabilities (7)", np.log(np.clip(probs, 1e-6, None))),
                    ("both (59)", np.c_[shapes, np.log(np.clip(probs, 1e-6, None))])):
        logp, lams = leave_one_out(x, y, k)
        correct = (logp.argmax(1) == y) & have
        rows.append((f"logistic regression on {name}, leave-one-out", correct, -logp[np.arange(len(y)), y].mean(),
                     "L2 chosen: " + ", ".join(f"{l:g}x{int((lams == l).sum())}" for l in LAMBDAS if (lams == l).any())))

    print(f"{len(paths)} images ({', '.join(f'{l} {int((y == i).sum())}' for i, l in enumerate(labels))}); "
          f"no face in {int((~have).sum())}; {time.monotonic() - started:.0f} s")
    print("| method | overall | NLL | " + " | ".join(labels) + " |")
    print("|---|---|---|" + "---|" * len(labels))
    for name, correct, nll, note in rows:
        per = " | ".join(f"{int(correct[y == i].sum())}/{int((y == i).sum())}" for i in range(len(labels)))
        print(f"| {name} | {100 * correct.mean():.1f} % ({int(correct.sum())}/{len(y)}) | {nll:.3f} | {per} |"
              + (f" {note}" if note else ""))


if __name__ == "__main__":
    main()
