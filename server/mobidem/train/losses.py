"""Metric-learning losses for the identity embedding (Euclidean distances, as dlib's descriptor uses).

Class-wise triplet loss (after "class-wise triplet loss", ICCVW 2017: triplets built from intra-class
and inter-class distance metrics, one per class instead of one per sample combination). For a batch
of embeddings ``x_i`` with labels ``y_i`` and every class ``c`` that has at least one sample in the
batch and at least one other class present:

* centre            ``mu_c = mean_{i: y_i = c} x_i``
* intra-class term  ``d_intra(c) = max_{i: y_i = c} ||x_i - mu_c||``   (farthest same-class sample)
* inter-class term  ``d_inter(c) = min_{j: y_j != c} ||x_j - mu_c||``  (nearest other-class sample;
  ``negative="centre"`` uses the nearest other class centre ``min_{c' != c} ||mu_c' - mu_c||`` instead)
* ``L = mean_c max(0, d_intra(c) - d_inter(c) + margin)``

So one triplet (anchor = class centre, positive = the class's worst member, negative = the nearest
intruder) per class: C triplets for a batch of C classes, where the plain triplet loss enumerates
sum_c n_c (n_c - 1) (N - n_c) of them. Gradients flow through the centre as well.

Plain triplet loss, for comparison (Hermans et al. 2017, "In defense of the triplet loss"), over
anchors ``a``, positives ``p != a`` with ``y_p = y_a`` and negatives ``n`` with ``y_n != y_a``:

* batch-all: ``l_apn = max(0, ||x_a - x_p|| - ||x_a - x_n|| + margin)`` for every valid (a, p, n);
  the loss is the mean over the ACTIVE triplets (``l_apn > 0``), 0 when none is active;
* batch-hard: per anchor, ``max(0, max_p ||x_a - x_p|| - min_n ||x_a - x_n|| + margin)``, mean over
  anchors that have a positive and a negative.
"""

from __future__ import annotations

import torch

DEFAULT_MARGIN = 0.4  # dlib already separates typical faces by more than 0.2 (docs/TRAINING.md)


def _pairwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [len(x), len(y)], with a gradient that stays finite at zero distance."""
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return torch.sqrt(d2.clamp_min(1e-12))


def class_wise_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = DEFAULT_MARGIN,
                            negative: str = "sample") -> torch.Tensor:
    """Class-wise triplet loss (see the module docstring for the exact formulation).

    ``negative``: ``"sample"`` (nearest other-class sample to the centre) or ``"centre"`` (nearest other
    class centre). Returns a scalar; 0 (with a graph) when the batch holds fewer than two classes.
    """
    if negative not in ("sample", "centre"):
        raise ValueError(f"negative must be 'sample' or 'centre', not {negative!r}")
    classes, inverse = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return embeddings.sum() * 0.0
    onehot = torch.nn.functional.one_hot(inverse, len(classes)).to(embeddings.dtype)  # [N, C]
    centres = (onehot.T @ embeddings) / onehot.sum(0)[:, None]  # [C, D]
    d = _pairwise(centres, embeddings)  # [C, N]: centre c to sample i
    same = onehot.T.bool()
    d_intra = d.masked_fill(~same, float("-inf")).max(dim=1).values
    if negative == "sample":
        d_inter = d.masked_fill(same, float("inf")).min(dim=1).values
    else:
        dc = _pairwise(centres, centres)
        d_inter = dc.masked_fill(torch.eye(len(classes), dtype=torch.bool, device=dc.device), float("inf")).min(1).values
    return torch.relu(d_intra - d_inter + margin).mean()


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same  # positives, negatives


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                           margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Plain triplet loss over every valid triplet, averaged over the active (non-zero) ones."""
    d = _pairwise(embeddings, embeddings)
    pos, neg = _masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]  # [a, p, n]
    loss = torch.relu(d[:, :, None] - d[:, None, :] + margin) * valid
    active = (loss > 0).sum()
    if active == 0:
        return loss.sum() * 0.0
    return loss.sum() / active


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor,
                            margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Plain triplet loss with the hardest positive and hardest negative of each anchor."""
    d = _pairwise(embeddings, embeddings)
    pos, neg = _masks(labels)
    ok = pos.any(1) & neg.any(1)
    if not ok.any():
        return d.sum() * 0.0
    hardest_pos = d.masked_fill(~pos, float("-inf")).max(1).values
    hardest_neg = d.masked_fill(~neg, float("inf")).min(1).values
    return torch.relu(hardest_pos - hardest_neg + margin)[ok].mean()


def triplet_count(labels: torch.Tensor, kind: str) -> int:
    """How many triplets a loss looks at for this batch (class-wise: one per class)."""
    if kind == "classwise":
        return int(len(torch.unique(labels)))
    pos, neg = _masks(labels)
    if kind == "batch_hard":
        return int((pos.any(1) & neg.any(1)).sum())
    return int((pos.sum(1) * neg.sum(1)).sum())


LOSSES = {
    "classwise": class_wise_triplet_loss,
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
}
