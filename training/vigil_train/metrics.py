"""Binary classification metrics, threshold choice and slicing (numpy only)."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall for every distinct threshold (score >= t), thresholds descending."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(y.sum()), 1)
    return precision, recall, s[distinct]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    p, r, _ = pr_curve(scores, labels)
    if len(r) == 0:
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, r]) * p))


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at ``score >= threshold`` plus threshold-free AUCs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    tn = int((~pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = len(y)

    def div(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    precision = div(tp, tp + fp)
    recall = div(tp, tp + fn)
    return {
        "n": n,
        "n_defect": int(y.sum()),
        "n_ok": int((~y).sum()),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": div(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "specificity": div(tn, tn + fp),
        "false_positive_rate": div(fp, tn + fp),
        "f1": div(2 * precision * recall, precision + recall) if tp else 0.0,
        "roc_auc": roc_auc(s, y),
        "average_precision": average_precision(s, y),
    }


def threshold_for_recall(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold t with recall(score >= t) >= target."""
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels).astype(bool)])
    if len(pos) == 0:
        return 0.5
    k = int(math.floor((1.0 - target) * len(pos) + 1e-9))  # defects allowed below t
    k = min(max(k, 0), len(pos) - 1)
    return float(pos[k])


def threshold_for_precision(
    scores: np.ndarray, labels: np.ndarray, target: float, at_least: float = 0.0
) -> float:
    """The lowest threshold t >= at_least with precision(score >= t) >= target; 1.0 when no
    threshold reaches it."""
    p, _, t = pr_curve(scores, labels)
    ok = t[p >= target]
    best = float(ok.min()) if len(ok) else 1.0
    return max(best, at_least)


def floor_to(x: float, digits: int) -> float:
    f = 10.0**digits
    return math.floor(x * f) / f


def ceil_to(x: float, digits: int) -> float:
    f = 10.0**digits
    return math.ceil(x * f - 1e-9) / f


def decision_counts(
    scores: np.ndarray, labels: np.ndarray, accept_below: float, reject_at: float
) -> dict[str, Any]:
    """Three-way policy: ACCEPT (< accept_below), REJECT (>= reject_at), HUMAN_REVIEW between."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    acc = s < accept_below
    rej = s >= reject_at
    rev = ~acc & ~rej
    n = max(len(s), 1)
    return {
        "accept": int(acc.sum()),
        "review": int(rev.sum()),
        "reject": int(rej.sum()),
        "review_rate": float(rev.sum() / n),
        "escaped_defects": int((acc & y).sum()),
        "escape_rate": float((acc & y).sum() / max(int(y.sum()), 1)),
        "false_rejects": int((rej & ~y).sum()),
        "false_reject_rate": float((rej & ~y).sum() / max(int((~y).sum()), 1)),
    }


# --------------------------------------------------------------------------------------------
# Slicing
# --------------------------------------------------------------------------------------------


def bin_label(lo: float, hi: float, fmt: str = "{:g}") -> str:
    if math.isinf(hi):
        return ">= " + fmt.format(lo)
    if math.isinf(lo) or lo <= -1e300:
        return "< " + fmt.format(hi)
    return fmt.format(lo) + " - " + fmt.format(hi)


def slice_by_bins(
    values: Sequence[Optional[float]],
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    edges: Sequence[float],
    fmt: str = "{:g}",
) -> list[dict[str, Any]]:
    """Per bin [edges[i], edges[i+1]): counts, recall on defects and FPR on ok images."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (v >= lo) & (v < hi)
        rows.append(_row(bin_label(lo, hi, fmt), m, s, y, threshold))
    return rows


def slice_by_groups(
    groups: Iterable[tuple[str, np.ndarray]], scores: np.ndarray, labels: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    return [_row(name, np.asarray(mask, dtype=bool), s, y, threshold) for name, mask in groups]


def _row(name: str, m: np.ndarray, s: np.ndarray, y: np.ndarray, t: float) -> dict[str, Any]:
    pos = m & y
    neg = m & ~y
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    hits = int((s[pos] >= t).sum())
    fps = int((s[neg] >= t).sum())
    return {
        "slice": name,
        "n": int(m.sum()),
        "n_defect": n_pos,
        "n_ok": n_neg,
        "recall": float(hits / n_pos) if n_pos else None,
        "missed": n_pos - hits,
        "false_positive_rate": float(fps / n_neg) if n_neg else None,
        "false_positives": fps,
    }


def apply_fn(params: list[dict], fn: Callable[[dict], Any]) -> list[Any]:
    return [fn(p) for p in params]
