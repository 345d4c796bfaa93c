"""Synthetic line-camera images of phone back glass, with scratches, look-alikes and drift knobs.

Framing: a fixed line-camera view of a 128x128 px patch of a phone's back panel, RGB uint8.
Every image has a glass surface (a body tint, a low-frequency texture, a fine grain, vignetting,
a soft specular highlight) under an illumination field (level, linear gradient), optical blur
(Gaussian), sensor noise and a colour cast (per-channel gains).

- Defects (label 1): one scratch -- a thin curved line of varied length, width, curvature,
  orientation, polarity and contrast (faint ones included), partly intermittent, tapered ends.
- Look-alikes (label 0 unless a scratch is also present): dust specks, smudges (wipe streaks),
  fingerprints (ridge arcs), reflections (a light panel), glare streaks (long wide bands) and the
  phone's frame edge (a dark border with a thin bright bevel).  Each image gets 0..n of them,
  independently of its label.

Drift knobs live in :class:`Conditions`; presets ``normal`` (nominal, randomised) and
``drifted`` (the factory's lighting changed and the scratch looks blurry: dim light and blur).

The generator is vectorised with numpy and deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from scipy.special import ndtri

IMAGE_SIZE = 128
DISTRACTOR_TYPES = ("dust", "smudge", "fingerprint", "reflection", "glare", "frame_edge")
#: Probability that an image gets each look-alike (independent of the label and of each other).
DISTRACTOR_PROB = {
    "dust": 0.35,
    "smudge": 0.25,
    "fingerprint": 0.25,
    "reflection": 0.20,
    "glare": 0.20,
    "frame_edge": 0.25,
}
#: Body tints (RGB multipliers of the surface level), normalised to unit luminance below.
TINTS = {
    "graphite": (1.00, 1.00, 1.04),
    "midnight": (0.82, 0.97, 1.40),
    "sage": (0.86, 1.07, 0.94),
    "lilac": (1.12, 0.92, 1.22),
    "sand": (1.14, 1.00, 0.84),
}
_TINT_NAMES = tuple(TINTS)
_TINT_RGB = np.array([TINTS[k] for k in _TINT_NAMES], dtype=np.float64)
_TINT_RGB /= (_TINT_RGB @ np.array([0.2126, 0.7152, 0.0722]))[:, None]
_TINT_RGB = _TINT_RGB.astype(np.float32)

_MAX_DUST = 8
_SIDES = ("top", "bottom", "left", "right")
#: Scratch population.  Contrast is the peak of the line profile in grey levels at nominal
#: light, before blur: FAINT_FRACTION of the scratches uniform in FAINT_CONTRAST, the rest
#: log-uniform in CONTRAST.
FAINT_FRACTION = 0.15
FAINT_CONTRAST = (6.0, 12.0)
CONTRAST = (12.0, 70.0)
SCRATCH_LENGTH = (20.0, 90.0)  # px
SCRATCH_WIDTH = (0.5, 1.5)  # Gaussian sigma of the profile, px
MAX_CURVATURE = 0.03  # 1/px
BRIGHT_FRACTION = 0.8
_CHUNK = 256  # images rendered together (each chunk has its own random stream)

Range = tuple[float, float]
RangeLike = Union[float, int, tuple[float, float], list[float]]


def _as_range(value: RangeLike, field: str) -> Range:
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    lo, hi = (float(v) for v in value)
    if hi < lo:
        raise ValueError(f"{field}: range ({lo}, {hi}) has hi < lo")
    return (lo, hi)


@dataclass(frozen=True)
class Conditions:
    """Acquisition conditions (the drift knobs).  Each knob is a (lo, hi) range sampled
    uniformly per image; a single number fixes it.

    - ``light_level``: multiplier of the nominal illumination (1.0 = nominal).
    - ``gradient_strength``: lighting gradient, relative change from the centre to the middle
      of the edge (0.2: +-20%); ``gradient_direction_deg``: its direction (0 = towards +x).
    - ``blur_sigma``: optical blur (focus), Gaussian sigma in pixels.
    - ``noise_sigma``: sensor noise, Gaussian sigma on the 0..255 scale, per channel.
    - ``gain_r``, ``gain_g``, ``gain_b``: colour cast, per-channel gains.
    """

    name: str = "normal"
    light_level: Range = (0.85, 1.15)
    gradient_strength: Range = (0.0, 0.20)
    gradient_direction_deg: Range = (0.0, 360.0)
    blur_sigma: Range = (0.3, 0.8)
    noise_sigma: Range = (1.0, 2.5)
    gain_r: Range = (0.96, 1.04)
    gain_g: Range = (0.97, 1.03)
    gain_b: Range = (0.96, 1.04)

    _KNOBS = (
        "light_level",
        "gradient_strength",
        "gradient_direction_deg",
        "blur_sigma",
        "noise_sigma",
        "gain_r",
        "gain_g",
        "gain_b",
    )

    def __post_init__(self) -> None:
        for f in self._KNOBS:
            object.__setattr__(self, f, _as_range(getattr(self, f), f))
        if self.light_level[0] <= 0:
            raise ValueError("light_level must be > 0")
        if self.blur_sigma[0] < 0 or self.noise_sigma[0] < 0:
            raise ValueError("blur_sigma and noise_sigma must be >= 0")

    @classmethod
    def preset(cls, name: str, **overrides: RangeLike) -> "Conditions":
        """``normal``: nominal line conditions, randomised.  ``drifted``: the lighting changed
        and the scratch looks blurry (light 0.45..0.60 of nominal, blur sigma 1.6..2.6 px).
        Keyword arguments override any knob, e.g. ``preset("normal", blur_sigma=2.0)``."""
        if name == "normal":
            base = cls(name="normal")
        elif name == "drifted":
            base = cls(name="drifted", light_level=(0.45, 0.60), blur_sigma=(1.6, 2.6))
        else:
            raise ValueError(f"unknown preset {name!r} (normal, drifted)")
        return base.with_overrides(**overrides) if overrides else base

    def with_overrides(self, **overrides: RangeLike) -> "Conditions":
        """A copy with some knobs replaced (``name`` may be replaced too)."""
        unknown = set(overrides) - set(self._KNOBS) - {"name"}
        if unknown:
            raise ValueError(f"unknown knobs: {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        for f in self._KNOBS:
            d[f] = list(getattr(self, f))
        return d


def resolve_conditions(conditions: Union[str, Conditions, None]) -> Conditions:
    if conditions is None:
        return Conditions.preset("normal")
    if isinstance(conditions, str):
        return Conditions.preset(conditions)
    if isinstance(conditions, Conditions):
        return conditions
    raise TypeError(f"conditions must be a preset name or Conditions, not {type(conditions)}")


# --------------------------------------------------------------------------------------------
# Per-image parameters
# --------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return rng.uniform(r[0], r[1], n) if r[1] > r[0] else np.full(n, r[0])


def _draw_params(rng: np.random.Generator, n: int, labels: np.ndarray, c: Conditions) -> dict:
    """Every random choice except pixel noise and texture grids, as arrays of length n."""
    S = IMAGE_SIZE
    P: dict[str, np.ndarray] = {}
    # Acquisition (drift knobs).
    P["light_level"] = _u(rng, c.light_level, n)
    P["gradient_strength"] = _u(rng, c.gradient_strength, n)
    P["gradient_direction_deg"] = _u(rng, c.gradient_direction_deg, n)
    P["blur_sigma"] = _u(rng, c.blur_sigma, n)
    P["noise_sigma"] = _u(rng, c.noise_sigma, n)
    P["gains"] = np.stack([_u(rng, c.gain_r, n), _u(rng, c.gain_g, n), _u(rng, c.gain_b, n)], 1)
    # Surface.
    P["tint"] = rng.integers(0, len(_TINT_NAMES), n)
    P["surface_level"] = rng.uniform(45.0, 110.0, n)
    P["texture_amp"] = rng.uniform(0.015, 0.05, n)
    P["grain_amp"] = rng.uniform(1.0, 3.0, n)
    P["vignette"] = rng.uniform(0.06, 0.22, n)
    P["spec_amp"] = rng.uniform(0.0, 30.0, n)
    P["spec_xy"] = rng.uniform(-20.0, S + 20.0, (n, 2))
    P["spec_sigma"] = rng.uniform(18.0, 45.0, n)
    # Scratch (drawn for all, used where label == 1).
    faint = rng.random(n) < FAINT_FRACTION
    contrast = np.where(
        faint, rng.uniform(*FAINT_CONTRAST, n), np.exp(rng.uniform(math.log(CONTRAST[0]), math.log(CONTRAST[1]), n))
    )
    P["scratch_contrast"] = contrast
    P["scratch_length"] = rng.uniform(*SCRATCH_LENGTH, n)
    P["scratch_width"] = rng.uniform(*SCRATCH_WIDTH, n)
    P["scratch_curvature"] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.0, 1.0, n) ** 2 * MAX_CURVATURE
    P["scratch_angle_deg"] = rng.uniform(0.0, 180.0, n)
    P["scratch_xy"] = rng.uniform(24.0, S - 24.0, (n, 2))
    P["scratch_polarity"] = np.where(rng.random(n) < BRIGHT_FRACTION, 1.0, -1.0)
    P["scratch_mod_depth"] = rng.uniform(0.0, 0.7, n)
    P["scratch_mod_period"] = rng.uniform(5.0, 25.0, n)
    P["scratch_mod_phase"] = rng.uniform(0.0, 2 * math.pi, n)
    # Look-alikes.
    for t in DISTRACTOR_TYPES:
        P["has_" + t] = rng.random(n) < DISTRACTOR_PROB[t]
    P["dust_count"] = rng.integers(1, _MAX_DUST + 1, n)
    P["dust_xy"] = rng.uniform(2.0, S - 2.0, (n, _MAX_DUST, 2))
    P["dust_radius"] = rng.uniform(0.6, 2.0, (n, _MAX_DUST))
    dust_bright = rng.random((n, _MAX_DUST)) < 0.75
    P["dust_amp"] = np.where(
        dust_bright, rng.uniform(20.0, 90.0, (n, _MAX_DUST)), -rng.uniform(10.0, 40.0, (n, _MAX_DUST))
    )
    P["smudge_xy"] = rng.uniform(10.0, S - 10.0, (n, 2))
    P["smudge_sigma"] = np.stack([rng.uniform(10.0, 28.0, n), rng.uniform(5.0, 14.0, n)], 1)
    P["smudge_angle"] = rng.uniform(0.0, math.pi, n)
    P["smudge_amp"] = rng.choice([-1.0, 1.0], n, p=[0.3, 0.7]) * rng.uniform(4.0, 14.0, n)
    P["smudge_period"] = rng.uniform(4.0, 9.0, n)
    P["smudge_depth"] = rng.uniform(0.3, 0.9, n)
    P["smudge_phase"] = rng.uniform(0.0, 2 * math.pi, n)
    P["finger_xy"] = rng.uniform(15.0, S - 15.0, (n, 2))
    P["finger_sigma"] = rng.uniform(9.0, 20.0, n)
    P["finger_aspect"] = rng.uniform(0.6, 1.0, n)
    P["finger_angle"] = rng.uniform(0.0, math.pi, n)
    P["finger_period"] = rng.uniform(3.2, 5.5, n)
    P["finger_amp"] = rng.uniform(5.0, 16.0, n)
    P["finger_warp"] = rng.uniform(0.0, 3.0, n)
    P["finger_phase"] = rng.uniform(0.0, 2 * math.pi, n)
    P["refl_xy"] = rng.uniform(0.0, S, (n, 2))
    P["refl_half"] = np.stack([rng.uniform(15.0, 50.0, n), rng.uniform(5.0, 25.0, n)], 1)
    P["refl_angle"] = rng.uniform(0.0, math.pi, n)
    P["refl_amp"] = rng.uniform(6.0, 30.0, n)
    P["refl_soft"] = rng.uniform(1.5, 4.0, n)
    P["glare_xy"] = rng.uniform(20.0, S - 20.0, (n, 2))
    P["glare_angle"] = rng.uniform(0.0, math.pi, n)
    P["glare_sigma"] = rng.uniform(3.0, 8.0, n)
    P["glare_amp"] = rng.uniform(10.0, 40.0, n)
    P["frame_side"] = rng.integers(0, 4, n)
    P["frame_offset"] = rng.uniform(3.0, 16.0, n)
    P["frame_tilt"] = np.deg2rad(rng.uniform(-2.0, 2.0, n))
    P["frame_bg"] = rng.uniform(5.0, 25.0, n)
    P["frame_bevel_amp"] = rng.uniform(15.0, 60.0, n)
    P["frame_bevel_width"] = rng.uniform(0.6, 1.2, n)
    P["label"] = labels
    _keep_scratch_on_the_phone(P)
    return P


def _keep_scratch_on_the_phone(P: dict) -> None:
    """Where an image has both a scratch and the frame edge, move the frame edge (side, offset)
    so that it does not cover the scratch: a scratch is on the glass, never on the background."""
    S = IMAGE_SIZE
    idx = np.nonzero((P["label"] == 1) & P["has_frame_edge"])[0]
    if not idx.size:
        return
    # Points along the scratch centre line (local u, v = k u^2 / 2), in image coordinates.
    half = P["scratch_length"][idx, None] / 2.0
    u = np.linspace(-1.0, 1.0, 9)[None, :] * half
    v = 0.5 * P["scratch_curvature"][idx, None] * u * u
    a = np.deg2rad(P["scratch_angle_deg"][idx, None])
    x = P["scratch_xy"][idx, 0, None] + u * np.cos(a) - v * np.sin(a)
    y = P["scratch_xy"][idx, 1, None] + u * np.sin(a) + v * np.cos(a)
    # Room between each border and the scratch: top, bottom, left, right (frame_side 0..3).
    room = np.stack([y.min(1), (S - 1) - y.max(1), x.min(1), (S - 1) - x.max(1)], axis=1) - 4.0
    side = P["frame_side"][idx]
    off = P["frame_offset"][idx]
    fits = room[np.arange(len(idx)), side] >= off
    best = np.argmax(room, axis=1)
    side = np.where(fits, side, best)
    off = np.where(fits, off, np.clip(room[np.arange(len(idx)), best], 3.0, off))
    P["frame_side"][idx] = side
    P["frame_offset"][idx] = off


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_GRID = np.arange(IMAGE_SIZE, dtype=np.float32)
_YY = _GRID[None, :, None]
_XX = _GRID[None, None, :]
_KNOTS = np.linspace(-16.0, IMAGE_SIZE + 16.0, 11)
_TEX_M = np.exp(-((_GRID[:, None] - _KNOTS[None, :]) ** 2) / (2 * 11.0**2)).astype(np.float32)
_TEX_M /= _TEX_M.sum(1, keepdims=True)
# Expected std of the smooth texture field (unit normal knots through _TEX_M on both axes).
_TEX_STD = float(np.sqrt(np.outer((_TEX_M**2).sum(1), (_TEX_M**2).sum(1)).mean()))


#: Standard normal quantiles at 65536 evenly spaced probabilities: indexing it with uniform
#: 16-bit integers draws (discretised) Gaussian noise about 2.5x faster than standard_normal.
_NORMAL_TABLE = ndtri((np.arange(65536, dtype=np.float64) + 0.5) / 65536.0).astype(np.float32)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return _NORMAL_TABLE[rng.integers(0, 65536, shape, dtype=np.uint16)]


def _col(a: np.ndarray) -> np.ndarray:
    """[m] -> [m, 1, 1] float32 for broadcasting against [m, H, W]."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _rotated(xy: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame centred at xy [m, 2] and rotated by angle [m] (radians)."""
    dx = _XX - _col(xy[:, 0])
    dy = _YY - _col(xy[:, 1])
    c, s = _col(np.cos(angle)), _col(np.sin(angle))
    return dx * c + dy * s, -dx * s + dy * c


