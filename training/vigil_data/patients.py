"""Synthetic patients for the symptom-screening classifier: vital signs and symptoms, some of
them not measured (missing), and whether a doctor should see the patient (``refer``) or the
patient may stay home (``home``). Deterministic for a given seed.

The truth comes from a risk score over fever, fast breathing and heart rate, low oxygen
saturation, a long cough and age, plus noise, so some patients are hard to call from the
features alone: they are the review queue's work.
"""

from __future__ import annotations

import numpy as np

FEATURES = ["age", "temperature", "heart_rate", "respiratory_rate", "oxygen_saturation", "cough_days"]
#: Share of patients whose value of a feature was not measured.
MISSING = {"temperature": 0.08, "oxygen_saturation": 0.12}


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patients: features (float64, NaN where not measured, columns as ``FEATURES``) and
    the truth (1 = refer)."""
    rng = np.random.default_rng(seed)
    sick = rng.random(n) < 0.35
    age = rng.integers(18, 90, n).astype(np.float64)
    temperature = np.round(np.where(sick, rng.normal(38.4, 0.8, n), rng.normal(37.0, 0.5, n)), 1)
    heart_rate = np.round(np.where(sick, rng.normal(98, 14, n), rng.normal(76, 10, n)))
    respiratory_rate = np.round(np.where(sick, rng.normal(22, 4, n), rng.normal(15, 2.5, n)))
    oxygen_saturation = np.round(np.clip(np.where(sick, rng.normal(93, 3, n), rng.normal(97.5, 1.2, n)), 80, 100))
    cough_days = np.round(np.clip(np.where(sick, rng.normal(8, 4, n), rng.normal(2, 2, n)), 0, 30))
    x = np.stack([age, temperature, heart_rate, respiratory_rate, oxygen_saturation, cough_days], axis=1)
    risk = (
        1.6 * (temperature - 37.5)
        + 0.05 * (heart_rate - 85)
        + 0.25 * (respiratory_rate - 18)
        - 0.45 * (oxygen_saturation - 95.5)
        + 0.12 * (cough_days - 5)
        + 0.02 * (age - 50)
        + rng.normal(0, 2.5, n)
    )
    truth = (risk > 0).astype(np.int64)
    for name, share in MISSING.items():
        x[rng.random(n) < share, FEATURES.index(name)] = np.nan
    return x, truth
