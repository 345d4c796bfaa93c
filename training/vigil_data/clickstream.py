"""Synthetic clickstreams of a retail site's users, for the user-profile model ("owns a car:
yes / no / unknown") and the recommender fed its answer. Deterministic for a given seed.

Per user over 30 days: sessions, car-related page views, parking searches, fuel-price searches,
public-transport page views, bike page views. Car owners visit car pages and search parking
and fuel; others read transit and bike pages. Users with fewer than 3 sessions carry too little
signal: the profile's training label for them is ``unknown``.

``shifted`` is the site after a redesign whose new pages lost the car tracking: car views,
parking and fuel searches are no longer counted, and the app's sessions are no longer counted
either (about two sessions in three), so many more users look like they own no car or say nothing.
"""

from __future__ import annotations

import numpy as np

FEATURES = ["sessions", "car_views", "parking_searches", "fuel_searches", "transit_views", "bike_views"]
PROFILES = ["no", "unknown", "yes"]
OFFERS = ["car_insurance", "general_deals", "transit_pass"]


def generate(n: int, seed: int, shifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` users: features (float64, columns as ``FEATURES``) and whether each owns a car (0/1)."""
    rng = np.random.default_rng(seed)
    owns = (rng.random(n) < 0.45).astype(np.int64)
    sessions = rng.poisson(np.where(rng.random(n) < 0.15, 1.0, 9.0)).astype(np.float64)
    per = np.maximum(sessions, 0) / 9.0
    car_views = rng.poisson(per * np.where(owns == 1, 6.0, 0.8))
    parking = rng.poisson(per * np.where(owns == 1, 2.0, 0.2))
    fuel = rng.poisson(per * np.where(owns == 1, 1.5, 0.1))
    transit = rng.poisson(per * np.where(owns == 1, 1.0, 5.0))
    bike = rng.poisson(per * np.where(owns == 1, 0.5, 2.0))
    if shifted:
        car_views = np.zeros(n)
        parking = np.zeros(n)
        fuel = np.zeros(n)
        sessions = rng.binomial(sessions.astype(np.int64), 0.3).astype(np.float64)
    x = np.stack([sessions, car_views, parking, fuel, transit, bike], axis=1).astype(np.float64)
    return x, owns


def profile_labels(x: np.ndarray, owns: np.ndarray) -> np.ndarray:
    """The profile's training labels: index into ``PROFILES``."""
    return np.where(x[:, 0] < 3, 1, np.where(owns == 1, 2, 0))


def best_offer(profile: np.ndarray) -> np.ndarray:
    """The offer the recommender is trained to make for a profile answer (index into ``OFFERS``)."""
    return np.select([profile == 2, profile == 0], [0, 2], default=1)


def click_probability(offer: np.ndarray, owns: np.ndarray) -> np.ndarray:
    """How likely a user clicks an offer: insurance to car owners and passes to the others
    often, general deals rarely, a mismatched offer hardly ever."""
    matched = ((offer == 0) & (owns == 1)) | ((offer == 2) & (owns == 0))
    return np.where(matched, 0.35, np.where(offer == 1, 0.06, 0.02))
