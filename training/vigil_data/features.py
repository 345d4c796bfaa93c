"""Input features for drift monitoring; the servers compute exactly the same.

On the 128x128 gray image in 0..255 float scale (``gray * 255`` before normalisation, i.e.
``0.2126*R + 0.7152*G + 0.0722*B``), computed in float64:

- ``brightness``: mean of all pixels;
- ``contrast``: population standard deviation (divide by N) of all pixels;
- ``sharpness``: population variance of the 3x3 Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]`` over
  interior pixels only (valid convolution, a 126x126 result).
"""

from __future__ import annotations

import numpy as np

from .preprocess import GRAY_WEIGHTS

FEATURE_NAMES = ("brightness", "contrast", "sharpness")


def gray255(images: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., H, W, 3] -> luminance float64 [..., H, W] on the 0..255 scale."""
    a = np.asarray(images)
    wr, wg, wb = GRAY_WEIGHTS
    g = a[..., 0].astype(np.float64) * wr
    g += a[..., 1].astype(np.float64) * wg
    g += a[..., 2].astype(np.float64) * wb
    return g


def laplacian_valid(gray: np.ndarray) -> np.ndarray:
    """3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over interior pixels: [..., H-2, W-2]."""
    g = np.asarray(gray, dtype=np.float64)
    out = g[..., :-2, 1:-1] + g[..., 2:, 1:-1]
    out += g[..., 1:-1, :-2]
    out += g[..., 1:-1, 2:]
    out -= 4.0 * g[..., 1:-1, 1:-1]
    return out


def features_from_gray255(gray: np.ndarray) -> dict[str, np.ndarray]:
    """Features of gray images [..., H, W] (0..255 scale) -> dict of float64 arrays [...]."""
    g = np.asarray(gray, dtype=np.float64)
    lap = laplacian_valid(g)
    return {
        "brightness": g.mean(axis=(-2, -1)),
        "contrast": g.std(axis=(-2, -1)),
        "sharpness": lap.var(axis=(-2, -1)),
    }


def compute_features(images: np.ndarray, chunk: int = 512) -> dict[str, np.ndarray]:
    """RGB uint8 images [N, H, W, 3] (or one [H, W, 3]) -> {name: float64 [N]}."""
    images = np.asarray(images)
    single = images.ndim == 3
    if single:
        images = images[None]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_NAMES}
    for i in range(0, len(images), chunk):
        f = features_from_gray255(gray255(images[i : i + chunk]))
        for k in FEATURE_NAMES:
            parts[k].append(f[k])
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    if single:
        out = {k: v[:1] for k, v in out.items()}
    return out
