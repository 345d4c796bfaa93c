import numpy as np
from scipy import ndimage

from vigil_data import compute_features, generate
from vigil_data.features import gray255, laplacian_valid


def test_laplacian_variance_matches_scipy():
    images, _, _ = generate(16, seed=7, conditions="drifted")
    images2, _, _ = generate(16, seed=7)
    images = np.concatenate([images, images2])
    f = compute_features(images)
    for i, img in enumerate(images):
        rgb = img.astype(np.float64)
        g = 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]
        lap = ndimage.laplace(g)[1:-1, 1:-1]  # [[0,1,0],[1,-4,1],[0,1,0]]; borders dropped = valid
        assert lap.shape == (126, 126)
        np.testing.assert_allclose(f["sharpness"][i], lap.var(), rtol=1e-10)
        np.testing.assert_allclose(f["brightness"][i], g.mean(), rtol=1e-12)
        np.testing.assert_allclose(f["contrast"][i], np.sqrt(((g - g.mean()) ** 2).mean()), rtol=1e-10)


def test_laplacian_on_known_image():
    g = np.zeros((5, 5))
    g[2, 2] = 1.0
    lap = laplacian_valid(g)
    assert lap.shape == (3, 3)
    np.testing.assert_array_equal(lap, [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    # Linear ramps have zero Laplacian.
    ramp = np.add.outer(np.arange(10.0), 2 * np.arange(10.0))
    assert np.allclose(laplacian_valid(ramp), 0)


def test_features_single_image_and_dtype():
    img = np.full((128, 128, 3), 100, np.uint8)
    f = compute_features(img)
    assert f["brightness"].dtype == np.float64
    np.testing.assert_allclose(f["brightness"], [100.0])
    np.testing.assert_allclose(f["contrast"], [0.0], atol=1e-9)
    np.testing.assert_allclose(f["sharpness"], [0.0], atol=1e-9)
    assert gray255(img).shape == (128, 128)
