"""Segmentation scores: foreground IoU, matched-instance F1 and the Cell Tracking Challenge SEG."""

from __future__ import annotations

import numpy as np

__all__ = [
    "foreground_counts",
    "foreground_iou",
    "overlaps",
    "match_counts",
    "instance_f1",
    "seg_score",
]


def foreground_counts(truth: np.ndarray, prediction: np.ndarray, mask=None) -> tuple[int, int]:
    """``(intersection, union)`` in px of ``truth > 0`` and ``prediction > 0`` (``(H, W)``
    each), inside the optional bool ``mask``: sums over images pool their IoU."""
    t, p = np.asarray(truth) > 0, np.asarray(prediction) > 0
    if mask is not None:
        t, p = t[mask], p[mask]
    return int(np.count_nonzero(t & p)), int(np.count_nonzero(t | p))


def foreground_iou(truth: np.ndarray, prediction: np.ndarray, mask=None) -> float:
    """Pixel IoU of ``truth > 0`` and ``prediction > 0`` inside the optional bool ``mask``
    (1.0 when both are empty)."""
    inter, union = foreground_counts(truth, prediction, mask)
    return inter / union if union else 1.0


def overlaps(truth: np.ndarray, prediction: np.ndarray):
    """Pairwise overlap of instances.

    Returns ``(inter, truth_sizes, pred_sizes)``: ``inter`` (T+1, P+1) int64 pixel counts with
    row/column 0 the background, after relabelling both to consecutive ids.
    """
    t = np.unique(np.asarray(truth), return_inverse=True)[1].reshape(-1)
    p = np.unique(np.asarray(prediction), return_inverse=True)[1].reshape(-1)
    t_has_bg = np.asarray(truth).min() == 0
    p_has_bg = np.asarray(prediction).min() == 0
    t = t + (0 if t_has_bg else 1)
    p = p + (0 if p_has_bg else 1)
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    inter = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p)
    return inter, inter.sum(1), inter.sum(0)


def _iou_matrix(truth, prediction) -> np.ndarray:
    inter, ts, ps = overlaps(truth, prediction)
    inter, ts, ps = inter[1:, 1:], ts[1:], ps[1:]
    union = ts[:, None] + ps[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_counts(truth: np.ndarray, prediction: np.ndarray, threshold: float = 0.5):
    """``(matched, n_truth, n_predicted)``: instances matched one-to-one at IoU >= ``threshold``.

    For ``threshold >= 0.5`` a match is unique; below it an optimal assignment is used.
    """
    iou = _iou_matrix(truth, prediction)
    n_t, n_p = iou.shape
    if threshold >= 0.5:
        tp = int(np.count_nonzero(iou >= threshold))
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-iou)
        tp = int(np.count_nonzero(iou[rows, cols] >= threshold))
    return tp, n_t, n_p


def instance_f1(truth: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of instances matched one-to-one at IoU >= ``threshold`` (1.0 when both are empty)."""
    tp, n_t, n_p = match_counts(truth, prediction, threshold)
    return 2 * tp / (n_t + n_p) if n_t + n_p else 1.0


def seg_score(truth: np.ndarray, prediction: np.ndarray) -> tuple[float, int]:
    """Cell Tracking Challenge SEG: summed over reference cells and their count.

    For each reference cell, the Jaccard index with the predicted cell that covers more than
    half of it (0 when none does). Returns ``(sum, n_cells)`` so that scores can be pooled over
    a split: ``SEG = total_sum / total_cells``.
    """
    inter, ts, ps = overlaps(truth, prediction)
    inter, ts, ps = inter[1:, 1:], ts[1:], ps[1:]
    if ts.size == 0:
        return 0.0, 0
    if ps.size == 0:
        return 0.0, int(ts.size)
    best = inter.argmax(1)
    covered = inter[np.arange(ts.size), best]
    jaccard = covered / (ts + ps[best] - covered)
    return float(np.where(covered * 2 > ts, jaccard, 0.0).sum()), int(ts.size)
