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


#: The populations: ``normal`` (what the model was trained on) and ``shifted`` (a new variant
#: of the illness: the sick have no fever, and age weighs far more in who needs a doctor).
POPULATIONS = ("normal", "shifted")


def generate(n: int, seed: int, population: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """``n`` patients: features (float64, NaN where not measured, columns as ``FEATURES``) and
    the truth (1 = refer)."""
    if population not in POPULATIONS:
        raise ValueError(f"population {population!r} is not one of {POPULATIONS}")
    shifted = population == "shifted"
    rng = np.random.default_rng(seed)
    sick = rng.random(n) < 0.35
    age = rng.integers(18, 90, n).astype(np.float64)
    fever, spread = (37.1, 0.5) if shifted else (38.4, 0.8)
    temperature = np.round(np.where(sick, rng.normal(fever, spread, n), rng.normal(37.0, 0.5, n)), 1)
    heart_rate = np.round(np.where(sick, rng.normal(98, 14, n), rng.normal(76, 10, n)))
    respiratory_rate = np.round(np.where(sick, rng.normal(22, 4, n), rng.normal(15, 2.5, n)))
    oxygen_saturation = np.round(np.clip(np.where(sick, rng.normal(93, 3, n), rng.normal(97.5, 1.2, n)), 80, 100))
    cough_days = np.round(np.clip(np.where(sick, rng.normal(8, 4, n), rng.normal(2, 2, n)), 0, 30))
    x = np.stack([age, temperature, heart_rate, respiratory_rate, oxygen_saturation, cough_days], axis=1)
    w_temperature, w_age = (0.0, 0.15) if shifted else (1.6, 0.02)
    risk = (
        w_temperature * (temperature - 37.5)
        + 0.05 * (heart_rate - 85)
        + 0.25 * (respiratory_rate - 18)
        - 0.45 * (oxygen_saturation - 95.5)
        + 0.12 * (cough_days - 5)
        + w_age * (age - 50)
        + rng.normal(0, 2.5, n)
    )
    truth = (risk > 0).astype(np.int64)
    for name, share in MISSING.items():
        x[rng.random(n) < share, FEATURES.index(name)] = np.nan
    return x, truth


def main() -> None:
    """``python -m vigil_data.patients --n 600 --seed 7 --population shifted``: patients as JSON
    (features in ``FEATURES`` order, null where not measured, and the truth)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--population", choices=POPULATIONS, default="normal")
    args = parser.parse_args()
    x, truth = generate(args.n, args.seed, args.population)
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in x]
    print(json.dumps({"features": FEATURES, "patients": rows, "truth": ["refer" if t else "home" for t in truth]}))


if __name__ == "__main__":
    main()
