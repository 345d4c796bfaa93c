import time

import numpy as np
import pytest

from vigil_data import Conditions, DISTRACTOR_TYPES, compute_features, generate, to_model_input
from vigil_data.preprocess import to_gray


def test_shapes_and_dtypes():
    images, labels, params = generate(40, seed=3)
    assert images.shape == (40, 128, 128, 3) and images.dtype == np.uint8
    assert labels.shape == (40,) and labels.dtype.kind == "i"
    assert set(np.unique(labels)) <= {0, 1}
    assert len(params) == 40
    for p, y in zip(params, labels):
        assert p["label"] == y
        assert set(p["distractors"]) <= set(DISTRACTOR_TYPES)
        for k in ("light_level", "blur_sigma", "noise_sigma", "color_gain", "gradient_strength", "gradient_direction_deg"):
            assert k in p
        if y == 1:
            for k in ("scratch_contrast", "scratch_length", "scratch_width", "scratch_curvature", "scratch_angle_deg"):
                assert isinstance(p[k], float)
        else:
            assert p["scratch_contrast"] is None


def test_deterministic_for_a_seed_and_threads_do_not_matter():
    a = generate(300, seed=11)
    b = generate(300, seed=11, workers=2)
    c = generate(300, seed=12)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_label_balance_and_defect_rate():
    _, labels, _ = generate(2000, seed=5)
    assert 0.46 < labels.mean() < 0.54
    _, labels, _ = generate(1000, seed=5, defect_rate=0.1)
    assert 0.07 < labels.mean() < 0.13
    _, labels, _ = generate(50, seed=5, defect_rate=0.0)
    assert labels.sum() == 0


def test_every_lookalike_occurs_and_also_on_defects():
    _, labels, params = generate(1000, seed=8)
    for t in DISTRACTOR_TYPES:
        on_ok = sum(1 for p, y in zip(params, labels) if y == 0 and t in p["distractors"])
        on_defect = sum(1 for p, y in zip(params, labels) if y == 1 and t in p["distractors"])
        assert on_ok > 50 and on_defect > 50, t
    assert any(p["n_distractors"] == 0 for p in params)
    assert any(p["n_distractors"] >= 3 for p in params)
    # Faint scratches exist.
    contrasts = [p["scratch_contrast"] for p in params if p["label"] == 1]
    assert min(contrasts) < 7 and np.mean(np.array(contrasts) < 12) > 0.1


def test_scratch_is_visible_in_the_image():
    """A strong scratch changes the image along its line (same scene with and without)."""
    img1, _, p1 = generate(64, seed=21, defect_rate=1.0)
    img0, _, _ = generate(64, seed=21, defect_rate=0.0)  # same draws, no scratch rendered
    g1, g0 = to_gray(img1) * 255, to_gray(img0) * 255
    strong = [i for i, p in enumerate(p1) if p["scratch_contrast"] > 30 and p["scratch_polarity"] == "bright"]
    assert strong
    for i in strong:
        assert (g1[i] - g0[i]).max() > 10


def test_presets_and_overrides():
    d = Conditions.preset("drifted")
    assert d.light_level[1] < Conditions.preset("normal").light_level[0]
    assert d.blur_sigma[0] > Conditions.preset("normal").blur_sigma[1]
    c = Conditions.preset("normal", blur_sigma=2.0, gain_b=(1.2, 1.3))
    assert c.blur_sigma == (2.0, 2.0) and c.gain_b == (1.2, 1.3)
    with pytest.raises(ValueError):
        Conditions.preset("normal", not_a_knob=1.0)
    with pytest.raises(ValueError):
        Conditions.preset("sunny")
    _, _, params = generate(20, seed=1, conditions=c)
    assert all(p["blur_sigma"] == 2.0 and 1.2 <= p["color_gain"][2] <= 1.3 for p in params)


def _feat(cond, n=300, seed=31):
    images, _, _ = generate(n, seed=seed, conditions=cond)
    return compute_features(images)


def test_dim_light_lowers_brightness():
    bright = _feat(Conditions.preset("normal", light_level=1.0))
    dim = _feat(Conditions.preset("normal", light_level=0.5))
    assert dim["brightness"].mean() < 0.6 * bright["brightness"].mean()
    assert np.all(dim["brightness"] < bright["brightness"])  # same scenes, paired


def test_blur_lowers_sharpness():
    sharp = _feat(Conditions.preset("normal", blur_sigma=0.4))
    blurry = _feat(Conditions.preset("normal", blur_sigma=2.0))
    assert blurry["sharpness"].mean() < 0.7 * sharp["sharpness"].mean()
    assert np.mean(blurry["sharpness"] < sharp["sharpness"]) > 0.95


def test_drifted_preset_moves_features():
    normal = _feat("normal")
    drifted = _feat("drifted")
    assert drifted["brightness"].mean() < normal["brightness"].mean()
    assert drifted["sharpness"].mean() < normal["sharpness"].mean()


def test_colour_cast_knob():
    warm = generate(50, seed=4, conditions=Conditions.preset("normal", gain_r=1.3, gain_b=0.8))[0].astype(float)
    base = generate(50, seed=4, conditions=Conditions.preset("normal", gain_r=1.0, gain_b=1.0))[0].astype(float)
    assert warm[..., 0].mean() > base[..., 0].mean() and warm[..., 2].mean() < base[..., 2].mean()


def test_model_input_contract():
    images, _, _ = generate(3, seed=2)
    x = to_model_input(images)
    assert x.shape == (3, 1, 128, 128) and x.dtype == np.float32
    rgb = images.astype(np.float64)
    gray = (0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(x[:, 0], (gray - 0.5) / 0.5, atol=1e-6)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_speed():
    generate(256, seed=0)  # warm up
    n = 2048
    out = {}
    for workers in (1, 2):
        t = time.perf_counter()
        generate(n, seed=99, workers=workers)
        out[workers] = n / (time.perf_counter() - t)
    print(f"\ngenerator speed: {out[1]:.0f} images/s (1 thread), {out[2]:.0f} images/s (2 threads)")
    assert out[1] > 50


def test_frame_edge_never_covers_the_scratch():
    _, labels, params = generate(600, seed=13, defect_rate=1.0)
    both = [p for p in params if p["frame_side"] is not None]
    assert len(both) > 100
    for p in both:
        half = p["scratch_length"] / 2
        u = np.linspace(-half, half, 21)
        v = 0.5 * p["scratch_curvature"] * u * u
        a = np.deg2rad(p["scratch_angle_deg"])
        x = p["scratch_x"] + u * np.cos(a) - v * np.sin(a)
        y = p["scratch_y"] + u * np.sin(a) + v * np.cos(a)
        # Distance from the frame's border to the scratch (3 px of slack for the tilt).
        room = {"top": y.min(), "bottom": 127 - y.max(), "left": x.min(), "right": 127 - x.max()}[p["frame_side"]]
        assert room >= p["frame_offset"] - 1e-6 or p["frame_offset"] == 3.0, p
