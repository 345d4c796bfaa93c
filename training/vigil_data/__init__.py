"""Vigil training data: synthetic line-camera images of phone back glass.

Modules:

- :mod:`vigil_data.generator` -- the image generator, with drift knobs (:class:`Conditions`).
- :mod:`vigil_data.preprocess` -- RGB uint8 -> model input tensor (the serving contract).
- :mod:`vigil_data.features` -- brightness / contrast / sharpness input features (drift monitoring).
"""

from .generator import IMAGE_SIZE, Conditions, DISTRACTOR_TYPES, generate
from .preprocess import GRAY_WEIGHTS, MEAN, STD, to_gray, to_model_input
from .features import FEATURE_NAMES, compute_features

__all__ = [
    "IMAGE_SIZE",
    "Conditions",
    "DISTRACTOR_TYPES",
    "generate",
    "GRAY_WEIGHTS",
    "MEAN",
    "STD",
    "to_gray",
    "to_model_input",
    "FEATURE_NAMES",
    "compute_features",
]
