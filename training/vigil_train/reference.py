"""Reference distributions for drift detection (``reference.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p95": 0.95, "p99": 0.99}
SAMPLE_SIZE = 2000

#: Fixed histogram edges.  Values outside [first, last] are counted in the first / last bin.
BIN_EDGES: dict[str, list[float]] = {
    # Mean luminance, 0..255 in steps of 5.
    "brightness": [float(x) for x in np.arange(0.0, 255.0 + 1e-9, 5.0)],
    # Luminance standard deviation, 0..80 in steps of 2.5.
    "contrast": [float(x) for x in np.arange(0.0, 80.0 + 1e-9, 2.5)],
    # Laplacian variance spans decades: 0, then 1 .. 4096 in steps of a factor sqrt(2).
    "sharpness": [0.0] + [float(round(2.0 ** (k / 2.0), 6)) for k in range(0, 25)],
    # Model score, 0..1 in 20 bins.
    "score": [float(round(x, 6)) for x in np.linspace(0.0, 1.0, 21)],
}

EDGE_NOTE = (
    "counts[i] holds values in [bin_edges[i], bin_edges[i+1]) (the last bin also holds its upper "
    "edge); values below the first edge are counted in the first bin and values above the last "
    "edge in the last bin."
)


def histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    v = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=np.asarray(edges, dtype=np.float64))
    return [int(c) for c in counts]


def distribution(values: np.ndarray, edges: list[float], sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
    """Summary of one variable: histogram on fixed edges, moments, quantiles and a raw sample
    (the first ``sample_size`` values; the data are already in random order)."""
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, list(QUANTILES.values())) if len(v) else [float("nan")] * len(QUANTILES)
    return {
        "bin_edges": edges,
        "counts": histogram(v, edges),
        "n": int(len(v)),
        "mean": float(v.mean()) if len(v) else float("nan"),
        "std": float(v.std()) if len(v) else float("nan"),
        "min": float(v.min()) if len(v) else float("nan"),
        "max": float(v.max()) if len(v) else float("nan"),
        "quantiles": {k: float(x) for k, x in zip(QUANTILES, q)},
        "sample": [float(round(x, 6)) for x in v[:sample_size]],
    }


def build_reference(
    features: dict[str, np.ndarray],
    scores: np.ndarray,
    *,
    model: str,
    version: int,
    generator_seed: int,
    conditions: dict[str, Any],
) -> dict[str, Any]:
    n = int(len(scores))
    return {
        "model": model,
        "version": version,
        "generator_seed": generator_seed,
        "n": n,
        "source": "training set (generator conditions below), features on the 128x128 gray "
        "image in 0..255 scale; scores from the exported model",
        "conditions": conditions,
        "histogram_rule": EDGE_NOTE,
        "features": {
            name: distribution(features[name], BIN_EDGES[name]) for name in ("brightness", "contrast", "sharpness")
        },
        "score": distribution(scores, BIN_EDGES["score"]),
    }
