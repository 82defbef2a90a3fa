"""Fine-tuning loop and evaluation.

One step = one identity batch (P people x K chips, sampled from the training identities) and one
expression batch (B chips, class-balanced), run through the network in a single forward pass (the
trunk has no batch statistics, so concatenating the two batches changes nothing). L_id is the chosen
triplet loss on the identity embeddings, L_expr the cross-entropy of the expression logits. Task
weights are either fixed (0.5, 0.5) or given by the dynamic weighting unit (see ``weighting``).
Augmentation: random horizontal flips of the aligned chips.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mobidem import calibration
from mobidem.train import losses as L
from mobidem.train.data import ChipSet
from mobidem.train.model import MultiTaskNet
from mobidem.train.weighting import DynamicWeights, total_loss

DLIB_THRESHOLD = 0.6


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainConfig:
    steps: int = 100
    weights: str = "dynamic"  # "fixed" (0.5, 0.5) or "dynamic"
    id_loss: str = "classwise"  # classwise | batch_all | batch_hard
    margin: float = L.DEFAULT_MARGIN
    persons: int = 8  # P people per identity batch
    per_person: int = 4  # K chips per person
    expr_batch: int = 16
    lr: float = 3e-5  # trunk and identity head (Adam)
    head_lr: float = 1e-3  # expression head (new)
    weight_lr: float = 1e-3  # weighting unit's own Adam
    seed: int = 0
    device: str = "auto"
    log_every: int = 10


@dataclass
class TrainResult:
    config: dict
    before: dict
    after: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: float = 0.0
    device: str = "cpu"


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(len(x), generator=gen) < 0.5
    if mask.any():
        x = x.clone()
        x[mask] = x[mask].flip(2)  # NHWC: flip the W axis
    return x


def _identity_batch(ds: ChipSet, rng: np.random.Generator, persons: int, per_person: int) -> np.ndarray:
    groups = [idx for idx in ds.by_label().values() if len(idx) >= 2]
    if len(groups) < 2:
        raise ValueError("identity training needs at least two people with two chips each")
    chosen = rng.choice(len(groups), size=min(persons, len(groups)), replace=False)
    out = []
    for g in chosen:
        idx = groups[g]
        out += rng.choice(idx, size=min(per_person, len(idx)), replace=False).tolist()
    return np.array(out, np.int64)


def _expression_batch(targets: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    classes = np.unique(targets)
    picks = rng.choice(classes, size=size)
    return np.array([rng.choice(np.flatnonzero(targets == c)) for c in picks], np.int64)


@torch.no_grad()
def embed(model: MultiTaskNet, chips: np.ndarray, device: torch.device, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N,128], expression probabilities [N,7]) in eval mode."""
    model.eval()
    embs, probs = [], []
    for i in range(0, len(chips), batch):
        e, logits, _ = model(torch.from_numpy(chips[i : i + batch]).to(device))
        embs.append(e.float().cpu().numpy())
        probs.append(torch.softmax(logits, -1).float().cpu().numpy())
    if not embs:
        return np.zeros((0, 128), np.float32), np.zeros((0, 7), np.float32)
    return np.concatenate(embs), np.concatenate(probs)


def task_losses(model: MultiTaskNet, ids: ChipSet, expr_chips: np.ndarray, expr_targets: np.ndarray,
                device: torch.device, id_loss: str = "classwise", margin: float = L.DEFAULT_MARGIN) -> dict:
    """Both task losses over whole sets (no sampling, no augmentation): the numbers 'lowered' is judged by."""
    emb, _ = embed(model, ids.chips, device)
    e = torch.from_numpy(emb)
    lab = torch.from_numpy(ids.labels)
    out = {"id_loss": float(L.LOSSES[id_loss](e, lab, margin))}
    for name, fn in L.LOSSES.items():
        out[f"id_{name}"] = float(fn(e, lab, margin))
    if len(expr_chips):
        _, probs = embed(model, expr_chips, device)
        p = torch.from_numpy(probs).clamp_min(1e-12)
        out["expr_loss"] = float(F.nll_loss(p.log(), torch.from_numpy(expr_targets)))
    return out


