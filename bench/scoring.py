"""Scores for the benchmarks, written apart from ``napari_unet.core.metrics`` (the code judged).

Every function takes ``(H, W)`` integer instance labels, 0 = background, and returns sums and
counts, so that scores pool over a split the way the Cell Tracking Challenge pools SEG: over all
reference cells, not as a mean of per-image means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from skimage.metrics import adapted_rand_error


def _contingency(truth: np.ndarray, pred: np.ndarray):
    """Sparse ``(T, P)`` overlap counts of the cells (background dropped) and their sizes."""
    t_ids, t = np.unique(truth, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    table = sparse.coo_matrix(
        (np.ones(t.size, np.int64), (t, p)), shape=(len(t_ids), len(p_ids))
    ).tocsr()
    t_cell, p_cell = t_ids != 0, p_ids != 0
    t_size = np.bincount(t, minlength=len(t_ids))[t_cell]
    p_size = np.bincount(p, minlength=len(p_ids))[p_cell]
    return table[t_cell][:, p_cell], t_size, p_size


@dataclass
class Pooled:
    """Running sums over a split; ``.row()`` gives the pooled scores."""

    seg_sum: float = 0.0
    cells: int = 0
    matched: int = 0
    predicted: int = 0
    inter: int = 0
    union: int = 0
    rand: list = field(default_factory=list)

    def add(self, truth: np.ndarray, pred: np.ndarray, rand: bool = False) -> None:
        overlap, t_size, p_size = _contingency(truth, pred)
        coo = overlap.tocoo()
        iou = coo.data / (t_size[coo.row] + p_size[coo.col] - coo.data)
        # SEG: a reference cell counts its Jaccard with the predicted cell covering > half of it
        self.seg_sum += float(iou[2 * coo.data > t_size[coo.row]].sum())
        self.cells += len(t_size)
        # F1@0.5: pairs with IoU > 0.5 are one-to-one by construction
        self.matched += int(np.count_nonzero(iou > 0.5))
        self.predicted += len(p_size)
        self.inter += int(np.count_nonzero((truth > 0) & (pred > 0)))
        self.union += int(np.count_nonzero((truth > 0) | (pred > 0)))
        if rand:
            self.rand.append(adapted_rand_error(truth, pred)[0])

    def row(self) -> dict:
        out = {
            "seg": self.seg_sum / self.cells if self.cells else 0.0,
            "f1": 2 * self.matched / (self.cells + self.predicted)
            if self.cells + self.predicted
            else 1.0,
            "iou": self.inter / self.union if self.union else 1.0,
            "cells": self.cells,
        }
        if self.rand:
            out["rand_error"] = float(np.mean(self.rand))
        return out
