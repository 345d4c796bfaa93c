"""The preprocessing contract between the generator, the training code and the servers.

An RGB uint8 image (H, W, 3) becomes the model input ``image`` FP32 [N, 1, 128, 128] (NCHW):

    gray = (0.2126 * R + 0.7152 * G + 0.0722 * B) / 255      float32, no rounding
    x    = (gray - 0.5) / 0.5

Images that are not 128x128 are resized (bilinear) by the server first; the generator always
makes 128x128 images, so training never resizes.  The servers reproduce this exactly, and the
values are written to ``model.toml`` (``[preprocess]``).
"""

from __future__ import annotations

import numpy as np

#: Rec. 709 luma weights, applied to R, G, B in that order.
GRAY_WEIGHTS = (0.2126, 0.7152, 0.0722)
#: Normalisation: x = (gray - MEAN) / STD, gray on the 0..1 scale.
MEAN = 0.5
STD = 0.5


def to_gray(images: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., H, W, 3] -> gray float32 [..., H, W] on the 0..1 scale (no rounding).

    Evaluated in float32 as ``(0.2126*R + 0.7152*G + 0.0722*B) / 255``, left to right.
    """
    images = np.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [..., H, W, 3], got shape {images.shape}")
    rgb = images.astype(np.float32)
    wr, wg, wb = (np.float32(w) for w in GRAY_WEIGHTS)
    gray = wr * rgb[..., 0] + wg * rgb[..., 1]
    gray += wb * rgb[..., 2]
    gray /= np.float32(255.0)
    return gray


def normalize(gray: np.ndarray) -> np.ndarray:
    """gray float32 on 0..1 -> x = (gray - 0.5) / 0.5, float32."""
    return ((np.asarray(gray, dtype=np.float32) - np.float32(MEAN)) / np.float32(STD)).astype(
        np.float32, copy=False
    )


def to_model_input(images: np.ndarray) -> np.ndarray:
    """RGB uint8 [N, 128, 128, 3] (or one image [128, 128, 3]) -> FP32 [N, 1, 128, 128] NCHW."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected [N, H, W, 3] images, got shape {images.shape}")
    x = normalize(to_gray(images))
    return np.ascontiguousarray(x[:, None, :, :])