def _gauss(q: np.ndarray) -> np.ndarray:
    """exp(-q) for q >= 0, with the far tail clamped (exp(-30) ~ 1e-13) so that no float32
    denormals appear (they make numpy arithmetic very slow)."""
    return np.exp(-np.minimum(q, np.float32(30.0)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _blur(fields: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur per image (sigma [m] px) of fields [m, k, H, W] as B @ X @ B^T, where B is
    the sampled Gaussian kernel matrix with each row renormalised (no darkening at borders)."""
    s = np.maximum(np.asarray(sigma, dtype=np.float32), 1e-3)[:, None, None]
    d = _GRID[:, None] - _GRID[None, :]
    arg = (d * d)[None] / (2.0 * s * s)
    # Zero the far tail exactly: denormal weights would make the matmuls very slow.
    B = np.where(arg < 40.0, np.exp(-np.minimum(arg, 40.0)), np.float32(0.0))
    B /= B.sum(axis=2, keepdims=True)
    B = B[:, None]
    return np.matmul(np.matmul(B, fields), B.transpose(0, 1, 3, 2))


def _render(P: dict, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    m = hi - lo
    sl = slice(lo, hi)
    S = IMAGE_SIZE
    g = {k: v[sl] for k, v in P.items()}

    # Surface level with low-frequency texture (smooth random field).
    grid = rng.standard_normal((m, len(_KNOTS), len(_KNOTS)), dtype=np.float32)
    tex = np.matmul(np.matmul(_TEX_M, grid), _TEX_M.T)
    tex *= _col(g["texture_amp"] / _TEX_STD)
    tex += 1.0
    surf = _col(g["surface_level"]) * tex
    # Fine grain of the glass finish (scene detail: the optics blur it, unlike sensor noise).
    grain = _normal(rng, (m, S, S))
    grain *= _col(g["grain_amp"])
    surf += grain
    # Additive (untinted, white) light: specular highlight, scratches, look-alikes.
    add = _col(g["spec_amp"]) * _gauss(
        ((_XX - _col(g["spec_xy"][:, 0])) ** 2 + (_YY - _col(g["spec_xy"][:, 1])) ** 2)
        / (2.0 * _col(g["spec_sigma"]) ** 2)
    )

    def sub(key: str) -> np.ndarray:
        return np.nonzero(g[key])[0]

    # Smudge: elliptical film with parallel wipe streaks.
    idx = sub("has_smudge")
    if idx.size:
        u, v = _rotated(g["smudge_xy"][idx], g["smudge_angle"][idx])
        sa, sb = _col(g["smudge_sigma"][idx, 0]), _col(g["smudge_sigma"][idx, 1])
        env = _gauss(0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        d = _col(g["smudge_depth"][idx])
        streak = 1.0 - d + d * (0.5 + 0.5 * np.cos(2 * math.pi * v / _col(g["smudge_period"][idx]) + _col(g["smudge_phase"][idx])))
        add[idx] += _col(g["smudge_amp"][idx]) * env * streak
    # Fingerprint: warped elliptical ridge rings under a Gaussian envelope.
    idx = sub("has_fingerprint")
    if idx.size:
        u, v = _rotated(g["finger_xy"][idx], g["finger_angle"][idx])
        v = v / _col(g["finger_aspect"][idx])
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        r = r + _col(g["finger_warp"][idx]) * np.sin(2.0 * theta + _col(g["finger_phase"][idx]))
        sig = _col(g["finger_sigma"][idx])
        env = _gauss(0.5 * (r / sig) ** 2)
        ridges = 0.5 + 0.5 * np.cos(2 * math.pi * r / _col(g["finger_period"][idx]))
        add[idx] += _col(g["finger_amp"][idx]) * env * ridges
    # Reflection of a light panel: soft-edged bright rectangle.
    idx = sub("has_reflection")
    if idx.size:
        u, v = _rotated(g["refl_xy"][idx], g["refl_angle"][idx])
        soft = _col(g["refl_soft"][idx])
        fu = _sigmoid((_col(g["refl_half"][idx, 0]) - np.abs(u)) / soft)
        fv = _sigmoid((_col(g["refl_half"][idx, 1]) - np.abs(v)) / soft)
        add[idx] += _col(g["refl_amp"][idx]) * fu * fv
    # Glare streak: a long, wide, bright band across the image.
    idx = sub("has_glare")
    if idx.size:
        u, v = _rotated(g["glare_xy"][idx], g["glare_angle"][idx])
        band = _gauss(0.5 * (v / _col(g["glare_sigma"][idx])) ** 2)
        falloff = _gauss(0.5 * (u / 90.0) ** 2)
        add[idx] += _col(g["glare_amp"][idx]) * band * falloff
    # Dust: a cluster of small specks, mostly bright.
    idx = sub("has_dust")
    if idx.size:
        cnt = g["dust_count"][idx]
        for j in range(_MAX_DUST):
            sel = idx[cnt > j]
            if not sel.size:
                continue
            xy = g["dust_xy"][sel, j]
            r2 = (_XX - _col(xy[:, 0])) ** 2 + (_YY - _col(xy[:, 1])) ** 2
            add[sel] += _col(g["dust_amp"][sel, j]) * _gauss(r2 / (2.0 * _col(g["dust_radius"][sel, j]) ** 2))
    # Scratch (defects only).
    idx = np.nonzero(g["label"] == 1)[0]
    if idx.size:
        ang = np.deg2rad(g["scratch_angle_deg"][idx])
        u, v = _rotated(g["scratch_xy"][idx], ang)
        k = _col(g["scratch_curvature"][idx])
        half = _col(g["scratch_length"][idx]) / 2.0
        vp = (v - 0.5 * k * u * u) / np.sqrt(1.0 + (k * u) ** 2)
        ue = np.maximum(np.abs(u) - half, 0.0)
        d2 = vp * vp + ue * ue
        w = _col(g["scratch_width"][idx])
        profile = _gauss(d2 / (2.0 * w * w))
        depth = _col(g["scratch_mod_depth"][idx])
        mod = 1.0 - depth * (0.5 + 0.5 * np.sin(2 * math.pi * u / _col(g["scratch_mod_period"][idx]) + _col(g["scratch_mod_phase"][idx])))
        taper = 0.3 + 0.7 * np.clip((half - np.abs(u)) / (0.15 * 2.0 * half), 0.0, 1.0)
        amp = _col(g["scratch_polarity"][idx] * g["scratch_contrast"][idx])
        add[idx] += amp * profile * mod * taper
    # Frame edge: the phone's border -- dark background outside, thin bright bevel inside.
    idx = sub("has_frame_edge")
    if idx.size:
        side = g["frame_side"][idx]
        off = _col(g["frame_offset"][idx])
        tilt = _col(np.tan(g["frame_tilt"][idx]))
        # t: signed distance into the phone from the edge line (pixels).
        tx = np.where(_col(side) == 0, _YY - off - tilt * (_XX - S / 2), 0.0)
        tx = np.where(_col(side) == 1, (S - 1 - off) - _YY - tilt * (_XX - S / 2), tx)
        tx = np.where(_col(side) == 2, _XX - off - tilt * (_YY - S / 2), tx)
        t = np.where(_col(side) == 3, (S - 1 - off) - _XX - tilt * (_YY - S / 2), tx)
        outside = _sigmoid(-t / 0.6)
        bevel = _col(g["frame_bevel_amp"][idx]) * _gauss(0.5 * ((t - 1.5) / _col(g["frame_bevel_width"][idx])) ** 2)
        surf[idx] = surf[idx] * (1.0 - outside) + _col(g["frame_bg"][idx]) * outside
        add[idx] = add[idx] * (1.0 - outside) + bevel * (1.0 - outside)

    # Optics: blur both layers.
    blurred = _blur(np.stack([surf, add], 1), g["blur_sigma"])
    surf, add = blurred[:, 0], blurred[:, 1]
    # Illumination: level x vignetting x linear gradient.
    r2 = ((_XX - (S - 1) / 2) ** 2 + (_YY - (S - 1) / 2) ** 2) / ((S / 2) ** 2)
    vig = 1.0 - _col(g["vignette"]) * r2 / 2.0
    dirn = np.deg2rad(g["gradient_direction_deg"])
    ramp = ((_XX - (S - 1) / 2) * _col(np.cos(dirn)) + (_YY - (S - 1) / 2) * _col(np.sin(dirn))) / (S / 2)
    light = _col(g["light_level"]) * vig * (1.0 + _col(g["gradient_strength"]) * ramp)
    tint = _TINT_RGB[g["tint"]]
    gains = g["gains"].astype(np.float32)
    noise_sigma = g["noise_sigma"].astype(np.float32)
    out = np.empty((m, S, S, 3), dtype=np.uint8)
    noise = _normal(rng, (3, m, S, S))
    ch = np.empty((m, S, S), dtype=np.float32)
    for c in range(3):
        np.multiply(surf, _col(tint[:, c]), out=ch)
        ch += add
        ch *= light
        ch *= _col(gains[:, c])
        noise[c] *= _col(noise_sigma)
        ch += noise[c]
        np.rint(ch, out=ch)
        np.clip(ch, 0.0, 255.0, out=ch)
        out[..., c] = ch
    return out


def _param_dicts(P: dict, c: Conditions) -> list[dict[str, Any]]:
    n = len(P["label"])

    def f(x: Any, nd: int = 4) -> float:
        return round(float(x), nd)

    out = []
    for i in range(n):
        lab = int(P["label"][i])
        types = [t for t in DISTRACTOR_TYPES if P["has_" + t][i]]
        d: dict[str, Any] = {
            "label": lab,
            "conditions": c.name,
            "light_level": f(P["light_level"][i]),
            "gradient_strength": f(P["gradient_strength"][i]),
            "gradient_direction_deg": f(P["gradient_direction_deg"][i], 2),
            "blur_sigma": f(P["blur_sigma"][i]),
            "noise_sigma": f(P["noise_sigma"][i]),
            "color_gain": [f(x) for x in P["gains"][i]],
            "surface_tint": _TINT_NAMES[int(P["tint"][i])],
            "surface_level": f(P["surface_level"][i], 2),
            "vignette": f(P["vignette"][i]),
            "grain_amp": f(P["grain_amp"][i]),
            "specular_amp": f(P["spec_amp"][i], 2),
            "distractors": types,
            "n_distractors": len(types),
            "dust_count": int(P["dust_count"][i]) if P["has_dust"][i] else 0,
            "frame_side": _SIDES[int(P["frame_side"][i])] if P["has_frame_edge"][i] else None,
            "frame_offset": f(P["frame_offset"][i], 2) if P["has_frame_edge"][i] else None,
        }
        if lab == 1:
            d.update(
                scratch_contrast=f(P["scratch_contrast"][i], 3),
                scratch_length=f(P["scratch_length"][i], 2),
                scratch_width=f(P["scratch_width"][i]),
                scratch_curvature=f(P["scratch_curvature"][i], 5),
                scratch_angle_deg=f(P["scratch_angle_deg"][i], 2),
                scratch_polarity="bright" if P["scratch_polarity"][i] > 0 else "dark",
                scratch_x=f(P["scratch_xy"][i, 0], 2),
                scratch_y=f(P["scratch_xy"][i, 1], 2),
            )
        else:
            d.update(
                scratch_contrast=None,
                scratch_length=None,
                scratch_width=None,
                scratch_curvature=None,
                scratch_angle_deg=None,
                scratch_polarity=None,
                scratch_x=None,
                scratch_y=None,
            )
        out.append(d)
    return out


def generate(
    n: int,
    seed: int,
    conditions: Union[str, Conditions, None] = "normal",
    defect_rate: float = 0.5,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Generate ``n`` images.

    Returns ``(images, labels, params)``: images uint8 [n, 128, 128, 3] (RGB), labels int64 [n]
    (1 = scratch), and one dict per image with everything needed for slicing (scratch contrast,
    length, width, curvature, angle; look-alike types; light level, blur, noise, colour gains...).
    Deterministic for a given ``(n, seed, conditions, defect_rate)``; ``workers`` threads
    render chunks in parallel without changing the result.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError("defect_rate must lie in [0, 1]")
    c = resolve_conditions(conditions)
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    seqs = np.random.SeedSequence(int(seed)).spawn(1 + n_chunks)
    rng = np.random.default_rng(seqs[0])
    labels = (rng.random(n) < defect_rate).astype(np.int64)
    P = _draw_params(rng, n, labels, c)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def work(ci: int) -> None:
        lo, hi = ci * _CHUNK, min(n, (ci + 1) * _CHUNK)
        images[lo:hi] = _render(P, lo, hi, np.random.default_rng(seqs[1 + ci]))

    # Chunks are independent (own random streams), so threads do not change the result.
    if workers > 1 and n_chunks > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(n_chunks)))
    else:
        for ci in range(n_chunks):
            work(ci)
    return images, labels, _param_dicts(P, c)
