"""Tests of rpe_jax.spectrum: band placement, the distance's floor, order invariance, detail."""

import warnings

import numpy as np
import pytest

from benchmarks.testbed_detail import upsample
from rpe_jax import spectrum
from rpe_jax.data import procedural


def _grating(side: int, cycles_per_pixel: float, angle: float = 0.3) -> np.ndarray:
    """[side, side, 3] sinusoid of the given radial frequency, in [0, 1]."""
    i, j = np.mgrid[0:side, 0:side]
    phase = 2 * np.pi * cycles_per_pixel * (np.cos(angle) * j + np.sin(angle) * i)
    return np.repeat((0.5 + 0.4 * np.sin(phase))[..., None], 3, -1)


@pytest.fixture(scope="module")
def renders():
    scenes = procedural.ProceduralScenes(10, seed=0, split="validation", style="detailed")
    return {
        "a": scenes.render_batch(range(0, 60), 32, 32),
        "b": scenes.render_batch(range(60, 120), 32, 32),
        "b_resized": upsample(scenes.render_batch(range(60, 120), 16, 16), 32),
    }


@pytest.mark.parametrize("frequency", [0.09375, 0.21875, 0.34375, 0.46875])  # band centres
def test_a_sinusoid_lands_in_its_band(frequency):
    powers = spectrum.band_powers(_grating(64, frequency)[None], num_bands=8)
    edges = spectrum.band_edges(8)
    expected = np.searchsorted(edges, frequency) - 1  # the band (lo, hi] holding it
    assert powers.shape == (1, 8)
    assert int(np.argmax(powers[0])) == expected
    assert powers[0, expected] > 10 * np.delete(powers[0], expected).max()


def test_real_vs_real_is_near_the_floor_and_resized_far_from_it(renders):
    real = spectrum.band_powers(renders["a"])
    same = spectrum.band_powers(renders["b"])
    resized = spectrum.band_powers(renders["b_resized"])
    floor = spectrum.spectral_distance(real, same)
    far = spectrum.spectral_distance(real, resized)
    assert spectrum.spectral_distance(real, real) == 0.0
    assert floor < 0.05 and far > 20 * floor
    cutoff = spectrum.nyquist_cutoff(16, 32)
    assert cutoff == 0.25
    assert abs(spectrum.high_frequency_ratio(real, same, cutoff) - 1) < 0.15
    assert spectrum.high_frequency_ratio(real, resized, cutoff) < 0.4


def test_scores_do_not_depend_on_image_order(renders):
    real = spectrum.band_powers(renders["a"])
    generated = spectrum.band_powers(renders["b_resized"])
    order = np.random.default_rng(0).permutation(len(generated))
    shuffled = spectrum.band_powers(renders["b_resized"][order])
    np.testing.assert_allclose(shuffled, generated[order])
    assert spectrum.spectral_distance(real, shuffled) == pytest.approx(
        spectrum.spectral_distance(real, generated)
    )
    assert spectrum.high_frequency_ratio(real, shuffled, 0.25) == pytest.approx(
        spectrum.high_frequency_ratio(real, generated, 0.25)
    )


def test_high_frequency_share_matches_the_fft_bins_above_the_cutoff(renders):
    # Reference: the windowed |FFT|^2 of every bin, summed above the cutoff (the share weighs
    # band means by ring area instead of counting bins).
    images = renders["a"]
    x = images - images.mean((1, 2), keepdims=True)
    window = np.outer(np.hanning(32), np.hanning(32))[..., None]
    power = (np.abs(np.fft.fft2(x * window, axes=(1, 2))) ** 2).mean((0, 3))  # [32, 32]
    rho = np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32)))
    inside = (rho > 0) & (rho <= 0.5)
    exact = power[inside & (rho > 0.25)].sum() / power[inside].sum()
    share = spectrum.high_frequency_share(spectrum.band_powers(images), 0.25)
    assert share == pytest.approx(exact, rel=0.05)


def test_flat_images_hold_no_detail(renders):
    flat = spectrum.band_powers(np.full((4, 32, 32, 3), 0.5))
    assert not flat.any()
    real = spectrum.band_powers(renders["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spectrum.high_frequency_ratio(real, flat, 0.25) == 0.0
        with pytest.raises(ValueError, match="no power in the bands above cutoff=0.25"):
            spectrum.high_frequency_ratio(flat, real, 0.25)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"images \[N, H, W, C\].*\(32, 32, 3\)"):
        spectrum.band_powers(np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match=r"equal K.*\(4, 8\) and \(4, 6\)"):
        spectrum.spectral_distance(np.ones((4, 8)), np.ones((4, 6)))
    with pytest.raises(ValueError, match="band 0 of 40 holds no frequency of a 16x16"):
        spectrum.band_powers(np.zeros((1, 16, 16, 3)), num_bands=40)
    with pytest.raises(ValueError, match=r"band powers must be \[N, K\].*\(8,\)"):
        spectrum.high_frequency_share(np.ones(8), 0.25)
    with pytest.raises(ValueError, match="cutoff must be in \\(0, 0.5\\).*got 0.75"):
        spectrum.high_frequency_ratio(np.ones((4, 8)), np.ones((4, 8)), 0.75)
    with pytest.raises(ValueError, match="no power in the bands above cutoff=0.49"):
        spectrum.high_frequency_ratio(np.ones((4, 8)), np.ones((4, 8)), 0.49)