def train(model: MultiTaskNet, ids: ChipSet, expr_chips: np.ndarray, expr_targets: np.ndarray,
          cfg: TrainConfig, echo=print) -> TrainResult:
    """Fine-tune ``model`` in place. ``expr_targets`` are EXPRESSION_LABELS indices."""
    if cfg.weights not in ("fixed", "dynamic"):
        raise ValueError(f"weights must be 'fixed' or 'dynamic', not {cfg.weights!r}")
    if cfg.id_loss not in L.LOSSES:
        raise ValueError(f"id_loss must be one of {sorted(L.LOSSES)}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    id_loss_fn = L.LOSSES[cfg.id_loss]
    before = task_losses(model, ids, expr_chips, expr_targets, device, cfg.id_loss, cfg.margin)
    echo(f"before: {json.dumps(before)}")

    head = list(model.expression.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.Adam([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}])
    dynamic = DynamicWeights(lr=cfg.weight_lr, device=device) if cfg.weights == "dynamic" else None
    fixed = torch.tensor([0.5, 0.5], device=device)

    history = []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        id_idx = _identity_batch(ids, rng, cfg.persons, cfg.per_person)
        ex_idx = _expression_batch(expr_targets, rng, cfg.expr_batch)
        x = torch.from_numpy(np.concatenate([ids.chips[id_idx], expr_chips[ex_idx]]))
        x = _flip(x, gen).to(device, non_blocking=True)
        y_id = torch.from_numpy(ids.labels[id_idx]).to(device)
        y_ex = torch.from_numpy(expr_targets[ex_idx]).to(device)
        emb, logits, features = model(x)
        n = len(id_idx)
        losses = torch.stack([id_loss_fn(emb[:n], y_id, cfg.margin), F.cross_entropy(logits[n:], y_ex)])
        w = dynamic.weights(features) if dynamic is not None else fixed
        loss = total_loss(w, losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lw = dynamic.step(w, losses) if dynamic is not None else None
        if step == 1 or step % cfg.log_every == 0 or step == cfg.steps:
            lv, wv = losses.detach(), w.detach()
            row = {"step": step, "l_id": float(lv[0]), "l_expr": float(lv[1]), "w_id": float(wv[0]),
                   "w_expr": float(wv[1]), "l_w": float(lw) if lw is not None else None,
                   "seconds": round(time.perf_counter() - t0, 2)}
            history.append(row)
            echo(json.dumps(row))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    after = task_losses(model, ids, expr_chips, expr_targets, device, cfg.id_loss, cfg.margin)
    echo(f"after: {json.dumps(after)}")
    model.cpu()
    return TrainResult(asdict(cfg), before, after, history, seconds, seconds / max(1, cfg.steps), str(device))


def verification_metrics(emb: np.ndarray, labels: np.ndarray) -> dict:
    """Same-person / different-person pair metrics, as the accuracy report computes them."""
    x = emb.astype(np.float64)
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
    iu, ju = np.triu_indices(len(x), k=1)
    same = labels[iu] == labels[ju]
    gen, imp = d[iu, ju][same], d[iu, ju][~same]
    t_best, acc_best = calibration.best_accuracy_threshold(gen, imp)
    acc_fixed = float(((gen < DLIB_THRESHOLD).sum() + (imp >= DLIB_THRESHOLD).sum()) / (gen.size + imp.size))
    return {
        "n_images": int(len(x)), "n_people": int(len(np.unique(labels))),
        "n_genuine": int(gen.size), "n_impostor": int(imp.size),
        "accuracy_at_0.6": acc_fixed, "best_accuracy": acc_best, "best_threshold": t_best,
        "auc": calibration.auc(gen, imp),
        "tar_at_far_1e-2": calibration.tar_at_far(gen, imp, 1e-2),
        "tar_at_far_1e-3": calibration.tar_at_far(gen, imp, 1e-3),
    }


def expression_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    from mobidem.train.data import EXPRESSION_LABELS

    pred = probs.argmax(1)
    per = {}
    for c in np.unique(targets):
        m = targets == c
        per[EXPRESSION_LABELS[int(c)]] = {"correct": int((pred[m] == c).sum()), "n": int(m.sum())}
    counts = np.bincount(targets, minlength=len(EXPRESSION_LABELS))
    return {"n_images": int(len(targets)), "accuracy": float((pred == targets).mean()) if len(targets) else float("nan"),
            "majority_baseline": float(counts.max() / counts.sum()) if len(targets) else float("nan"),
            "per_class": per}
